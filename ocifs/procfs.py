"""Whether a process is still running, and where a pid means something: read from Linux ``/proc``.

Owns the three questions every part of ocifs asks about another process — the cache about the
owner of a download claim, ``ocifs umount`` about the daemon it waits for, pull about the
writer of a leftover temp file — so they are answered one way. Must not import from ocifs
(a leaf) and must not raise for a process that is gone or a ``/proc`` that is not there.
"""

from __future__ import annotations

import os

#: Process states (proc(5), ``/proc/PID/stat`` field 3) of a process that has exited but has
#: not been reaped yet: it holds a pid and nothing else, and will never write again.
EXITED_STATES = frozenset({"Z", "X"})


def process_state(pid: int) -> str | None:
    """The one-letter state of ``pid`` (``R``, ``S``, ``Z``…), or ``None`` if it cannot be read
    (no such process, no ``/proc``). The command name in field 2 may hold spaces and
    parentheses, so the state is the first field after its *last* ``)``."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            text = f.read()
        return text.rsplit(b")", 1)[1].split()[0].decode()
    except (OSError, IndexError, UnicodeDecodeError):
        return None


def is_running(pid: int) -> bool:
    """Whether ``pid`` names a live process of this pid namespace: it exists (``kill(pid, 0)``;
    another user's process answers EPERM and counts as running) and is not a zombie. Non-positive
    pids name no single process and are not running. Unknown cases count as running: callers
    use the answer to take over or delete what the process owns."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        pass  # EPERM: alive, another user's; a zombie of another user is still worth the check
    return process_state(pid) not in EXITED_STATES


def host_identity() -> str:
    """``pid-namespace boot-id`` of this process: where a pid written down by a process means
    this process table. ``?`` stands for a part that cannot be read (then nothing that names
    it may be judged by pid)."""
    try:
        namespace = str(os.stat("/proc/self/ns/pid").st_ino)
    except OSError:
        namespace = "?"
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot = f.read().strip() or "?"
    except OSError:
        boot = "?"
    return f"{namespace} {boot}"
