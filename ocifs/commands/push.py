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

Registry limits are checked before a byte is sent: the layer budget (``--max-layers``, the
registry's ``max_layers`` in config.toml, or a known cap such as ECR's) and the chunk size. What
does not fit one manifest even with 64 MiB chunks (or the chunk size the user pinned) is laid out
over several manifests under one image index (docs/spec.md §14); only what not even that can
hold, or anything beyond one manifest with ``--single-manifest``, is refused in one line. A blob
collected by the registry's garbage collector between the HEAD that found it and the manifest
PUT (``MANIFEST_BLOB_UNKNOWN``) is uploaded again from the files and the PUT retried
(docs/operations.md "Registry limits").
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from ocifs.commands.progress import Progress
from ocifs.commands.push_plan import choose_layout, count_chunks, layer_budget
from ocifs.commands.push_sources import SourceFile, collect_sources
from ocifs.digest import Digest
from ocifs.errors import OcifsError, RegistryError, UsageError, collapse_groups
from ocifs.format.build import build_artifact, build_chunk_index, config_descriptor, is_chunked
from ocifs.format.checks import check_media_type
from ocifs.format.media import (
    DEFAULT_ARTIFACT_TYPE,
    DEFAULT_CHUNK_SIZE,
    DEFAULT_LAYER_BUDGET,
    MEDIA_TYPE_MANIFEST,
)
from ocifs.format.model import EMPTY_CONFIG_DATA, EMPTY_DESCRIPTOR, ChunkedEntry, ChunkRef, PlainFile
from ocifs.format.plan import Layout
from ocifs.reference import Reference, parse_reference, parse_repository
from ocifs.registry.client import ClientOptions, RegistryClient
from ocifs.registry.connect import connect

log = logging.getLogger(__name__)

# 16 MiB: small enough that a lazy read fetches little, large enough that per-request costs
# (HEAD + POST + PUT, registry fsync) vanish; registries cope badly with single uploads of
# >=100 MB (docs/platform.md, "Registries in the field"). Measured choice in docs/benchmarks.md.
DEFAULT_CHUNK_SIZE = DEFAULT_CHUNK_SIZE
DEFAULT_MAX_LAYERS = DEFAULT_LAYER_BUDGET
# Manifest PUTs retried after re-uploading blobs a garbage collection removed under the push.
GC_RETRIES = 2


@dataclass(frozen=True, slots=True)
class PushOptions:
    chunk_size: int = DEFAULT_CHUNK_SIZE
    max_layers: int = DEFAULT_MAX_LAYERS
    jobs: int = 8
    mount_from: str | None = None
    file_digest: bool = True
    artifact_type: str | None = DEFAULT_ARTIFACT_TYPE  # None: omit artifactType (needs a config media type)
    annotations: dict[str, str] = field(default_factory=dict)
    config: bytes | None = None
    # None: the empty descriptor without ``config``, the OCI image config's media type with it.
    config_media_type: str | None = None
    pin_chunk_size: bool = False  # the user chose the chunk size: split rather than grow it
    split: bool = True  # False (--single-manifest): refuse what does not fit one manifest
    budget_source: str = ""  # where max_layers came from (--max-layers, config.toml, a known cap)


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
    manifests: int = 1  # more: the split layout (docs/spec.md §14), an index of this many slices

    def summary(self) -> dict[str, Any]:
        total = sum(f.source.size for f in self.files)
        return {
            "reference": str(self.reference),
            "digest": str(self.manifest_digest),
            "manifest_size": self.manifest_size,
            "manifests": self.manifests,
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


def check_types(options: PushOptions) -> None:
    """artifactType and the config media type are well formed and allowed together (before upload)."""
    try:
        if options.artifact_type is not None:
            check_media_type(options.artifact_type, "--artifact-type")
        if options.config_media_type is not None:
            check_media_type(options.config_media_type, "--config-media-type")
    except OcifsError as exc:
        raise UsageError(exc.message) from None
    if options.artifact_type is None and options.config is None and options.config_media_type is None:
        raise UsageError(
            "--artifact-type none needs --config-media-type or --config",
            hint="image-spec requires artifactType when the config is the empty descriptor",
        )


def plan_push(sources: list[SourceFile], options: PushOptions) -> Layout:
    """Every limit of a push checked, and its layout decided, before a connection is opened or
    a byte sent: the types, the chunk size, one manifest or several. UsageError otherwise."""
    check_types(options)
    return choose_layout(
        sources,
        options.chunk_size,
        options.max_layers,
        pinned=options.pin_chunk_size,
        budget_source=options.budget_source,
        split=options.split,
    )


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
    layout: Layout | None = None,
) -> PushResult:
    """Push ``sources`` as one artifact tagged ``ref``; returns what was done. ``layout`` is
    :func:`plan_push`'s answer when the caller already has it (planned here otherwise).

    Raises :class:`OcifsError` on any failure, before any manifest is written.
    """
    layout = layout or plan_push(sources, options)
    chunk_size = layout.chunk_size
    if chunk_size != options.chunk_size:
        log.info("chunk size raised to %d MiB to stay within %d layers", chunk_size >> 20, options.max_layers)
    if layout.manifests > 1:
        log.info("about %d manifests of at most %d layers (an image index)", layout.manifests, options.max_layers)
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
    held: dict[Digest, bytes] = {}  # the blobs made here (indexes, config), for _recover_blobs
    async with trio.open_nursery() as nursery:
        for result in results:
            entries.append(_entry_for(result, nursery, client, ref.repository, counters, held))
        config_data = options.config if options.config is not None else EMPTY_CONFIG_DATA
        config = EMPTY_DESCRIPTOR
        if options.config is not None or options.config_media_type is not None:
            # docs/spec.md §3: the user's media type, else one specific to ocifs artifacts.
            config = config_descriptor(config_data, options.config_media_type)
        held[config.digest] = config_data
        nursery.start_soon(_ensure_blob, client, ref.repository, config.digest, config_data, None, counters)
    built = build_artifact(
        entries,
        config=config,
        artifact_type=options.artifact_type,
        annotations=options.annotations,
        layer_budget=options.max_layers,
        split=options.split,
    )
    # docs/spec.md §14: every slice by digest first (a registry refuses an index naming a manifest
    # it lacks), each with the GC recovery; then the index under the tag.
    for data in built.slices:
        slice_digest = str(Digest.of_bytes(data))
        await _put_manifest(client, ref, slice_digest, data, results, chunk_size, held, options, counters)
    manifest = built.top
    target = ref.tag or str(Digest.of_bytes(manifest))
    digest = await _put_manifest(
        client, ref, target, manifest, results, chunk_size, held, options, counters, built.media_type
    )
    return PushResult(
        reference=ref,
        manifest_digest=digest,
        manifest_size=len(manifest),
        manifests=max(len(built.slices), 1),
        chunk_size=chunk_size,
        files=results,
        blobs_uploaded=counters.uploaded,
        blobs_skipped=counters.skipped,
        blobs_mounted=counters.mounted,
        bytes_uploaded=counters.bytes_uploaded,
        bytes_skipped=counters.bytes_skipped,
        seconds=trio.current_time() - started,
    )


async def _put_manifest(
    client: RegistryClient,
    ref: Reference,
    target: str,
    manifest: bytes,
    results: list[FileResult],
    chunk_size: int,
    held: dict[Digest, bytes],
    options: PushOptions,
    counters: _Counters,
    media_type: str = MEDIA_TYPE_MANIFEST,
) -> Digest:
    """PUT the manifest (or a split artifact's index). A registry that garbage-collected a blob
    after our HEAD found it answers ``MANIFEST_BLOB_UNKNOWN``: the missing blobs are uploaded
    again and the PUT retried, at most :data:`GC_RETRIES` times, then one line says what happened."""
    restored = 0
    for attempt in range(GC_RETRIES + 1):
        try:
            digest = await client.put_manifest(ref.repository, target, manifest, media_type)
        except RegistryError as exc:
            if exc.code != "MANIFEST_BLOB_UNKNOWN":
                raise _explain_manifest_refusal(exc, ref, manifest, options) from exc
            if attempt == GC_RETRIES:
                raise OcifsError(
                    f"{exc.message}; still missing after {GC_RETRIES} re-uploads of what the registry lost",
                    hint="a garbage collection is probably running on the registry; push again once it has"
                    " finished (blobs still there are reused)",
                ) from exc
            log.debug("manifest refused for a missing blob: %s", exc.message)
            restored += await _recover_blobs(client, ref.repository, results, chunk_size, held, options, counters)
        else:
            if restored:
                log.info("the registry lost %d blob(s) during the push (garbage collection?): uploaded again", restored)
            return digest
    raise AssertionError("unreachable")


def _explain_manifest_refusal(exc: RegistryError, ref: Reference, manifest: bytes, options: PushOptions) -> OcifsError:
    """A refusal for the number of layers (ECR: 405 UNSUPPORTED "Limit on number of layers per
    image exceeded") gets a hint naming the setting; anything else passes unchanged."""
    if exc.status not in (400, 405, 413) or "layer" not in exc.message.lower():
        return exc
    layers = len(json.loads(manifest).get("layers", []))
    return RegistryError(
        exc.message,
        hint=f"the registry caps the layers of a manifest below this push's {layers}: set max_layers for"
        f' [registry."{ref.registry}"] in config.toml (or pass --max-layers) to its cap and push again',
        status=exc.status,
        code=exc.code,
    )


async def _recover_blobs(
    client: RegistryClient,
    repository: str,
    results: list[FileResult],
    chunk_size: int,
    held: dict[Digest, bytes],
    options: PushOptions,
    counters: _Counters,
) -> int:
    """HEAD every blob of the manifest and upload again those the registry no longer has: chunks
    and plain files re-read from their files (and re-hashed), indexes and config from memory.
    Memory stays within ``jobs`` chunks. Returns how many blobs were uploaded."""
    wanted: dict[Digest, tuple[SourceFile, int, int] | bytes] = dict(held)
    for result in results:
        if result.chunked:
            for n, (digest, size) in enumerate(zip(result.chunk_digests, result.chunk_sizes, strict=True)):
                assert digest is not None
                wanted[digest] = (result.source, n * chunk_size, size)
        else:
            assert result.file_digest is not None
            wanted[result.file_digest] = (result.source, 0, result.source.size)
    limiter = trio.CapacityLimiter(options.jobs)
    restored = 0

    async def restore(digest: Digest, where: tuple[SourceFile, int, int] | bytes) -> None:
        nonlocal restored
        async with limiter:
            if await client.blob_size(repository, digest) is not None:
                return
            data = where if isinstance(where, bytes) else await trio.to_thread.run_sync(_reread, digest, *where)
            await client.upload_blob(repository, digest, data, mount_from=options.mount_from)
            counters.uploaded += 1
            counters.bytes_uploaded += len(data)
            restored += 1

    async with trio.open_nursery() as nursery:
        for digest, where in wanted.items():
            nursery.start_soon(restore, digest, where)
    return restored


def _reread(digest: Digest, source: SourceFile, offset: int, length: int) -> bytes:
    """Bytes of a chunk (or plain file) read again; OcifsError if they are not what was pushed."""
    try:
        fd = os.open(source.local, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise UsageError(f"cannot read {source.local} again: {exc.strerror}") from exc
    try:
        data = _pread_exact(fd, source, offset, length)
    finally:
        os.close(fd)
    if _sha256_hex(data) != digest.hex:
        raise OcifsError(
            f"{source.local} changed while it was being pushed",
            hint="no manifest was written; push it again once it is stable (uploaded chunks are reused)",
        )
    return data


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
    held: dict[Digest, bytes],
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
    held[Digest.of_bytes(data)] = data
    nursery.start_soon(_ensure_blob, client, repository, Digest.of_bytes(data), data, None, counters)
    return ChunkedEntry(source.path, chunk_index)


# -- the command ------------------------------------------------------------------------------


def run_push(args: argparse.Namespace, client_options: ClientOptions) -> int:
    """``ocifs push``: parse arguments, push, print the digest (or ``--json``)."""
    ref = parse_reference(args.reference)
    if ref.digest is not None:
        raise UsageError("push to a tag, not a digest (the digest is the result of the push)")
    sources = collect_sources(args.paths)
    budget = layer_budget(ref.registry, args.max_layers, getattr(args, "configured_max_layers", None))
    artifact_type = args.artifact_type or DEFAULT_ARTIFACT_TYPE
    options = PushOptions(
        chunk_size=args.chunk_size if args.chunk_size is not None else DEFAULT_CHUNK_SIZE,
        max_layers=budget.layers,
        jobs=args.jobs,
        mount_from=parse_repository(args.mount_from, ref.registry) if args.mount_from else None,
        file_digest=not args.no_file_digest,
        artifact_type=None if artifact_type.lower() == "none" else artifact_type,
        annotations=_parse_annotations(args.annotation),
        config=_read_config(args.config) if args.config else None,
        config_media_type=args.config_media_type,
        pin_chunk_size=args.chunk_size is not None,
        budget_source=f"layer budget from {budget.source}",
        split=not getattr(args, "single_manifest", False),
    )
    layout = plan_push(sources, options)  # before a connection is opened or a byte sent
    total = sum(s.size for s in sources)
    mode = "off" if args.json else Progress.choose_mode(args.quiet)

    async def go() -> PushResult:
        async with connect(ref.registry, client_options, repository=ref.repository) as client:
            with Progress(f"push {ref.repository}", total, 0, mode) as progress:
                progress.total_chunks = count_chunks(sources, layout.chunk_size)
                return await push(client, ref, sources, options, progress, layout)

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
                f" {result.blobs_skipped} already present, {result.blobs_mounted} mounted"
                + (f"; {result.manifests} manifests under one image index" if result.manifests > 1 else ""),
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
