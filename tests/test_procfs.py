"""ocifs.procfs: whether a pid is a running process, read one way for every caller."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from ocifs import procfs


def test_this_process_is_running_and_its_state_is_read() -> None:
    assert procfs.is_running(os.getpid())
    assert procfs.process_state(os.getpid()) == "R"  # it is reading its own stat right now


def test_a_reaped_child_is_not_running_and_has_no_state() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert not procfs.is_running(child.pid)
    assert procfs.process_state(child.pid) is None


def test_a_zombie_is_not_running() -> None:
    """Killed but not yet reaped: it holds a pid and will never write again."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        deadline = time.monotonic() + 30
        while procfs.process_state(child.pid) not in procfs.EXITED_STATES:
            assert time.monotonic() < deadline, "the child did not exit"
            time.sleep(0.01)
        assert not procfs.is_running(child.pid)
    finally:
        child.wait()


def test_pids_naming_no_single_process_are_not_running() -> None:
    assert not procfs.is_running(0) and not procfs.is_running(-1)


def test_host_identity_names_the_pid_namespace_and_the_boot() -> None:
    namespace, boot = procfs.host_identity().split()
    assert namespace == str(os.stat("/proc/self/ns/pid").st_ino)
    assert len(boot) == 36  # a UUID
