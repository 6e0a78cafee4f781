"""The disk store: atomic writes under the layout, LRU eviction that lets go of what it removes,
discard, and verify reporting bad entries to its caller."""

from __future__ import annotations

import os
import random
import time
from pathlib import Path

import pytest

from ocifs.cache.directio import DirectIO
from ocifs.cache.disk import LOW_WATER, DiskStore, PruneResult
from ocifs.digest import Digest


def chunk(seed: int, size: int = 1000) -> tuple[Digest, bytes]:
    data = random.Random(seed).randbytes(size)
    return Digest.of_bytes(data), data


class Recorder:
    """The store's callbacks, recorded."""

    def __init__(self) -> None:
        self.forgotten: list[Digest] = []
        self.warnings: list[tuple[str, OSError]] = []

    def store(self, root: Path, max_size: int | None = None) -> DiskStore:
        disk = DiskStore(
            root,
            max_size,
            direct=DirectIO(root),
            forget=self.forgotten.append,
            warn=lambda op, exc: self.warnings.append((op, exc)),
        )
        disk.create()
        return disk


def test_write_is_atomic_and_a_second_identical_write_is_a_no_op(tmp_path: Path) -> None:
    disk = Recorder().store(tmp_path)
    digest, data = chunk(1)
    assert disk.write(digest, data) is True
    path = disk.path_for(digest)
    assert path == tmp_path / "v1" / "sha256" / digest.hex[:2] / digest.hex
    assert path.read_bytes() == data
    assert [p.name for p in path.parent.iterdir()] == [digest.hex]  # no temp file left
    assert disk.write(digest, data) is False
    fd = disk.open(digest)
    try:
        assert disk.read_whole(fd, len(data)) == data
    finally:
        os.close(fd)
    with pytest.raises(FileNotFoundError):
        disk.open(chunk(2)[0])


def test_a_write_pushing_the_store_over_its_bound_evicts_the_oldest_down_to_low_water(tmp_path: Path) -> None:
    recorder = Recorder()
    disk = recorder.store(tmp_path, max_size=5000)
    chunks = [chunk(i) for i in range(6)]
    for i, (digest, data) in enumerate(chunks[:5]):
        disk.write(digest, data)
        when = time.time() - 3600 + i
        os.utime(disk.path_for(digest), (when, when))
    disk.maybe_evict()
    assert disk.evictions == 0  # at the bound, not over it
    disk.write(*chunks[5])
    disk.maybe_evict()
    remaining = disk.scan()
    assert remaining.bytes <= 5000 * LOW_WATER
    assert recorder.forgotten == [chunks[0][0], chunks[1][0]] and disk.evictions == 2
    assert {e.digest for e in remaining.entries} == {d for d, _ in chunks[2:]}


def test_evict_to_an_explicit_limit_and_clear(tmp_path: Path) -> None:
    recorder = Recorder()
    disk = recorder.store(tmp_path)
    for i in range(4):
        disk.write(*chunk(i))
    assert disk.evict(limit=2000, target=2000) == PruneResult(2, 2000, 0, 2, 2000)
    assert disk.evict(limit=None, target=None).removed_entries == 0
    assert disk.clear() == PruneResult(2, 2000, 0, 0, 0)
    assert len(recorder.forgotten) == 4 and disk.scan().entries == []


def test_discard_removes_the_entry_and_lets_go_of_it(tmp_path: Path) -> None:
    recorder = Recorder()
    disk = recorder.store(tmp_path)
    digest, data = chunk(1)
    disk.write(digest, data)
    assert disk.discard(digest) is True
    assert not disk.path_for(digest).exists() and recorder.forgotten == [digest]
    assert disk.discard(digest) is False


@pytest.mark.expected_log(r"is corrupt; removing it")
def test_verify_reports_bad_entries_to_the_caller(tmp_path: Path) -> None:
    recorder = Recorder()
    disk = recorder.store(tmp_path)
    good, bad = chunk(1), chunk(2)
    disk.write(*good)
    disk.write(*bad)
    disk.path_for(bad[0]).write_bytes(bytes(len(bad[1])))  # same length, wrong bytes
    reported: list[Digest] = []
    result = disk.verify(remove_bad=True, workers=2, on_bad=reported.append)
    assert (result.checked, result.bad, result.removed) == (2, (bad[0],), 1)
    assert reported == [bad[0]] and recorder.forgotten == [bad[0]]
    assert disk.path_for(good[0]).exists() and not disk.path_for(bad[0]).exists()


def test_a_failed_eviction_pass_after_a_write_goes_to_warn(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    recorder = Recorder()
    disk = recorder.store(tmp_path, max_size=500)

    def broken_scan() -> None:
        raise PermissionError(13, "Permission denied")

    disk.write(*chunk(1))
    monkeypatch.setattr(disk, "scan", broken_scan)
    disk.maybe_evict()
    assert [op for op, _ in recorder.warnings] == ["evict"]
