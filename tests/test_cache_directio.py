"""Whole-entry I/O around the page cache: exact bytes for every size, a shared buffer pool, and a
permanent fallback once a filesystem refuses O_DIRECT."""

from __future__ import annotations

import errno
import os
import random
from pathlib import Path
from typing import Any

import pytest

from ocifs.cache import directio
from ocifs.cache.directio import DIRECT_ALIGN, DIRECT_WRITE_MIN, BufferPool, DirectIO, pread_all


@pytest.mark.parametrize("size", [0, 10, DIRECT_WRITE_MIN, DIRECT_WRITE_MIN + DIRECT_ALIGN + 1])
def test_write_new_then_read_whole_round_trips(tmp_path: Path, size: int) -> None:
    data = random.Random(size).randbytes(size)
    io = DirectIO(tmp_path)
    path = tmp_path / "entry"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        io.write_new(fd, data)
    finally:
        os.close(fd)
    assert path.read_bytes() == data
    fd = os.open(path, os.O_RDONLY)
    try:
        assert io.read_whole(fd, size) == data
        assert io.read_whole(fd, size + 100) == data  # short only if the file is
    finally:
        os.close(fd)


def test_direct_io_refused_once_is_not_tried_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = {"write": 0, "read": 0}

    def refuse_write(fd: int, data: bytes) -> bool:
        calls["write"] += 1
        directio.write_all(fd, data)
        return False

    def refuse_read(fd: int, size: int) -> None:
        calls["read"] += 1

    monkeypatch.setattr(directio, "write_direct", refuse_write)
    monkeypatch.setattr(directio, "read_direct", refuse_read)
    io = DirectIO(tmp_path)
    data = random.Random(1).randbytes(DIRECT_WRITE_MIN)
    for n in range(2):
        path = tmp_path / f"entry-{n}"
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            io.write_new(fd, data)
            assert io.read_whole(fd, len(data)) == data
        finally:
            os.close(fd)
    assert calls == {"write": 1, "read": 1} and not io.writes and not io.reads


def test_the_pool_reuses_buffers_and_grows_one_too_small() -> None:
    pool = BufferPool()
    with pool.get(100) as first:
        assert len(first) == DIRECT_ALIGN  # at least one block
        with pool.get(100) as second:
            assert second is not first  # both lent out at once: two buffers
    assert pool.idle() == 2
    with pool.get(DIRECT_ALIGN) as again:
        assert again in (first, second)
    with pool.get(10 * DIRECT_ALIGN) as bigger:
        assert len(bigger) >= 10 * DIRECT_ALIGN
    assert pool.idle() == 2


def test_pread_all_reads_up_to_the_end_of_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"0123456789")
    fd = os.open(path, os.O_RDONLY)
    try:
        assert pread_all(fd, 4, 3) == b"3456"
        assert pread_all(fd, 100, 8) == b"89"
        assert pread_all(fd, 0, 0) == b""
        real_pread = os.pread

        def short(fd: int, length: int, offset: int) -> bytes:
            return real_pread(fd, min(length, 3), offset)  # a read served in pieces

        monkeypatch.setattr(directio.os, "pread", short)
        assert pread_all(fd, 8, 1) == b"12345678"
    finally:
        os.close(fd)


def test_write_direct_errors_other_than_einval_propagate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_write = os.write

    def full(fd: int, data: Any) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    fd = os.open(tmp_path / "entry", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        monkeypatch.setattr(directio.os, "write", full)
        with pytest.raises(OSError, match="No space"):
            directio.write_direct(fd, bytes(DIRECT_WRITE_MIN))
    finally:
        monkeypatch.setattr(directio.os, "write", real_write)
        os.close(fd)
