"""Malicious and broken artifacts, end to end: pushed to the real registry by hand, then read with
``ocifs inspect``, ``ocifs pull`` and ``ocifs mount`` in subprocesses.

Every case must end in ONE line ``ocifs: error: …`` on stderr and a non-zero exit — never a
traceback, never a raw control character echoed to the terminal — with memory bounded and, for
pull, nothing written outside the target directory (and no file under its final name inside it).
The mount refuses a hostile manifest the same way, before anything is mounted. A chunk index is
read on a file's first read, so a broken one makes that file's reads fail with EIO (the daemon
logs why with each failed read) while the daemon keeps running.

What distribution 2.8 itself refuses at manifest PUT is recorded per case (``registry_refuses``)
and checked, so docs/reliability.md stays true; such cases are then served to ocifs by the fault
proxy (a canned 200 for the manifest, blobs forwarded) so our own refusal is tested as well.

Unit-level checks of each rule live in tests/test_index.py; this module checks that the rules
are applied on the way in, by the commands users run.
"""

from __future__ import annotations

import errno
import functools
import hashlib
import json
import os
import re
import secrets
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pytest
import trio
from support.cachefiles import assert_cache_consistent
from support.fault_proxy import FaultProxy, Status
from support.measured_cli import Run, run_measured
from support.mounts import mounted, mounter
from support.registry import RegistryServer

from ocifs.digest import Digest
from ocifs.errors import RegistryError
from ocifs.format.build import build_chunk_index, build_manifest
from ocifs.format.media import (
    ANNOTATION_DIGEST,
    ANNOTATION_PATH,
    ANNOTATION_SIZE,
    ANNOTATION_TITLE,
    DEFAULT_ARTIFACT_TYPE,
    EMPTY_JSON_DIGEST,
    MAX_LAYERS,
    MEDIA_TYPE_CHUNK,
    MEDIA_TYPE_CHUNK_INDEX,
    MEDIA_TYPE_IMAGE_INDEX,
    MEDIA_TYPE_MANIFEST,
)
from ocifs.format.model import EMPTY_DESCRIPTOR, ChunkedEntry, ChunkRef
from ocifs.registry.client import ClientOptions, RegistryClient
from ocifs.retry import RetryPolicy

TITLE = ANNOTATION_TITLE
PATH = ANNOTATION_PATH
SIZE = ANNOTATION_SIZE
FILE_DIGEST = ANNOTATION_DIGEST
CHUNK_INDEX = MEDIA_TYPE_CHUNK_INDEX
CHUNK = MEDIA_TYPE_CHUNK
EMPTY_CONFIG = EMPTY_DESCRIPTOR.to_json()

# A unique name for files a successful attack would create, so the test can look for them.
TOKEN = secrets.token_hex(6)
ESCAPE_DIR = Path(tempfile.gettempdir()) / f"ocifs-hostile-{TOKEN}"

# The CLI (Python, trio, httpx) peaks at 32-36 MiB on a refused manifest here; parsing may add
# what the capped inputs cost (manifests <= 4 MiB, chunk indexes <= 8 MiB): a 7 MiB index of
# 60,000 entries measured 90 MiB in all, a 15,000-chunk artifact pulled in 64 MiB.
MAX_RSS_MIB = 160
# The file every chunked layer of the corpus holds unless a case says otherwise.
CHUNKED_DATA = bytes(range(256)) * 10

# Every test here runs one to three CLI processes (or a mount) on a few KiB; the 15,000-chunk
# extreme takes ~20 s. The issue's bound: no fault or hostile-input test over 60 s.
pytestmark = pytest.mark.timeout(60)


class Corpus:
    """The blobs a hostile manifest refers to; uploaded before the manifest is pushed."""

    def __init__(self) -> None:
        self.blobs: dict[Digest, bytes] = {Digest.parse(EMPTY_CONFIG["digest"]): b"{}"}

    def blob(
        self,
        data: bytes,
        media_type: str = "application/octet-stream",
        annotations: dict[str, Any] | None = None,
        *,
        size: int | None = None,
        digest: str | None = None,
    ) -> dict[str, Any]:
        real = Digest.of_bytes(data)
        self.blobs[real] = data
        descriptor: dict[str, Any] = {
            "mediaType": media_type,
            "digest": digest if digest is not None else str(real),
            "size": len(data) if size is None else size,
        }
        if annotations is not None:
            descriptor["annotations"] = annotations
        return descriptor

    def plain(self, title: Any, data: bytes = b"pwned\n", **kw: Any) -> dict[str, Any]:
        return self.blob(data, annotations={TITLE: title}, **kw)

    def chunked(
        self,
        path: Any,
        data: bytes = CHUNKED_DATA,
        chunk: int = 1000,
        *,
        tamper: Callable[[dict[str, Any]], Any] | None = None,
        size: str | None = None,
        annotations: dict[str, Any] | None = None,
    ) -> list[dict[str, Any]]:
        """A chunk-index layer and its chunk layers for ``data``; ``tamper`` edits the index
        document (or returns replacement bytes for the whole blob) before it is stored."""
        pieces = [data[o : o + chunk] for o in range(0, len(data), chunk)]
        file_digest = str(Digest.of_bytes(data))
        doc: dict[str, Any] = {
            "schemaVersion": 1,
            "mediaType": CHUNK_INDEX,
            "size": len(data),
            "fileMediaType": "application/octet-stream",
            "fileDigest": file_digest,
            "chunks": [
                {"digest": str(Digest.of_bytes(p)), "size": len(p), "offset": n * chunk} for n, p in enumerate(pieces)
            ],
        }
        replaced = tamper(doc) if tamper is not None else None
        blob = replaced if isinstance(replaced, bytes) else json.dumps(doc).encode()
        notes = {PATH: path, SIZE: size if size is not None else str(len(data)), FILE_DIGEST: file_digest}
        notes.update(annotations or {})
        layers = [self.blob(blob, CHUNK_INDEX, {k: v for k, v in notes.items() if v is not None})]
        for n, piece in enumerate(pieces):
            layers.append(self.blob(piece, CHUNK, {TITLE: f"{path}.part-{n:05d}"}))
        return layers


def manifest(layers: list[dict[str, Any]], **fields: Any) -> bytes:
    doc: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": MEDIA_TYPE_MANIFEST,
        "artifactType": DEFAULT_ARTIFACT_TYPE,
        "config": EMPTY_CONFIG,
        "layers": layers,
    }
    doc.update(fields)
    return json.dumps(doc, ensure_ascii=False).encode()


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


def with_raw_field(manifest_bytes: bytes, raw_json: str) -> bytes:
    """``manifest_bytes`` with an unknown top-level field ``x`` holding ``raw_json`` verbatim."""
    return manifest_bytes[:-1] + b', "x": ' + raw_json.encode() + b"}"


Refused = Literal["both", "pull"]


@dataclass(frozen=True)
class Case:
    """A hostile artifact: ``build`` returns the manifest bytes (and optionally its media type).

    ``refused_by``: "both" when the manifest alone is hostile (inspect and pull refuse it);
    "pull" when only the chunk index or the blobs are (inspect reads the manifest alone, by
    design, and lists the artifact). ``error`` is a regex the one error line must match.
    ``registry_refuses``: whether distribution 2.8 rejects the manifest PUT.
    ``mount_serves``: a "pull" case whose file the mount still serves, because every byte it
    returns is verified (each chunk against its digest) and what is wrong is only what pull
    checks on top: the whole-file digest, which a mount would have to read the file to check.
    """

    build: Callable[[Corpus], bytes | tuple[bytes, str]]
    error: str
    refused_by: Refused = "both"
    registry_refuses: bool = False
    mount_serves: bool = False


def _index_gap(doc: dict[str, Any]) -> None:
    doc["chunks"][1]["offset"] += 1


def _index_overlap(doc: dict[str, Any]) -> None:
    doc["chunks"][1]["offset"] -= 1


def _index_negative(doc: dict[str, Any]) -> None:
    doc["chunks"][0]["offset"] = -5


def _index_first_offset(doc: dict[str, Any]) -> None:
    for chunk in doc["chunks"]:
        chunk["offset"] += 10


def _index_size(doc: dict[str, Any]) -> None:
    doc["size"] += 1


def _index_other_chunk(doc: dict[str, Any]) -> None:
    doc["chunks"][1]["digest"] = str(Digest.of_bytes(b"some other chunk"))


def _index_zero_size(doc: dict[str, Any]) -> None:
    doc["chunks"][1]["size"] = 0


def _index_file_digest(doc: dict[str, Any]) -> None:
    doc["fileDigest"] = str(Digest.of_bytes(b"another file"))


def _index_media_type(doc: dict[str, Any]) -> None:
    doc["mediaType"] = "application/vnd.oci.image.manifest.v1+json"


def _index_schema(doc: dict[str, Any]) -> None:
    doc["schemaVersion"] = 2


def _index_sha512(doc: dict[str, Any]) -> None:
    doc["chunks"][0]["digest"] = "sha512:" + hashlib.sha512(b"x").hexdigest()


def _index_too_many(doc: dict[str, Any]) -> None:
    # 60,000 entries, ~7 MiB: under the 8 MiB index cap, far over what the manifest lists.
    first = doc["chunks"][0]
    doc["chunks"] = [dict(first, offset=n * first["size"]) for n in range(60_000)]


@functools.cache
def _million_chunk_index() -> bytes:
    """A chunk index of 1,000,000 one-byte chunks, 110 MB: what a hostile pusher can store
    (distribution takes any blob) to exhaust a reader's memory or CPU."""
    chunk = str(Digest.of_bytes(b"\0"))
    head = {"schemaVersion": 1, "mediaType": CHUNK_INDEX, "size": 10**6, "fileMediaType": "application/octet-stream"}
    entries = ",".join(f'{{"digest":"{chunk}","size":1,"offset":{n}}}' for n in range(1_000_000))
    return (json.dumps(head)[:-1] + ', "chunks": [' + entries + "]}").encode()


def _million_chunks(c: Corpus, *, claimed_size: int | None = None) -> bytes:
    layers = c.chunked("m", tamper=_index_bytes(_million_chunk_index()))
    if claimed_size is not None:  # the descriptor understates the blob to pass the size cap
        layers[0]["size"] = claimed_size
    return manifest(layers)


def _index_bytes(data: bytes) -> Callable[[dict[str, Any]], bytes]:
    return lambda doc: data


def _index_duplicate_key(doc: dict[str, Any]) -> bytes:
    text = json.dumps(doc)
    return text.replace('"size":', '"size": 1, "size":', 1).encode()


def _wrong_whole_file(c: Corpus) -> bytes:
    # Index and manifest agree on a whole-file digest that the chunks do not produce.
    wrong = str(Digest.of_bytes(b"not this file"))

    def tamper(doc: dict[str, Any]) -> None:
        doc["fileDigest"] = wrong

    return manifest(c.chunked("model.bin", tamper=tamper, annotations={FILE_DIGEST: wrong}))


def _sha512_chunk(c: Corpus) -> bytes:
    layers = c.chunked("model.bin", chunk=2560)  # one chunk
    data = c.blobs[Digest.parse(layers[1]["digest"])]
    sha512 = Digest("sha512", hashlib.sha512(data).hexdigest())
    c.blobs[sha512] = data
    layers[1]["digest"] = str(sha512)
    return manifest(layers)


CASES: dict[str, Case] = {
    # -- paths (R10, R13): titles and index paths that would escape the target or fool a terminal
    "title-dotdot": Case(lambda c: manifest([c.plain("ok.txt"), c.plain(f"../../escape-{TOKEN}")]), "'..' component"),
    "title-dotdot-inside": Case(lambda c: manifest([c.plain(f"a/../../../escape-{TOKEN}")]), "'..' component"),
    "title-absolute": Case(lambda c: manifest([c.plain(f"{ESCAPE_DIR}/pwned")]), "is absolute"),
    "title-nul": Case(lambda c: manifest([c.plain("ok\x00/../../escape")]), "control character"),
    "title-terminal-escape": Case(lambda c: manifest([c.plain("\x1b]0;pwned\x07\x1b[2J\x1b[31mred")]), "control"),
    "title-newline": Case(lambda c: manifest([c.plain("line\nocifs: error: forged")]), "control character"),
    "title-backslash": Case(lambda c: manifest([c.plain("..\\..\\escape")]), "backslash"),
    "title-empty": Case(lambda c: manifest([c.plain("")]), "path is empty"),
    "title-empty-component": Case(lambda c: manifest([c.plain("a//b")]), "empty component"),
    "title-too-deep": Case(lambda c: manifest([c.plain("/".join(["d"] * 40))]), "deeper than 32"),
    "title-component-too-long": Case(lambda c: manifest([c.plain("x" * 300)]), "longer than 255"),
    "title-not-a-string": Case(lambda c: manifest([c.plain(5)]), "must be a string", registry_refuses=True),
    "index-path-dotdot": Case(lambda c: manifest(c.chunked(f"../escape-{TOKEN}")), "'..' component"),
    "index-path-absolute": Case(lambda c: manifest(c.chunked(f"{ESCAPE_DIR}/pwned")), "is absolute"),
    "index-path-missing": Case(lambda c: manifest(c.chunked(None)), "dev.ocifs.path: must be a string"),
    # -- the tree (R12)
    "duplicate-paths": Case(lambda c: manifest([c.plain("same", b"one"), c.plain("same", b"two")]), "appears twice"),
    "chunked-and-plain-same-path": Case(lambda c: manifest([*c.chunked("m"), c.plain("m")]), "appears twice"),
    "file-and-directory": Case(lambda c: manifest([c.plain("a", b"f"), c.plain("a/b", b"g")]), "file and a directory"),
    # -- sizes (R6, R7, R8)
    "sizes-do-not-add-up": Case(lambda c: manifest(c.chunked("m", size="2561")), "chunk layers sum to 2560"),
    "size-annotation-not-decimal": Case(lambda c: manifest(c.chunked("m", size="2.56e3")), "not a decimal size"),
    "size-annotation-negative": Case(lambda c: manifest(c.chunked("m", size="-2560")), "not a decimal size"),
    "size-annotation-zero": Case(lambda c: manifest(c.chunked("m", size="0")), "size 0"),
    "descriptor-size-negative": Case(lambda c: manifest([c.plain("f", size=-1)]), "size -1 outside"),
    "descriptor-size-huge": Case(lambda c: manifest([c.plain("f", size=2**63)]), "outside 0..", registry_refuses=True),
    "index-descriptor-over-8mib": Case(
        lambda c: manifest(c.chunked("m", tamper=_index_bytes(b" " * (9 << 20)))), "outside 1..8388608"
    ),
    # -- digests (R6, R7, R8)
    "digest-uppercase-hex": Case(
        lambda c: manifest([c.plain("f", digest="sha256:" + "A" * 64)]), "malformed digest", registry_refuses=True
    ),
    "digest-short": Case(
        lambda c: manifest([c.plain("f", digest="sha256:abc")]), "wrong length", registry_refuses=True
    ),
    # An unknown digest algorithm on a layer is unrecognised and skipped (R19); on the config it is refused.
    "digest-md5": Case(
        lambda c: manifest([c.plain("f")], config={**EMPTY_CONFIG, "digest": "md5:" + "0" * 32}),
        "config digest: unsupported digest algorithm",
        registry_refuses=True,
    ),
    "part-named-plain": Case(
        lambda c: manifest([*c.chunked("f"), c.plain("f.part-notes")]), "named like a part of the chunked file 'f'"
    ),
    "annotations-null": Case(lambda c: manifest([{**c.plain("f"), "annotations": None}]), "annotations must be"),
    "digest-null": Case(
        lambda c: manifest([dict(c.plain("f"), digest=None)]), "digest must be a string", registry_refuses=True
    ),
    "chunk-digest-sha512": Case(_sha512_chunk, "is not sha256"),
    # -- structure and media types (R1–R5, R9)
    "media-type-image-index": Case(
        lambda c: (manifest([c.plain("f")], mediaType=MEDIA_TYPE_IMAGE_INDEX), MEDIA_TYPE_IMAGE_INDEX),
        "image index",
        registry_refuses=True,
    ),
    "media-type-unknown": Case(
        lambda c: manifest([c.plain("f")], mediaType="application/x-evil"), "not an OCI image", registry_refuses=True
    ),
    "layer-media-type-garbage": Case(lambda c: manifest([c.blob(b"x", "not a media type", {TITLE: "f"})]), "media"),
    "schema-version-1": Case(
        lambda c: manifest([c.plain("f")], schemaVersion=1), "schemaVersion", registry_refuses=True
    ),
    "schema-version-string": Case(
        lambda c: manifest([c.plain("f")], schemaVersion="2"), "schemaVersion", registry_refuses=True
    ),
    "config-not-an-object": Case(lambda c: manifest([c.plain("f")], config="x"), "config", registry_refuses=True),
    "layers-not-an-array": Case(
        lambda c: manifest([]).replace(b'"layers": []', b'"layers": {"a": 1}'),
        "layers must be an array",
        registry_refuses=True,
    ),
    "orphan-chunk-layer": Case(lambda c: manifest([c.blob(b"x", CHUNK)]), "does not follow a chunk-index layer"),
    "chunk-index-without-chunks": Case(lambda c: manifest(c.chunked("m")[:1]), "no chunk layers follow"),
    "duplicate-json-keys": Case(
        lambda c: manifest([c.plain("f")]).replace(b'"layers":', b'"layers": [], "layers":', 1), "duplicate JSON key"
    ),
    "deep-nesting": Case(lambda c: with_raw_field(manifest([c.plain("f")]), nested(5000)), "nested too deeply"),
    "deep-nesting-beyond-go": Case(
        lambda c: with_raw_field(manifest([c.plain("f")]), nested(200_000)),
        "nested too deeply",
        registry_refuses=True,
    ),
    "huge-integer-literal": Case(
        lambda c: manifest([c.plain("f")]).replace(b'"schemaVersion": 2', b'"schemaVersion": ' + b"9" * 5000, 1),
        "not valid JSON|schemaVersion",
        registry_refuses=True,
    ),
    "nan": Case(
        lambda c: manifest([c.plain("f")]).replace(b'"size": 6', b'"size": NaN', 1), "NaN", registry_refuses=True
    ),
    "not-json": Case(
        lambda c: b"\x89PNG\r\n\x1a\n" + os.urandom(200), "not UTF-8|not valid JSON", registry_refuses=True
    ),
    "json-array": Case(lambda c: b"[]", "must be a JSON object", registry_refuses=True),
    "byte-order-mark": Case(
        lambda c: b"\xef\xbb\xbf" + manifest([c.plain("f")]), "not valid JSON", registry_refuses=True
    ),
    # -- size limits (R1): more than any registry stores, served by the proxy
    "manifest-over-4mib": Case(
        lambda c: manifest([c.plain("f")], annotations={"big": "x" * (4 << 20)}),
        "over the 4194304-byte limit",
        registry_refuses=True,
    ),
    "too-many-layers": Case(
        lambda c: manifest([c.blob(b"x", "application/x-foreign")] * 100_001),
        "limit of 100000|over the",
        registry_refuses=True,
    ),
    # -- chunk indexes (R14–R17): the manifest is fine, the index blob is not (pull refuses)
    "index-gap": Case(lambda c: manifest(c.chunked("m", tamper=_index_gap)), "leaves a gap", "pull"),
    "index-overlap": Case(lambda c: manifest(c.chunked("m", tamper=_index_overlap)), "an overlap", "pull"),
    "index-negative-offset": Case(lambda c: manifest(c.chunked("m", tamper=_index_negative)), "offset -5", "pull"),
    "index-first-offset": Case(lambda c: manifest(c.chunked("m", tamper=_index_first_offset)), "start at 0", "pull"),
    "index-size-differs": Case(lambda c: manifest(c.chunked("m", tamper=_index_size)), "manifest says", "pull"),
    "index-chunk-differs": Case(lambda c: manifest(c.chunked("m", tamper=_index_other_chunk)), "differs", "pull"),
    "index-chunk-size-zero": Case(lambda c: manifest(c.chunked("m", tamper=_index_zero_size)), "size 0", "pull"),
    "index-file-digest-differs": Case(
        lambda c: manifest(c.chunked("m", tamper=_index_file_digest)), "but the manifest says", "pull"
    ),
    "index-chunk-sha512": Case(lambda c: manifest(c.chunked("m", tamper=_index_sha512)), "sha256 is required", "pull"),
    "index-media-type": Case(lambda c: manifest(c.chunked("m", tamper=_index_media_type)), "mediaType", "pull"),
    "index-schema-version": Case(lambda c: manifest(c.chunked("m", tamper=_index_schema)), "schemaVersion", "pull"),
    "index-not-json": Case(
        lambda c: manifest(c.chunked("m", tamper=_index_bytes(os.urandom(500)))), "not UTF-8|not valid JSON", "pull"
    ),
    "index-deep-nesting": Case(
        lambda c: manifest(c.chunked("m", tamper=_index_bytes(nested(500_000).encode()))), "nested too deeply", "pull"
    ),
    "index-duplicate-keys": Case(
        lambda c: manifest(c.chunked("m", tamper=_index_duplicate_key)), "duplicate JSON key", "pull"
    ),
    "index-too-many-chunks": Case(
        lambda c: manifest(c.chunked("m", tamper=_index_too_many)), "chunks cover 60000000 bytes", "pull"
    ),
    "index-a-million-chunks": Case(_million_chunks, "size [0-9]{9} outside 1..8388608"),
    "index-a-million-chunks-understated": Case(
        lambda c: _million_chunks(c, claimed_size=4 << 20), "is [0-9]{9} bytes in the registry but 4194304", "pull"
    ),
    "whole-file-digest-wrong": Case(_wrong_whole_file, "hashes to sha256:", "pull", mount_serves=True),
}


# -- running the CLI -------------------------------------------------------------------------


def run_cli(*args: str, timeout: float = 60) -> Run:
    """Run ``ocifs ARGS`` with a capped address space; report its peak RSS."""
    return run_measured(*args, timeout=timeout)


def assert_refused_in_one_line(run: Run, error: str) -> None:
    assert run.returncode in (1, 2), run
    assert run.stderr.startswith("ocifs: error: ") and run.stderr.count("\n") == 1, run.stderr
    assert "Traceback" not in run.stderr + run.stdout
    assert 0 < run.max_rss_mib < MAX_RSS_MIB, f"peak RSS {run.max_rss_mib:.0f} MiB"
    line = run.stderr.rstrip("\n")
    # Untrusted text is escaped: no terminal escape, NUL, CR or other control character leaks.
    assert all(ch.isprintable() for ch in line), repr(line)
    assert re.search(error, line), line


def tree(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*")}


# -- storing the corpus ------------------------------------------------------------------------


@dataclass(frozen=True)
class Stored:
    repository: str
    manifest: bytes
    media_type: str
    registry_error: RegistryError | None


async def store(server: RegistryServer, name: str, case: Case) -> Stored:
    corpus = Corpus()
    built = case.build(corpus)
    data, media_type = built if isinstance(built, tuple) else (built, MEDIA_TYPE_MANIFEST)
    repository = f"hostile/{name}"
    async with RegistryClient(server.host) as client:
        for digest, blob in corpus.blobs.items():
            if await client.blob_size(repository, digest) is None:
                await client.upload_blob(repository, digest, blob)
    # One attempt: distribution answers some invalid manifests with HTTP 500, which would be retried.
    async with RegistryClient(server.host, options=ClientOptions(retry=RetryPolicy(attempts=1))) as client:
        try:
            await client.put_manifest(repository, "v1", data, media_type)
        except RegistryError as exc:
            return Stored(repository, data, media_type, exc)
    return Stored(repository, data, media_type, None)


@pytest.fixture
def served(shared_registry: RegistryServer, request: pytest.FixtureRequest) -> Iterator[tuple[str, Stored]]:
    """The case's artifact in the registry, and the host to read it from: the registry itself,
    or — when the registry refuses the manifest — a fault proxy answering with its bytes."""
    name = request.param
    stored = trio.run(store, shared_registry, name, CASES[name])
    if stored.registry_error is None:
        yield shared_registry.host, stored
        return
    with FaultProxy(shared_registry.host) as proxy:
        headers = {"Content-Type": stored.media_type, "Docker-Content-Digest": str(Digest.of_bytes(stored.manifest))}
        proxy.add(Status(200, headers=headers, body=stored.manifest), path=r"/manifests/v1$", times=None)
        yield proxy.host, stored
        assert proxy.errors == []


@pytest.mark.parametrize("served", sorted(CASES), indirect=True)
def test_hostile_artifact_is_refused_in_one_line(served: tuple[str, Stored], tmp_path: Path) -> None:
    host, stored = served
    name = stored.repository.removeprefix("hostile/")
    case = CASES[name]
    refused = stored.registry_error is not None
    assert refused == case.registry_refuses, f"distribution {'refused' if refused else 'accepted'} it: {stored}"

    ref = f"{host}/{stored.repository}:v1"
    sandbox = tmp_path / "sandbox"
    out = sandbox / "out"
    sandbox.mkdir()
    (sandbox / "bystander").write_bytes(b"keep me")
    before = tree(tmp_path)
    with ThreadPoolExecutor(2) as pool:
        inspected = pool.submit(run_cli, "inspect", ref)
        pulled = pool.submit(run_cli, "pull", ref, "-o", str(out), "--cache-dir", str(tmp_path / "cache"), "-q")
    inspect, pull = inspected.result(), pulled.result()

    assert_refused_in_one_line(pull, case.error)
    if case.refused_by == "both":
        assert_refused_in_one_line(inspect, case.error)
    else:  # inspect reads the manifest alone, which is fine here
        assert inspect.returncode == 0 and 0 < inspect.max_rss_mib < MAX_RSS_MIB, inspect

    # Nothing outside the target, nothing under a final name inside it, no temp file left.
    after = tree(tmp_path)
    assert {p for p in after - before if not p.startswith(("sandbox/out", "cache"))} == set()
    assert (sandbox / "bystander").read_bytes() == b"keep me"
    assert [p for p in out.rglob("*") if not p.is_dir()] == []
    assert not ESCAPE_DIR.exists()
    # The chunk cache holds only verified bytes, each named by its own digest.
    for entry in (tmp_path / "cache").rglob("*"):
        if entry.is_file() and not entry.name.startswith("."):
            assert hashlib.sha256(entry.read_bytes()).hexdigest() == entry.name, entry


def daemon_peak_rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        return int(next(line for line in status if line.startswith("VmHWM:")).split()[1]) / 1024


@pytest.mark.parametrize("served", sorted(CASES), indirect=True)
def test_hostile_artifact_is_refused_by_the_mount(served: tuple[str, Stored], tmp_path: Path) -> None:
    """A hostile manifest: ``ocifs mount`` refuses it in one line and mounts nothing. A broken
    chunk index (the manifest is fine): the mount lists the file, every read of it fails with
    EIO, the log says why, and the daemon keeps serving."""
    host, stored = served
    case = CASES[stored.repository.removeprefix("hostile/")]
    ref = f"{host}/{stored.repository}:v1"
    mountpoint, cache = tmp_path / "mnt", tmp_path / "cache"
    mountpoint.mkdir()

    if case.refused_by == "both":
        # In the foreground, so the peak RSS measured is that of the process that parses.
        run = run_cli("mount", ref, str(mountpoint), "--cache-dir", str(cache), "--foreground")
        assert_refused_in_one_line(run, case.error)
        assert not mounted(mountpoint) and list(mountpoint.iterdir()) == []
        assert not ESCAPE_DIR.exists()
        return

    with mounter(tmp_path) as mount:
        m = mount(ref, mountpoint=mountpoint, cache=cache)
        files = sorted(p for p in mountpoint.rglob("*") if p.is_file())
        assert files, "the mount lists the artifact's file"
        for path in files:
            for _ in range(2):  # the second read gets the same answer, from the remembered error
                if case.mount_serves:
                    assert path.read_bytes() == CHUNKED_DATA
                else:
                    with pytest.raises(OSError) as failed:
                        path.read_bytes()
                    assert failed.value.errno == errno.EIO, failed.value
        assert m.alive(), m.log_text()
        assert sorted(p for p in mountpoint.rglob("*") if p.is_file()) == files  # still serving
        peak = daemon_peak_rss_mib(m.proc.pid)
    log = m.log_text()
    assert "Traceback" not in log, log
    if case.mount_serves:
        assert "failed (EIO)" not in log, log
    else:
        # Each failed read is logged with the reason (and a parse error once more as an ERROR).
        assert re.search(rf"read of /\S+ \[0, \+\d+\) failed \(EIO\): .*{case.error}", log), log
    assert 0 < peak < MAX_RSS_MIB, f"daemon peak RSS {peak:.0f} MiB"
    assert m.proc.returncode == 0, log
    assert_cache_consistent(cache)
    assert not ESCAPE_DIR.exists()


@pytest.mark.parametrize("served", ["title-dotdot", "file-and-directory", "manifest-over-4mib"], indirect=True)
def test_a_detached_mount_refuses_a_hostile_manifest_in_the_same_one_line(
    served: tuple[str, Stored], tmp_path: Path
) -> None:
    """What a user types (no ``--foreground``): the parent waits for the daemon's verdict and
    prints its one line; no daemon is left behind."""
    host, stored = served
    case = CASES[stored.repository.removeprefix("hostile/")]
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    ref = f"{host}/{stored.repository}:v1"
    command = [sys.executable, "-m", "ocifs", "mount", ref, str(mountpoint), "--cache-dir", str(tmp_path / "cache")]
    proc = subprocess.run(command, capture_output=True, text=True, errors="replace", timeout=30, check=False)
    assert proc.returncode == 1, proc
    assert proc.stderr.startswith("ocifs: error: ") and proc.stderr.count("\n") == 1, proc.stderr
    assert re.search(case.error, proc.stderr) and all(ch.isprintable() for ch in proc.stderr.rstrip("\n"))
    assert not mounted(mountpoint)
    leftover = subprocess.run(["pgrep", "-f", f"ocifs mount {re.escape(ref)}"], capture_output=True, check=False)
    assert leftover.stdout == b"", "a daemon outlived its refused mount"


# -- legal extremes: accepted, with bounded memory ---------------------------------------------


async def store_extreme(server: RegistryServer, repository: str, chunks: int, annotation_bytes: int) -> bytes:
    """A file of ``chunks`` one-byte chunks (the most layers a 4 MiB manifest holds) and a
    manifest annotation of ``annotation_bytes``: both within every limit. Returns the file."""
    data = bytes(n % 251 for n in range(chunks))
    refs = [ChunkRef(Digest.of_bytes(data[n : n + 1]), 1, n) for n in range(chunks)]
    chunk_index = build_chunk_index(chunks, refs, file_digest=Digest.of_bytes(data))
    manifest_bytes = build_manifest(
        [ChunkedEntry("many/chunks.bin", chunk_index)],
        annotations={"org.example.notes": "n" * annotation_bytes},
        layer_budget=MAX_LAYERS,
    )
    blobs = {ref.digest: data[ref.offset : ref.end] for ref in refs}
    blobs[Digest.of_bytes(chunk_index.to_bytes())] = chunk_index.to_bytes()
    blobs[EMPTY_JSON_DIGEST] = b"{}"
    async with RegistryClient(server.host) as client:
        for digest, blob in blobs.items():
            await client.upload_blob(repository, digest, blob)
        await client.put_manifest(repository, "v1", manifest_bytes, MEDIA_TYPE_MANIFEST)
    return data


def test_legal_extremes_are_read_with_bounded_memory(shared_registry: RegistryServer, tmp_path: Path) -> None:
    # 15,000 chunk layers (~3 MiB of manifest) plus a 700 KiB annotation: just under 4 MiB.
    data = trio.run(store_extreme, shared_registry, "hostile/extremes", 15_000, 700 * 1024)
    ref = f"{shared_registry.host}/hostile/extremes:v1"
    inspect = run_cli("inspect", ref, "--json")
    assert inspect.returncode == 0, inspect.stderr
    described = json.loads(inspect.stdout)
    assert (
        described["files"][0]["chunks"] == 15_000 and len(described["annotations"]["org.example.notes"]) == 700 * 1024
    )
    pull = run_cli("pull", ref, "-o", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache"), "-q")
    assert pull.returncode == 0, pull.stderr
    assert (tmp_path / "out" / "many" / "chunks.bin").read_bytes() == data
    assert 0 < inspect.max_rss_mib < MAX_RSS_MIB and 0 < pull.max_rss_mib < MAX_RSS_MIB, (inspect, pull)
