"""The filesystem core of ``ocifs mount``: the façade the FUSE adapter and the daemon use.

Owns: putting the parts together behind one object, :class:`FileSystem` — the tree
(:mod:`ocifs.fs.tree`: inodes, names, attributes, xattrs, statfs, all from the manifest), open
handles (:mod:`ocifs.fs.handles`), the read paths of chunked files (:mod:`ocifs.fs.chunked`)
and plain files (:mod:`ocifs.fs.plain`, where what is verified before a byte is served is
written down), read-ahead hints (:mod:`ocifs.fs.hints`) and the counters
(:mod:`ocifs.fs.counters`). Must not: import pyfuse3 (``ocifs.fs.fuse_ops`` adapts this
module to it), httpx or the registry package, or block the trio loop (file I/O and hashing
run in worker threads, inside the fetcher or the parts).

Errors are :mod:`ocifs.errors` exceptions (``NotFound`` for a missing name or a stale inode or
handle, ``IsADirectory``, the fetcher's errors for reads); the FUSE adapter maps them to
errno. Everything here runs in the one trio run of the daemon; no locks are needed because
trio tasks switch only at awaits. Start with :meth:`FileSystem.read_handle`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Iterator
from typing import Any

from ocifs.cache.fetcher import Fetcher
from ocifs.cache.prefetch import Prefetcher, Stream
from ocifs.errors import NotFound, OcifsError
from ocifs.format.model import Artifact, ChunkedFile, ChunkIndex, File
from ocifs.fs.chunked import ChunkedReads
from ocifs.fs.counters import FsStats
from ocifs.fs.handles import Handles
from ocifs.fs.hints import ReadAheadHints
from ocifs.fs.plain import PlainReads
from ocifs.fs.tree import BLOCK_SIZE, ROOT_INODE, Attributes, Node, Tree, created_ns

__all__ = ["BLOCK_SIZE", "ROOT_INODE", "Attributes", "FileSystem", "FsStats", "Node"]


class FileSystem:
    """The read-only tree of one artifact and its read path.

    ``repository`` is where blobs are fetched from (the reference's repository); ``fetcher``
    is shared with every other reader in the process; ``prefetcher`` (``None``: no
    read-ahead) owns the read-ahead policy. ``reference`` is shown in the stats. ``uid``/
    ``gid`` own every inode (default: this process's); ``mtime_ns`` is every inode's time
    (default: the manifest's ``org.opencontainers.image.created`` annotation, else now).
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
        self.started = time.time()
        self.tree = Tree(
            artifact,
            uid=os.geteuid() if uid is None else uid,
            gid=os.getegid() if gid is None else gid,
            mtime_ns=created_ns(artifact) if mtime_ns is None else mtime_ns,
        )
        self._stats = FsStats()
        self._handles = Handles()
        self._chunked = ChunkedReads(fetcher, repository, self._stats, self.tree.path_of)
        self._plain = PlainReads(fetcher, repository, self._stats)
        self._hints = None
        if prefetcher is not None:
            self._hints = ReadAheadHints(prefetcher, self._read_range, self._handles.streams_of, self.tree.path_of)

    # ------------------------------------------------------------------ the tree

    def node(self, inode: int) -> Node:
        """The node of ``inode``; :class:`NotFound` for an inode this tree never had."""
        return self.tree.node(inode)

    def path_of(self, inode: int | None) -> str:
        """The path of ``inode`` for messages ("/" for the root, "?" for an unknown inode)."""
        return self.tree.path_of(inode)

    def lookup(self, parent: int, name: str) -> Attributes:
        """The attributes of entry ``name`` of directory ``parent`` (``.`` and ``..`` too);
        :class:`NotFound` if there is no such entry."""
        return self.tree.lookup(parent, name)

    def getattr(self, inode: int) -> Attributes:
        """The attributes of ``inode``, from the manifest alone (no blob is fetched)."""
        return self.tree.getattr(inode)

    def readdir(self, inode: int, start: int = 0) -> Iterator[tuple[str, Attributes, int]]:
        """Entries of directory ``inode`` from position ``start``: ``(name, attributes, next)``
        (see :meth:`ocifs.fs.tree.Tree.readdir`)."""
        return self.tree.readdir(inode, start)

    def xattrs(self, inode: int) -> dict[str, bytes]:
        """Extended attributes of ``inode``, computed when asked: a file's are
        :meth:`ocifs.fs.tree.Tree.file_xattrs`; the root has ``user.ocifs.reference`` (the
        reference pinned to its digest) and ``user.ocifs.stats`` (:meth:`stats` as JSON)."""
        attrs = self.tree.file_xattrs(inode)
        if inode == ROOT_INODE:
            attrs["user.ocifs.reference"] = self.reference.encode()
            attrs["user.ocifs.stats"] = json.dumps(self.stats(), sort_keys=True).encode()
        return attrs

    def statfs(self) -> dict[str, int]:
        """``statvfs`` figures: total size in blocks, nothing free, one inode per node."""
        return self.tree.statfs()

    # ------------------------------------------------------------------ open files

    def open(self, inode: int) -> int:
        """Open file ``inode`` for reading; returns a handle for :meth:`read_handle`.

        With a prefetcher, the handle gets a read-ahead stream (and in ``whole`` mode the
        file's fetch starts now, in the background).
        """
        f = self.tree.file(inode)
        stream = None
        if self.prefetcher is not None:
            stream = self._open_stream(self.prefetcher, inode, f)
        handle = self._handles.add(inode, stream)
        self._stats.opens += 1
        self._stats.open_files = len(self._handles)
        return handle

    def handle_inode(self, handle: int) -> int | None:
        """The inode ``handle`` was opened on, or ``None`` if it is not open."""
        open_file = self._handles.get(handle)
        return None if open_file is None else open_file.inode

    def release(self, handle: int) -> None:
        """Close ``handle``. Prefetches already started complete (they may serve others)."""
        self._handles.close(handle)
        self._stats.open_files = len(self._handles)

    async def read_handle(self, handle: int, offset: int, size: int) -> bytes | memoryview:
        """:meth:`read` through an open handle: lets its read-ahead stream see the read first,
        and the read-ahead hints see the first read of the file's start."""
        open_file = self._handles.get(handle)
        if open_file is None:
            raise NotFound(f"no open file handle {handle}")
        if open_file.stream is not None:
            open_file.stream.on_read(offset, size)
        data = await self.read(open_file.inode, offset, size)
        if open_file.stream is not None and self._hints is not None:
            self._hints.after_read(open_file.inode, self.tree.file(open_file.inode), offset, data)
        return data

    def _open_stream(self, prefetcher: Prefetcher, inode: int, f: File) -> Stream | None:
        if isinstance(f, ChunkedFile):
            stream: Stream | None = self._chunked.open_stream(prefetcher, inode, f)
        else:
            stream = self._plain.open_stream(prefetcher, inode, f)
        if stream is not None and self._hints is not None:
            self._hints.apply(inode, stream)
        return stream

    # ------------------------------------------------------------------ reads

    async def read(self, inode: int, offset: int, size: int) -> bytes | memoryview:
        """Exactly the bytes ``[offset, offset + size)`` of file ``inode``, clamped at its end
        (``b""`` at or past the end); a ``memoryview`` when it is a range of a chunk held in
        memory (no copy). Raises :class:`NotFound` for an unknown inode,
        :class:`~ocifs.errors.IsADirectory` for a directory, the fetcher's errors
        (:class:`~ocifs.errors.RegistryUnavailable`, :class:`~ocifs.errors.IntegrityError`,
        ...) when a needed blob cannot be had, and :class:`~ocifs.errors.FormatError` when the
        chunk index is invalid."""
        if offset < 0 or size < 0:
            raise ValueError(f"negative offset or size ({offset}, {size})")
        f = self.tree.file(inode)
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
            return await self._chunked.read(inode, f, offset, size)
        return await self._plain.read(inode, f, offset, size)

    async def chunk_index(self, inode: int) -> ChunkIndex:
        """The validated chunk index of chunked file ``inode``, fetched on first use (one load
        however many readers ask at once; an invalid index is remembered)."""
        f = self.tree.file(inode)
        if not isinstance(f, ChunkedFile):
            raise ValueError(f"{self.path_of(inode)} is not a chunked file")
        return await self._chunked.index(inode, f)

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
