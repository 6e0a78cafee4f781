"""The open-descriptor table: bounded, never closes a descriptor under a reader, and reads
page-cached ranges without blocking."""

from __future__ import annotations

import os
from pathlib import Path

from ocifs.cache.descriptors import DescriptorTable
from ocifs.digest import Digest


def entry(tmp_path: Path, n: int, size: int = 4096) -> tuple[Digest, Path, bytes]:
    data = bytes([n % 256]) * size
    path = tmp_path / f"entry-{n}"
    path.write_bytes(data)
    return Digest.of_bytes(data + n.to_bytes(4, "big")), path, data


def is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def test_the_least_recently_used_beyond_capacity_are_closed(tmp_path: Path) -> None:
    table = DescriptorTable(capacity=2)
    fds = []
    for n in range(3):
        digest, path, data = entry(tmp_path, n)
        fd = os.open(path, os.O_RDONLY)
        fds.append(fd)
        table.keep(digest, fd, len(data))
    assert len(table) == 2
    assert not is_open(fds[0]) and is_open(fds[1]) and is_open(fds[2])
    table.close()
    assert len(table) == 0 and not any(is_open(fd) for fd in fds)


def test_a_borrowed_descriptor_is_closed_only_when_given_back(tmp_path: Path) -> None:
    table = DescriptorTable(capacity=1)
    digest, path, data = entry(tmp_path, 1)
    fd = os.open(path, os.O_RDONLY)
    table.keep(digest, fd, len(data))
    held = table.borrow(digest)
    assert held is not None and held.fd == fd
    table.forget(digest)  # retired while being read
    assert is_open(fd) and table.borrow(digest) is None
    table.give_back(held)
    assert not is_open(fd)


def test_keeping_a_digest_again_retires_its_old_descriptor(tmp_path: Path) -> None:
    table = DescriptorTable()
    digest, path, data = entry(tmp_path, 1)
    old, new = os.open(path, os.O_RDONLY), os.open(path, os.O_RDONLY)
    table.keep(digest, old, len(data))
    table.keep(digest, new, len(data))
    assert not is_open(old) and is_open(new) and len(table) == 1
    table.close()


def test_page_cached_ranges_are_read_and_odd_cases_answer_none(tmp_path: Path) -> None:
    table = DescriptorTable()
    digest, path, data = entry(tmp_path, 7, size=64 * 1024)
    assert table.pread_nowait(digest, 0, 10) is None  # not held
    fd = os.open(path, os.O_RDONLY)
    os.read(fd, len(data))  # in the page cache now
    table.keep(digest, fd, len(data))
    assert table.pread_nowait(digest, 100, 200) == data[100:200]
    assert table.pread_nowait(digest, len(data) - 3, len(data) + 10) == data[-3:]  # cut short
    assert table.pread_nowait(digest, 0, 10, size=len(data) + 1) is None  # wrong size
    os.unlink(path)
    assert table.pread_nowait(digest, 0, 10) is None  # unlinked: forgotten, not read
    assert len(table) == 0 and not is_open(fd)
