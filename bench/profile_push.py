"""Where does ``ocifs push`` spend its time? A diagnostic, not a benchmark.

    python bench/profile_push.py [--size 1G] [--rtt-ms 40 --window 1M] [--perf] [-- PUSH OPTIONS...]

Starts a tmpfs registry (and, with ``--rtt-ms``, the latency proxy in front of it), writes a
random file, and runs ``ocifs push`` once in a subprocess whose registry requests are traced
(``RequestEngine.send`` is wrapped; if it is renamed the trace is skipped). Prints wall time,
the client's and the registry's CPU seconds per GiB, peak RSS, the mean duration of
HEAD/POST/PUT, and how many requests and PUTs were in flight on average —
with ``--jobs 8`` a pipeline that keeps the uploaders busy shows ~8; fewer means the uploaders
waited (for the reader, the hashes, or round trips). ``--perf`` also records the client with
``perf record`` and prints CPU by shared object (libcrypto = sha256, kernel = copies and
syscalls, libpython = the interpreter).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import GIB, MIB, BenchRegistry, log, make_random_file, parse_size, run_measured, work_directory

BENCH_DIR = Path(__file__).resolve().parent

# Runs inside the client process: wraps the request engine, then runs the CLI.
_SHIM = r"""
import json, sys, time
import trio
events = []
try:
    from ocifs.registry import engine as _e
    _orig = _e.RequestEngine.send
    async def _traced(self, request):
        t0 = trio.current_time()
        try:
            return await _orig(self, request)
        finally:
            events.append((request.method, t0, trio.current_time(), len(request.content or b"")))
    _e.RequestEngine.send = _traced
except (ImportError, AttributeError) as exc:
    print(f"request trace unavailable: {exc}", file=sys.stderr)
from ocifs.commands.cli import main
try:
    rc = main(sys.argv[2:])
except SystemExit as exc:
    rc = exc.code
with open(sys.argv[1], "w") as f:
    json.dump(events, f)
sys.exit(rc)
"""


def analyse(events: list[list[float]]) -> dict[str, float]:
    """Request statistics from (method, start, end, body bytes) records."""
    if not events:
        return {}
    start = min(e[1] for e in events)
    end = max(e[2] for e in events)
    span = end - start
    out: dict[str, float] = {"span_s": round(span, 3)}
    for method in ("HEAD", "POST", "PUT"):
        durations = [e[2] - e[1] for e in events if e[0] == method]
        if durations:
            out[f"{method}_count"] = len(durations)
            out[f"{method}_mean_ms"] = round(1000 * sum(durations) / len(durations), 1)
    puts = [e for e in events if e[0] == "PUT" and e[3] > 4096]
    if span > 0:
        out["requests_in_flight"] = round(sum(e[2] - e[1] for e in events) / span, 2)
        out["data_puts_in_flight"] = round(sum(e[2] - e[1] for e in puts) / span, 2)
    return out


def perf_breakdown(data: Path) -> str:
    report = subprocess.run(
        ["perf", "report", "-i", str(data), "--sort", "dso", "--stdio"], capture_output=True, text=True
    ).stdout
    return "\n".join(line for line in report.splitlines() if line.strip() and not line.startswith("#"))[:2000]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="trace one ocifs push against a local registry")
    parser.add_argument("--size", type=parse_size, default=GIB, help="test file size (default 1G)")
    parser.add_argument("--rtt-ms", type=float, default=0.0, help="push through the latency proxy (e.g. 40)")
    parser.add_argument("--window", default="4M", help="proxy window per connection (default 4M)")
    parser.add_argument("--storage", default="tmpfs", choices=("tmpfs", "disk"))
    parser.add_argument("--perf", action="store_true", help="also run the client under perf record")
    parser.add_argument("--workdir", default=None, help="parent of the scratch directory (default /var/tmp)")
    parser.add_argument("push_args", nargs=argparse.REMAINDER, help="after --: extra `ocifs push` options")
    args = parser.parse_args(argv)
    extra = [a for a in args.push_args if a != "--"]
    with work_directory(args.workdir) as work, BenchRegistry(work / "registry", args.storage) as registry:
        tf = make_random_file(work / "random.bin", args.size)
        proxy = None
        host = registry.host
        if args.rtt_ms:
            proxy_argv = [sys.executable, str(BENCH_DIR / "latency_proxy.py"), "--target", registry.host]
            proxy_argv += ["--rtt-ms", str(args.rtt_ms), "--window", args.window]
            proxy = subprocess.Popen(
                proxy_argv,
                stdout=subprocess.PIPE,
                text=True,
            )
            assert proxy.stdout is not None
            host = proxy.stdout.readline().split()[1]
        try:
            trace_file = Path(tempfile.mkstemp(prefix="ocifs-trace-", dir=work)[1])
            argv_push = ["push", f"{host}/profile/push:{int(time.time())}", str(tf.path), "--json", "-q", *extra]
            cmd = [sys.executable, "-c", _SHIM, str(trace_file), *argv_push]
            if args.perf and shutil.which("perf"):
                cmd = ["perf", "record", "-F", "999", "-o", str(work / "perf.data"), "--", *cmd]
            registry_cpu = registry.cpu_seconds()
            result = run_measured(cmd).check("ocifs push")
            registry_cpu = registry.cpu_seconds() - registry_cpu
            summary = json.loads(result.stdout[result.stdout.index("{") :])
            stats = analyse(json.loads(trace_file.read_text() or "[]"))
        finally:
            if proxy is not None:
                proxy.terminate()
                proxy.wait(timeout=10)
        gib = args.size / GIB
        log(f"ocifs push {' '.join(extra)} of {args.size // MIB} MiB via {'proxy ' + host if proxy else host}")
        report = {
            "wall_s": round(result.seconds, 2),
            "mib_per_s_wall": round(args.size / MIB / result.seconds, 1),
            "mib_per_s_ocifs": summary.get("mib_per_second"),
            "client_cpu_s_per_gib": round(result.cpu_seconds / gib, 2),
            "registry_cpu_s_per_gib": round(registry_cpu / gib, 2),
            "peak_rss_mib": round(result.max_rss_kib / 1024),
            **stats,
        }
        print(json.dumps(report, indent=2))
        if args.perf and (work / "perf.data").exists():
            print(perf_breakdown(work / "perf.data"))
        tf.remove()
    return 0


if __name__ == "__main__":
    sys.exit(main())
