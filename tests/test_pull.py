"""``ocifs pull`` against the real registry: exact bytes, resume, corruption, eviction, hostile input."""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import pytest
import trio
from support.registry import RegistryServer

from ocifs.cache.store import ChunkCache
from ocifs.commands import push
from ocifs.commands.pull import PullOptions, PullResult, pull
from ocifs.commands.pull_target import TEMP_PREFIX, TargetDir
from ocifs.digest import Digest
from ocifs.errors import FormatError, IntegrityError, OcifsError, UsageError
from ocifs.format.media import (
    ANNOTATION_PATH,
    ANNOTATION_SIZE,
    ANNOTATION_TITLE,
    EMPTY_JSON_DIGEST,
    MEDIA_TYPE_CHUNK,
    MEDIA_TYPE_CHUNK_INDEX,
    MEDIA_TYPE_MANIFEST,
)
from ocifs.format.model import EMPTY_DESCRIPTOR
from ocifs.reference import parse_reference
from ocifs.registry.client import RegistryClient

CHUNK = 64 * 1024
SIZES = {
    "zero": 0,
    "one": 1,
    "chunk-1": CHUNK - 1,
    "chunk": CHUNK,
    "chunk+1": CHUNK + 1,
    "several": 5 * CHUNK + 123,
    "random": random.Random(11).randrange(2 * CHUNK, 12 * CHUNK),
    "deep/er/nested.bin": 3 * CHUNK,
}
ExpectLog = Callable[..., AbstractContextManager[Any]]
# Retries of corrupt downloads wait this long at most (the default backoff is seconds).
FAST_RETRY = 0.01


def write_files(directory: Path, sizes: dict[str, int], seed: int = 1) -> dict[str, bytes]:
    rng = random.Random(seed)
    contents = {}
    for name, size in sizes.items():
        data = rng.randbytes(size)
        (directory / name).parent.mkdir(parents=True, exist_ok=True)
        (directory / name).write_bytes(data)
        contents[name] = data
    return contents


async def push_dir(ref_text: str, source: Path, **kw: Any) -> push.PushResult:
    ref = parse_reference(ref_text)
    options = push.PushOptions(**{"chunk_size": CHUNK, "jobs": 4, **kw})
    async with RegistryClient(ref.registry) as client:
        return await push.push(client, ref, push.collect_sources([str(source)]), options)


async def do_pull(ref_text: str, out: Path, cache: ChunkCache | Path, **kw: Any) -> tuple[PullResult, RegistryClient]:
    """Pull in-process; returns the result and the (closed) client, whose stats count GETs."""
    ref = parse_reference(ref_text)
    if isinstance(cache, Path):
        cache = ChunkCache(cache, memory_bytes=0)
    options = PullOptions(**{"jobs": 4, "retry_base_delay": FAST_RETRY, **kw})
    async with RegistryClient(ref.registry) as client:
        result = await pull(client, ref, out, cache, options)
    return result, client


def tree(directory: Path) -> dict[str, bytes]:
    """Every file under ``directory`` by relative path (symlinks are not followed)."""
    return {
        p.relative_to(directory).as_posix(): p.read_bytes()
        for p in sorted(directory.rglob("*"))
        if p.is_file() and not p.is_symlink()
    }


def temp_files(directory: Path) -> list[Path]:
    return [p for p in directory.rglob(f"{TEMP_PREFIX}*")]


def cache_entries(root: Path) -> dict[str, Path]:
    """Cached chunks by digest hex (temp files excluded)."""
    return {p.name: p for p in (root / "v1").glob("sha256/*/*") if not p.name.startswith(".")}


def blob_gets(server: RegistryServer, repository: str) -> int:
    """Blob GETs the registry served for ``repository`` so far, from its access log.

    The registry logs a request after its response is sent, so a client may see the body
    first: wait until the count has not moved for 0.2 s.
    """
    count = -1
    while True:
        now = server.log_text().count(f'"GET /v2/{repository}/blobs/')
        if now == count:
            return count
        count = now
        time.sleep(0.2)


def run_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ocifs", *args], capture_output=True, text=True, timeout=timeout, check=False
    )


# -- exact bytes ------------------------------------------------------------------------------


async def test_size_matrix_pulls_byte_identical_files(shared_registry: RegistryServer, tmp_path: Path) -> None:
    contents = write_files(tmp_path / "src", SIZES)
    ref = f"{shared_registry.host}/pull/matrix:v1"
    pushed = await push_dir(ref, tmp_path / "src")
    assert {f.source.path for f in pushed.files if f.chunked} == {"chunk+1", "several", "random", "deep/er/nested.bin"}

    result, client = await do_pull(ref, tmp_path / "out", tmp_path / "cache")
    assert tree(tmp_path / "out") == contents
    assert temp_files(tmp_path / "out") == []
    assert result.bytes == sum(SIZES.values())
    assert result.bytes_from_cache == 0
    # Every chunk and plain blob once, plus one index per chunked file; the empty file is free.
    chunks = sum(-(-s // CHUNK) if s > CHUNK else 1 for s in SIZES.values() if s)
    assert client.stats.blob_gets == chunks + 4
    by_path = {f.path: f for f in result.files}
    assert by_path["random"].digest == Digest.of_bytes(contents["random"])
    assert by_path["several"].kind == "chunked" and by_path["several"].pieces == 6


async def test_cli_pull_prints_a_summary_and_json(shared_registry: RegistryServer, tmp_path: Path) -> None:
    contents = write_files(tmp_path / "src", {"model.bin": 4 * CHUNK + 5, "README": 10})
    ref = f"{shared_registry.host}/pull/cli:v1"
    await push_dir(ref, tmp_path / "src")
    cache = tmp_path / "cache"
    human = run_cli("pull", ref, "-o", str(tmp_path / "a"), "--cache-dir", str(cache))
    assert human.returncode == 0, human.stderr
    assert tree(tmp_path / "a") == contents
    assert human.stdout == ""
    assert "pulled 2 file(s)" in human.stderr and "from the cache" in human.stderr

    machine = run_cli("pull", ref, "-o", str(tmp_path / "b"), "--cache-dir", str(cache), "--json", "-j", "2")
    assert machine.returncode == 0, machine.stderr
    summary = json.loads(machine.stdout)
    assert summary["file_count"] == 2 and summary["bytes"] == 4 * CHUNK + 15
    assert summary["bytes_downloaded"] == 0 and summary["bytes_from_cache"] == summary["bytes"]
    assert summary["digest"].startswith("sha256:") and summary["mib_per_second"] is not None
    assert {f["path"] for f in summary["files"]} == {"model.bin", "README"}
    assert tree(tmp_path / "b") == contents


async def test_artifact_pushed_by_oras(shared_registry: RegistryServer, tmp_path: Path) -> None:
    import oras.client

    contents = write_files(tmp_path / "src", {"weights.bin": 3 * CHUNK + 7, "config.json": 300})
    ref = f"{shared_registry.host}/pull/oras:v1"

    def oras_push() -> None:
        cwd = os.getcwd()
        os.chdir(tmp_path / "src")  # oras-py titles each layer with the path as given
        try:
            oras.client.OrasClient(insecure=True).push(target=ref, files=["weights.bin", "config.json"])
        finally:
            os.chdir(cwd)

    await trio.to_thread.run_sync(oras_push)
    result, _ = await do_pull(ref, tmp_path / "out", tmp_path / "cache")
    assert tree(tmp_path / "out") == contents
    assert {f.kind for f in result.files} == {"plain"}


async def test_large_plain_layer_is_fetched_in_verified_ranges(registry: RegistryServer, tmp_path: Path) -> None:
    contents = write_files(tmp_path / "src", {"big.tar": 5 * CHUNK + 3})
    ref = f"{registry.host}/pull/plain:v1"
    pushed = await push_dir(ref, tmp_path / "src", chunk_size=16 * CHUNK)  # one plain layer
    assert not pushed.files[0].chunked
    result, client = await do_pull(ref, tmp_path / "out", tmp_path / "cache", plain_piece_size=CHUNK)
    assert tree(tmp_path / "out") == contents
    assert result.files[0].pieces == 6 and client.stats.blob_gets == 6

    # Ranges cannot be verified one by one: the whole-layer digest catches a corrupt byte.
    digest = pushed.files[0].file_digest
    registry.corrupt_blob(digest, offset=2 * CHUNK + 1)
    with pytest.raises(IntegrityError, match=r"'big.tar'.*hashes to sha256:.*not " + str(digest)):
        await do_pull(ref, tmp_path / "out2", tmp_path / "cache", plain_piece_size=CHUNK)
    assert tree(tmp_path / "out2") == {} and temp_files(tmp_path / "out2") == []


async def test_include_selects_files(shared_registry: RegistryServer, tmp_path: Path) -> None:
    contents = write_files(tmp_path / "src", {"a.bin": 2 * CHUNK + 1, "sub/b.txt": 5, "sub/c.bin": 7})
    ref = f"{shared_registry.host}/pull/include:v1"
    await push_dir(ref, tmp_path / "src")
    result, client = await do_pull(ref, tmp_path / "out", tmp_path / "cache", include=("*.bin",))
    assert tree(tmp_path / "out") == {k: v for k, v in contents.items() if k.endswith(".bin")}
    assert sorted(f.path for f in result.files) == ["a.bin", "sub/c.bin"]
    assert client.stats.blob_gets == 5  # a.bin: index + 3 chunks; c.bin: one blob
    result, _ = await do_pull(ref, tmp_path / "out2", tmp_path / "cache", include=("sub/b.txt", "a.*"))
    assert sorted(f.path for f in result.files) == ["a.bin", "sub/b.txt"]
    with pytest.raises(UsageError, match="no file of the artifact matches --include nope"):
        await do_pull(ref, tmp_path / "out3", tmp_path / "cache", include=("nope",))


# -- the cache: second pull, resume, corruption at rest, eviction ----------------------------


async def test_second_pull_downloads_nothing(registry: RegistryServer, tmp_path: Path) -> None:
    contents = write_files(tmp_path / "src", {"model.bin": 6 * CHUNK + 1, "tokenizer.json": 1000})
    ref = f"{registry.host}/pull/again:v1"
    await push_dir(ref, tmp_path / "src")
    first, _ = await do_pull(ref, tmp_path / "one", tmp_path / "cache")
    gets_after_first = blob_gets(registry, "pull/again")
    assert first.bytes_from_cache == 0 and gets_after_first == 9  # index, 7 chunks, 1 plain

    second, client = await do_pull(ref, tmp_path / "two", tmp_path / "cache")
    assert tree(tmp_path / "two") == contents
    assert client.stats.blob_gets == 0 and second.bytes_downloaded == 0
    assert second.bytes_from_cache == second.bytes == first.bytes
    assert blob_gets(registry, "pull/again") == gets_after_first  # the registry agrees
    # Pulling over existing files replaces them.
    (tmp_path / "two" / "model.bin").write_bytes(b"stale")
    await do_pull(ref, tmp_path / "two", tmp_path / "cache")
    assert tree(tmp_path / "two") == contents


async def test_killed_pull_resumes_from_the_cache(registry: RegistryServer, tmp_path: Path) -> None:
    count = 96
    contents = write_files(tmp_path / "src", {"model.bin": count * CHUNK})
    ref = f"{registry.host}/pull/resume:v1"
    await push_dir(ref, tmp_path / "src")
    cache, out = tmp_path / "cache", tmp_path / "out"
    proc = subprocess.Popen(
        [sys.executable, "-m", "ocifs", "-q", "pull", ref, "-o", str(out), "--cache-dir", str(cache), "-j", "2"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 20
        while len(cache_entries(cache)) < count // 4:
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline, "the pull made no progress"
            await trio.sleep(0.002)
        # Freeze the registry so the pull stops mid-way, then kill it like a power cut would.
        registry.pause()
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        registry.resume()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stderr:
            proc.stderr.close()
    cached = cache_entries(cache)
    assert count // 4 <= len(cached) < count  # the index and some chunks
    assert not (out / "model.bin").exists(), "a partial file under its final name"
    assert len(temp_files(out)) == 1  # the killed pull's preallocated temp file

    # The requests the killed pull had in flight are served (to a closed socket) once the
    # registry resumes; blob_gets() waits for them to reach the log.
    gets_before = blob_gets(registry, "pull/resume")
    result, client = await do_pull(ref, out, cache)
    assert tree(out) == contents
    missing = count + 1 - len(cached)  # chunks + index not yet cached
    assert client.stats.blob_gets == missing == blob_gets(registry, "pull/resume") - gets_before
    assert result.bytes_from_cache == (count - missing) * CHUNK
    assert temp_files(out) == []  # the dead pull's temp file was cleaned up


async def test_corrupt_cache_entry_found_by_verify_and_refetched(registry: RegistryServer, tmp_path: Path) -> None:
    contents = write_files(tmp_path / "src", {"model.bin": 4 * CHUNK + 9})
    ref = f"{registry.host}/pull/rot:v1"
    pushed = await push_dir(ref, tmp_path / "src")
    cache = tmp_path / "cache"
    await do_pull(ref, tmp_path / "one", cache)
    victim = pushed.files[0].chunk_digests[2]
    assert victim is not None
    path = cache_entries(cache)[victim.hex]
    data = bytearray(path.read_bytes())
    data[100] ^= 0xFF
    path.write_bytes(bytes(data))

    verify = run_cli("cache", "verify", "--cache-dir", str(cache), "--json")
    assert verify.returncode == 1, verify.stderr
    report = json.loads(verify.stdout)
    assert report["bad"] == [str(victim)] and report["removed"] == 1
    assert victim.hex not in cache_entries(cache)

    result, client = await do_pull(ref, tmp_path / "two", cache)
    assert tree(tmp_path / "two") == contents
    assert client.stats.blob_gets == 1 and result.bytes_downloaded == CHUNK
    assert run_cli("cache", "verify", "--cache-dir", str(cache)).returncode == 0


@pytest.mark.parametrize("file_digest", [True, False], ids=["file-digest", "no-file-digest"])
async def test_pull_repairs_a_corrupt_cache_entry_by_itself(
    registry: RegistryServer, tmp_path: Path, expect_log: ExpectLog, file_digest: bool
) -> None:
    contents = write_files(tmp_path / "src", {"model.bin": 4 * CHUNK + 9})
    ref = f"{registry.host}/pull/rot:{file_digest}"
    pushed = await push_dir(ref, tmp_path / "src", file_digest=file_digest)
    cache = tmp_path / "cache"
    await do_pull(ref, tmp_path / "one", cache)
    victim = pushed.files[0].chunk_digests[1]
    assert victim is not None
    path = cache_entries(cache)[victim.hex]
    data = bytearray(path.read_bytes())
    data[0] ^= 0xFF
    path.write_bytes(bytes(data))

    # With a whole-file digest, cached chunks are trusted and the file hash finds the bad one;
    # without it, each chunk read from the cache is hashed.
    pattern = r"chunk 1 of 5 .* corrupt in the local cache" if file_digest else rf"cache entry {victim} is corrupt"
    with expect_log(pattern, count=1):
        _, client = await do_pull(ref, tmp_path / "two", cache)
    assert tree(tmp_path / "two") == contents
    assert client.stats.blob_gets == 1
    assert cache_entries(cache)[victim.hex].read_bytes() == contents["model.bin"][CHUNK : 2 * CHUNK]


async def test_eviction_keeps_the_cache_under_its_limit(registry: RegistryServer, tmp_path: Path) -> None:
    contents = write_files(tmp_path / "src", {"model.bin": 48 * CHUNK})
    ref = f"{registry.host}/pull/evict:v1"
    await push_dir(ref, tmp_path / "src")
    limit = 8 * CHUNK
    cache = ChunkCache(tmp_path / "cache", max_size=limit, memory_bytes=0)
    peak = 0
    done = trio.Event()

    def cached_bytes() -> int:
        total = 0
        for path in cache_entries(cache.root).values():
            with contextlib.suppress(FileNotFoundError):  # evicted between listing and stat
                total += path.stat().st_size
        return total

    async def watch() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, await trio.to_thread.run_sync(cached_bytes))
            await trio.sleep(0.001)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch)
        result, _ = await do_pull(ref, tmp_path / "out", cache, jobs=4)
        done.set()
    assert tree(tmp_path / "out") == contents
    assert cache.stats().evictions > 0
    assert cache.stats().bytes <= limit
    # A put that goes over evicts at once (one thread per process at a time: puts that finish
    # during that pass wait for the next one), so the overshoot is a few chunks, not the file.
    assert peak <= limit + 8 * CHUNK, f"peak {peak // CHUNK} chunks for a limit of {limit // CHUNK}"
    assert result.bytes_downloaded >= 48 * CHUNK


# -- failures ---------------------------------------------------------------------------------


async def test_chunk_corrupt_in_the_registry_fails_clearly(
    registry: RegistryServer, tmp_path: Path, expect_log: ExpectLog
) -> None:
    contents = write_files(tmp_path / "src", {"good.bin": 2 * CHUNK + 1, "model.bin": 5 * CHUNK})
    ref = f"{registry.host}/pull/corrupt:v1"
    pushed = await push_dir(ref, tmp_path / "src")
    model = next(f for f in pushed.files if f.source.path == "model.bin")
    bad = model.chunk_digests[3]
    assert bad is not None
    registry.corrupt_blob(bad, offset=77)
    cache = tmp_path / "cache"
    with pytest.raises(IntegrityError) as failure:  # and no WARNING before it (gap P1)
        await do_pull(ref, tmp_path / "out", cache, jobs=2)
    message = str(failure.value)
    assert "\n" not in message
    assert f"file 'model.bin': chunk 3 of 5 (offset {3 * CHUNK}, {CHUNK} bytes, {bad})" in message
    assert "corrupt in the registry" in message
    # Nothing bad cached, no partial file under its name, no temp file left behind.
    assert bad.hex not in cache_entries(cache)
    assert ChunkCache(cache, memory_bytes=0).verify().bad == ()
    assert not (tmp_path / "out" / "model.bin").exists()
    assert temp_files(tmp_path / "out") == []
    # A file completed before the failure is kept (and correct).
    assert tree(tmp_path / "out") in ({}, {"good.bin": contents["good.bin"]})


async def test_cli_error_is_one_line(registry: RegistryServer, tmp_path: Path) -> None:
    write_files(tmp_path / "src", {"model.bin": 2 * CHUNK + 1})
    ref = f"{registry.host}/pull/gone:v1"
    pushed = await push_dir(ref, tmp_path / "src")
    missing = pushed.files[0].chunk_digests[1]
    registry.blob_path(missing).unlink()  # a registry that lost a blob: 404, not retried
    proc = run_cli("pull", ref, "-o", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache"))
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ocifs: error: file 'model.bin': chunk 1 of 3"), proc.stderr
    assert str(missing) in lines[0]


# -- hostile artifacts and target directories -------------------------------------------------


async def put_raw_artifact(server: RegistryServer, repository: str, tag: str, layers: list[dict[str, Any]]) -> str:
    """Store blobs and a hand-written manifest (no validation on our side); returns the ref."""
    async with RegistryClient(server.host) as client:
        await client.upload_blob(repository, EMPTY_JSON_DIGEST, b"{}")
        descriptors = []
        for layer in layers:
            data = layer["data"]
            digest = Digest.of_bytes(data)
            if await client.blob_size(repository, digest) is None:
                await client.upload_blob(repository, digest, data)
            descriptors.append(
                {
                    "mediaType": layer.get("mediaType", "application/octet-stream"),
                    "digest": str(digest),
                    "size": len(data),
                    "annotations": layer["annotations"],
                }
            )
        manifest = {
            "schemaVersion": 2,
            "mediaType": MEDIA_TYPE_MANIFEST,
            "artifactType": "application/vnd.test",
            "config": EMPTY_DESCRIPTOR.to_json(),
            "layers": descriptors,
        }
        await client.put_manifest(repository, tag, json.dumps(manifest).encode(), MEDIA_TYPE_MANIFEST)
    return f"{server.host}/{repository}:{tag}"


def titled(title: str, data: bytes = b"pwned\n") -> dict[str, Any]:
    return {"data": data, "annotations": {ANNOTATION_TITLE: title}}


HOSTILE = {
    "dotdot": [titled("ok.txt"), titled("../escaped.txt")],
    "nested-dotdot": [titled("a/../../escaped.txt")],
    "absolute": [titled("/tmp/escaped.txt")],
    "nul": [titled("ok\x00/../../escaped.txt")],
    "duplicate": [titled("same.txt", b"one"), titled("same.txt", b"two")],
    "file-and-dir": [titled("a", b"file"), titled("a/b", b"nested")],
    "backslash": [titled("..\\escaped.txt")],
    "index-path": [
        {
            "data": b"{}",
            "mediaType": MEDIA_TYPE_CHUNK_INDEX,
            "annotations": {ANNOTATION_PATH: "../escaped.bin", ANNOTATION_SIZE: "3"},
        },
        {"data": b"abc", "mediaType": MEDIA_TYPE_CHUNK, "annotations": {}},
    ],
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
async def test_hostile_titles_are_refused(shared_registry: RegistryServer, tmp_path: Path, case: str) -> None:
    ref = await put_raw_artifact(shared_registry, "pull/hostile", case, HOSTILE[case])
    out = tmp_path / "box" / "out"
    out.mkdir(parents=True)
    with pytest.raises(FormatError) as failure:
        await do_pull(ref, out, tmp_path / "cache")
    assert "\n" not in str(failure.value)
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if "cache" not in p.parts) == [
        "box",
        "box/out",
    ]


async def test_symlink_planted_in_the_target_is_not_followed(shared_registry: RegistryServer, tmp_path: Path) -> None:
    ref = await put_raw_artifact(
        shared_registry, "pull/planted", "v1", [titled("sub/file.txt"), titled("top.txt", b"top")]
    )
    outside = tmp_path / "outside"
    outside.mkdir()
    victim = outside / "victim.txt"
    victim.write_bytes(b"precious")
    out = tmp_path / "out"
    out.mkdir()

    # A planted directory link: the pull refuses instead of writing through it.
    (out / "sub").symlink_to(outside, target_is_directory=True)
    with pytest.raises(OcifsError, match=r"refusing to follow the symbolic link .*/out/sub"):
        await do_pull(ref, out, tmp_path / "cache", include=("sub/*",))
    assert sorted(p.name for p in outside.iterdir()) == ["victim.txt"]

    # A planted file link at a file's own name: never replaced, never written through.
    (out / "sub").unlink()
    (out / "top.txt").symlink_to(victim)
    with pytest.raises(OcifsError, match=r"refusing to replace .*/out/top.txt: it is a symbolic link"):
        await do_pull(ref, out, tmp_path / "cache", include=("top.txt",))
    assert victim.read_bytes() == b"precious" and (out / "top.txt").is_symlink()
    assert temp_files(out) == [] and temp_files(outside) == []

    # Once the links are gone the same artifact pulls fine.
    (out / "top.txt").unlink()
    await do_pull(ref, out, tmp_path / "cache")
    assert tree(out) == {"sub/file.txt": b"pwned\n", "top.txt": b"top"}
    assert victim.read_bytes() == b"precious"


async def test_output_directory_may_itself_be_a_symlink(shared_registry: RegistryServer, tmp_path: Path) -> None:
    ref = await put_raw_artifact(shared_registry, "pull/linked", "v1", [titled("x/y.txt", b"y")])
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real", target_is_directory=True)
    result, _ = await do_pull(ref, tmp_path / "link", tmp_path / "cache")
    assert result.output == tmp_path / "real"
    assert tree(tmp_path / "real") == {"x/y.txt": b"y"}


def test_target_dir_refuses_escapes_even_when_called_directly(tmp_path: Path) -> None:
    target = TargetDir(tmp_path / "out")
    try:
        for path in ("../x", "/etc/x", "a/../../x", "a\x00b"):
            with pytest.raises(FormatError):
                target.open_parent(path)
        (tmp_path / "out" / "a").write_bytes(b"a file")
        with pytest.raises(OcifsError, match=r"cannot use .*/out/a: it exists and is not a directory"):
            target.open_parent("a/b")
        fd, name = target.open_parent("new/dir/file")
        os.close(fd)
        assert name == "file" and (tmp_path / "out" / "new" / "dir").is_dir()
    finally:
        target.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


async def test_an_oras_directory_layer_is_pulled_as_its_archive(
    shared_registry: RegistryServer, tmp_path: Path
) -> None:
    """Spec R20: an ORAS directory layer (``io.deis.oras.content.unpack``) is written as
    ``<title>.tar.gz``, byte for byte, and the summary names its kind."""
    archive = b"\x1f\x8b" + bytes(range(256)) * 8  # content is opaque to ocifs: never unpacked
    layer = {
        "data": archive,
        "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
        "annotations": {ANNOTATION_TITLE: "tokenizer", "io.deis.oras.content.unpack": "true"},
    }
    ref = await put_raw_artifact(shared_registry, "pull/oras-dir", "v1", [layer, titled("README.md", b"hi\n")])
    result, _ = await do_pull(ref, tmp_path / "out", tmp_path / "cache")
    assert tree(tmp_path / "out") == {"README.md": b"hi\n", "tokenizer.tar.gz": archive}
    kinds = {f["path"]: f["kind"] for f in result.summary()["files"]}
    assert kinds == {"README.md": "plain", "tokenizer.tar.gz": "oras-directory"}
