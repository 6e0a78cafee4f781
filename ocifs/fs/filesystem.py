"""The filesystem core of ``ocifs mount``: an artifact's files as a read-only tree, and reads.

Owns: the tree (directories implied by the file paths, inode numbers, attributes from the
manifest alone so that ``ls -l`` fetches nothing), open-file handles with their read-ahead
streams, and the read path: byte range → chunk spans → verified bytes from the shared
:class:`~ocifs.cache.fetcher.Fetcher`. Must not: import pyfuse3 (``ocifs.fs.fuse_ops`` adapts this
module to it), httpx or the registry package, or block the trio loop (file I/O and hashing
run in worker threads, inside the fetcher or here).

What is verified before a byte is served:

- **Chunked files**: the chunk-index blob is fetched on the first read of the file, checked
  against its descriptor digest and validated against the manifest (docs/spec.md R14–R17,
  :func:`~ocifs.index.parse_chunk_index`); every chunk is checked against its sha256 by the
  fetcher. Nothing unverified is ever served.
- **Small plain files** (at most :data:`PLAIN_WHOLE_MAX`): fetched whole and checked against
  the layer digest by the fetcher, like a chunk.
- **Large plain files**: read by HTTP Range in pieces of :data:`PIECE_SIZE`, which have no
  digest of their own. Pieces are only length-checked when served. While the pieces of a
  blob arrive in order (a sequential read), they are hashed as they come; if the whole blob
  has been hashed and does not match the layer digest, the file is marked bad and every later
  read of it fails (:class:`~ocifs.errors.IntegrityError`), and an error is logged. Bytes
  already served cannot be recalled: prefer chunked files, which are verified per chunk.

Errors are :mod:`ocifs.errors` exceptions (``NotFound`` for a missing name or a stale inode,
the fetcher's errors for reads); the FUSE adapter maps them to errno. Everything here runs in
the one trio run of the daemon; no locks are needed because trio tasks switch only at awaits.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime as dt
import functools
import json
import logging
import os
import stat
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import trio

from ocifs.cache.fetcher import Fetcher
from ocifs.cache.prefetch import Prefetcher, PrefetchMode, Stream, Units
from ocifs.digest import Digest
from ocifs.errors import FormatError, IntegrityError, NotFound, OcifsError
from ocifs.format import safetensors as safetensors_layout
from ocifs.format.media import DEFAULT_CHUNK_SIZE, MAX_COMPONENT_BYTES
from ocifs.format.model import Artifact, ChunkedFile, ChunkIndex, File, PlainFile
from ocifs.format.parse import parse_chunk_index

log = logging.getLogger(__name__)

T = TypeVar("T")

#: The inode of the root directory: FUSE_ROOT_ID, fixed by the kernel protocol.
ROOT_INODE = 1

#: Plain layers up to this size are fetched whole and verified like a chunk: 4 default
#: 16 MiB chunks, so the first read of such a file waits for at most ~0.1 s of transfer at
#: the ~700 MiB/s a single GET reaches here (design §7), and one such flight holds at most
#: 64 MiB of memory.
PLAIN_WHOLE_MAX = 64 * 1024 * 1024

#: Larger plain layers are read by Range requests of this size: the default chunk size, for
#: the same reason chunks have it (per-request costs vanish, a lazy read fetches little).
PIECE_SIZE = DEFAULT_CHUNK_SIZE

#: Unverified pieces of large plain layers kept in memory (bytes). They cannot enter the
#: verified chunk cache, so this small LRU is what turns 128 KiB-1 MiB FUSE reads into one
#: Range request per piece. 8 pieces: a read-ahead window of 4 pieces plus the ones being read.
PIECE_CACHE_BYTES = 8 * PIECE_SIZE

#: Read-ahead window cap for large plain layers: half the piece cache, so pieces fetched
#: ahead are not evicted before the reader gets to them.
PIECE_MAX_WINDOW = PIECE_CACHE_BYTES // 2

#: Chunk indexes above this size are parsed in a worker thread (a 100,000-chunk index is
#: ~12 MB of JSON: ~100 ms that would stall every other request of the mount).
PARSE_IN_THREAD_ABOVE = 256 * 1024

#: ``st_blksize``: the I/O size `cp` and stdio pick for the files. 1 MiB is the largest FUSE
#: read request (min(read_ahead_kb, 1 MiB), ../shared/fuse.md).
BLOCK_SIZE = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Attributes:
    """What ``stat`` shows of one inode. ``mtime_ns`` also serves as atime and ctime."""

    inode: int
    mode: int
    nlink: int
    size: int
    uid: int
    gid: int
    mtime_ns: int

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)

    @property
    def blocks(self) -> int:
        """512-byte blocks, as ``du`` counts them."""
        return (self.size + 511) // 512


@dataclass(slots=True)
class Node:
    """One inode of the tree: a directory (``file is None``) or a file of the artifact."""

    inode: int
    path: str  # "" for the root
    parent: int
    file: File | None = None
    children: dict[str, int] = dataclasses.field(default_factory=dict)

    @property
    def is_dir(self) -> bool:
        return self.file is None

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]


@dataclass(slots=True)
class FsStats:
    """Counters of one :class:`FileSystem` since it was created (see :meth:`FileSystem.stats`).

    ``reads``/``bytes_read``: read requests served and bytes returned; ``read_errors``: reads
    that failed; ``opens``/``open_files``: opens so far / handles open now;
    ``index_loads``: chunk indexes fetched and validated; ``piece_fetches``: Range pieces of
    large plain layers fetched; ``plain_verified``/``plain_verify_failures``: large plain
    layers whose whole-blob digest was checked after a complete in-order read, and how many
    of those did not match.
    """

    reads: int = 0
    bytes_read: int = 0
    read_errors: int = 0
    opens: int = 0
    open_files: int = 0
    index_loads: int = 0
    piece_fetches: int = 0
    plain_verified: int = 0
    plain_verify_failures: int = 0


@dataclass(slots=True)
class _OpenFile:
    inode: int
    stream: Stream | None


class _ChunkedState:
    """The validated chunk index of one chunked file, loaded on first use."""

    __slots__ = ("error", "index")

    def __init__(self) -> None:
        self.index: ChunkIndex | None = None
        # A FormatError is permanent (the artifact is broken or hostile): remembered, so every
        # read does not fetch and parse the same bad index again. Transient errors are not.
        self.error: FormatError | None = None


class _PlainBlob:
    """Range-read state of one large plain layer: its pieces and the in-order hash."""

    __slots__ = ("bad", "digest", "hashed_to", "hasher", "hashing", "size", "units")

    def __init__(self, digest: Digest, size: int) -> None:
        self.digest = digest
        self.size = size
        self.units = Units.fixed(size, PIECE_SIZE)
        self.hasher: Any = digest.hasher()
        self.hashed_to = 0  # pieces [0, hashed_to) went into the hasher
        self.hashing = False  # a task is feeding the hasher right now
        self.bad = False


class FileSystem:
    """The read-only tree of one artifact and its read path.

    ``repository`` is where blobs are fetched from (the reference's repository); ``fetcher``
    is shared with every other reader in the process; ``prefetcher`` (``None``: no
    read-ahead) owns the read-ahead policy. ``reference`` is shown in the stats. ``uid``/
    ``gid`` own every inode (default: this process's); ``mtime_ns`` is every inode's time
    (default: the manifest's ``org.opencontainers.image.created`` annotation, else now).

    Inode numbers are assigned in sorted path order from 2 (1 is the root), so they are the
    same for every mount of the same artifact.
    """

    def __init__(
        self,
        artifact: Artifact,
        repository: str,
        fetcher: Fetcher,
        prefetcher: Prefetcher | None = None,
        *,
        reference: str = "",
        uid: int | None = None,
        gid: int | None = None,
        mtime_ns: int | None = None,
    ) -> None:
        self.artifact = artifact
        self.repository = repository
        self.fetcher = fetcher
        self.prefetcher = prefetcher
        self.reference = reference
        self.uid = os.geteuid() if uid is None else uid
        self.gid = os.getegid() if gid is None else gid
        self.mtime_ns = _created_ns(artifact) if mtime_ns is None else mtime_ns
        self.started = time.time()
        self._nodes = _build_tree(artifact)
        self._subdirs = collections.Counter(
            n.parent for n in self._nodes.values() if n.is_dir and n.inode != ROOT_INODE
        )
        self._lookups: collections.Counter[int] = collections.Counter()
        self._handles: dict[int, _OpenFile] = {}
        self._next_handle = 1
        self._chunked: dict[int, _ChunkedState] = {}
        # Read-ahead hints per file (record ends, see _learn_boundaries); None: tried, none.
        self._boundaries: dict[int, tuple[int, ...] | None] = {}
        self._plain: dict[int, _PlainBlob] = {}
        self._pieces = _PieceCache(PIECE_CACHE_BYTES)
        self._stats = FsStats()

    # ------------------------------------------------------------------ the tree

    def node(self, inode: int) -> Node:
        """The node of ``inode``; :class:`NotFound` for an inode this tree never had."""
        node = self._nodes.get(inode)
        if node is None:
            raise NotFound(f"no inode {inode}")
        return node

    def path_of(self, inode: int) -> str:
        """The path of ``inode`` for messages ("/" for the root, "?" for an unknown inode)."""
        node = self._nodes.get(inode)
        return "?" if node is None else "/" + node.path

    def lookup(self, parent: int, name: str) -> Attributes:
        """The attributes of entry ``name`` of directory ``parent``; counts one kernel lookup.

        ``.`` and ``..`` are answered. :class:`NotFound` if there is no such entry.
        """
        node = self.node(parent)
        if not node.is_dir:
            raise NotFound(f"{self.path_of(parent)} is not a directory")
        if name == ".":
            inode = parent
        elif name == "..":
            inode = node.parent
        else:
            found = node.children.get(name)
            if found is None:
                raise NotFound(f"{self.path_of(parent).rstrip('/')}/{name}: no such file")
            inode = found
        self.remember(inode)
        return self.getattr(inode)

    def remember(self, inode: int) -> None:
        """Count one kernel reference to ``inode`` (a lookup, or an entry of readdirplus)."""
        self._lookups[inode] += 1

    def forget(self, inode: int, count: int) -> None:
        """The kernel dropped ``count`` references to ``inode``. The tree is immutable, so the
        node stays; the count is kept for correctness checks (:meth:`lookup_count`)."""
        left = self._lookups[inode] - count
        if left > 0:
            self._lookups[inode] = left
        else:
            self._lookups.pop(inode, None)

    def lookup_count(self, inode: int) -> int:
        """How many references the kernel holds to ``inode`` as far as we know."""
        return self._lookups[inode]

    def getattr(self, inode: int) -> Attributes:
        """The attributes of ``inode``, from the manifest alone (no blob is fetched)."""
        node = self.node(inode)
        if node.is_dir:
            return Attributes(
                inode, stat.S_IFDIR | 0o555, 2 + self._subdirs[inode], 0, self.uid, self.gid, self.mtime_ns
            )
        assert node.file is not None
        return Attributes(inode, stat.S_IFREG | 0o444, 1, node.file.size, self.uid, self.gid, self.mtime_ns)

    def readdir(self, inode: int, start: int = 0) -> Iterator[tuple[str, Attributes, int]]:
        """Entries of directory ``inode`` from position ``start``: ``(name, attributes, next)``
        where ``next`` is the position to resume after that entry. Sorted by name, so
        positions are stable for the life of the mount."""
        node = self.node(inode)
        if not node.is_dir:
            raise NotFound(f"{self.path_of(inode)} is not a directory")
        names = sorted(node.children)
        for position in range(start, len(names)):
            name = names[position]
            yield name, self.getattr(node.children[name]), position + 1

    def xattrs(self, inode: int) -> dict[str, bytes]:
        """Extended attributes of ``inode``, computed when asked.

        Files: ``user.ocifs.digest`` (the whole file's sha256 when recorded; a plain layer's
        digest), ``user.ocifs.chunks`` (number of chunks; 1 for a plain layer), and
        ``user.ocifs.kind`` (``chunked``/``plain``). The root: ``user.ocifs.reference`` (the
        reference pinned to its digest) and ``user.ocifs.stats`` (:meth:`stats` as JSON).
        """
        node = self.node(inode)
        attrs: dict[str, bytes] = {}
        if inode == ROOT_INODE:
            attrs["user.ocifs.reference"] = self.reference.encode()
            attrs["user.ocifs.stats"] = json.dumps(self.stats(), sort_keys=True).encode()
        f = node.file
        if isinstance(f, ChunkedFile):
            if f.file_digest is not None:
                attrs["user.ocifs.digest"] = str(f.file_digest).encode()
            attrs["user.ocifs.chunks"] = str(len(f.chunks)).encode()
            attrs["user.ocifs.kind"] = b"chunked"
        elif isinstance(f, PlainFile):
            attrs["user.ocifs.digest"] = str(f.digest).encode()
            attrs["user.ocifs.chunks"] = b"1"
            attrs["user.ocifs.kind"] = b"plain"
        return attrs

    def statfs(self) -> dict[str, int]:
        """``statvfs`` figures: total size in ``bsize`` blocks, nothing free, one inode per node."""
        bsize = 4096
        blocks = (self.artifact.total_size + bsize - 1) // bsize
        return {
            "bsize": bsize,
            "frsize": bsize,
            "blocks": blocks,
            "bfree": 0,
            "bavail": 0,
            "files": len(self._nodes),
            "ffree": 0,
            "favail": 0,
            "namemax": MAX_COMPONENT_BYTES,
        }

    # ------------------------------------------------------------------ open files

    def open(self, inode: int) -> int:
        """Open file ``inode`` for reading; returns a handle for :meth:`read_handle`.

        With a prefetcher, the handle gets a read-ahead stream (and in ``whole`` mode the
        file's fetch starts now, in the background).
        """
        node = self.node(inode)
        if node.file is None:
            raise IsADirectory(f"{self.path_of(inode)} is a directory")
        stream = None
        if self.prefetcher is not None:
            stream = self._open_stream(inode, node.file)
        handle = self._next_handle
        self._next_handle += 1
        self._handles[handle] = _OpenFile(inode, stream)
        self._stats.opens += 1
        self._stats.open_files = len(self._handles)
        return handle

    def handle_inode(self, handle: int) -> int | None:
        """The inode ``handle`` was opened on, or ``None`` if it is not open."""
        open_file = self._handles.get(handle)
        return None if open_file is None else open_file.inode

    def release(self, handle: int) -> None:
        """Close ``handle``. Prefetches already started complete (they may serve others)."""
        open_file = self._handles.pop(handle, None)
        if open_file is not None and open_file.stream is not None:
            open_file.stream.close()
        self._stats.open_files = len(self._handles)

    async def read_handle(self, handle: int, offset: int, size: int) -> bytes | memoryview:
        """:meth:`read` through an open handle: lets its read-ahead stream see the read first."""
        open_file = self._handles.get(handle)
        if open_file is None:
            raise NotFound(f"no open file handle {handle}")
        if open_file.stream is not None:
            open_file.stream.on_read(offset, size)
        data = await self.read(open_file.inode, offset, size)
        inode = open_file.inode
        if offset == 0 and open_file.stream is not None and inode not in self._boundaries:
            assert self.prefetcher is not None  # streams come from it
            self._boundaries[inode] = None  # one attempt per file, also with concurrent readers
            learn = functools.partial(self._learn_boundaries, inode, data)
            self.prefetcher.background(learn, f"reading the read-ahead hints of {self.path_of(inode)}")
        return data

    async def _learn_boundaries(self, inode: int, first: bytes | memoryview) -> None:
        """On the first read of a file's start, find where its records end (safetensors: the
        header and each tensor) and give the file's read-ahead streams those boundaries, so
        loading one tensor fetches nothing after it (docs/benchmarks.md: 176 MiB instead of
        112 for a 64 MiB tensor). ``first`` is that read's data; the rest of a longer header
        is read here. Runs in the background (it may need a read of its own, and a reply must
        not wait for hints). Hints only: anything unreadable or malformed means no hints,
        silently (the reader's own reads report real failures)."""
        f = self.node(inode).file
        if (
            f is None
            or self.prefetcher is None
            or self.prefetcher.mode is not PrefetchMode.AUTO
            or not safetensors_layout.applies_to(self.path_of(inode))
        ):
            return
        end = safetensors_layout.header_end(first)
        if end is None or end > f.size:
            return
        head = first
        if len(head) < end:
            try:
                head = await self._read_range(inode, f, 0, end)
            except OcifsError:
                return
        if end <= PARSE_IN_THREAD_ABOVE:
            hints = safetensors_layout.boundaries(head, f.size)
        else:
            hints = await trio.to_thread.run_sync(safetensors_layout.boundaries, bytes(head), f.size)
        if not hints:
            log.debug("%s: no read-ahead hints from its safetensors header", self.path_of(inode))
            return
        self._boundaries[inode] = hints
        for open_file in self._handles.values():
            if open_file.inode == inode and open_file.stream is not None:
                open_file.stream.set_boundaries(hints)
        log.debug("%s: read-ahead stops at the end of each of its %d records", self.path_of(inode), len(hints))

    def _open_stream(self, inode: int, f: File) -> Stream | None:
        stream = self._new_stream(inode, f)
        if stream is not None and (hints := self._boundaries.get(inode)):
            stream.set_boundaries(hints)
        return stream

    def _new_stream(self, inode: int, f: File) -> Stream | None:
        assert self.prefetcher is not None
        if isinstance(f, ChunkedFile):
            units = Units.from_sizes([c.size for c in f.chunks])
            fetch: Callable[[int], Awaitable[None]] = functools.partial(self._prefetch_chunk, inode)
            return self.prefetcher.open_stream(inode, units, fetch)
        if f.size == 0:
            return None
        if f.size <= PLAIN_WHOLE_MAX:
            # One unit: fetched whole by the first read; only whole mode fetches it on open.
            return self.prefetcher.open_stream(inode, Units(f.size, (0,)), functools.partial(self._prefetch_plain, f))
        blob = self._plain_blob(inode, f)
        fetch = functools.partial(self._prefetch_piece, blob)
        return self.prefetcher.open_stream(inode, blob.units, fetch, max_window=PIECE_MAX_WINDOW)

    # ------------------------------------------------------------------ reads

    async def read(self, inode: int, offset: int, size: int) -> bytes | memoryview:
        """Exactly the bytes ``[offset, offset + size)`` of file ``inode``, clamped at its end
        (``b""`` at or past the end); a ``memoryview`` when it is a range of a chunk held in
        memory (no copy). Raises :class:`NotFound` for an unknown inode, the
        fetcher's errors (:class:`~ocifs.errors.RegistryUnavailable`,
        :class:`~ocifs.errors.IntegrityError`, ...) when a needed blob cannot be had, and
        :class:`~ocifs.errors.FormatError` when the chunk index is invalid."""
        if offset < 0 or size < 0:
            raise ValueError(f"negative offset or size ({offset}, {size})")
        node = self.node(inode)
        f = node.file
        if f is None:
            raise IsADirectory(f"{self.path_of(inode)} is a directory")
        try:
            data = await self._read_range(inode, f, offset, size)
        except OcifsError:
            self._stats.read_errors += 1
            raise
        self._stats.reads += 1
        self._stats.bytes_read += len(data)
        return data

    async def _read_range(self, inode: int, f: File, offset: int, size: int) -> bytes | memoryview:
        """:meth:`read` of file ``f`` (node ``inode``) without counting it as a reader's read."""
        if offset >= f.size or size == 0:
            return b""
        if isinstance(f, ChunkedFile):
            return await self._read_chunked(inode, f, offset, size)
        if f.size <= PLAIN_WHOLE_MAX:
            end = min(offset + size, f.size)
            return await self.fetcher.read(self.repository, f.digest, f.size, offset, end)
        return await self._read_plain_range(self._plain_blob(inode, f), offset, size)

    async def chunk_index(self, inode: int) -> ChunkIndex:
        """The validated chunk index of chunked file ``inode``, fetched on first use.

        Concurrent first readers share one download (the fetcher's single flight). The blob is
        checked against its digest and against the manifest (R14–R17) before it is used.
        """
        f = self.node(inode).file
        if not isinstance(f, ChunkedFile):
            raise ValueError(f"{self.path_of(inode)} is not a chunked file")
        state = self._chunked.setdefault(inode, _ChunkedState())
        if state.index is not None:
            return state.index
        if state.error is not None:
            raise state.error
        data = await self.fetcher.get(self.repository, f.index.digest, f.index.size)
        if state.index is None:  # another task may have parsed it while we waited
            try:
                if len(data) > PARSE_IN_THREAD_ABOVE:
                    parsed = await trio.to_thread.run_sync(parse_chunk_index, data, f)
                else:
                    parsed = parse_chunk_index(data, f)
            except FormatError as exc:
                state.error = exc
                log.error("%s: invalid chunk index: %s", self.path_of(inode), exc)
                raise
            if state.index is None:
                state.index = parsed
                self._stats.index_loads += 1
                log.debug("%s: chunk index %s loaded (%d chunks)", self.path_of(inode), f.index.digest.short,
                          len(parsed.chunks))  # fmt: skip
        return state.index

    async def _read_chunked(self, inode: int, f: ChunkedFile, offset: int, size: int) -> bytes | memoryview:
        chunk_index = await self.chunk_index(inode)
        spans = chunk_index.spans(offset, size)
        if len(spans) == 1:
            s = spans[0]
            return await self.fetcher.read(self.repository, s.chunk.digest, s.chunk.size, s.start, s.end)
        # A request straddling chunks (mmap faults read windows centred on the faulting page,
        # so offsets are not aligned: ../shared/fuse.md) fetches its chunks concurrently.
        calls = [
            functools.partial(self.fetcher.read, self.repository, s.chunk.digest, s.chunk.size, s.start, s.end)
            for s in spans
        ]
        return b"".join(await _gather(calls))

    async def _prefetch_chunk(self, inode: int, n: int) -> None:
        """Read-ahead of chunk ``n``: after the index is validated, into the chunk cache."""
        chunk_index = await self.chunk_index(inode)
        chunk = chunk_index.chunks[n]
        await self.fetcher.prefetch(self.repository, chunk.digest, chunk.size)

    async def _prefetch_plain(self, f: PlainFile, n: int) -> None:
        await self.fetcher.prefetch(self.repository, f.digest, f.size)

    # ------------------------------------------------------------------ large plain layers

    def _plain_blob(self, inode: int, f: PlainFile) -> _PlainBlob:
        blob = self._plain.get(inode)
        if blob is None:
            blob = self._plain[inode] = _PlainBlob(f.digest, f.size)
        return blob

    async def _read_plain_range(self, blob: _PlainBlob, offset: int, size: int) -> bytes:
        if blob.bad:
            raise IntegrityError(f"{blob.digest}: the blob did not match its digest when read in full")
        end = min(offset + size, blob.size)
        first, last = blob.units.unit_at(offset), blob.units.unit_at(end - 1)
        calls = [functools.partial(self._piece, blob, n) for n in range(first, last + 1)]
        pieces = await _gather(calls)
        data = b"".join(pieces)
        start = offset - blob.units.start(first)
        return data[start : start + (end - offset)]

    async def _prefetch_piece(self, blob: _PlainBlob, n: int) -> None:
        await self._piece(blob, n)

    async def _piece(self, blob: _PlainBlob, n: int) -> bytes:
        """Piece ``n`` of a large plain blob: from the piece cache, else one Range request
        (single flight per piece), then fed to the in-order hash if it is the next one."""
        key = (blob.digest, n)
        data = await self._pieces.get(key)
        if data is not None:
            return data
        start = blob.units.start(n)
        fetch = functools.partial(self.fetcher.get_range, self.repository, blob.digest, start,
                                  start + blob.units.length(n))  # fmt: skip
        data, fetched = await self._pieces.load(key, fetch)
        if fetched:
            self._stats.piece_fetches += 1
            await self._advance_hash(blob)
        return data

    async def _advance_hash(self, blob: _PlainBlob) -> None:
        """Feed the hasher every cached piece that continues the in-order prefix; compare the
        digest once the whole blob went in. Cheap: each piece is hashed once, in a thread,
        only while reads come in order (a piece evicted before its turn ends verification)."""
        if blob.hashing or blob.bad:
            return
        blob.hashing = True
        try:
            while blob.hashed_to < len(blob.units):
                piece = self._pieces.peek((blob.digest, blob.hashed_to))
                if piece is None:
                    return
                await trio.to_thread.run_sync(blob.hasher.update, piece)
                blob.hashed_to += 1
            if blob.hasher.hexdigest() == blob.digest.hex:
                self._stats.plain_verified += 1
                log.debug("plain layer %s verified after a complete read", blob.digest.short)
            else:
                blob.bad = True
                self._stats.plain_verify_failures += 1
                self._pieces.drop(blob.digest)
                log.error("plain layer %s does not match its digest: further reads fail", blob.digest)
        finally:
            blob.hashing = False

    # ------------------------------------------------------------------ counters

    def stats(self) -> dict[str, Any]:
        """Every counter of the mount as one JSON-ready dict: ``fs`` (:class:`FsStats`),
        ``fetch`` (:class:`~ocifs.cache.fetcher.FetchStats`), ``cache``
        (:class:`~ocifs.cache.store.CacheCounters`: this process's hits and misses), ``prefetch``
        (:class:`~ocifs.cache.prefetch.PrefetchStats`, absent without a prefetcher), plus the
        reference, the number of files, the uptime and the serving process's pid (``ocifs
        umount`` waits for it to exit). Cheap: no I/O."""
        result: dict[str, Any] = {
            "reference": self.reference,
            "pid": os.getpid(),
            "files": len(self.artifact.files),
            "uptime_seconds": round(time.time() - self.started, 3),
            "fs": dataclasses.asdict(self._stats),
            "fetch": dataclasses.asdict(self.fetcher.stats()),
            "cache": dataclasses.asdict(self.fetcher.cache.counters()),
        }
        if self.prefetcher is not None:
            result["prefetch"] = dataclasses.asdict(self.prefetcher.stats())
            result["prefetch"]["mode"] = self.prefetcher.mode.value
        return result

    def fs_stats(self) -> FsStats:
        """A copy of the filesystem counters."""
        return dataclasses.replace(self._stats)


class IsADirectory(OcifsError):
    """A file operation (open, read) named a directory."""


class _PieceCache:
    """A small LRU of unverified Range pieces with single flight per piece (bytes-bounded)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._data: collections.OrderedDict[tuple[Digest, int], bytes] = collections.OrderedDict()
        self._bytes = 0
        self._flights: dict[tuple[Digest, int], trio.Event] = {}

    def peek(self, key: tuple[Digest, int]) -> bytes | None:
        return self._data.get(key)

    async def get(self, key: tuple[Digest, int]) -> bytes | None:
        """The cached piece (waiting for a flight of it in progress), else ``None``."""
        flight = self._flights.get(key)
        if flight is not None:
            await flight.wait()
        data = self._data.get(key)
        if data is not None:
            self._data.move_to_end(key)
        return data

    async def load(self, key: tuple[Digest, int], fetch: Callable[[], Awaitable[bytes]]) -> tuple[bytes, bool]:
        """Fetch and cache a piece unless another task is doing it; ``(data, fetched_by_us)``."""
        while True:
            flight = self._flights.get(key)
            if flight is None:
                break
            await flight.wait()
            data = self._data.get(key)
            if data is not None:
                return data, False
        event = self._flights[key] = trio.Event()
        try:
            data = await fetch()
        finally:
            del self._flights[key]
            event.set()
        self._data[key] = data
        self._bytes += len(data)
        while self._bytes > self.max_bytes and len(self._data) > 1:
            _, old = self._data.popitem(last=False)
            self._bytes -= len(old)
        return data, True

    def drop(self, digest: Digest) -> None:
        for key in [k for k in self._data if k[0] == digest]:
            self._bytes -= len(self._data.pop(key))


async def _gather(calls: Sequence[Callable[[], Awaitable[T]]]) -> list[T]:
    """Run ``calls`` concurrently; their results in order. The first failure is raised as
    itself (not wrapped in an ExceptionGroup), so callers and the adapter see the real error."""
    results: list[T | None] = [None] * len(calls)
    errors: list[BaseException] = []

    async def run(i: int, call: Callable[[], Awaitable[T]]) -> None:
        try:
            results[i] = await call()
        except OcifsError as exc:
            errors.append(exc)
            nursery.cancel_scope.cancel()  # the request fails anyway; stop waiting for the rest

    async with trio.open_nursery() as nursery:
        for i, call in enumerate(calls):
            nursery.start_soon(run, i, call)
    if errors:
        raise errors[0]
    return [r for r in results if r is not None]


def _build_tree(artifact: Artifact) -> dict[int, Node]:
    """Nodes for every file and every directory its path implies; inodes in sorted path order.

    The manifest parser already refused duplicate paths and files that are directories of
    other files (R12), so every path here is either a file or a directory, never both.
    """
    files = {f.path: f for f in artifact.files}
    dirs: set[str] = set()
    for path in files:
        parts = path.split("/")
        for depth in range(1, len(parts)):
            dirs.add("/".join(parts[:depth]))
    nodes: dict[int, Node] = {ROOT_INODE: Node(ROOT_INODE, "", ROOT_INODE)}
    by_path: dict[str, int] = {"": ROOT_INODE}
    # Sorting by UTF-8 bytes gives the same order whatever the locale: stable inode numbers.
    for inode, path in enumerate(sorted(files.keys() | dirs, key=lambda p: p.encode()), start=2):
        by_path[path] = inode
        nodes[inode] = Node(inode, path, 0, files.get(path))
    for path, inode in by_path.items():
        if inode == ROOT_INODE:
            continue
        parent_path = path.rsplit("/", 1)[0] if "/" in path else ""
        parent = by_path[parent_path]
        nodes[inode].parent = parent
        nodes[parent].children[nodes[inode].name] = inode
    return nodes


def _created_ns(artifact: Artifact) -> int:
    """The manifest's ``org.opencontainers.image.created`` (RFC 3339) in ns, else now."""
    created = artifact.annotations.get("org.opencontainers.image.created")
    if created:
        try:
            when = dt.datetime.fromisoformat(created.replace("Z", "+00:00"))
        except ValueError:
            pass
        else:
            if when.tzinfo is None:
                when = when.replace(tzinfo=dt.UTC)
            return int(when.timestamp() * 1_000_000_000)
    return time.time_ns()
