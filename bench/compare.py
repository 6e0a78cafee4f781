"""Compare two commits in one run: ``python bench/compare.py BASE [HEAD] [--rounds N] -- RUN_ARGS``.

Checks each commit out into a scratch git worktree, then runs ``bench/run.py RUN_ARGS`` of
each tree in turn (base, head, base, head… ``--rounds`` times), every run importing its own
tree's ``ocifs`` (``PYTHONPATH``) under this interpreter. Interleaving is the point: on a
shared machine the load drifts, and two back-to-back blocks would measure the drift. Prints,
per ocifs measurement (suite, tool, settings, size, storage), the client CPU seconds per GiB
and MiB/s of each commit over all rounds (median, and the range) and the ratio head/base.
Every run's JSON stays in ``bench/results/`` as usual.

Example (the structure refactor's regression check)::

    python bench/compare.py d009a74 HEAD --rounds 3 -- --quick --storage tmpfs \\
        --push-tools ocifs --pull-tools ocifs --no-sweep --no-latency --no-rclone --no-passthrough
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from statistics import median
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"

Key = tuple[str, str, str, int, str, str]


def checkout(rev: str, parent: Path) -> Path:
    """A detached worktree of ``rev`` under ``parent``."""
    path = parent / rev.replace("/", "_")
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "-q", "--detach", str(path), rev], check=True)
    return path


def summaries(data: Any, suite: str) -> Iterator[tuple[Key, dict[str, Any]]]:
    """Every ``Summary.to_json()`` (a dict with ``tool`` and ``client_cpu_s_per_gib``) in a result."""
    if isinstance(data, dict):
        if "tool" in data and "client_cpu_s_per_gib" in data:
            key = (suite, data["tool"], data["settings"], data["size"], data["storage"], data["network"])
            yield key, data
            return
        for value in data.values():
            yield from summaries(value, suite)
    elif isinstance(data, list):
        for value in data:
            yield from summaries(value, suite)


def run_once(tree: Path, run_args: list[str]) -> dict[Key, dict[str, Any]]:
    """Run ``tree``'s bench/run.py; the ocifs summaries of the JSON files it wrote."""
    env = dict(os.environ, PYTHONPATH=str(tree))
    # The tree's own bench writes into its own bench/results: read them there.
    tree_results = tree / "bench" / "results"
    tree_before = set(tree_results.glob("*.json")) if tree_results.exists() else set()
    subprocess.run([sys.executable, str(tree / "bench" / "run.py"), *run_args], cwd=tree, env=env, check=True,
                   stdout=subprocess.DEVNULL)  # fmt: skip
    found: dict[Key, dict[str, Any]] = {}
    for path in sorted(set(tree_results.glob("*.json")) - tree_before):
        suite = path.stem.rsplit("-", 1)[-1]
        for key, summary in summaries(json.loads(path.read_text()), suite):
            if key[1].startswith("ocifs"):
                found[key] = summary
        RESULTS_DIR.mkdir(exist_ok=True)
        shutil.copy(path, RESULTS_DIR / f"{path.stem}-{tree.name}.json")
    return found


def table(base: str, head: str, runs: dict[str, list[dict[Key, dict[str, Any]]]]) -> str:
    keys = sorted({k for r in runs[base] + runs[head] for k in r})
    lines = [
        f"| suite | tool | settings | size | storage | network | CPU s/GiB {base} | CPU s/GiB {head} | ratio"
        f" | MiB/s {base} | MiB/s {head} |",
        "|---|---|---|---:|---|---|---:|---:|---:|---:|---:|",
    ]
    for key in keys:
        cpu = {rev: [r[key]["client_cpu_s_per_gib"] for r in runs[rev] if key in r] for rev in (base, head)}
        rate = {rev: [r[key]["median_mib_per_second"] for r in runs[rev] if key in r] for rev in (base, head)}
        if not cpu[base] or not cpu[head]:
            continue

        def show(values: list[float], digits: int) -> str:
            mid = f"{median(values):.{digits}f}"
            return mid if len(values) == 1 else f"{mid} ({min(values):.{digits}f}–{max(values):.{digits}f})"

        ratio = median(cpu[head]) / median(cpu[base]) if median(cpu[base]) else float("nan")
        suite, tool, settings, size, storage, network = key
        lines.append(
            f"| {suite} | {tool} | {settings} | {size >> 20} MiB | {storage} | {network} | {show(cpu[base], 2)} |"
            f" {show(cpu[head], 2)} | {ratio:.2f} | {show(rate[base], 0)} | {show(rate[head], 0)} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    run_args: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, run_args = argv[:cut], argv[cut + 1 :]
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("base", help="the commit to compare against")
    parser.add_argument("head", nargs="?", default="HEAD", help="the commit to measure (default HEAD)")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved runs of each commit (default 2)")
    args = parser.parse_args(argv)
    revs = [
        subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", r], capture_output=True, text=True,
                       check=True).stdout.strip()
        for r in (args.base, args.head)
    ]  # fmt: skip
    base, head = revs
    parent = Path(tempfile.mkdtemp(prefix="ocifs-compare-"))
    trees = {rev: checkout(rev, parent) for rev in revs}
    runs: dict[str, list[dict[Key, dict[str, Any]]]] = {base: [], head: []}
    try:
        for n in range(args.rounds):
            for rev in revs:
                print(f"round {n + 1}/{args.rounds}: {rev}", file=sys.stderr, flush=True)
                runs[rev].append(run_once(trees[rev], run_args))
    finally:
        for tree in trees.values():
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(tree)], check=False)
        shutil.rmtree(parent, ignore_errors=True)
    print(f"bench/run.py {' '.join(run_args)}: {args.rounds} interleaved rounds, {base} vs {head}\n")
    print(table(base, head, runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
