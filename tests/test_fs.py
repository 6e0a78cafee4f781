"""The filesystem core and the FUSE adapter without a kernel, over an in-memory registry.

What a user would notice: ``ls -l`` fetches nothing; every read returns exactly the original
bytes (across chunk boundaries, clamped at EOF, plain and chunked files, random reads); only
the chunks a read touches are fetched, after the chunk index was validated; a corrupt chunk or
an index that contradicts the manifest is never served; every failure reaches the kernel as an
errno and never as an exception that would end the mount.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import random
import struct
import tempfile
from collections import Counter
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyfuse3
import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ocifs.cache import chunk_index as chunk_index_module
from ocifs.cache.chunk_index import load_chunk_index
from ocifs.cache.fetcher import Fetcher
from ocifs.cache.prefetch import Prefetcher, PrefetchMode
from ocifs.cache.store import ChunkCache
from ocifs.digest import Digest
from ocifs.errors import FormatError, IntegrityError, IsADirectory, NotFound, PermissionDenied, RegistryUnavailable
from ocifs.format.build import build_chunk_index, build_manifest, fixed_layout
from ocifs.format.model import Artifact, ChunkedEntry, ChunkedFile, ChunkIndex, ChunkRef, PlainFile
from ocifs.format.parse import parse_manifest
from ocifs.fs import plain as plain_module
from ocifs.fs.filesystem import ROOT_INODE, FileSystem
from ocifs.fs.fuse_ops import TIMEOUT, Operations

REPO = "models/test"
CHUNK = 1000
ExpectLog = Callable[..., AbstractContextManager[Any]]


@dataclass
class FakeRegistry:
    """Blobs by digest; counts whole GETs and Range GETs; can corrupt or refuse blobs."""

    blobs: dict[Digest, bytes] = field(default_factory=dict)
    gets: Counter[Digest] = field(default_factory=Counter)
    ranges: list[tuple[Digest, int, int]] = field(default_factory=list)
    corrupt: set[Digest] = field(default_factory=set)
    denied: bool = False
    down: bool = False

    def add(self, data: bytes) -> Digest:
        digest = Digest.of_bytes(data)
        self.blobs[digest] = data
        return digest

    def _blob(self, digest: Digest) -> bytes:
        if self.down:
            raise RegistryUnavailable("registry.test: connection refused")
        if self.denied:
            raise PermissionDenied("registry.test: denied", status=403)
        if digest not in self.blobs:
            raise NotFound(f"registry.test/{REPO}: blob {digest.short} not found", status=404)
        data = self.blobs[digest]
        return bytes([data[0] ^ 1]) + data[1:] if digest in self.corrupt else data

    async def get_blob(self, repository: str, digest: Digest, size: int | None = None) -> bytes:
        self.gets[digest] += 1
        await trio.sleep(0.001)
        return self._blob(digest)

    async def get_blob_range(self, repository: str, digest: Digest, start: int, end: int) -> bytes:
        self.ranges.append((digest, start, end))
        await trio.sleep(0.001)
        return self._blob(digest)[start:end]

    @property
    def downloads(self) -> int:
        return sum(self.gets.values()) + len(self.ranges)


def build(registry: FakeRegistry, files: dict[str, bytes], chunk_size: int = CHUNK) -> Artifact:
    """Push ``files`` into ``registry`` as ocifs does: chunked above ``chunk_size``, else plain."""
    entries: list[ChunkedEntry | PlainFile] = []
    for path, data in files.items():
        if len(data) > chunk_size:
            refs = []
            for offset, length in fixed_layout(len(data), chunk_size):
                refs.append(ChunkRef(registry.add(data[offset : offset + length]), length, offset))
            chunk_index = build_chunk_index(len(data), refs, file_digest=Digest.of_bytes(data))
            registry.add(chunk_index.to_bytes())
            entries.append(ChunkedEntry(path, chunk_index))
        else:
            entries.append(PlainFile(path, len(data), registry.add(data), "text/plain"))
    manifest = build_manifest(entries, annotations={"org.opencontainers.image.created": "2024-05-01T12:00:00Z"})
    return parse_manifest(manifest)


def payload(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


FILES = {
    "empty": b"",
    "one": b"x",
    "README.md": payload(CHUNK - 1, 1),
    "exact.bin": payload(CHUNK, 2),
    "models/plus-one.bin": payload(CHUNK + 1, 3),
    "models/llama/weights.bin": payload(3 * CHUNK + 500, 4),
}


@pytest.fixture
def registry() -> FakeRegistry:
    return FakeRegistry()


@pytest.fixture
def cache(tmp_path: Path) -> ChunkCache:
    return ChunkCache(tmp_path / "cache")


def make_fs(
    registry: FakeRegistry, cache: ChunkCache, files: dict[str, bytes] = FILES, **kwargs: Any
) -> tuple[FileSystem, dict[str, int]]:
    artifact = build(registry, files)
    fetcher = Fetcher(registry, cache, retries=kwargs.pop("retries", 1), retry_base_delay=0.01)
    filesystem = FileSystem(artifact, REPO, fetcher, kwargs.pop("prefetcher", None), reference="r/x:1", **kwargs)
    return filesystem, inodes_by_path(filesystem)


def inodes_by_path(filesystem: FileSystem, inode: int = ROOT_INODE, prefix: str = "") -> dict[str, int]:
    found: dict[str, int] = {}
    for name, attrs, _ in filesystem.readdir(inode):
        path = prefix + name
        found[path] = attrs.inode
        if attrs.is_dir:
            found.update(inodes_by_path(filesystem, attrs.inode, path + "/"))
    return found


# -------------------------------------------------------------------------------------- the tree


async def test_tree_and_attributes_come_from_the_manifest_alone(registry: FakeRegistry, cache: ChunkCache) -> None:
    filesystem, inodes = make_fs(registry, cache)
    assert set(inodes) == set(FILES) | {"models", "models/llama"}
    for path, data in FILES.items():
        attrs = filesystem.getattr(inodes[path])
        assert (attrs.size, attrs.mode, attrs.nlink) == (len(data), 0o100444, 1)
    root = filesystem.getattr(ROOT_INODE)
    assert root.is_dir and root.mode == 0o40555 and root.nlink == 3  # ".", "..", models/
    assert filesystem.getattr(inodes["models"]).nlink == 3
    assert filesystem.getattr(inodes["exact.bin"]).mtime_ns == 1714564800 * 10**9
    assert registry.downloads == 0  # ls -lR fetched nothing


async def test_inode_numbers_are_stable_across_mounts(registry: FakeRegistry, cache: ChunkCache) -> None:
    _, first = make_fs(registry, cache)
    _, second = make_fs(registry, cache, dict(reversed(list(FILES.items()))))  # other layer order
    assert first == second


async def test_lookup_answers_dot_dotdot_and_missing_names(registry: FakeRegistry, cache: ChunkCache) -> None:
    filesystem, inodes = make_fs(registry, cache)
    models = inodes["models"]
    assert filesystem.lookup(ROOT_INODE, "models").inode == models
    assert filesystem.lookup(models, "llama").inode == inodes["models/llama"]
    assert filesystem.lookup(models, "..").inode == ROOT_INODE
    assert filesystem.lookup(models, ".").inode == models
    with pytest.raises(NotFound):
        filesystem.lookup(models, "nope")
    with pytest.raises(NotFound):
        filesystem.lookup(inodes["one"], "x")  # a file is not a directory
    with pytest.raises(NotFound):
        filesystem.getattr(9999)
    await Operations(filesystem).forget([(models, 2), (inodes["models/llama"], 1)])
    assert filesystem.getattr(models).is_dir  # the tree is immutable: forgetting removes nothing
    assert filesystem.lookup(models, "llama").inode == inodes["models/llama"]


async def test_readdir_resumes_from_a_position(registry: FakeRegistry, cache: ChunkCache) -> None:
    filesystem, _ = make_fs(registry, cache)
    names = [name for name, _, _ in filesystem.readdir(ROOT_INODE)]
    assert names == sorted(names)
    _, _, after_second = list(filesystem.readdir(ROOT_INODE))[1]
    assert [n for n, _, _ in filesystem.readdir(ROOT_INODE, after_second)] == names[2:]


async def test_xattrs_and_statfs(registry: FakeRegistry, cache: ChunkCache) -> None:
    filesystem, inodes = make_fs(registry, cache)
    big = filesystem.xattrs(inodes["models/llama/weights.bin"])
    assert big["user.ocifs.digest"] == str(Digest.of_bytes(FILES["models/llama/weights.bin"])).encode()
    assert big["user.ocifs.chunks"] == b"4" and big["user.ocifs.kind"] == b"chunked"
    assert filesystem.xattrs(inodes["one"])["user.ocifs.digest"] == str(Digest.of_bytes(b"x")).encode()
    root = filesystem.xattrs(ROOT_INODE)
    assert root["user.ocifs.reference"] == b"r/x:1"
    stats = json.loads(root["user.ocifs.stats"])
    assert stats["fs"]["reads"] == 0 and stats["fetch"]["downloads"] == 0
    statfs = filesystem.statfs()
    assert statfs["blocks"] * statfs["bsize"] >= sum(len(d) for d in FILES.values())
    assert statfs["files"] == len(inodes) + 1


# -------------------------------------------------------------------------------------- reads


async def test_every_file_reads_back_whole(registry: FakeRegistry, cache: ChunkCache) -> None:
    filesystem, inodes = make_fs(registry, cache)
    for path, data in FILES.items():
        assert await filesystem.read(inodes[path], 0, len(data) + 10) == data, path
    assert Digest.of_bytes(b"") not in registry.gets  # the empty file fetched nothing


async def test_read_across_a_chunk_boundary_fetches_index_and_two_chunks(
    registry: FakeRegistry, cache: ChunkCache
) -> None:
    filesystem, inodes = make_fs(registry, cache)
    data = FILES["models/llama/weights.bin"]
    assert await filesystem.read(inodes["models/llama/weights.bin"], CHUNK - 5, 10) == data[CHUNK - 5 : CHUNK + 5]
    assert registry.downloads == 3  # the chunk index and chunks 0 and 1
    assert filesystem.stats()["fs"]["index_loads"] == 1
    # A read spanning three chunks (the last partial).
    assert await filesystem.read(inodes["models/llama/weights.bin"], 500, 3 * CHUNK) == data[500 : 3 * CHUNK + 500]


async def test_reads_clamp_at_end_of_file(registry: FakeRegistry, cache: ChunkCache) -> None:
    filesystem, inodes = make_fs(registry, cache)
    inode = inodes["models/plus-one.bin"]
    data = FILES["models/plus-one.bin"]
    assert await filesystem.read(inode, len(data) - 5, 100) == data[-5:]
    assert await filesystem.read(inode, len(data), 10) == b""
    assert await filesystem.read(inode, len(data) + 100, 10) == b""
    assert await filesystem.read(inode, 3, 0) == b""
    with pytest.raises(ValueError):
        await filesystem.read(inode, -1, 10)


async def test_concurrent_first_reads_load_the_index_once(registry: FakeRegistry, cache: ChunkCache) -> None:
    filesystem, inodes = make_fs(registry, cache)
    inode = inodes["models/llama/weights.bin"]
    data = FILES["models/llama/weights.bin"]
    results: dict[int, bytes] = {}

    async def read(offset: int) -> None:
        results[offset] = await filesystem.read(inode, offset, 300)

    async with trio.open_nursery() as nursery:
        for offset in range(0, len(data), 300):
            nursery.start_soon(read, offset)
    assert b"".join(results[o] for o in sorted(results)) == data
    assert filesystem.stats()["fs"]["index_loads"] == 1
    assert max(registry.gets.values()) == 1  # every blob (index and chunks) fetched once


async def test_opening_or_reading_a_directory_fails(registry: FakeRegistry, cache: ChunkCache) -> None:
    filesystem, inodes = make_fs(registry, cache)
    with pytest.raises(IsADirectory):
        filesystem.open(inodes["models"])
    with pytest.raises(IsADirectory):
        await filesystem.read(inodes["models"], 0, 1)
    with pytest.raises(NotFound):
        await filesystem.read(12345, 0, 1)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    reads=st.lists(
        st.tuples(st.sampled_from(sorted(FILES)), st.integers(0, 4 * CHUNK), st.integers(0, 2 * CHUNK)),
        min_size=1,
        max_size=30,
    )
)
def test_random_reads_equal_the_original(reads: list[tuple[str, int, int]]) -> None:
    async def check() -> None:
        with tempfile.TemporaryDirectory() as tmp:
            registry = FakeRegistry()
            filesystem, inodes = make_fs(registry, ChunkCache(Path(tmp) / "cache", memory_bytes=2 * CHUNK))
            for path, offset, size in reads:
                assert await filesystem.read(inodes[path], offset, size) == FILES[path][offset : offset + size]

    trio.run(check)


# -------------------------------------------------------------------------------------- integrity


async def test_a_corrupt_chunk_is_never_served(
    registry: FakeRegistry, cache: ChunkCache, autojump_clock: trio.testing.MockClock, expect_log: ExpectLog
) -> None:
    filesystem, inodes = make_fs(registry, cache, retries=2)
    data = FILES["models/llama/weights.bin"]
    second_chunk = Digest.of_bytes(data[CHUNK : 2 * CHUNK])
    registry.corrupt.add(second_chunk)
    inode = inodes["models/llama/weights.bin"]
    assert await filesystem.read(inode, 0, 100) == data[:100]  # other chunks are fine
    # Every attempt corrupt: the error alone, no WARNING (the adapter logs it with the EIO).
    with pytest.raises(IntegrityError):
        await filesystem.read(inode, CHUNK, 100)
    assert not cache.contains(second_chunk)
    registry.corrupt.clear()  # a later read (the mirror healed) works
    assert await filesystem.read(inode, CHUNK, 100) == data[CHUNK : CHUNK + 100]


async def test_an_index_that_contradicts_the_manifest_is_refused(
    registry: FakeRegistry, cache: ChunkCache, expect_log: ExpectLog
) -> None:
    # Point the index layer of one file at another file's (valid) index of the same size.
    a, b = payload(2500, 10), payload(2500, 11)
    artifact = build(registry, {"a.bin": a, "b.bin": b})
    file_a, file_b = artifact.files
    assert isinstance(file_a, ChunkedFile) and isinstance(file_b, ChunkedFile)
    forged = ChunkedFile("a.bin", 2500, None, file_b.index, file_a.chunks)
    artifact = Artifact(None, artifact.media_type, None, artifact.config, (forged,))
    filesystem = FileSystem(artifact, REPO, Fetcher(registry, cache))
    inode = inodes_by_path(filesystem)["a.bin"]
    with expect_log("invalid chunk index", level=logging.ERROR, count=1), pytest.raises(FormatError):
        await filesystem.read(inode, 0, 10)
    gets = registry.downloads
    with pytest.raises(FormatError):  # remembered: not fetched and parsed again
        await filesystem.read(inode, 0, 10)
    assert registry.downloads == gets


def same_chunks(loaded: ChunkIndex, file: ChunkedFile) -> bool:
    """The loaded index lists the manifest's chunk layers, in order, at running-sum offsets."""
    offsets = [sum(d.size for d in file.chunks[:n]) for n in range(len(file.chunks))]
    return [(c.digest, c.size, c.offset) for c in loaded.chunks] == [
        (d.digest, d.size, offset) for d, offset in zip(file.chunks, offsets, strict=True)
    ]


async def test_chunk_index_loader_names_the_file_when_the_fetch_fails_and_parses_large_ones(
    registry: FakeRegistry, cache: ChunkCache, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(chunk_index_module, "PARSE_IN_THREAD_ABOVE", 10_000)  # 256 KiB is 25,000 chunks
    artifact = build(registry, {"big.bin": payload(3 * CHUNK, 40), "many.bin": payload(3000 * 100, 41)})
    big, many = artifact.files
    assert isinstance(big, ChunkedFile) and isinstance(many, ChunkedFile)
    fetcher = Fetcher(registry, cache, retries=0)
    stored = registry.blobs.pop(big.index.digest)
    with pytest.raises(NotFound, match=r"chunk index of 'big.bin': .*not found"):
        await load_chunk_index(fetcher, REPO, big)
    registry.blobs[big.index.digest] = stored
    assert same_chunks(await load_chunk_index(fetcher, REPO, big), big)
    # Above the threshold (many.bin's 3000 chunks of 100 bytes): parsed in a worker thread.
    assert many.index.size > chunk_index_module.PARSE_IN_THREAD_ABOVE > big.index.size
    assert same_chunks(await load_chunk_index(fetcher, REPO, many), many)


# -------------------------------------------------------------------------------------- large plain


@pytest.fixture
def small_pieces(monkeypatch: pytest.MonkeyPatch) -> int:
    """Treat plain layers above 1000 bytes as large, read in 256-byte Range pieces."""
    monkeypatch.setattr(plain_module, "PLAIN_WHOLE_MAX", 1000)
    monkeypatch.setattr(plain_module, "PIECE_SIZE", 256)
    monkeypatch.setattr(plain_module, "PIECE_CACHE_BYTES", 8 * 256)
    return 256


def plain_only(registry: FakeRegistry, data: bytes) -> Artifact:
    return build(registry, {"layer.tar": data}, chunk_size=len(data) + 1)


async def test_large_plain_layer_is_read_by_ranges_and_verified_after_a_full_read(
    registry: FakeRegistry, cache: ChunkCache, small_pieces: int
) -> None:
    data = payload(5000, 20)
    filesystem = FileSystem(plain_only(registry, data), REPO, Fetcher(registry, cache))
    inode = inodes_by_path(filesystem)["layer.tar"]
    assert await filesystem.read(inode, 250, 10) == data[250:260]  # straddles pieces 0 and 1
    assert sorted((s, e) for _, s, e in registry.ranges) == [(0, 256), (256, 512)]
    assert sum(registry.gets.values()) == 0  # never the whole blob
    out = b""
    for offset in range(0, len(data), 300):
        out += await filesystem.read(inode, offset, 300)
    assert out == data
    stats = filesystem.stats()["fs"]
    assert stats["plain_verified"] == 1 and stats["plain_verify_failures"] == 0
    assert stats["piece_fetches"] == len(registry.ranges) == 20  # each piece fetched once


async def test_large_plain_layer_that_does_not_match_its_digest_fails_after_the_full_read(
    registry: FakeRegistry, cache: ChunkCache, small_pieces: int, expect_log: ExpectLog
) -> None:
    data = payload(3000, 21)
    artifact = plain_only(registry, data)
    digest = artifact.files[0].digest  # type: ignore[union-attr]
    registry.blobs[digest] = data[:1000] + b"!" + data[1001:]  # served bytes differ by one
    filesystem = FileSystem(artifact, REPO, Fetcher(registry, cache))
    inode = inodes_by_path(filesystem)["layer.tar"]
    with expect_log("does not match its digest", level=logging.ERROR, count=1):
        for offset in range(0, len(data), 512):
            await filesystem.read(inode, offset, 512)
    assert filesystem.stats()["fs"]["plain_verify_failures"] == 1
    with pytest.raises(IntegrityError):
        await filesystem.read(inode, 0, 10)


async def test_small_plain_layer_is_fetched_whole_and_verified(
    registry: FakeRegistry, cache: ChunkCache, autojump_clock: trio.testing.MockClock, expect_log: ExpectLog
) -> None:
    filesystem, inodes = make_fs(registry, cache)
    digest = Digest.of_bytes(FILES["README.md"])
    registry.corrupt.add(digest)
    with pytest.raises(IntegrityError, match="did not match the digest in 2 attempts"):
        await filesystem.read(inodes["README.md"], 0, 10)
    registry.corrupt.clear()
    assert await filesystem.read(inodes["README.md"], 10, 10) == FILES["README.md"][10:20]
    assert registry.ranges == []


# -------------------------------------------------------------------------------------- prefetch


async def test_open_handles_read_ahead_through_the_prefetcher(
    registry: FakeRegistry, cache: ChunkCache, autojump_clock: trio.testing.MockClock
) -> None:
    data = payload(40 * CHUNK, 30)
    async with trio.open_nursery() as nursery:
        prefetcher = Prefetcher(nursery, budget_bytes=8 * CHUNK, max_window=8 * CHUNK, initial_window=CHUNK)
        filesystem, inodes = make_fs(registry, cache, {"big.bin": data}, prefetcher=prefetcher)
        handle = filesystem.open(inodes["big.bin"])
        out = b""
        for offset in range(0, len(data), 250):
            out += await filesystem.read_handle(handle, offset, 250)
        filesystem.release(handle)
        nursery.cancel_scope.cancel()
    assert out == data
    stats = filesystem.stats()
    assert stats["prefetch"]["completed"] >= 30
    assert stats["fs"]["open_files"] == 0 and stats["fs"]["opens"] == 1
    assert max(registry.gets.values()) == 1  # prefetch and reads shared each download


async def test_whole_mode_fetches_the_file_when_opened(registry: FakeRegistry, cache: ChunkCache) -> None:
    # Real clock on purpose: the fetches hash and write in worker threads, and the autojump clock
    # would race 60 virtual seconds past them on a loaded machine.
    data = payload(12 * CHUNK + 7, 31)
    async with trio.open_nursery() as nursery:
        prefetcher = Prefetcher(nursery, mode=PrefetchMode.WHOLE)
        filesystem, inodes = make_fs(registry, cache, {"model.safetensors": data}, prefetcher=prefetcher)
        filesystem.release(filesystem.open(inodes["model.safetensors"]))
        with trio.fail_after(60):
            while prefetcher.stats().completed < 13:
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    assert len(registry.gets) == 14  # the index and all 13 chunks, without a single read
    assert all(cache.contains(Digest.of_bytes(data[o : o + CHUNK])) for o in range(0, len(data), CHUNK))


def safetensors_bytes(tensor_end: int, size: int, seed: int) -> bytes:
    """A safetensors file of ``size`` bytes whose first tensor ends at file offset ``tensor_end``."""
    start = 0
    while True:  # the header's length depends on the offsets it holds: iterate to the fixpoint
        entries = {
            "a": {"dtype": "U8", "shape": [tensor_end - start], "data_offsets": [0, tensor_end - start]},
            "b": {"dtype": "U8", "shape": [size - tensor_end], "data_offsets": [tensor_end - start, size - start]},
        }
        body = json.dumps(entries).encode()
        head = struct.pack("<Q", len(body)) + body
        if len(head) == start:
            return head + payload(size - start, seed)
        start = len(head)


@pytest.mark.parametrize("name", ["model.safetensors", "model.bin"])
async def test_safetensors_read_ahead_stops_at_the_end_of_the_tensor_being_read(
    registry: FakeRegistry, cache: ChunkCache, name: str
) -> None:
    """Loading one tensor reads ahead no further than its end; the same bytes under another
    name (no hints) are read ahead past it. Real clock: the fetches hash in worker threads."""
    tensor_end, size = 6 * CHUNK, 30 * CHUNK
    data = safetensors_bytes(tensor_end, size, 32)
    async with trio.open_nursery() as nursery:
        # A tolerance of one chunk: the default 8 MiB would span this whole small file.
        prefetcher = Prefetcher(
            nursery, budget_bytes=8 * CHUNK, max_window=8 * CHUNK, initial_window=CHUNK, tolerance=CHUNK
        )
        filesystem, inodes = make_fs(registry, cache, {name: data}, prefetcher=prefetcher)
        handle = filesystem.open(inodes[name])
        out = b""
        for offset in range(0, tensor_end, 250):
            out += await filesystem.read_handle(handle, offset, 250)
        with trio.fail_after(60):
            while prefetcher.stats().queued:  # every read-ahead scheduled has ended
                await trio.sleep(0.01)
        filesystem.release(handle)
        nursery.cancel_scope.cancel()
    assert out == data[:tensor_end]
    chunks_fetched = {
        n for n in range(size // CHUNK) if Digest.of_bytes(data[n * CHUNK : (n + 1) * CHUNK]) in registry.gets
    }
    assert set(range(tensor_end // CHUNK)) <= chunks_fetched
    if name.endswith(".safetensors"):
        assert max(chunks_fetched) == tensor_end // CHUNK - 1  # nothing after the tensor
    else:
        assert max(chunks_fetched) > tensor_end // CHUNK  # without hints, read-ahead goes on


async def test_reads_of_one_cached_chunk_are_memoryviews_of_it(registry: FakeRegistry, cache: ChunkCache) -> None:
    """A FUSE reply inside one chunk held in memory is a view of it, not a copy; a read across
    chunks is joined bytes."""
    filesystem, inodes = make_fs(registry, cache)
    inode = inodes["models/llama/weights.bin"]
    data = FILES["models/llama/weights.bin"]
    await filesystem.read(inode, 0, CHUNK)  # loads chunk 0 into memory
    inside = await filesystem.read(inode, 10, 100)
    assert isinstance(inside, memoryview) and inside == data[10:110]
    across = await filesystem.read(inode, CHUNK - 10, 20)
    assert bytes(across) == data[CHUNK - 10 : CHUNK + 10]


# -------------------------------------------------------------------------------------- the adapter


class Ctx:
    """Stands in for pyfuse3.RequestContext (the handlers do not look at it)."""

    uid = gid = pid = umask = 0


async def test_adapter_maps_errors_to_errno_and_never_raises_anything_else(
    registry: FakeRegistry, cache: ChunkCache, autojump_clock: trio.testing.MockClock, expect_log: ExpectLog
) -> None:
    filesystem, inodes = make_fs(registry, cache, retries=0)
    ops = Operations(filesystem)
    ctx: Any = Ctx()

    async def errno_of(call: Any) -> int:
        with pytest.raises(pyfuse3.FUSEError) as info:
            await call
        return int(info.value.errno)

    assert await errno_of(ops.getattr(4242, ctx)) == errno.ENOENT
    negative = await ops.lookup(ROOT_INODE, b"missing", ctx)  # cached negative entry
    assert negative.st_ino == 0 and negative.entry_timeout == TIMEOUT
    entry = await ops.lookup(ROOT_INODE, b"one", ctx)
    assert entry.st_ino == inodes["one"] and entry.st_size == 1 and entry.attr_timeout == TIMEOUT
    assert await errno_of(ops.open(inodes["one"], os.O_WRONLY, ctx)) == errno.EROFS
    assert await errno_of(ops.open(inodes["one"], os.O_RDONLY | os.O_TRUNC, ctx)) == errno.EROFS
    assert await errno_of(ops.open(inodes["models"], os.O_RDONLY, ctx)) == errno.EISDIR
    assert await errno_of(ops.mkdir(ROOT_INODE, b"d", 0o755, ctx)) == errno.EROFS
    assert await errno_of(ops.unlink(ROOT_INODE, b"one", ctx)) == errno.EROFS
    assert await errno_of(ops.opendir(inodes["one"], ctx)) == errno.ENOTDIR
    assert await errno_of(ops.getxattr(inodes["one"], b"user.nope", ctx)) == pyfuse3.ENOATTR
    assert b"user.ocifs.digest" in await ops.listxattr(inodes["one"], ctx)

    info = await ops.open(inodes["README.md"], os.O_RDONLY, ctx)
    assert info.keep_cache and not info.direct_io
    registry.denied = True
    with expect_log(r"read of /README.md \[0, \+10\) failed \(EACCES\)", count=1):
        assert await errno_of(ops.read(info.fh, 0, 10)) == errno.EACCES
    registry.denied, registry.down = False, True
    with expect_log(r"read of /README.md .* failed \(EIO\): registry.test: connection refused", count=1):
        assert await errno_of(ops.read(info.fh, 0, 10)) == errno.EIO
    registry.down = False
    del registry.blobs[Digest.of_bytes(FILES["README.md"])]  # garbage collected
    with expect_log(r"failed \(EIO\).*not found", count=1):
        assert await errno_of(ops.read(info.fh, 0, 10)) == errno.EIO
    await ops.release(info.fh)
    assert await errno_of(ops.read(info.fh, 0, 10)) == errno.ENOENT  # stale handle

    def boom(*args: Any) -> None:
        raise RuntimeError("a bug")

    filesystem.getattr = boom  # type: ignore[method-assign]
    with expect_log("getattr .* unexpected error", level=logging.ERROR, count=1):
        assert await errno_of(ops.getattr(ROOT_INODE, ctx)) == errno.EIO
    await ops.forget([(inodes["one"], 1)])  # never raises


async def test_adapter_reads_return_exact_bytes(registry: FakeRegistry, cache: ChunkCache) -> None:
    filesystem, inodes = make_fs(registry, cache)
    ops = Operations(filesystem)
    info = await ops.open(inodes["models/llama/weights.bin"], os.O_RDONLY, Ctx())  # type: ignore[arg-type]
    data = FILES["models/llama/weights.bin"]
    assert await ops.read(info.fh, 990, 4000) == data[990:]
    assert hashlib.sha256(await ops.read(info.fh, 0, 10**6)).digest() == hashlib.sha256(data).digest()
    stat = await ops.statfs(Ctx())  # type: ignore[arg-type]
    assert stat.f_namemax == 255 and stat.f_bfree == 0
