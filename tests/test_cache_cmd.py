"""``ocifs cache stats | prune | verify | clear``: what a user reads, what ``--json`` gives, exit codes."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import pytest

from ocifs.cache.store import TEMP_PREFIX, ChunkCache
from ocifs.commands.cache import run_cache
from ocifs.commands.cli import build_parser
from ocifs.digest import Digest
from ocifs.units import format_size

ExpectLog = Callable[..., AbstractContextManager[Any]]
KiB = 1024


def fill(root: Path, count: int, size: int = 10 * KiB) -> list[Digest]:
    """``count`` chunks, the first the least recently used (mtimes one minute apart)."""
    cache = ChunkCache(root, memory_bytes=0)
    digests = []
    now = time.time()
    for n in range(count):
        data = random.Random(n).randbytes(size)
        digest = Digest.of_bytes(data)
        cache.put(digest, data)
        when = now - 60 * (count - n)
        os.utime(cache.path_for(digest), (when, when))
        digests.append(digest)
    return digests


def cache_cmd(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    """Run ``ocifs cache ARGV`` in-process; returns (exit status, stdout)."""
    args = build_parser().parse_args(["cache", *argv])
    status = run_cache(args)
    return status, capsys.readouterr().out


def test_format_size() -> None:
    assert format_size(0) == "0 B"
    assert format_size(1023) == "1,023 B"
    assert format_size(1536) == "1.5 KiB"
    assert format_size(5 * 2**30) == "5.0 GiB"
    assert format_size(3 * 2**50) == "3,072.0 TiB"


def test_stats_reports_entries_and_limit(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "cache"
    fill(root, 4)
    status, out = cache_cmd(capsys, "stats", "--cache-dir", str(root), "--cache-max-size", "80K")
    assert status == 0
    assert out.splitlines() == [f"cache {root}", "  4 chunks, 40.0 KiB", "  limit 80.0 KiB (50% used)"]

    # A limit given to stats is reported, never enforced: stats must not evict anything.
    status, out = cache_cmd(capsys, "stats", "--cache-dir", str(root), "--cache-max-size", "15K", "--json")
    doc = json.loads(out)
    assert doc == {
        "root": str(root),
        "exists": True,
        "entries": 4,
        "bytes": 40 * KiB,
        "temp_files": 0,
        "max_size": 15 * KiB,
    }
    assert ChunkCache(root, memory_bytes=0).stats().entries == 4


def test_commands_on_a_missing_cache_create_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "never"
    for action in ("stats", "verify", "prune", "clear"):
        status, out = cache_cmd(capsys, action, "--cache-dir", str(root))
        assert status == 0 and str(root) in out
    status, out = cache_cmd(capsys, "stats", "--cache-dir", str(root), "--json")
    assert json.loads(out)["exists"] is False and json.loads(out)["entries"] == 0
    assert not root.exists()


def test_prune_evicts_least_recently_used_first(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "cache"
    digests = fill(root, 5)
    status, out = cache_cmd(capsys, "prune", "--cache-dir", str(root), "--max-size", "25K")
    assert status == 0
    assert out.strip() == f"cache {root}: removed 3 chunks (30.0 KiB); 2 chunks (20.0 KiB) left"
    cache = ChunkCache(root, memory_bytes=0)
    assert [cache.contains(d) for d in digests] == [False, False, False, True, True]

    # --cache-max-size is the default target; --json gives the numbers.
    status, out = cache_cmd(capsys, "prune", "--cache-dir", str(root), "--cache-max-size", "10K", "--json")
    doc = json.loads(out)
    assert doc["removed_entries"] == 1 and doc["remaining_entries"] == 1 and doc["remaining_bytes"] == 10 * KiB
    assert doc["max_size"] == 10 * KiB


def test_prune_without_a_size_removes_only_stale_temp_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "cache"
    digests = fill(root, 2)
    stale = ChunkCache(root).path_for(digests[0]).parent / f"{TEMP_PREFIX}999-dead"
    stale.write_bytes(b"half a chunk")
    os.utime(stale, (time.time() - 86400, time.time() - 86400))
    status, out = cache_cmd(capsys, "prune", "--cache-dir", str(root))
    assert status == 0
    assert "no size given (--max-size)" in out and "1 stale temp file" in out and "2 chunks" in out
    assert not stale.exists()


def test_verify_finds_and_removes_corrupt_chunks(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], expect_log: ExpectLog
) -> None:
    root = tmp_path / "cache"
    digests = fill(root, 3)
    status, out = cache_cmd(capsys, "verify", "--cache-dir", str(root))
    assert status == 0 and out.strip() == f"cache {root}: verified 3 chunks (30.0 KiB): all good"

    path = ChunkCache(root).path_for(digests[1])
    data = bytearray(path.read_bytes())
    data[5] ^= 1
    path.write_bytes(bytes(data))
    with expect_log(r"cache entry .* is corrupt; removing it", count=1):
        status, out = cache_cmd(capsys, "verify", "--cache-dir", str(root))
    assert status == 1
    lines = out.splitlines()
    assert lines[0] == f"cache {root}: verified 3 chunks (30.0 KiB): 1 corrupt chunk, 1 removed"
    assert lines[1] == f"  corrupt: {digests[1]}"
    assert not path.exists()
    status, out = cache_cmd(capsys, "verify", "--cache-dir", str(root), "--json")
    assert status == 0 and json.loads(out)["bad"] == [] and json.loads(out)["checked"] == 2


def test_clear_removes_everything(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "cache"
    fill(root, 3)
    status, out = cache_cmd(capsys, "clear", "--cache-dir", str(root), "--json")
    assert status == 0
    doc = json.loads(out)
    assert doc["removed_entries"] == 3 and doc["removed_bytes"] == 30 * KiB and doc["remaining_entries"] == 0
    assert ChunkCache(root).stats().entries == 0


def test_cli_exit_status_and_output(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    digests = fill(root, 2)
    path = ChunkCache(root).path_for(digests[0])
    path.write_bytes(b"x" * path.stat().st_size)

    def cli(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "ocifs", "cache", *argv, "--cache-dir", str(root)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    verify = cli("verify")
    assert verify.returncode == 1
    assert f"corrupt: {digests[0]}" in verify.stdout
    stats = cli("stats")
    assert stats.returncode == 0 and stats.stdout.splitlines()[1] == "  1 chunk, 10.0 KiB"
    bad = subprocess.run(
        [sys.executable, "-m", "ocifs", "cache", "prune", "--max-size", "lots"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert bad.returncode == 2 and "invalid size 'lots'" in bad.stderr
