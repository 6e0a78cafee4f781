"""The thin pyfuse3 adapter over :class:`ocifs.fs.filesystem.FileSystem`: requests in, errno out.

Owns: translating pyfuse3's request handlers into calls on the filesystem core, building
pyfuse3's attribute objects, and the one mapping from exceptions to errno. Must not: hold
any state of its own beyond what pyfuse3 needs (the core owns the tree, handles and counters),
or let any exception but ``FUSEError`` escape a handler — pyfuse3 catches only ``FUSEError``
per request (``src/pyfuse3/handlers.pxi``); anything else ends ``pyfuse3.main()`` and with it
the mount. So every handler goes through :func:`_errno_edge`:

- ``NotFound`` → ``ENOENT``; but from ``read`` → ``EIO``: the file exists, a blob of it is
  missing from the registry, and "no such file" from read(2) would mislead;
- ``AuthenticationError``, ``PermissionDenied`` → ``EACCES``;
- ``IsADirectory`` → ``EISDIR``;
- any other exception → ``EIO``, logged: one line for an :class:`~ocifs.errors.OcifsError`
  (its message says what failed), a traceback for anything else (a bug).

The mount is read-only: the kernel already refuses writes on an ``ro`` mount (EROFS), and
every mutating handler answers ``EROFS`` too, should a request get here anyway.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, Concatenate, ParamSpec, TypeVar, cast

import pyfuse3

from ocifs.errors import AuthenticationError, IsADirectory, NotFound, OcifsError, PermissionDenied
from ocifs.fs.filesystem import BLOCK_SIZE, Attributes, FileSystem

log = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")

#: Entry and attribute timeouts (seconds) of every reply. The tree and the contents never
#: change for the life of a mount (the reference is pinned to a digest), so the kernel may
#: cache names and attributes as long as it likes; a day keeps `ls -lR` of a big artifact
#: from asking twice. Negative lookups are cached as long: a file that is not there now
#: never will be (loaders probe many names that do not exist).
TIMEOUT = 24 * 3600.0

_ERRNO_BY_TYPE: tuple[tuple[type[BaseException], int], ...] = (
    (NotFound, errno.ENOENT),
    (AuthenticationError, errno.EACCES),
    (PermissionDenied, errno.EACCES),
    (IsADirectory, errno.EISDIR),
)


class _DataMissing(OcifsError):
    """A blob a read needs is missing from the registry (answered EIO, logged)."""


def errno_for(exc: BaseException) -> int:
    """The errno a request that raised ``exc`` answers with (see the module docstring)."""
    if isinstance(exc, pyfuse3.FUSEError):
        return int(exc.errno)
    for kind, number in _ERRNO_BY_TYPE:
        if isinstance(exc, kind):
            return number
    return errno.EIO


def _errno_edge(
    what: str,
) -> Callable[
    [Callable[Concatenate[Operations, P], Coroutine[Any, Any, R]]],
    Callable[Concatenate[Operations, P], Coroutine[Any, Any, R]],
]:
    """Decorate a handler so that every exception becomes a ``FUSEError`` (the FUSE edge).

    This is the one place in ocifs that catches ``Exception``: a request must never end the
    daemon. ``what`` names the operation in log lines.
    """

    def decorate(
        handler: Callable[Concatenate[Operations, P], Coroutine[Any, Any, R]],
    ) -> Callable[Concatenate[Operations, P], Coroutine[Any, Any, R]]:
        @functools.wraps(handler)
        async def wrapper(self: Operations, /, *args: P.args, **kwargs: P.kwargs) -> R:
            try:
                return await handler(self, *args, **kwargs)
            except pyfuse3.FUSEError:
                raise
            except Exception as exc:
                number = errno_for(exc)
                self.report(what, args, exc, number)
                raise pyfuse3.FUSEError(number) from None

        return wrapper

    return decorate


class Operations(pyfuse3.Operations):
    """pyfuse3 request handlers for one mounted :class:`FileSystem`."""

    supports_dot_lookup = True
    enable_writeback_cache = False
    enable_acl = False

    def __init__(self, fs: FileSystem) -> None:
        super().__init__()
        self.fs = fs
        self._dir_handles: dict[int, int] = {}  # opendir handle -> directory inode
        self._next_dir_handle = 1

    def report(self, what: str, args: Sequence[Any], exc: Exception, number: int) -> None:
        """Log a failed request: ENOENT quietly, known errors in one line, bugs with a traceback."""
        target = self._describe(what, args)
        if number == errno.ENOENT or isinstance(exc, IsADirectory):
            log.debug("%s: %s", target, exc)
        elif isinstance(exc, OcifsError):
            log.warning("%s failed (%s): %s", target, errno.errorcode.get(number, number), exc)
            log.debug("traceback of the failure above", exc_info=exc)
        else:
            log.error("%s failed with an unexpected error (answered EIO)", target, exc_info=exc)

    def _describe(self, what: str, args: Sequence[Any]) -> str:
        if what == "read" and len(args) >= 3:
            handle, offset, size = args[0], args[1], args[2]
            inode = self.fs.handle_inode(handle)
            return f"read of {self.fs.path_of(inode)} [{offset}, +{size})" if inode else "read"
        if args and isinstance(args[0], int) and what in ("getattr", "open", "getxattr", "listxattr", "opendir"):
            return f"{what} {self.fs.path_of(args[0])}"
        return what

    # ------------------------------------------------------------------ metadata

    @_errno_edge("lookup")
    async def lookup(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        # Names come as bytes; artifact paths are valid UTF-8, so a name that does not decode
        # (surrogate-escaped here) simply matches nothing.
        try:
            attrs = self.fs.lookup(parent_inode, os.fsdecode(name))
        except NotFound:
            # A negative entry (st_ino 0) with a timeout is cached by the kernel; raising
            # ENOENT would not be. Safe because the tree never changes.
            entry = pyfuse3.EntryAttributes()
            entry.st_ino = 0
            entry.entry_timeout = TIMEOUT
            return entry
        return _entry(attrs)

    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        # Nothing to do: the tree never changes for the life of the mount and its nodes are
        # never freed, so the kernel's lookup counts would change nothing (counting them was
        # dead code). pyfuse3 calls this and says it must not raise at all, not even FUSEError.
        return None

    @_errno_edge("getattr")
    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        return _entry(self.fs.getattr(inode))

    @_errno_edge("opendir")
    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        if not self.fs.getattr(inode).is_dir:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        handle = self._next_dir_handle
        self._next_dir_handle += 1
        self._dir_handles[handle] = inode
        return handle

    @_errno_edge("readdir")
    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        inode = self._dir_handles.get(fh)
        if inode is None:
            raise pyfuse3.FUSEError(errno.EBADF)
        for name, attrs, next_id in self.fs.readdir(inode, start_id):
            # pyfuse3 replies with readdirplus: each entry counts as a lookup, which (see
            # forget) nothing here needs to count.
            if not pyfuse3.readdir_reply(token, os.fsencode(name), _entry(attrs), next_id):
                break  # the kernel's buffer is full; it asks again from next_id

    @_errno_edge("releasedir")
    async def releasedir(self, fh: int) -> None:
        self._dir_handles.pop(fh, None)

    @_errno_edge("statfs")
    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        data = pyfuse3.StatvfsData()
        for key, value in self.fs.statfs().items():
            setattr(data, f"f_{key}", value)
        return data

    @_errno_edge("getxattr")
    async def getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        value = self.fs.xattrs(inode).get(os.fsdecode(name))
        if value is None:
            raise pyfuse3.FUSEError(pyfuse3.ENOATTR)
        return value

    @_errno_edge("listxattr")
    async def listxattr(self, inode: int, ctx: pyfuse3.RequestContext) -> Sequence[bytes]:
        return [os.fsencode(name) for name in self.fs.xattrs(inode)]

    # ------------------------------------------------------------------ files

    @_errno_edge("open")
    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        if flags & os.O_ACCMODE != os.O_RDONLY or flags & os.O_TRUNC:
            raise pyfuse3.FUSEError(errno.EROFS)
        handle = self.fs.open(inode)
        # keep_cache: contents are immutable, so pages read once stay valid across opens (a
        # re-read issues zero requests). Never direct_io: it breaks shared mmap, and
        # numpy.memmap then fails with ENODEV (docs/platform.md, "FUSE on Linux").
        return pyfuse3.FileInfo(fh=handle, keep_cache=True, direct_io=False)

    @_errno_edge("read")
    async def read(self, fh: int, off: int, size: int) -> bytes:
        try:
            # pyfuse3 replies with any contiguous buffer (PyObject_GetBuffer), though its stub
            # says bytes: a memoryview of a cached chunk goes to the kernel without a copy.
            return cast(bytes, await self.fs.read_handle(fh, off, size))
        except NotFound as exc:
            if self.fs.handle_inode(fh) is None:
                raise  # a stale handle: ENOENT
            # The file exists; a blob of it is gone from the registry (deleted, or collected
            # by GC). "No such file" from read(2) on a listed file would mislead: EIO.
            raise _DataMissing(str(exc)) from exc

    @_errno_edge("release")
    async def release(self, fh: int) -> None:
        self.fs.release(fh)

    @_errno_edge("flush")
    async def flush(self, fh: int) -> None:
        return None  # nothing is ever written; close(2) must not fail with ENOSYS

    # ------------------------------------------------------------------ refused: read-only

    async def _refuse(self, *args: Any, **kwargs: Any) -> Any:
        raise pyfuse3.FUSEError(errno.EROFS)

    setattr = _refuse
    mknod = _refuse
    mkdir = _refuse
    unlink = _refuse
    rmdir = _refuse
    symlink = _refuse
    rename = _refuse
    link = _refuse
    write = _refuse
    create = _refuse
    setxattr = _refuse
    removexattr = _refuse


def _entry(attrs: Attributes) -> pyfuse3.EntryAttributes:
    entry = pyfuse3.EntryAttributes()
    entry.st_ino = attrs.inode
    entry.generation = 0
    entry.entry_timeout = TIMEOUT
    entry.attr_timeout = TIMEOUT
    entry.st_mode = attrs.mode
    entry.st_nlink = attrs.nlink
    entry.st_uid = attrs.uid
    entry.st_gid = attrs.gid
    entry.st_rdev = 0
    entry.st_size = attrs.size
    entry.st_blksize = BLOCK_SIZE
    entry.st_blocks = attrs.blocks
    entry.st_atime_ns = attrs.mtime_ns
    entry.st_mtime_ns = attrs.mtime_ns
    entry.st_ctime_ns = attrs.mtime_ns
    return entry
