"""``ocifs push`` against the real registry: format, interop, dedup, resume and hostile input."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pytest
import trio
from support.registry import RegistryServer

from ocifs.commands import push, push_plan
from ocifs.digest import Digest
from ocifs.errors import NotFound, OcifsError, RegistryError, UsageError
from ocifs.format.media import ANNOTATION_TITLE
from ocifs.format.model import ChunkedFile
from ocifs.format.parse import parse_chunk_index, parse_manifest
from ocifs.reference import parse_reference
from ocifs.registry.client import RegistryClient
from ocifs.registry.resolve import resolve

CHUNK = 64 * 1024
SIZES = {
    "zero": 0,
    "one": 1,
    "chunk-1": CHUNK - 1,
    "chunk": CHUNK,
    "chunk+1": CHUNK + 1,
    "several": 5 * CHUNK + 123,
    "random": random.Random(7).randrange(2 * CHUNK, 12 * CHUNK),
}


def write_files(directory: Path, sizes: dict[str, int], seed: int = 1) -> dict[str, bytes]:
    rng = random.Random(seed)
    contents = {}
    directory.mkdir(parents=True, exist_ok=True)
    for name, size in sizes.items():
        data = rng.randbytes(size)
        (directory / name).write_bytes(data)
        contents[name] = data
    return contents


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ocifs", *args], capture_output=True, text=True, timeout=timeout, check=False
    )


async def do_push(
    server: RegistryServer,
    ref_text: str,
    paths: list[Path],
    transport: httpx.AsyncBaseTransport | None = None,
    **kw: object,
) -> push.PushResult:
    ref = parse_reference(ref_text)
    sources = push.collect_sources([str(p) for p in paths])
    options = push.PushOptions(**{"chunk_size": CHUNK, "jobs": 4, **kw})  # type: ignore[arg-type]
    async with RegistryClient(ref.registry, transport=transport) as client:
        return await push.push(client, ref, sources, options)


async def read_back(server: RegistryServer, ref_text: str) -> dict[str, bytes]:
    """Every file of the artifact, rebuilt chunk by chunk from the registry."""
    ref = parse_reference(ref_text)
    out = {}
    async with RegistryClient(ref.registry) as client:
        resolved = await resolve(client, ref)
        for f in resolved.artifact.files:
            if isinstance(f, ChunkedFile):
                layout = parse_chunk_index(await client.get_blob(ref.repository, f.index.digest, f.index.size), f)
                parts = []
                for chunk in layout.chunks:
                    data = await client.get_blob(ref.repository, chunk.digest, chunk.size)
                    assert chunk.digest.matches(data)
                    parts.append(data)
                out[f.path] = b"".join(parts)
                if layout.file_digest:
                    assert layout.file_digest.matches(out[f.path])
            else:
                data = await client.get_blob(ref.repository, f.digest, f.size) if f.size else b""
                assert f.digest.matches(data)
                out[f.path] = data
    return out


async def test_size_matrix_round_trip(shared_registry: RegistryServer, tmp_path: Path, skopeo: str) -> None:
    contents = write_files(tmp_path / "m", SIZES)
    ref = f"{shared_registry.host}/push/matrix:v1"
    result = await do_push(shared_registry, ref, [tmp_path / "m"])
    kinds = {f.source.path: f.chunked for f in result.files}
    assert kinds == {
        "zero": False,
        "one": False,
        "chunk-1": False,
        "chunk": False,
        "chunk+1": True,
        "several": True,
        "random": True,
    }
    # The manifest as stored validates against the spec and lists every chunk as a layer.
    raw = subprocess.run(
        [skopeo, "inspect", "--raw", "--tls-verify=false", f"docker://{ref}"], capture_output=True, check=True
    ).stdout
    artifact = parse_manifest(raw)
    assert Digest.of_bytes(raw) == result.manifest_digest
    layers = json.loads(raw)["layers"]
    chunked = {f.path: f for f in artifact.files if isinstance(f, ChunkedFile)}
    assert len(chunked["several"].chunks) == 6
    assert len(layers) == sum(1 + len(f.chunks) for f in chunked.values()) + 4
    titles = [layer.get("annotations", {}).get(ANNOTATION_TITLE) for layer in layers]
    assert "several.part-00005" in titles and "zero" in titles
    assert await read_back(shared_registry, ref) == contents
    # Whole-file digests are recorded for chunked files.
    assert chunked["random"].file_digest == Digest.of_bytes(contents["random"])


async def test_oras_pull_gets_the_parts_and_cat_rebuilds(shared_registry: RegistryServer, tmp_path: Path) -> None:
    import oras.client

    contents = write_files(tmp_path / "src", {"model.bin": 4 * CHUNK + 99, "README": 50})
    ref = f"{shared_registry.host}/push/oras:v1"
    await do_push(shared_registry, ref, [tmp_path / "src"])
    out = tmp_path / "oras-out"
    await trio.to_thread.run_sync(lambda: oras.client.OrasClient(insecure=True).pull(target=ref, outdir=str(out)))
    parts = sorted(out.glob("model.bin.part-[0-9][0-9][0-9][0-9][0-9]"))
    assert [p.name for p in parts] == [f"model.bin.part-0000{i}" for i in range(5)]
    rebuilt = subprocess.run(
        ["sh", "-c", f"cat {out}/model.bin.part-[0-9][0-9][0-9][0-9][0-9]"], capture_output=True, check=True
    ).stdout
    assert rebuilt == contents["model.bin"]
    assert (out / "README").read_bytes() == contents["README"]


async def test_skopeo_copy_keeps_the_artifact_readable(
    shared_registry: RegistryServer, tmp_path: Path, skopeo: str
) -> None:
    contents = write_files(tmp_path / "src", {"data": 3 * CHUNK + 1})
    src = f"{shared_registry.host}/push/copy-src:v1"
    dst = f"{shared_registry.host}/push/copy-dst:v1"
    result = await do_push(shared_registry, src, [tmp_path / "src" / "data"])
    subprocess.run(
        [
            skopeo,
            "copy",
            "--src-tls-verify=false",
            "--dest-tls-verify=false",
            "--preserve-digests",
            f"docker://{src}",
            f"docker://{dst}",
        ],
        capture_output=True,
        check=True,
        timeout=60,
    )
    assert await read_back(shared_registry, dst) == contents
    async with RegistryClient(shared_registry.host) as client:
        assert (await client.get_manifest("push/copy-dst", "v1")).digest == result.manifest_digest


async def test_second_push_uploads_nothing_and_a_changed_region_only_its_chunks(
    shared_registry: RegistryServer, tmp_path: Path
) -> None:
    path = tmp_path / "big"
    data = bytearray(random.Random(3).randbytes(10 * CHUNK))
    path.write_bytes(data)
    ref = f"{shared_registry.host}/push/dedup:v1"
    first = await do_push(shared_registry, ref, [path])
    assert first.blobs_uploaded == 10 + 2  # chunks + index + config
    second = await do_push(shared_registry, ref, [path])
    assert second.blobs_uploaded == 0 and second.blobs_skipped == 12
    assert second.manifest_digest == first.manifest_digest
    # Change 100 bytes inside chunk 6 only: that chunk and the new index are the only uploads.
    data[6 * CHUNK + 10 : 6 * CHUNK + 110] = b"x" * 100
    path.write_bytes(data)
    third = await do_push(shared_registry, f"{shared_registry.host}/push/dedup:v2", [path])
    assert third.blobs_uploaded == 2
    assert third.bytes_uploaded < CHUNK + 4096
    assert (await read_back(shared_registry, f"{shared_registry.host}/push/dedup:v2"))["big"] == bytes(data)


async def test_cross_repository_mount_with_from(shared_registry: RegistryServer, tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(random.Random(9).randbytes(4 * CHUNK))
    await do_push(shared_registry, f"{shared_registry.host}/push/origin:v1", [path])
    result = await do_push(shared_registry, f"{shared_registry.host}/push/mounted:v1", [path], mount_from="push/origin")
    assert result.blobs_mounted >= 4 and result.bytes_uploaded < 4096


def test_killed_push_resumes_and_uploads_only_what_was_missing(registry: RegistryServer, tmp_path: Path) -> None:
    path = tmp_path / "big"
    path.write_bytes(os.urandom(48 * 1024 * 1024))
    ref = f"{registry.host}/push/killed:v1"
    proc = subprocess.Popen(
        [sys.executable, "-m", "ocifs", "push", ref, str(path), "--chunk-size", "1M", "--jobs", "2", "-q"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    blobs = registry.storage_dir / "docker/registry/v2/blobs/sha256"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        stored = len(list(blobs.glob("*/*/data"))) if blobs.exists() else 0
        if stored >= 10:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    stored = len(list(blobs.glob("*/*/data")))
    assert 10 <= stored < 48, "the push should have been killed halfway"
    # No manifest was written by the killed push.
    assert not (registry.storage_dir / "docker/registry/v2/repositories/push/killed/_manifests/tags/v1").exists()
    rerun = run_cli("push", ref, str(path), "--chunk-size", "1M", "--json")
    assert rerun.returncode == 0, rerun.stderr
    summary = json.loads(rerun.stdout)
    assert summary["blobs_skipped"] >= stored - 1
    assert summary["blobs_uploaded"] + summary["blobs_skipped"] == 48 + 2
    assert summary["blobs_uploaded"] <= 48 + 2 - (stored - 1)


async def test_file_changing_during_push_writes_no_manifest(
    registry: RegistryServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "growing"
    path.write_bytes(os.urandom(6 * CHUNK))
    real = push._pread_exact
    calls = []

    def pread_then_modify(fd: int, source: push.SourceFile, offset: int, length: int) -> bytes:
        calls.append(offset)
        if len(calls) == 2:
            with path.open("ab") as f:
                f.write(b"more")
        return real(fd, source, offset, length)

    monkeypatch.setattr(push, "_pread_exact", pread_then_modify)
    with pytest.raises(OcifsError, match="changed while it was being pushed"):
        await do_push(registry, f"{registry.host}/push/changing:v1", [path])
    async with RegistryClient(registry.host) as client:
        with pytest.raises(NotFound):
            await client.get_manifest("push/changing", "v1")


async def test_registry_refusing_the_manifest_is_one_clear_error(
    shared_registry: RegistryServer, tmp_path: Path
) -> None:
    class RefuseManifests(httpx.AsyncBaseTransport):
        """Forwards to the real registry but answers 413 to manifest PUTs, as a size-limited registry does."""

        def __init__(self) -> None:
            self.inner = httpx.AsyncHTTPTransport()

        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            if request.method == "PUT" and "/manifests/" in request.url.path:
                return httpx.Response(413, json={"errors": [{"code": "SIZE_INVALID", "message": "manifest too big"}]})
            return await self.inner.handle_async_request(request)

    path = tmp_path / "f"
    path.write_bytes(os.urandom(3 * CHUNK))
    with pytest.raises(RegistryError) as info:
        await do_push(shared_registry, f"{shared_registry.host}/push/refused:v1", [path], transport=RefuseManifests())
    assert "too large" in str(info.value) and "push/refused" in str(info.value)


def test_registry_down_is_one_line_and_nonzero(registry: RegistryServer, tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"x" * 1000)
    registry.stop()
    result = run_cli("push", f"{registry.host}/push/down:v1", str(path), "--retries", "2")
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert "connection refused" in result.stderr and registry.host in result.stderr


def test_bad_inputs_are_refused_clearly(tmp_path: Path) -> None:
    (tmp_path / "real").write_bytes(b"data")
    os.symlink(tmp_path / "real", tmp_path / "link")
    os.mkfifo(tmp_path / "fifo")
    cases: list[tuple[list[str], str]] = [
        ([str(tmp_path / "missing")], "no such file"),
        ([str(tmp_path / "link")], "symbolic link"),
        ([str(tmp_path / "fifo")], "not a regular file"),
        ([str(tmp_path / "real"), str(tmp_path / "real")], "two inputs"),
    ]
    for paths, expected in cases:
        with pytest.raises(UsageError, match=expected):
            push.collect_sources(paths)
    d = tmp_path / "dir"
    d.mkdir()
    os.symlink(tmp_path / "real", d / "inner-link")
    with pytest.raises(UsageError, match="symbolic link"):
        push.collect_sources([str(d)])
    result = run_cli("push", "127.0.0.1:1/x:v1", str(tmp_path / "missing"))
    assert result.returncode == 2 and result.stderr.startswith("ocifs: error:") and result.stderr.count("\n") == 1


def test_unreadable_file_is_refused() -> None:
    # pytest's tmp_path lives under a 0700 directory; an unprivileged user needs to reach the file.
    base = Path(tempfile.mkdtemp(prefix="ocifs-unreadable-"))
    try:
        base.chmod(0o755)
        secret = base / "secret"
        secret.write_bytes(b"x")
        secret.chmod(0)
        # Root reads anything; drop to an unprivileged effective uid to see what a user sees.
        os.seteuid(65534)
        try:
            with pytest.raises(UsageError, match=r"cannot read .*secret: Permission denied"):
                push.collect_sources([str(secret)])
        finally:
            os.seteuid(0)
    finally:
        shutil.rmtree(base)


def test_layer_budget_grows_the_chunk_size(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"")
    os.truncate(tmp_path / "f", 100 * CHUNK)
    sources = push.collect_sources([str(tmp_path / "f")])
    assert push_plan.choose_chunk_size(sources, CHUNK, max_layers=1000) == CHUNK
    assert push_plan.choose_chunk_size(sources, CHUNK, max_layers=30) == 4 * CHUNK
    (tmp_path / "g").write_bytes(b"g")
    two = push.collect_sources([str(tmp_path / "f"), str(tmp_path / "g")])
    with pytest.raises(UsageError, match="max-layers"):
        push_plan.choose_chunk_size(two, CHUNK, max_layers=1)


def test_cli_push_json_summary(shared_registry: RegistryServer, tmp_path: Path) -> None:
    write_files(tmp_path / "d", {"a": 3 * CHUNK, "b": 10})
    result = run_cli(
        "push",
        f"{shared_registry.host}/push/cli:v1",
        str(tmp_path / "d"),
        "--chunk-size",
        "64K",
        "--json",
        "--annotation",
        "org.example=1",
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["digest"].startswith("sha256:") and {f["path"] for f in summary["files"]} == {"a", "b"}
    inspect = run_cli("inspect", f"{shared_registry.host}/push/cli:v1", "--json")
    desc = json.loads(inspect.stdout)
    assert desc["annotations"] == {"org.example": "1"} and desc["digest"] == summary["digest"]
    human = run_cli("inspect", f"{shared_registry.host}/push/cli:v1")
    assert "chunked" in human.stdout and "2 file(s)" in human.stdout
