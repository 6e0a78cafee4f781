"""Shared benchmark plumbing: the registry, test files, measured subprocesses, result tables.

Every suite (``push_bench``, later ``pull_bench``, ``mount_bench``) uses these helpers so that
all figures come from the same registry set-up and are measured the same way:

- :class:`BenchRegistry` — Debian's ``docker-registry`` via the test harness's
  :class:`support.registry.RegistryServer` (tests/support/registry.py), storage on tmpfs
  (``/dev/shm``) or on disk, quiet logs, relative ``Location`` URLs (so a latency proxy in
  front stays in the path), and :meth:`BenchRegistry.fresh` = restart with empty storage on the
  same port, so that no measurement can profit from blobs a previous one left behind.
- :func:`run_measured` / :func:`run_parallel` — run clients as subprocesses under GNU
  ``/usr/bin/time``: wall time (spawn to exit, taken here), peak RSS and CPU time of exactly
  that client (the rusage GNU time gets from ``wait4``).
- :class:`Measurement`, :func:`markdown_table`, :func:`write_json` — results.

Nothing here sends traffic anywhere but 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = REPO_ROOT / "bench"
RESULTS_DIR = BENCH_DIR / "results"
TESTS_DIR = REPO_ROOT / "tests"
MIB = 1 << 20
GIB = 1 << 30
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
TIME_BINARY = "/usr/bin/time"  # GNU time (Debian package "time")

if str(TESTS_DIR) not in sys.path:
    sys.path.insert(0, str(TESTS_DIR))

from support.registry import RegistryServer  # noqa: E402  (tests/ is not a package)

# -- sizes and small helpers -------------------------------------------------------------------


def parse_size(text: str) -> int:
    """``256M``, ``1G``, ``1.5GiB``, ``4096`` → bytes (binary units)."""
    m = re.fullmatch(r"\s*([0-9.]+)\s*([kmgt]?)(?:i?b)?\s*", text.lower())
    if not m:
        raise ValueError(f"invalid size {text!r} (examples: 256M, 1G, 4G)")
    return int(float(m.group(1)) * {"": 1, "k": 1 << 10, "m": MIB, "g": GIB, "t": 1 << 40}[m.group(2)])


def size_label(n: int) -> str:
    if n % GIB == 0:
        return f"{n // GIB} GiB"
    if n % MIB == 0:
        return f"{n // MIB} MiB"
    return f"{n} B"


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def load_average() -> tuple[float, float, float]:
    return os.getloadavg()


def log(message: str) -> None:
    """Progress lines go to stderr; stdout is left for the final tables."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -- test data ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Piece:
    """One fixed-size piece of a test file, as its own file (curl uploads whole files)."""

    path: Path
    offset: int
    size: int
    digest: str


@dataclass(slots=True)
class TestFile:
    path: Path
    size: int
    digest: str  # "sha256:…"
    pieces: list[Piece] = field(default_factory=list)

    def remove(self) -> None:
        self.remove_pieces()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    def remove_pieces(self) -> None:
        for piece in self.pieces:
            with contextlib.suppress(FileNotFoundError):
                piece.path.unlink()
        self.pieces = []


def make_random_file(path: Path, size: int, block: int = 64 * MIB) -> TestFile:
    """Write ``size`` random bytes to ``path`` (incompressible, no repeated chunk) and hash them."""
    hasher = hashlib.sha256()
    try:
        import numpy

        generate = numpy.random.default_rng().bytes  # ~10x faster than os.urandom, as incompressible
    except ImportError:
        generate = os.urandom
    with path.open("wb") as f:
        left = size
        while left:
            data = generate(min(block, left))
            hasher.update(data)
            f.write(data)
            left -= len(data)
    return TestFile(path, size, f"sha256:{hasher.hexdigest()}")


def split_pieces(test_file: TestFile, piece_size: int, directory: Path) -> list[Piece]:
    """Cut the file into ``piece_size`` files under ``directory`` (kept on ``test_file.pieces``)."""
    directory.mkdir(parents=True, exist_ok=True)
    pieces: list[Piece] = []
    with test_file.path.open("rb") as f:
        offset = 0
        n = 0
        while offset < test_file.size:
            data = f.read(piece_size)
            path = directory / f"piece-{n:05d}"
            path.write_bytes(data)
            pieces.append(Piece(path, offset, len(data), f"sha256:{hashlib.sha256(data).hexdigest()}"))
            offset += len(data)
            n += 1
    test_file.pieces = pieces
    return pieces


# -- the registry ------------------------------------------------------------------------------


class BenchRegistry:
    """One docker-registry for a whole suite; :meth:`fresh` empties it between measurements.

    ``storage`` is ``"tmpfs"`` (``/dev/shm``, no disk: the throughput figures) or ``"disk"``
    (the work directory's filesystem; distribution fsyncs every blob it commits).
    """

    def __init__(self, work_dir: Path, storage: str = "tmpfs") -> None:
        if storage not in ("tmpfs", "disk"):
            raise ValueError(f"storage must be tmpfs or disk, not {storage!r}")
        self.storage = storage
        self.server = RegistryServer(
            work_dir,
            storage_in_shm=storage == "tmpfs",
            relative_urls=True,
            # Access logs cost the registry CPU on every request; this machine has two cores.
            extra_config={"log": {"level": "warn", "accesslog": {"disabled": True}}},
        )

    def __enter__(self) -> BenchRegistry:
        self.server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def host(self) -> str:
        return self.server.host

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def pid(self) -> int | None:
        return self.server.pid

    def fresh(self) -> None:
        """Stop, delete every stored blob and upload session, start again on the same port."""
        self.server.stop()
        storage = self.server.storage_dir
        for child in storage.iterdir():
            if child.is_dir():
                shutil.rmtree(child)
            else:
                child.unlink()
        self.server.restart()

    def stored_bytes(self) -> int:
        """Bytes of committed blobs (the upload must really have happened)."""
        root = self.server.storage_dir / "docker/registry/v2/blobs"
        total = 0
        for dirpath, _dirs, files in os.walk(root):
            for name in files:
                if name == "data":
                    total += os.stat(os.path.join(dirpath, name)).st_size
        return total

    def cpu_seconds(self) -> float:
        return process_cpu_seconds(self.pid)

    def close(self) -> None:
        self.server.close()


def process_cpu_seconds(pid: int | None) -> float:
    """utime + stime of a running process (all its threads), from /proc; 0 if gone."""
    if pid is None:
        return 0.0
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


# -- measured subprocesses ---------------------------------------------------------------------


@dataclass(slots=True)
class ProcResult:
    argv: list[str]
    returncode: int
    seconds: float
    max_rss_kib: int
    cpu_seconds: float
    stdout: str
    stderr: str

    def check(self, what: str) -> ProcResult:
        if self.returncode != 0:
            raise RuntimeError(
                f"{what} failed (exit {self.returncode}): {' '.join(self.argv)[:300]}\n"
                f"stdout: {self.stdout[-2000:]}\nstderr: {self.stderr[-2000:]}"
            )
        return self


class _Child:
    """A started subprocess whose output is collected in threads and whose rusage is kept."""

    def __init__(self, argv: Sequence[str], cwd: Path | None, env: dict[str, str] | None) -> None:
        self.argv = list(argv)
        # GNU time forks the client from a small process: a child forked straight from this
        # (large) Python process would report this process's RSS as its own peak (the
        # high-water mark survives fork + exec).
        fd, name = tempfile.mkstemp(prefix="ocifs-bench-rusage-")
        os.close(fd)
        self.rusage_file = Path(name)
        self.proc = subprocess.Popen(
            [TIME_BINARY, "-f", "%M %U %S", "-o", str(self.rusage_file), *self.argv],
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self._out: list[bytes] = []
        self._err: list[bytes] = []
        self._threads = [
            threading.Thread(target=self._drain, args=(self.proc.stdout, self._out), daemon=True),
            threading.Thread(target=self._drain, args=(self.proc.stderr, self._err), daemon=True),
        ]
        for t in self._threads:
            t.start()

    @staticmethod
    def _drain(stream: Any, sink: list[bytes]) -> None:
        for chunk in iter(lambda: stream.read(65536), b""):
            sink.append(chunk)
        stream.close()

    def wait(self, started: float, timeout: float) -> ProcResult:
        deadline = started + timeout
        try:
            self.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        ended = time.monotonic()
        for t in self._threads:
            t.join()
        # GNU time writes "Command exited with non-zero status N" first when the client fails.
        lines = self.rusage_file.read_text().splitlines()
        self.rusage_file.unlink()
        try:
            rss, user, system = lines[-1].split()
            max_rss_kib, cpu = int(rss), float(user) + float(system)
        except (IndexError, ValueError):
            max_rss_kib, cpu = 0, 0.0
        return ProcResult(
            argv=self.argv,
            returncode=self.proc.returncode,
            seconds=ended - started,
            max_rss_kib=max_rss_kib,
            cpu_seconds=cpu,
            stdout=b"".join(self._out).decode(errors="replace"),
            stderr=b"".join(self._err).decode(errors="replace"),
        )


def run_measured(
    argv: Sequence[str], *, cwd: Path | None = None, env: dict[str, str] | None = None, timeout: float = 3600
) -> ProcResult:
    """Run one client to completion: wall time (spawn to exit), peak RSS and CPU of that child."""
    started = time.monotonic()
    child = _Child(argv, cwd, env)
    return child.wait(started, timeout)


def run_parallel(
    argvs: Sequence[Sequence[str]], *, cwd: Path | None = None, env: dict[str, str] | None = None, timeout: float = 3600
) -> tuple[float, list[ProcResult]]:
    """Start every command at once, wait for all; (wall seconds until the last exits, results)."""
    started = time.monotonic()
    children = [_Child(argv, cwd, env) for argv in argvs]
    results = [child.wait(started, timeout) for child in children]
    return time.monotonic() - started, results


# -- results -----------------------------------------------------------------------------------


@dataclass(slots=True)
class Measurement:
    """One timed client run. ``seconds`` is the client's wall time, process start to exit."""

    suite: str
    tool: str  # e.g. "ocifs", "oras-py", "skopeo", "curl x1", "curl x8"
    settings: str  # e.g. "jobs=8 chunk=16M"
    size: int
    storage: str  # "tmpfs" or "disk"
    seconds: float
    max_rss_kib: int = 0
    client_cpu_seconds: float = 0.0
    registry_cpu_seconds: float = 0.0
    stored_bytes: int = 0
    network: str = "loopback"  # or e.g. "40ms RTT proxy"
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def mib_per_second(self) -> float:
        return self.size / MIB / self.seconds if self.seconds > 0 else float("nan")

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["mib_per_second"] = round(self.mib_per_second, 1)
        return data


@dataclass(slots=True)
class Summary:
    """The median of several repetitions of one (tool, settings, size, storage, network)."""

    tool: str
    settings: str
    size: int
    storage: str
    network: str
    runs: list[Measurement]

    @property
    def seconds(self) -> float:
        return median([m.seconds for m in self.runs])

    @property
    def mib_per_second(self) -> float:
        return self.size / MIB / self.seconds

    @property
    def max_rss_mib(self) -> float:
        return max(m.max_rss_kib for m in self.runs) / 1024

    @property
    def client_cpu_per_gib(self) -> float:
        return median([m.client_cpu_seconds for m in self.runs]) / (self.size / GIB)

    @property
    def registry_cpu_per_gib(self) -> float:
        return median([m.registry_cpu_seconds for m in self.runs]) / (self.size / GIB)

    @property
    def spread(self) -> str:
        """min–max throughput over the repetitions."""
        rates = [m.mib_per_second for m in self.runs]
        return f"{min(rates):.0f}–{max(rates):.0f}" if len(rates) > 1 else ""

    def to_json(self) -> dict[str, Any]:
        return {
            "tool": self.tool,
            "settings": self.settings,
            "size": self.size,
            "storage": self.storage,
            "network": self.network,
            "median_seconds": round(self.seconds, 3),
            "median_mib_per_second": round(self.mib_per_second, 1),
            "max_rss_mib": round(self.max_rss_mib, 1),
            "client_cpu_s_per_gib": round(self.client_cpu_per_gib, 2),
            "registry_cpu_s_per_gib": round(self.registry_cpu_per_gib, 2),
            "runs": [m.to_json() for m in self.runs],
        }


def summarize(measurements: Sequence[Measurement]) -> list[Summary]:
    """Group repetitions (same tool, settings, size, storage, network), in first-seen order."""
    groups: dict[tuple[str, str, int, str, str], list[Measurement]] = {}
    for m in measurements:
        groups.setdefault((m.tool, m.settings, m.size, m.storage, m.network), []).append(m)
    return [Summary(*key, runs=runs) for key, runs in groups.items()]


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], align: str | None = None) -> str:
    """A GitHub markdown table; ``align`` is one letter per column (l/r), default left then right."""
    align = align or ("l" + "r" * (len(headers) - 1))
    lines = ["| " + " | ".join(headers) + " |"]
    lines.append("|" + "|".join("---:" if a == "r" else "---" for a in align) + "|")
    for row in rows:
        lines.append("| " + " | ".join(_cell(v) for v in row) + " |")
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        if value != value:  # NaN
            return "–"
        return f"{value:,.1f}" if abs(value) < 100 else f"{value:,.0f}"
    return str(value)


def write_json(name: str, data: Any) -> Path:
    """Write ``bench/results/<timestamp>-<name>.json`` (the directory is gitignored)."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{time.strftime('%Y%m%d-%H%M%S')}-{name}.json"
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")
    return path


# -- the machine -------------------------------------------------------------------------------


def _version(argv: Sequence[str], pattern: str = r"(\d+\.\d+(?:\.\d+)?)") -> str:
    try:
        out = subprocess.run(list(argv), capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "missing"
    m = re.search(pattern, out)
    return m.group(1) if m else out.strip()[:40]


def machine_info() -> dict[str, Any]:
    """Cores, memory, kernel, load and the versions of every tool the suites run."""
    mem_kib = 0
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    cpu_model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    try:
        from importlib.metadata import version

        oras_version = version("oras")
    except Exception:
        oras_version = "missing"
    try:
        import ocifs

        ocifs_version = ocifs.__version__
    except Exception:
        ocifs_version = "missing"
    registry_version = "missing"
    with contextlib.suppress(OSError, subprocess.TimeoutExpired):
        out = subprocess.run(
            ["dpkg-query", "-W", "-f=${Version}", "docker-registry"], capture_output=True, text=True, timeout=10
        ).stdout
        registry_version = out.strip() or registry_version
    return {
        "cores": os.cpu_count(),
        "cpu": cpu_model,
        "memory_gib": round(mem_kib / (1 << 20), 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "load_average": [round(x, 2) for x in load_average()],
        "docker_registry": registry_version,
        "skopeo": _version(["skopeo", "--version"]),
        "curl": _version(["curl", "--version"]),
        "oras_py": oras_version,
        "ocifs": ocifs_version,
        "git_commit": _version(["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"], r"([0-9a-f]{7,})"),
    }


@contextlib.contextmanager
def work_directory(parent: str | None, keep: bool = False) -> Iterator[Path]:
    """A scratch directory on disk for test files (deleted afterwards unless ``keep``)."""
    path = Path(tempfile.mkdtemp(prefix="ocifs-bench-", dir=parent or "/var/tmp"))
    try:
        yield path
    finally:
        if not keep:
            shutil.rmtree(path, ignore_errors=True)
