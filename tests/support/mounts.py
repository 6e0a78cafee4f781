"""Real ocifs mounts in subprocesses for tests: started in the foreground, ready when the daemon
sends ``READY=1`` to its own ``$NOTIFY_SOCKET``, and always unmounted and stopped at teardown.

Owns: starting ``ocifs mount --foreground`` with a log file, waiting for readiness, and
cleaning up. Must not: run a mount in the pytest process (a hung FUSE request would hang the
suite).
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

READY_TIMEOUT = 30.0


def mounted(path: Path) -> bool:
    """Whether ``path`` is a mount point right now (from /proc/self/mountinfo)."""
    target = str(path)
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == target for line in f)


@dataclass
class Mount:
    """One running foreground daemon and where it logs."""

    path: Path
    proc: subprocess.Popen[bytes]
    log: Path
    cache: Path

    def stats(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(os.getxattr(self.path, "user.ocifs.stats"))
        return data

    def wait_for_cache_writes(self, timeout: float = 10.0) -> None:
        """Wait until the daemon's write-behind queue is empty: every chunk it has served is
        then in the disk cache (reads are answered before their cache write ends)."""
        deadline = time.monotonic() + timeout
        while self.stats()["fetch"]["pending_writes"]:
            assert time.monotonic() < deadline, f"cache writes still pending after {timeout} s"
            time.sleep(0.01)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def alive(self) -> bool:
        return self.proc.poll() is None


@dataclass
class Mounter:
    """Starts foreground mounts (``preexec`` runs in the child before exec); see :func:`mounter`."""

    tmp: Path
    mounts: list[Mount] = field(default_factory=list)

    def __call__(
        self,
        ref: str,
        *flags: str,
        cache: Path | None = None,
        mountpoint: Path | None = None,
        read_timeout: float | None = None,
        preexec: Callable[[], None] | None = None,
    ) -> Mount:
        n = len(self.mounts)
        mountpoint = mountpoint or self.tmp / f"mnt-{n}"
        mountpoint.mkdir(exist_ok=True)
        cache = cache or self.tmp / "cache"
        log = self.tmp / f"daemon-{n}.log"
        address = f"ocifs-test-{secrets.token_hex(8)}"
        env = dict(os.environ, NOTIFY_SOCKET=f"@{address}")
        if read_timeout is not None:
            flags = (*flags, "--read-timeout", str(read_timeout))
        command = [sys.executable, "-m", "ocifs", "mount", ref, str(mountpoint), "--cache-dir", str(cache),
                   "--foreground", *flags]  # fmt: skip
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.bind(f"\0{address}")
            sock.settimeout(0.2)
            with log.open("wb") as out:
                proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, preexec_fn=preexec)
            mount = Mount(mountpoint, proc, log, cache)
            self.mounts.append(mount)
            deadline = time.monotonic() + READY_TIMEOUT
            while "READY=1" not in _receive(sock):
                assert proc.poll() is None, f"ocifs mount exited {proc.returncode}: {mount.log_text()}"
                assert time.monotonic() < deadline, f"no READY=1 within {READY_TIMEOUT} s: {mount.log_text()}"
        assert mounted(mountpoint)
        return mount

    def cleanup(self) -> list[str]:
        """Unmount every mount; the logs of daemons that did not exit within 10 s of it."""
        hung = []
        for mount in self.mounts:
            if mounted(mount.path):
                subprocess.run(["fusermount3", "-u", "-z", str(mount.path)], capture_output=True, check=False)
            try:
                mount.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                hung.append(mount.log_text())
                mount.proc.kill()
                mount.proc.wait(timeout=10)
        return hung


@contextmanager
def mounter(tmp: Path) -> Iterator[Mounter]:
    """A :class:`Mounter` whose mounts are all gone afterwards; fails if one was left or hung."""
    started = Mounter(tmp)
    try:
        yield started
    finally:
        hung = started.cleanup()
        assert not any(mounted(m.path) for m in started.mounts), "a mount was left behind"
        assert hung == [], "a daemon did not exit after its unmount"


def _receive(sock: socket.socket) -> str:
    try:
        return sock.recv(4096).decode()
    except TimeoutError:
        return ""
