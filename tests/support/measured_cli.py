"""The ocifs CLI in a subprocess, with its peak memory measured and its address space capped.

Owns: running ``python -m ocifs``-equivalent with ``RLIMIT_AS`` set (a runaway allocation fails
in the child instead of taking the machine down) and reporting the child's own peak RSS.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

#: Address-space cap of the child: threads reserve stacks and malloc arenas, so it is well
#: above what the process really uses.
ADDRESS_SPACE = 2 * 1024**3

# Runs the CLI and, at exit, writes its peak RSS (VmHWM, KiB) to $OCIFS_TEST_HWM. Not ru_maxrss
# from wait4: that counts the pytest process's pages the child had between fork and exec.
_MEASURED_CLI = """
import atexit, os, runpy, sys

def _report():
    with open("/proc/self/status") as status:
        peak = next(line for line in status if line.startswith("VmHWM:")).split()[1]
    with open(os.environ["OCIFS_TEST_HWM"], "w") as out:
        out.write(peak)

atexit.register(_report)
sys.argv[0] = "ocifs"
runpy.run_module("ocifs", run_name="__main__")
"""


@dataclass(frozen=True)
class Run:
    returncode: int
    stdout: str
    stderr: str
    max_rss_mib: float  # 0 when the child died before its atexit report
    seconds: float


def _limit_address_space() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))


def run_measured(*args: str, stdin: str | None = None, env: dict[str, str] | None = None, timeout: float = 60) -> Run:
    """Run ``ocifs ARGS`` (``env`` added to this process's environment) and measure it."""
    with tempfile.TemporaryDirectory() as scratch:
        report = Path(scratch) / "hwm"
        started = time.monotonic()
        proc = subprocess.run(
            [sys.executable, "-c", _MEASURED_CLI, *args],
            input=stdin,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=timeout,
            check=False,
            preexec_fn=_limit_address_space,
            env={**os.environ, **(env or {}), "OCIFS_TEST_HWM": str(report)},
        )
        seconds = time.monotonic() - started
        peak_kib = int(report.read_text()) if report.exists() else 0
    return Run(proc.returncode, proc.stdout, proc.stderr, peak_kib / 1024, seconds)
