"""A minimal read-only pyfuse3 passthrough: the ceiling of any Python FUSE filesystem here.

``python bench/passthrough_fs.py SOURCE_DIR MOUNTPOINT`` mounts the regular files of
SOURCE_DIR (one level, no subdirectories) read-only on MOUNTPOINT and serves them until
SIGTERM/SIGINT or an unmount, in the foreground. Prints ``ready`` on stdout once the mount
answers and is tuned.

Same shape as an ocifs mount, minus everything ocifs does per byte: pyfuse3 on trio, the mount
options of :func:`ocifs.fs.daemon.fuse_options` (only ``subtype`` differs, so nothing mistakes this
mount for an ocifs one), ``keep_cache`` and no ``direct_io`` at open, ocifs's entry/attr
timeouts and ``st_blksize``, and after the handshake the same kernel tuning
(:func:`ocifs.fs.daemon.tune_mount` with ocifs's default ``read_ahead_kb`` and ``max_background``).
``read()`` is one ``os.pread`` on the fd opened at ``open()``, in the handler itself: with the
source in the page cache, a read costs FUSE + pyfuse3 + Python only. The mount benchmark
(``bench/mount_bench.py``) reads a page-cached file through it: the "FUSE ceiling" row.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import stat
import sys
from pathlib import Path

import pyfuse3
import trio

from ocifs.fs.daemon import DEFAULT_READ_AHEAD_KB, MountConfig, fuse_options, tune_mount
from ocifs.fs.filesystem import BLOCK_SIZE
from ocifs.fs.fuse_ops import TIMEOUT
from ocifs.registry.client import ClientOptions

log = logging.getLogger("passthrough_fs")

SUBTYPE = "passthrough"


class Passthrough(pyfuse3.Operations):
    """Root directory (inode 1) holding the regular files of ``source`` (inodes 2, 3, …)."""

    enable_writeback_cache = False
    enable_acl = False

    def __init__(self, source: Path) -> None:
        super().__init__()
        names = sorted(p.name for p in source.iterdir() if p.is_file() and not p.is_symlink())
        self.paths: dict[int, Path] = {pyfuse3.ROOT_INODE + 1 + i: source / n for i, n in enumerate(names)}
        self.inodes: dict[bytes, int] = {os.fsencode(p.name): ino for ino, p in self.paths.items()}
        self.mtime_ns = source.stat().st_mtime_ns

    def _entry(self, inode: int) -> pyfuse3.EntryAttributes:
        entry = pyfuse3.EntryAttributes()
        entry.st_ino = inode
        entry.generation = 0
        entry.entry_timeout = TIMEOUT
        entry.attr_timeout = TIMEOUT
        entry.st_uid = os.getuid()
        entry.st_gid = os.getgid()
        entry.st_rdev = 0
        entry.st_blksize = BLOCK_SIZE
        if inode == pyfuse3.ROOT_INODE:
            entry.st_mode = stat.S_IFDIR | 0o555
            entry.st_nlink = 2
            entry.st_size = 0
            mtime = self.mtime_ns
        else:
            path = self.paths.get(inode)
            if path is None:
                raise pyfuse3.FUSEError(errno.ENOENT)
            st = path.stat()
            entry.st_mode = stat.S_IFREG | 0o444
            entry.st_nlink = 1
            entry.st_size = st.st_size
            mtime = st.st_mtime_ns
        entry.st_blocks = (entry.st_size + 511) // 512
        entry.st_atime_ns = entry.st_mtime_ns = entry.st_ctime_ns = mtime
        return entry

    async def lookup(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        if parent_inode != pyfuse3.ROOT_INODE:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        if name in (b".", b".."):
            return self._entry(pyfuse3.ROOT_INODE)
        inode = self.inodes.get(name)
        if inode is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self._entry(inode)

    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        return self._entry(inode)

    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        if inode != pyfuse3.ROOT_INODE:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        return inode

    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        # start_id is the inode of the last entry returned (inodes ascend with the names).
        for inode, path in self.paths.items():
            if inode <= start_id:
                continue
            if not pyfuse3.readdir_reply(token, os.fsencode(path.name), self._entry(inode), inode):
                return

    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        if flags & os.O_ACCMODE != os.O_RDONLY or flags & os.O_TRUNC:
            raise pyfuse3.FUSEError(errno.EROFS)
        path = self.paths.get(inode)
        if path is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        # As ocifs: keep_cache (immutable contents), never direct_io.
        return pyfuse3.FileInfo(fh=os.open(path, os.O_RDONLY | os.O_CLOEXEC), keep_cache=True, direct_io=False)

    async def read(self, fh: int, off: int, size: int) -> bytes:
        return os.pread(fh, size, off)

    async def release(self, fh: int) -> None:
        os.close(fh)


async def _watch_signals(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        task_status.started()
        async for _ in signals:
            pyfuse3.terminate()
            return


async def _announce_when_ready(config: MountConfig) -> None:
    """As ocifs: stat the root in a thread (pyfuse3.main() answers it), tune, then say ready."""
    try:
        with trio.fail_after(30):
            st = await trio.to_thread.run_sync(os.stat, config.mountpoint, abandon_on_cancel=True)
    except (OSError, trio.TooSlowError) as exc:
        log.error("the mount at %s did not come up: %s", config.mountpoint, exc or "timed out")
        pyfuse3.terminate()
        return
    if st.st_ino != pyfuse3.ROOT_INODE:
        log.error("%s does not show the new mount (inode %d)", config.mountpoint, st.st_ino)
        pyfuse3.terminate()
        return
    await trio.to_thread.run_sync(tune_mount, st.st_dev, config.read_ahead_kb, config.max_background)
    print("ready", flush=True)


async def serve(source: Path, config: MountConfig) -> None:
    options = {o for o in fuse_options(config, f"passthrough:{source}") if not o.startswith("subtype=")}
    options.add(f"subtype={SUBTYPE}")
    async with trio.open_nursery() as nursery:
        await nursery.start(_watch_signals)
        pyfuse3.init(Passthrough(source), config.mountpoint, options)
        try:
            nursery.start_soon(_announce_when_ready, config)
            await pyfuse3.main()
        finally:
            nursery.cancel_scope.cancel()
            pyfuse3.close(unmount=True)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: passthrough_fs.py SOURCE_DIR MOUNTPOINT", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="passthrough_fs: %(levelname)s %(name)s: %(message)s")
    source = Path(argv[0]).resolve()
    # An ocifs mount configuration with its defaults: the same libfuse options and, after the
    # handshake, the same read_ahead_kb and max_background.
    config = MountConfig(
        reference=str(source),
        mountpoint=os.path.abspath(argv[1]),
        client_options=ClientOptions(),
        read_ahead_kb=DEFAULT_READ_AHEAD_KB,
    )
    trio.run(serve, source, config)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
