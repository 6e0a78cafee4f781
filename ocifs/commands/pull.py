"""``ocifs pull``: download an artifact's files in parallel, verified, resumable through the cache.

Pipeline (memory bounded by about ``jobs`` pieces, whatever the file sizes):

    planner ──(unbuffered channel of pieces)──▶ ``jobs`` workers: cache or Fetcher ─▶ pwrite
    safe path, temp file, preallocate;           (verified, single-flight, cached)   at the offset
    starts one finisher per file ◀──────────── "piece n is written" ───────────────────┘
    finisher: sha256 of the whole file, in order, from the temp file as its pieces land;
              then rename into place

A *piece* is one chunk of a chunked file, a whole plain layer (verified by its digest and
cached), or a byte range of a large plain layer (not verifiable on its own, not cached: the
whole-file hash verifies it). Pieces are written with ``pwrite`` straight into a preallocated
temp file in the file's final directory, so there is no reassembly pass; the file is renamed to
its name only once complete and verified, so a failed or killed pull never leaves a partial file
under a final name. Chunks are cached as they arrive, so a re-run downloads only what is missing.

The whole-file sha256 must see the bytes in order while pieces land in any order, so the
finisher hashes each piece from an ``mmap`` of the temp file once it is written: the pages are
in the page cache, so this costs what hashing the bytes in memory costs (measured: 0.80 vs 0.75
CPU-s per GiB; ``pread`` into a buffer costs 0.95, and CPU is what a 2-core host shares with the
registry), while workers drop each piece as soon as it is written and the hash overlaps the
downloads instead of following them.

Files are not fsynced before the rename (like ``cp``, ``curl -o`` and ``oras pull``): an
``fdatasync`` measured 0.5 s per GiB here, a large share of a pull, and a pull is cheap to check
(``--json`` prints every digest) and to repeat (the chunks stay cached). A crash of the process
never exposes a partial file; only a power loss before writeback can.

Safety: paths were validated by :mod:`ocifs.format.parse` (no ``..``, absolute paths, NUL...), and are
checked again here: every directory inside the target is opened relative to its parent with
``O_NOFOLLOW``, so a symlink planted in the target directory is refused rather than followed,
and the resolved path must stay inside the target. Must not: know HTTP (the registry client and
the fetcher own it) or decide how chunks are verified and cached (the fetcher and cache do).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import fnmatch
import functools
import json
import logging
import os
import secrets
import stat
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from ocifs.cache.chunk_index import load_chunk_index
from ocifs.cache.fetcher import RETRY_BASE_DELAY, Fetcher
from ocifs.cache.store import ChunkCache, default_cache_dir
from ocifs.commands.progress import Progress
from ocifs.commands.pull_target import (
    NO_SPACE_HINT,
    TEMP_PREFIX,
    TargetDir,
    hash_file,
    hash_range,
    pwrite_all,
    range_matches,
)
from ocifs.concurrency import gather
from ocifs.digest import Digest
from ocifs.errors import CacheError, FormatError, IntegrityError, OcifsError, UsageError, in_context
from ocifs.format.build import fixed_layout
from ocifs.format.media import DEFAULT_CHUNK_SIZE
from ocifs.format.model import Artifact, ChunkedFile, ChunkIndex, File
from ocifs.reference import Reference, parse_reference
from ocifs.registry.client import ClientOptions, RegistryClient
from ocifs.registry.connect import connect
from ocifs.registry.resolve import resolve
from ocifs.units import format_size

log = logging.getLogger(__name__)

MIB = 1 << 20

#: Plain layers up to this size are fetched whole (one verified, cached blob); larger ones in
#: ranges of this size, so memory stays at about jobs x 16 MiB even for a multi-GiB plain layer
#: pushed by another tool. 16 MiB is the default chunk size: the same memory per worker.
PLAIN_PIECE_SIZE = DEFAULT_CHUNK_SIZE


@dataclass(frozen=True, slots=True)
class PullOptions:
    """How to pull. ``include``: fnmatch patterns on artifact paths (none: every file)."""

    jobs: int = 8
    include: tuple[str, ...] = ()
    plain_piece_size: int = PLAIN_PIECE_SIZE
    retry_base_delay: float = RETRY_BASE_DELAY


@dataclass(frozen=True, slots=True)
class PulledFile:
    """One file written: ``digest`` is its sha256 as verified (None if nothing recorded it)."""

    path: str
    size: int
    kind: str  # "chunked", "plain" or "oras-directory" (spec R20)
    pieces: int
    digest: Digest | None


@dataclass(slots=True)
class PullResult:
    """What a pull did. ``bytes_downloaded`` counts every byte the registry sent for blobs
    (chunk indexes and retried corrupt downloads included); ``bytes_from_cache`` the file bytes
    served by the local chunk cache."""

    reference: Reference
    output: Path
    files: list[PulledFile]
    bytes: int = 0
    bytes_downloaded: int = 0
    bytes_from_cache: int = 0
    blob_requests: int = 0
    seconds: float = 0.0

    def summary(self) -> dict[str, Any]:
        """The ``--json`` summary."""
        return {
            "reference": str(self.reference),
            "digest": str(self.reference.digest),
            "output": str(self.output),
            "files": [
                {
                    "path": f.path,
                    "size": f.size,
                    "kind": f.kind,
                    "pieces": f.pieces,
                    "digest": str(f.digest) if f.digest else None,
                }
                for f in self.files
            ],
            "file_count": len(self.files),
            "bytes": self.bytes,
            "bytes_downloaded": self.bytes_downloaded,
            "bytes_from_cache": self.bytes_from_cache,
            "blob_requests": self.blob_requests,
            "seconds": round(self.seconds, 3),
            "mib_per_second": round(self.bytes / MIB / self.seconds, 1) if self.seconds > 0 else None,
        }


# -- the target directory ---------------------------------------------------------------------


# -- the plan ---------------------------------------------------------------------------------


@dataclass(eq=False, slots=True)
class _Piece:
    job: _FileJob
    number: int
    offset: int
    size: int
    digest: Digest | None  # None: a range of a large plain blob (verified only as a whole)


@dataclass(eq=False, slots=True)
class _FileJob:
    """One file being pulled: its pieces, its temp file, and the in-order whole-file hash."""

    path: str
    size: int
    kind: str
    blob: Digest | None  # a plain file's layer digest
    expected: Digest | None  # the whole-file sha256 to check, if recorded
    pieces: list[_Piece] = field(default_factory=list)
    dir_fd: int = -1
    fd: int = -1
    name: str = ""
    temp_name: str = ""
    committed: bool = False
    hasher: Any = None
    written: set[int] = field(default_factory=set)
    wakeup: trio.Event = field(default_factory=trio.Event)

    @property
    def hashes_whole_file(self) -> bool:
        """Whether the finisher hashes the assembled file: a recorded digest that one verified
        piece does not already cover."""
        if self.expected is None:
            return False
        return not (len(self.pieces) == 1 and self.pieces[0].digest == self.expected)

    def piece_written(self, number: int) -> None:
        self.written.add(number)
        self.wakeup.set()

    def describe(self, piece: _Piece) -> str:
        if self.kind == "chunked":
            return (
                f"file {self.path!r}: chunk {piece.number} of {len(self.pieces)} (offset {piece.offset}, "
                f"{piece.size} bytes, {piece.digest})"
            )
        if piece.digest is None:
            return f"file {self.path!r}: bytes {piece.offset}..{piece.offset + piece.size} of layer {self.blob}"
        return f"file {self.path!r} (layer {piece.digest})"


def _plan(file: File, layout: ChunkIndex | None, plain_piece_size: int) -> _FileJob:
    if isinstance(file, ChunkedFile):
        assert layout is not None
        job = _FileJob(file.path, file.size, "chunked", None, layout.file_digest)
        job.pieces = [_Piece(job, n, c.offset, c.size, c.digest) for n, c in enumerate(layout.chunks)]
        return job
    expected = file.digest if file.digest.algorithm == "sha256" else None
    job = _FileJob(file.path, file.size, file.kind, file.digest, expected)  # plain or oras-directory
    if file.size == 0:
        return job  # the empty blob: nothing to fetch (spec §6.1)
    if file.size <= plain_piece_size:
        job.pieces = [_Piece(job, 0, 0, file.size, file.digest)]
    else:
        if expected is None:
            raise FormatError(
                f"file {file.path!r}: a {file.size}-byte layer with a {file.digest.algorithm} digest",
                hint="ocifs verifies large plain layers by sha256 only",
            )
        job.pieces = [
            _Piece(job, n, offset, length, None)
            for n, (offset, length) in enumerate(fixed_layout(file.size, plain_piece_size))
        ]
    return job


def select_files(artifact: Artifact, include: tuple[str, ...]) -> list[File]:
    """The files whose path matches one of ``include`` (fnmatch, case-sensitive; ``*`` also
    matches ``/``), or every file when ``include`` is empty."""
    if not include:
        return list(artifact.files)
    chosen = [f for f in artifact.files if any(fnmatch.fnmatchcase(f.path, p) for p in include)]
    if not chosen:
        raise UsageError(
            f"no file of the artifact matches --include {' '.join(include)}",
            hint="`ocifs inspect` lists its files",
        )
    return chosen


# -- the pull ---------------------------------------------------------------------------------


class _Run:
    """The shared state of one pull: the first error wins and cancels everything else."""

    def __init__(self, fetcher: Fetcher, cache: ChunkCache, repository: str, progress: Progress) -> None:
        self.fetcher = fetcher
        self.cache = cache
        self.repository = repository
        self.progress = progress
        self.error: OcifsError | None = None
        self.scope: trio.CancelScope | None = None
        self.bytes_from_cache = 0
        self.open_jobs: list[_FileJob] = []

    def fail(self, exc: OcifsError, cause: BaseException | None = None) -> None:
        """Record the pull's first error (``cause``: the exception it reports, kept as its
        ``__cause__`` so a caller can still tell what happened) and cancel everything else."""
        if cause is not None:
            exc.__cause__ = cause
        if self.error is None:
            self.error = exc
        if self.scope is not None:
            self.scope.cancel()


async def pull(
    client: RegistryClient,
    ref: Reference,
    output: Path,
    cache: ChunkCache,
    options: PullOptions | None = None,
    progress_mode: str = "off",
) -> PullResult:
    """Pull the files of ``ref`` into ``output``; returns what was done.

    Raises :class:`OcifsError`: the artifact is refused as a whole before anything is written if
    its manifest or a chunk index is invalid; a failed piece stops the pull, removes the temp
    files of unfinished files and leaves complete files (and every verified chunk, in the cache).
    """
    options = options or PullOptions()
    started = trio.current_time()
    resolved = await resolve(client, ref)
    repository = ref.repository
    files = select_files(resolved.artifact, options.include)
    fetcher = Fetcher(client, cache, max_concurrency=options.jobs, retry_base_delay=options.retry_base_delay)

    # Every chunk index first (small, cached like chunks): the whole artifact is validated
    # before a byte is written, and the whole-file digest may be recorded only in the index.
    chunked = [f for f in files if isinstance(f, ChunkedFile)]
    # Concurrently (the fetcher bounds the requests); the first failure stops the others.
    indexes = await gather([functools.partial(load_chunk_index, fetcher, repository, f) for f in chunked])
    layouts: dict[str, ChunkIndex] = {f.path: index for f, index in zip(chunked, indexes, strict=True)}
    jobs = [_plan(f, layouts.get(f.path), options.plain_piece_size) for f in files]

    target = await trio.to_thread.run_sync(TargetDir, output)
    total = sum(j.size for j in jobs)
    progress = Progress(f"pull {repository}", total, sum(len(j.pieces) for j in jobs), progress_mode)
    run = _Run(fetcher, cache, repository, progress)
    try:
        # Write-behind: each chunk goes to its output file while its cache write runs beside it;
        # leaving the block waits for those writes (so a failed pull resumes from the cache).
        with progress:
            async with fetcher.writing_behind():
                await _transfer(run, target, jobs, options.jobs)
    finally:
        # Synchronous on purpose: it must run even when the caller's scope is cancelled.
        _discard_unfinished(run.open_jobs)
        target.close()
    if run.error is not None:
        raise run.error
    stats = fetcher.stats()
    return PullResult(
        reference=resolved.reference,
        output=target.root,
        files=[PulledFile(j.path, j.size, j.kind, len(j.pieces), j.expected) for j in jobs],
        bytes=total,
        bytes_downloaded=stats.bytes_downloaded,
        bytes_from_cache=run.bytes_from_cache,
        blob_requests=stats.downloads,
        seconds=trio.current_time() - started,
    )


async def _transfer(run: _Run, target: TargetDir, jobs: list[_FileJob], workers: int) -> None:
    send, receive = trio.open_memory_channel[_Piece](0)
    async with trio.open_nursery() as nursery:
        run.scope = nursery.cancel_scope
        for _ in range(workers):
            nursery.start_soon(_worker, run, receive.clone())
        receive.close()
        nursery.start_soon(_planner, run, target, jobs, send, nursery)


async def _planner(
    run: _Run, target: TargetDir, jobs: list[_FileJob], send: trio.MemorySendChannel[_Piece], nursery: trio.Nursery
) -> None:
    """Open each file's temp file in turn, start its finisher, hand its pieces to the workers.
    The channel is unbuffered, so only the files whose pieces are in flight are open."""
    async with send:
        for job in jobs:
            try:
                await trio.to_thread.run_sync(_open_temp, target, job, run.open_jobs)
            except OcifsError as exc:
                run.fail(exc)
                return
            if job.hashes_whole_file:
                job.hasher = job.expected.hasher() if job.expected is not None else None
            nursery.start_soon(_finisher, run, target, job)
            for piece in job.pieces:
                await send.send(piece)


def _open_temp(target: TargetDir, job: _FileJob, open_jobs: list[_FileJob]) -> None:
    """Create the preallocated temp file next to where ``job``'s file goes (blocking)."""
    where = target.show(job.path)
    try:
        job.dir_fd, job.name = target.open_parent(job.path)
    except OSError as exc:
        raise OcifsError(f"cannot create the directory of {where}: {exc.strerror or exc}") from exc
    open_jobs.append(job)
    job.temp_name = f"{TEMP_PREFIX}{os.getpid()}-{secrets.token_hex(6)}"
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        job.fd = os.open(job.temp_name, flags, 0o666, dir_fd=job.dir_fd)
    except OSError as exc:
        job.temp_name = ""
        raise OcifsError(f"cannot create a file next to {where}: {exc.strerror or exc}") from exc
    if job.size == 0:
        return
    try:
        os.ftruncate(job.fd, job.size)
        # Reserve the blocks now: a full disk fails here, before any download, and the file is
        # laid out contiguously although its pieces arrive in any order.
        os.posix_fallocate(job.fd, 0, job.size)
    except OSError as exc:
        if exc.errno in (errno.EOPNOTSUPP, errno.EINVAL):
            return  # the filesystem cannot reserve blocks (ftruncate already sized the file)
        free, hint = "", None
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            hint = NO_SPACE_HINT
        if exc.errno == errno.ENOSPC:  # under a quota, the filesystem's free space says nothing
            st = os.fstatvfs(job.fd)
            free = f" ({job.size:,} bytes needed, {st.f_bavail * st.f_frsize:,} free)"
        raise OcifsError(f"cannot write {where}: {exc.strerror or exc}{free}", hint=hint) from exc


async def _worker(run: _Run, receive: trio.MemoryReceiveChannel[_Piece]) -> None:
    async with receive:
        async for piece in receive:
            job = piece.job
            try:
                data, cached = await _fetch(run, piece)
            except OcifsError as exc:
                run.fail(_piece_error(run, piece, exc))
                return
            try:
                await trio.to_thread.run_sync(pwrite_all, job.fd, data, piece.offset)
            except OSError as exc:  # the blocks were reserved, unless the filesystem cannot
                hint = NO_SPACE_HINT if exc.errno in (errno.ENOSPC, errno.EDQUOT) else None
                run.fail(OcifsError(f"cannot write {job.path!r}: {exc.strerror or exc}", hint=hint), exc)
                return
            if cached:
                run.bytes_from_cache += len(data)
            run.progress.advance(len(data), chunk_done=True, skipped=cached)
            del data  # hold at most one piece per worker
            job.piece_written(piece.number)


async def _fetch(run: _Run, piece: _Piece) -> tuple[bytes, bool]:
    """The piece's bytes and whether the cache had them.

    The cache is read here rather than through the fetcher because a pull must know what came
    from disk: bytes at rest may have rotted since they were verified. They are trusted as is
    when the assembled file will be hashed anyway (a mismatch is then repaired chunk by chunk,
    see :func:`_repair`), and hashed here otherwise.
    """
    job = piece.job
    if piece.digest is None:
        assert job.blob is not None
        end = piece.offset + piece.size
        return await run.fetcher.get_range(run.repository, job.blob, piece.offset, end), False
    digest = piece.digest
    get_disk = functools.partial(run.cache.get_disk, digest, size=piece.size, remember=False)
    data = await trio.to_thread.run_sync(get_disk)
    if data is not None:
        if job.hashes_whole_file or await trio.to_thread.run_sync(digest.matches, data):
            return data, True
        log.warning("cache entry %s is corrupt; fetching it again", digest)
        await trio.to_thread.run_sync(_drop_cache_entry, run.cache, digest)
    return await run.fetcher.get(run.repository, digest, piece.size), False


def _piece_error(run: _Run, piece: _Piece, exc: OcifsError) -> OcifsError:
    what = piece.job.describe(piece)
    if isinstance(exc, IntegrityError) and piece.digest is not None:
        attempts = run.fetcher.retries + 1
        return IntegrityError(
            f"{what} is corrupt in the registry: {attempts} downloads did not match its digest",
            hint="nothing corrupt was cached or written; report it to the registry's operator",
        )
    return in_context(exc, what)


async def _finisher(run: _Run, target: TargetDir, job: _FileJob) -> None:
    """Wait for the pieces in order, hashing them if the file's digest is to be checked; then
    verify and move the file into place."""
    try:
        for piece in job.pieces:
            while piece.number not in job.written:
                await job.wakeup.wait()
                job.wakeup = trio.Event()
            job.written.discard(piece.number)
            if job.hasher is not None:
                await trio.to_thread.run_sync(hash_range, job.hasher, job.fd, piece.offset, piece.size)
        if job.hasher is not None and job.expected is not None and job.hasher.hexdigest() != job.expected.hex:
            await _repair(run, job, job.hasher.hexdigest())
        await trio.to_thread.run_sync(_commit, target, job)
    except OcifsError as exc:
        run.fail(exc)
    except OSError as exc:
        run.fail(OcifsError(f"cannot write {target.show(job.path)}: {exc.strerror or exc}"), exc)


async def _repair(run: _Run, job: _FileJob, got: str) -> None:
    """The assembled file does not hash to its recorded digest. Every downloaded chunk was
    verified, so either a cache entry rotted on disk (find it by re-hashing each chunk of the
    file, drop it, download it again) or the artifact's recorded digest is wrong."""
    expected = job.expected
    assert expected is not None
    if job.kind != "chunked":
        raise IntegrityError(
            f"file {job.path!r}: the downloaded layer hashes to sha256:{got}, not {expected}",
            hint="the registry served wrong bytes; nothing was written under the file's name",
        )
    repaired = 0
    for piece in job.pieces:
        assert piece.digest is not None
        if await trio.to_thread.run_sync(range_matches, job.fd, piece.offset, piece.size, piece.digest):
            continue
        log.warning("%s was corrupt in the local cache; fetching it again", job.describe(piece))
        await trio.to_thread.run_sync(_drop_cache_entry, run.cache, piece.digest)
        try:
            fresh = await run.fetcher.get(run.repository, piece.digest, piece.size)
        except OcifsError as exc:
            raise _piece_error(run, piece, exc) from None
        await trio.to_thread.run_sync(pwrite_all, job.fd, fresh, piece.offset)
        repaired += 1
    if repaired:
        again = await trio.to_thread.run_sync(hash_file, job.fd, job.size)
        if again == expected.hex:
            return
        got = again
    raise IntegrityError(
        f"file {job.path!r}: every chunk matches its digest but the file hashes to sha256:{got}, "
        f"not {expected} as the artifact records",
        hint="the artifact is inconsistent (its pusher recorded a wrong digest); nothing was written",
    )


def _commit(target: TargetDir, job: _FileJob) -> None:
    """Rename the complete, verified temp file to its name (blocking)."""
    try:
        st = os.lstat(job.name, dir_fd=job.dir_fd)
    except FileNotFoundError:
        pass
    else:
        if not stat.S_ISREG(st.st_mode):
            kind = "a symbolic link" if stat.S_ISLNK(st.st_mode) else "not a regular file"
            raise OcifsError(
                f"refusing to replace {target.show(job.path)}: it is {kind}",
                hint="remove it or pull into another directory",
            )
    os.close(job.fd)
    job.fd = -1
    os.rename(job.temp_name, job.name, src_dir_fd=job.dir_fd, dst_dir_fd=job.dir_fd)
    job.committed = True
    os.close(job.dir_fd)
    job.dir_fd = -1
    log.debug("wrote %s (%d bytes)", target.show(job.path), job.size)


def _discard_unfinished(jobs: list[_FileJob]) -> None:
    """Close what is still open and remove the temp files of files that were not committed."""
    for job in jobs:
        if job.fd >= 0:
            os.close(job.fd)
            job.fd = -1
        if job.dir_fd >= 0:
            if not job.committed and job.temp_name:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(job.temp_name, dir_fd=job.dir_fd)
            os.close(job.dir_fd)
            job.dir_fd = -1


def _drop_cache_entry(cache: ChunkCache, digest: Digest) -> None:
    """Remove a corrupt entry (from disk and memory) so the fetcher downloads the chunk again
    instead of reading it."""
    try:
        cache.discard(digest)
    except CacheError as exc:
        cause = exc.__cause__
        reason = cause.strerror if isinstance(cause, OSError) and cause.strerror else str(cause or exc)
        raise IntegrityError(
            f"cache entry {digest} is corrupt and cannot be removed: {reason}", hint=exc.hint
        ) from None


# -- file I/O helpers (blocking; run in worker threads) ---------------------------------------


# -- the command ------------------------------------------------------------------------------


def run_pull(args: argparse.Namespace, client_options: ClientOptions) -> int:
    """``ocifs pull``: pull, then print a one-line summary on stderr (or ``--json`` on stdout)."""
    ref = parse_reference(args.reference)
    options = PullOptions(jobs=args.jobs, include=tuple(args.include))
    cache_dir = Path(args.cache_dir) if args.cache_dir else default_cache_dir()
    mode = "off" if args.json else Progress.choose_mode(args.quiet)

    async def go() -> PullResult:
        # The constructor scans a bounded cache and creates directories: not on the event loop.
        make_cache = functools.partial(ChunkCache, cache_dir, max_size=args.cache_max_size, memory_bytes=0)
        cache = await trio.to_thread.run_sync(make_cache)
        async with connect(ref.registry, client_options, repository=ref.repository) as client:
            return await pull(client, ref, Path(args.output), cache, options, progress_mode=mode)

    result = trio.run(go)
    if args.json:
        json.dump(result.summary(), sys.stdout, indent=2)
        sys.stdout.write("\n")
    elif not args.quiet:
        rate = result.bytes / MIB / result.seconds if result.seconds > 0 else 0.0
        print(
            f"pulled {len(result.files)} file(s), {format_size(result.bytes)} in {result.seconds:.1f}s"
            f" ({rate:,.1f} MiB/s) into {result.output}: {format_size(result.bytes_downloaded)} downloaded,"
            f" {format_size(result.bytes_from_cache)} from the cache",
            file=sys.stderr,
        )
    return 0
