"""``ocifs push``: cut files into chunks and upload them in parallel as ordinary blobs.

Pipeline (memory bounded by about ``jobs`` × chunk size whatever the file size):

    reader task ──(unbuffered channel)──▶ ``jobs`` uploader tasks ──▶ registry
    pread + whole-file sha256 (thread)     chunk sha256 (thread), HEAD, POST+PUT

The reader reads each file sequentially (the whole-file digest must see bytes in order);
uploaders hash each chunk in a worker thread (hashlib releases the GIL), skip it when the
registry already has it (dedup; a re-run resumes), else upload it, mounting from ``--from``
when possible. Only after every blob is stored are the chunk indexes and then the manifest
pushed, so a manifest never points at a blob that is not there (the registry checks too).
A file that changes while it is read aborts the push before any manifest is written.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import stat
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from ocifs.commands.progress import Progress
from ocifs.digest import Digest
from ocifs.errors import OcifsError, UsageError, collapse_groups
from ocifs.format.build import build_chunk_index, build_manifest, is_chunked
from ocifs.format.media import DEFAULT_ARTIFACT_TYPE, DEFAULT_CHUNK_SIZE, DEFAULT_LAYER_BUDGET, MEDIA_TYPE_MANIFEST
from ocifs.format.model import EMPTY_CONFIG_DATA, EMPTY_DESCRIPTOR, ChunkedEntry, ChunkRef, Descriptor, PlainFile
from ocifs.format.paths import check_paths, validate_path
from ocifs.format.plan import plan_chunk_size
from ocifs.reference import Reference, parse_reference, parse_repository
from ocifs.registry.client import ClientOptions, RegistryClient
from ocifs.registry.connect import connect

log = logging.getLogger(__name__)

# 16 MiB: small enough that a lazy read fetches little, large enough that per-request costs
# (HEAD + POST + PUT, registry fsync) vanish; registries cope badly with single uploads of
# >=100 MB (docs/platform.md, "Registries in the field"). Measured choice in docs/benchmarks.md.
DEFAULT_CHUNK_SIZE = DEFAULT_CHUNK_SIZE
DEFAULT_MAX_LAYERS = DEFAULT_LAYER_BUDGET


@dataclass(frozen=True, slots=True)
class SourceFile:
    """A local file to push, named by its path inside the artifact."""

    path: str
    local: Path
    size: int
    mtime_ns: int


@dataclass(frozen=True, slots=True)
class PushOptions:
    chunk_size: int = DEFAULT_CHUNK_SIZE
    max_layers: int = DEFAULT_MAX_LAYERS
    jobs: int = 8
    mount_from: str | None = None
    file_digest: bool = True
    artifact_type: str = DEFAULT_ARTIFACT_TYPE
    annotations: dict[str, str] = field(default_factory=dict)
    config: bytes | None = None
    config_media_type: str = "application/vnd.oci.image.config.v1+json"


@dataclass(slots=True)
class FileResult:
    source: SourceFile
    chunked: bool
    chunk_digests: list[Digest | None] = field(default_factory=list)
    chunk_sizes: list[int] = field(default_factory=list)
    file_digest: Digest | None = None


@dataclass(slots=True)
class PushResult:
    reference: Reference
    manifest_digest: Digest
    manifest_size: int
    chunk_size: int
    files: list[FileResult]
    blobs_uploaded: int = 0
    blobs_skipped: int = 0
    blobs_mounted: int = 0
    bytes_uploaded: int = 0
    bytes_skipped: int = 0
    seconds: float = 0.0

    def summary(self) -> dict[str, Any]:
        total = sum(f.source.size for f in self.files)
        return {
            "reference": str(self.reference),
            "digest": str(self.manifest_digest),
            "manifest_size": self.manifest_size,
            "chunk_size": self.chunk_size,
            "files": [
                {
                    "path": f.source.path,
                    "size": f.source.size,
                    "chunked": f.chunked,
                    "chunks": len(f.chunk_digests) if f.chunked else 0,
                    "digest": str(f.file_digest) if f.file_digest else None,
                }
                for f in self.files
            ],
            "bytes": total,
            "blobs_uploaded": self.blobs_uploaded,
            "blobs_skipped": self.blobs_skipped,
            "blobs_mounted": self.blobs_mounted,
            "bytes_uploaded": self.bytes_uploaded,
            "bytes_skipped": self.bytes_skipped,
            "seconds": round(self.seconds, 3),
            "mib_per_second": round(total / (1 << 20) / self.seconds, 1) if self.seconds > 0 else None,
        }


# -- collecting the input ---------------------------------------------------------------------


def collect_sources(paths: list[str]) -> list[SourceFile]:
    """The files named by ``paths``: a file by its base name, a directory's files relative to it.

    Symlinks, devices, sockets and FIFOs are refused (an artifact holds regular files only);
    two inputs mapping to one artifact path are refused.
    """
    found: dict[str, SourceFile] = {}

    def add(artifact_path: str, local: Path, st: os.stat_result) -> None:
        try:
            artifact_path = validate_path(artifact_path)
        except OcifsError as exc:
            raise UsageError(f"cannot push {local}: {exc}") from None
        if artifact_path in found:
            raise UsageError(
                f"two inputs would both be {artifact_path!r} in the artifact ({found[artifact_path].local}, {local})"
            )
        found[artifact_path] = SourceFile(artifact_path, local, st.st_size, st.st_mtime_ns)

    for raw in paths:
        top = Path(raw)
        st = _lstat(top)
        if stat.S_ISLNK(st.st_mode):
            raise UsageError(f"{top} is a symbolic link: push the file it points to instead")
        if stat.S_ISREG(st.st_mode):
            _check_readable(top)
            add(top.name, top, st)
        elif stat.S_ISDIR(st.st_mode):
            for dirpath, dirnames, filenames in os.walk(top, onerror=_walk_error):
                dirnames.sort()
                for name in sorted(filenames) + [d for d in dirnames if Path(dirpath, d).is_symlink()]:
                    local = Path(dirpath, name)
                    lst = _lstat(local)
                    if stat.S_ISLNK(lst.st_mode):
                        raise UsageError(f"{local} is a symbolic link: artifacts hold regular files only")
                    if not stat.S_ISREG(lst.st_mode):
                        raise UsageError(f"{local} is not a regular file (device, socket or FIFO)")
                    _check_readable(local)
                    add(local.relative_to(top).as_posix(), local, lst)
        else:
            raise UsageError(f"{top} is not a regular file or directory")
    if not found:
        raise UsageError("nothing to push: the directories given contain no files")
    check_paths(list(found))
    return list(found.values())


def _lstat(path: Path) -> os.stat_result:
    try:
        return path.lstat()
    except FileNotFoundError:
        raise UsageError(f"{path}: no such file or directory") from None
    except OSError as exc:
        raise UsageError(f"{path}: {exc.strerror}") from exc


def _check_readable(path: Path) -> None:
    try:
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from exc


def _walk_error(exc: OSError) -> None:
    raise UsageError(f"cannot read directory {exc.filename}: {exc.strerror}")


def choose_chunk_size(files: list[SourceFile], chunk_size: int, max_layers: int) -> int:
    """The requested chunk size, doubled until the manifest fits the layer budget and 4 MiB."""
    if chunk_size < 1:
        raise UsageError("--chunk-size must be at least 1 byte")
    try:
        return plan_chunk_size([(f.path, f.size) for f in files], chunk_size=chunk_size, layer_budget=max_layers)
    except OcifsError as exc:
        raise UsageError(
            str(exc), hint="raise --max-layers if the registry allows it, or push fewer files per artifact"
        ) from None


def count_chunks(files: list[SourceFile], chunk_size: int) -> int:
    """Blobs the push will send for file content: one per chunk, one per plain file."""
    return sum(-(-f.size // chunk_size) if is_chunked(f.size, chunk_size) else 1 for f in files)


# -- the pipeline -----------------------------------------------------------------------------


@dataclass(slots=True)
class _Job:
    data: bytes
    result: FileResult
    slot: int  # chunk number, or -1 for a plain file's single blob


class _Counters:
    def __init__(self) -> None:
        self.uploaded = 0
        self.skipped = 0
        self.mounted = 0
        self.bytes_uploaded = 0
        self.bytes_skipped = 0


async def push(
    client: RegistryClient,
    ref: Reference,
    sources: list[SourceFile],
    options: PushOptions,
    progress: Progress | None = None,
) -> PushResult:
    """Push ``sources`` as one artifact tagged ``ref``; returns what was done.

    Raises :class:`OcifsError` on any failure, before any manifest is written.
    """
    chunk_size = choose_chunk_size(sources, options.chunk_size, options.max_layers)
    if chunk_size != options.chunk_size:
        log.info("chunk size raised to %d MiB to stay within %d layers", chunk_size >> 20, options.max_layers)
    results = [FileResult(s, chunked=is_chunked(s.size, chunk_size)) for s in sources]
    total_chunks = count_chunks(sources, chunk_size)
    counters = _Counters()
    progress = progress or Progress("push", sum(s.size for s in sources), total_chunks, "off")
    started = trio.current_time()

    with collapse_groups():
        await _transfer(client, ref, results, chunk_size, options, counters, progress)
        return await _finish(client, ref, results, chunk_size, options, counters, started)


async def _transfer(
    client: RegistryClient,
    ref: Reference,
    results: list[FileResult],
    chunk_size: int,
    options: PushOptions,
    counters: _Counters,
    progress: Progress,
) -> None:
    """Read every file and store every chunk and plain blob (the parallel part)."""
    send, receive = trio.open_memory_channel[_Job](0)
    async with trio.open_nursery() as nursery:
        for _ in range(options.jobs):
            nursery.start_soon(_uploader, client, ref.repository, receive.clone(), options, counters, progress)
        receive.close()
        async with send:
            for result in results:
                await _read_file(result, chunk_size, options.file_digest, send)


async def _finish(
    client: RegistryClient,
    ref: Reference,
    results: list[FileResult],
    chunk_size: int,
    options: PushOptions,
    counters: _Counters,
    started: float,
) -> PushResult:
    """Every chunk and plain blob is stored: now the chunk indexes, then the config, then the manifest."""
    entries: list[ChunkedEntry | PlainFile] = []
    async with trio.open_nursery() as nursery:
        for result in results:
            entries.append(_entry_for(result, nursery, client, ref.repository, counters))
        config_data = options.config if options.config is not None else EMPTY_CONFIG_DATA
        config = EMPTY_DESCRIPTOR
        if options.config is not None:
            config = Descriptor(options.config_media_type, Digest.of_bytes(config_data), len(config_data))
        nursery.start_soon(_ensure_blob, client, ref.repository, config.digest, config_data, None, counters)
    manifest = build_manifest(
        entries,
        config=config,
        artifact_type=options.artifact_type,
        annotations=options.annotations,
        layer_budget=options.max_layers,
    )
    target = ref.tag or str(Digest.of_bytes(manifest))
    digest = await client.put_manifest(ref.repository, target, manifest, MEDIA_TYPE_MANIFEST)
    return PushResult(
        reference=ref,
        manifest_digest=digest,
        manifest_size=len(manifest),
        chunk_size=chunk_size,
        files=results,
        blobs_uploaded=counters.uploaded,
        blobs_skipped=counters.skipped,
        blobs_mounted=counters.mounted,
        bytes_uploaded=counters.bytes_uploaded,
        bytes_skipped=counters.bytes_skipped,
        seconds=trio.current_time() - started,
    )


async def _read_file(
    result: FileResult, chunk_size: int, want_digest: bool, send: trio.MemorySendChannel[_Job]
) -> None:
    """Read one file in order, feed its chunks to the uploaders, compute its whole-file digest."""
    source = result.source
    try:
        fd = os.open(source.local, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise UsageError(f"cannot read {source.local}: {exc.strerror}") from exc
    try:
        if not result.chunked:
            data = await trio.to_thread.run_sync(_pread_exact, fd, source, 0, source.size)
            _check_unchanged(fd, source)
            await send.send(_Job(data, result, -1))
            return
        count = -(-source.size // chunk_size)
        result.chunk_digests = [None] * count
        result.chunk_sizes = [0] * count
        hasher = hashlib.sha256()
        # The whole-file hash runs in its own task, two chunks behind the reader at most: done
        # in line it made the reader wait on it and left uploaders idle (bench/profile_push.py
        # saw 3.6-4.8 of 8 uploads in flight; 6.2-6.4 with this).
        hash_send, hash_receive = trio.open_memory_channel[bytes](2)
        async with trio.open_nursery() as nursery:
            if want_digest:
                nursery.start_soon(_hash_in_order, hasher, hash_receive)
            async with hash_send:
                for n in range(count):
                    offset = n * chunk_size
                    length = min(chunk_size, source.size - offset)
                    data = await trio.to_thread.run_sync(_pread_exact, fd, source, offset, length)
                    result.chunk_sizes[n] = length
                    await send.send(_Job(data, result, n))
                    if want_digest:
                        await hash_send.send(data)
        _check_unchanged(fd, source)
        if want_digest:
            result.file_digest = Digest("sha256", hasher.hexdigest())
    finally:
        os.close(fd)


async def _hash_in_order(hasher: Any, receive: trio.MemoryReceiveChannel[bytes]) -> None:
    """Feed a file's chunks, in file order, to its whole-file hash (in a thread: GIL released)."""
    async with receive:
        async for data in receive:
            await trio.to_thread.run_sync(hasher.update, data)


def _pread_exact(fd: int, source: SourceFile, offset: int, length: int) -> bytes:
    data = os.pread(fd, length, offset)
    if len(data) < length:
        # pread may return short reads on some filesystems; loop before calling it a change.
        parts = [data]
        got = len(data)
        while got < length:
            more = os.pread(fd, length - got, offset + got)
            if not more:
                raise OcifsError(
                    f"{source.local} shrank while it was being pushed", hint="push it again once it is stable"
                )
            parts.append(more)
            got += len(more)
        data = b"".join(parts)
    return data


def _check_unchanged(fd: int, source: SourceFile) -> None:
    st = os.fstat(fd)
    if st.st_size != source.size or st.st_mtime_ns != source.mtime_ns:
        raise OcifsError(
            f"{source.local} changed while it was being pushed",
            hint="no manifest was written; push it again once it is stable (uploaded chunks are reused)",
        )


async def _uploader(
    client: RegistryClient,
    repository: str,
    receive: trio.MemoryReceiveChannel[_Job],
    options: PushOptions,
    counters: _Counters,
    progress: Progress,
) -> None:
    async with receive:
        async for job in receive:
            digest = Digest("sha256", await trio.to_thread.run_sync(_sha256_hex, job.data))
            if job.slot >= 0:
                job.result.chunk_digests[job.slot] = digest
            else:
                job.result.file_digest = digest
            skipped = await _ensure_blob(client, repository, digest, job.data, options.mount_from, counters)
            progress.advance(len(job.data), chunk_done=True, skipped=skipped)


def _sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def _ensure_blob(
    client: RegistryClient,
    repository: str,
    digest: Digest,
    data: bytes,
    mount_from: str | None,
    counters: _Counters,
) -> bool:
    """Store a blob unless the repository has it. Returns True when nothing had to be sent."""
    if await client.blob_size(repository, digest) is not None:
        counters.skipped += 1
        counters.bytes_skipped += len(data)
        log.debug("blob %s already present", digest.short)
        return True
    how = await client.upload_blob(repository, digest, data, mount_from=mount_from)
    if how == "mounted":
        counters.mounted += 1
        counters.bytes_skipped += len(data)
        return True
    counters.uploaded += 1
    counters.bytes_uploaded += len(data)
    return False


def _entry_for(
    result: FileResult,
    nursery: trio.Nursery,
    client: RegistryClient,
    repository: str,
    counters: _Counters,
) -> ChunkedEntry | PlainFile:
    """The manifest entry of one pushed file; a chunked file's index blob is uploaded in ``nursery``."""
    source = result.source
    if not result.chunked:
        assert result.file_digest is not None
        return PlainFile(source.path, source.size, result.file_digest)
    refs: list[ChunkRef] = []
    offset = 0
    for digest, size in zip(result.chunk_digests, result.chunk_sizes, strict=True):
        assert digest is not None, "every chunk was hashed before the uploaders finished"
        refs.append(ChunkRef(digest, size, offset))
        offset += size
    chunk_index = build_chunk_index(source.size, refs, file_digest=result.file_digest)
    data = chunk_index.to_bytes()
    nursery.start_soon(_ensure_blob, client, repository, Digest.of_bytes(data), data, None, counters)
    return ChunkedEntry(source.path, chunk_index)


# -- the command ------------------------------------------------------------------------------


def run_push(args: argparse.Namespace, client_options: ClientOptions) -> int:
    """``ocifs push``: parse arguments, push, print the digest (or ``--json``)."""
    ref = parse_reference(args.reference)
    if ref.digest is not None:
        raise UsageError("push to a tag, not a digest (the digest is the result of the push)")
    sources = collect_sources(args.paths)
    options = PushOptions(
        chunk_size=args.chunk_size or DEFAULT_CHUNK_SIZE,
        max_layers=args.max_layers or DEFAULT_MAX_LAYERS,
        jobs=args.jobs,
        mount_from=parse_repository(args.mount_from, ref.registry) if args.mount_from else None,
        file_digest=not args.no_file_digest,
        artifact_type=args.artifact_type or DEFAULT_ARTIFACT_TYPE,
        annotations=_parse_annotations(args.annotation),
        config=_read_config(args.config) if args.config else None,
        config_media_type=args.config_media_type,
    )
    total = sum(s.size for s in sources)
    mode = "off" if args.json else Progress.choose_mode(args.quiet)

    async def go() -> PushResult:
        async with connect(ref.registry, client_options) as client:
            with Progress(f"push {ref.repository}", total, 0, mode) as progress:
                progress.total_chunks = count_chunks(
                    sources, choose_chunk_size(sources, options.chunk_size, options.max_layers)
                )
                return await push(client, ref, sources, options, progress)

    result = trio.run(go)
    if args.json:
        json.dump(result.summary(), sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        s = result.summary()
        if not args.quiet:
            print(
                f"pushed {len(sources)} file(s), {total / (1 << 20):,.1f} MiB in {s['seconds']:.1f}s"
                f" ({s['mib_per_second'] or 0:,.1f} MiB/s): {result.blobs_uploaded} blobs uploaded,"
                f" {result.blobs_skipped} already present, {result.blobs_mounted} mounted",
                file=sys.stderr,
            )
        print(f"{ref.registry}/{ref.repository}@{result.manifest_digest}")
    return 0


def _parse_annotations(items: list[str]) -> dict[str, str]:
    annotations: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--annotation {item!r}: expected KEY=VALUE")
        annotations[key] = value
    return annotations


def _read_config(path: str) -> bytes:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read --config {path}: {exc.strerror}") from exc
    try:
        json.loads(data)
    except ValueError:
        raise UsageError(f"--config {path} is not JSON") from None
    return data
