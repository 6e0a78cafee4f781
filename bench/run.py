"""Run the benchmarks: ``python bench/run.py [--sizes 1G,4G] [--quick] [--only push] [--repeat N]``.

Each suite is a module ``bench/<name>_bench.py`` with ``add_arguments(parser)`` (its own
options) and ``run(ctx) -> dict`` (``markdown`` and whatever JSON it wants to keep). This
script parses the options, prepares a scratch directory, runs the suites in order, writes
``bench/results/<timestamp>-<suite>.json`` and prints each suite's markdown on stdout
(progress goes to stderr). Adding a suite = one module + one line in :data:`SUITES`.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import GIB, MIB, load_average, log, machine_info, parse_size, size_label, work_directory, write_json

# name → module in bench/ (make bench runs them all; --only picks some).
SUITES: dict[str, str] = {
    "push": "push_bench",
    "pull": "pull_bench",
    "mount": "mount_bench",
}
DEFAULT_SIZES = "1G,4G"
QUICK_SIZE = 256 * MIB


class Context(argparse.Namespace):
    """Parsed options plus what every suite needs: sizes, storages, work_dir, repeat_for()."""

    sizes: list[int]
    storages: list[str]
    work_dir: Path
    repeat: int | None
    quick: bool

    def repeat_for(self, size: int) -> int:
        """Repetitions per measurement: ``--repeat``, else 3 up to 1 GiB and 1 above (time)."""
        if self.repeat is not None:
            return self.repeat
        return 3 if size <= GIB else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="ocifs benchmarks against a local docker-registry")
    parser.add_argument("--sizes", default=None, help=f"test file sizes (default {DEFAULT_SIZES})")
    parser.add_argument("--quick", action="store_true", help="smoke test: 256 MiB, one repetition")
    parser.add_argument(
        "--only", default=",".join(SUITES), help=f"comma-separated suites to run (available: {', '.join(SUITES)})"
    )
    parser.add_argument("--repeat", type=int, default=None, help="repetitions (default 3 up to 1 GiB, 1 above)")
    parser.add_argument("--storage", default="tmpfs,disk", help="registry storage kinds (default tmpfs,disk)")
    parser.add_argument("--workdir", default=None, help="parent of the scratch directory (default /var/tmp)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory")
    for name, module in SUITES.items():
        try:
            importlib.import_module(module).add_arguments(parser)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise
            log(f"suite {name}: module bench/{module}.py missing")
    return parser


def main(argv: list[str] | None = None) -> int:
    ctx = build_parser().parse_args(argv, namespace=Context())
    suites = [s.strip() for s in ctx.only.split(",") if s.strip()]
    unknown = [s for s in suites if s not in SUITES]
    if unknown:
        print(f"unknown suite(s) {', '.join(unknown)}; available: {', '.join(SUITES)}", file=sys.stderr)
        return 2
    if ctx.quick:
        ctx.sizes = [parse_size(s) for s in ctx.sizes.split(",")] if ctx.sizes else [QUICK_SIZE]
        if ctx.repeat is None:
            ctx.repeat = 1
    else:
        ctx.sizes = [parse_size(s) for s in (ctx.sizes or DEFAULT_SIZES).split(",")]
    ctx.storages = [s.strip() for s in ctx.storage.split(",") if s.strip()]
    machine = machine_info()
    log(f"machine: {machine}")
    load = load_average()
    if load[0] > 0.5 * (machine["cores"] or 1):
        log(f"WARNING: load average {load[0]:.2f} on {machine['cores']} cores: figures will be noisy")
    with work_directory(ctx.workdir, keep=ctx.keep) as work_dir:
        ctx.work_dir = work_dir
        for name in suites:
            started = time.time()
            log(f"suite {name}: sizes {', '.join(size_label(s) for s in ctx.sizes)}; scratch {work_dir}")
            result: dict[str, Any] = importlib.import_module(SUITES[name]).run(ctx)
            result["machine"] = machine
            result["load_average_after"] = [round(x, 2) for x in load_average()]
            result["options"] = {k: v for k, v in vars(ctx).items() if k != "work_dir"}
            result["elapsed_seconds"] = round(time.time() - started, 1)
            path = write_json(name, result)
            log(f"suite {name}: done in {result['elapsed_seconds']:.0f} s; results in {path}")
            print(f"## {name}\n")
            print(
                f"Machine: {machine['cores']} cores, {machine['memory_gib']} GiB, kernel {machine['kernel']};"
                f" load before {machine['load_average'][0]:.2f}, after {result['load_average_after'][0]:.2f}.\n"
            )
            print(result["markdown"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
