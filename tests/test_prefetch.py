"""Read-ahead policy with a fake fetch callback on trio's autojump clock (no sleeps as sync).

What a user would notice: a sequential reader finds chunks already fetched (read-ahead starts
and grows), the kernel's out-of-order concurrent reads do not look like seeks, a loader that
reads a header does not pull in the next chunk, a far seek resets the window, memory stays
within the global budget however many files are open, a cancelled request never cancels a
shared download, and a failed prefetch never takes the mount down.
"""

from __future__ import annotations

import logging
import random
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractContextManager
from typing import Any

import pytest
import trio
import trio.testing

from ocifs.cache.prefetch import (
    INITIAL_WINDOW,
    ByteBudget,
    Prefetcher,
    PrefetchMode,
    Stream,
    Units,
)
from ocifs.errors import RegistryUnavailable

MiB = 1024 * 1024
CHUNK = 16 * MiB
ExpectLog = Callable[..., AbstractContextManager[Any]]


class FakeFetch:
    """Records unit fetches; each takes ``delay`` seconds of (virtual) time."""

    def __init__(self, units: Units, delay: float = 0.05) -> None:
        self.units = units
        self.delay = delay
        self.started: list[int] = []
        self.done: list[int] = []
        self.in_flight_bytes = 0
        self.peak_bytes = 0
        self.fail: set[int] = set()
        self.crash: set[int] = set()

    async def __call__(self, n: int) -> None:
        self.started.append(n)
        self.in_flight_bytes += self.units.length(n)
        self.peak_bytes = max(self.peak_bytes, self.in_flight_bytes)
        try:
            await trio.sleep(self.delay)
            if n in self.fail:
                raise RegistryUnavailable("registry.test: 503", status=503)
            if n in self.crash:
                raise RuntimeError("a bug")
        finally:
            self.in_flight_bytes -= self.units.length(n)
        self.done.append(n)


@pytest.fixture
async def nursery() -> AsyncIterator[trio.Nursery]:
    async with trio.open_nursery() as n:
        yield n
        n.cancel_scope.cancel()


def tensor_file_stream(nursery: trio.Nursery) -> tuple[Units, FakeFetch, Stream]:
    """A read-ahead stream over a 16-chunk ``model.safetensors`` whose chunks arrive at once."""
    units = Units.fixed(16 * CHUNK, CHUNK)
    fetch = FakeFetch(units, delay=0)
    return units, fetch, Prefetcher(nursery).open_stream("model.safetensors", units, fetch)


def sequential(size: int, request: int = MiB) -> list[tuple[int, int]]:
    return [(offset, min(request, size - offset)) for offset in range(0, size, request)]


async def test_units_map_offsets_to_units() -> None:
    units = Units.from_sizes([10, 20, 5])
    assert units.size == 35 and len(units) == 3
    assert [units.unit_at(o) for o in (0, 9, 10, 29, 30, 34)] == [0, 0, 1, 1, 2, 2]
    assert units.unit_at(1000) == 2  # clamped
    assert [units.length(n) for n in range(3)] == [10, 20, 5]
    fixed = Units.fixed(35, 16)
    assert fixed.offsets == (0, 16, 32) and fixed.length(2) == 3


async def test_sequential_reader_gets_chunks_ahead_and_the_window_grows(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    units = Units.fixed(64 * CHUNK, CHUNK)
    fetch = FakeFetch(units)
    prefetcher = Prefetcher(nursery, budget_bytes=8 * CHUNK, max_window=8 * CHUNK)
    stream = prefetcher.open_stream("model.bin", units, fetch)
    ahead_when: dict[int, int] = {}
    for offset, size in sequential(units.size):
        stream.on_read(offset, size)
        await trio.sleep(0.01)  # the reader takes 10 ms per MiB: downloads (50 ms) can keep up
        reader_chunk = units.unit_at(offset)
        ahead_when[reader_chunk] = max(ahead_when.get(reader_chunk, 0), max(fetch.started, default=0) - reader_chunk)
    await trio.sleep(1)
    # Every chunk after the first is prefetched exactly once, never the one being read.
    assert sorted(fetch.started) == list(range(1, 64))
    assert len(set(fetch.started)) == len(fetch.started)
    # The window doubled up to its cap of 8 chunks: far ahead once the run was established.
    assert ahead_when[0] == 1
    assert max(ahead_when.values()) == 8
    stats = prefetcher.stats()
    assert stats.runs == 1 and stats.resets == 0 and stats.completed == 63 and stats.failed == 0
    assert stats.peak_budget_in_use <= 8 * CHUNK


async def test_reading_a_header_prefetches_nothing(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    # safetensors: 8 bytes of length, then a JSON header of a few KiB, then mmap.
    units = Units.fixed(4 * CHUNK, CHUNK)
    fetch = FakeFetch(units)
    stream = Prefetcher(nursery).open_stream("model.safetensors", units, fetch)
    stream.on_read(0, 128 * 1024)  # the kernel rounds small reads up to its readahead
    stream.on_read(128 * 1024, 128 * 1024)
    stream.on_read(256 * 1024, 256 * 1024)
    await trio.sleep(1)
    assert fetch.started == []


async def test_out_of_order_concurrent_reads_count_as_sequential(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    units = Units.fixed(32 * CHUNK, CHUNK)
    fetch = FakeFetch(units)
    prefetcher = Prefetcher(nursery)
    stream = prefetcher.open_stream("f", units, fetch)
    reads = sequential(units.size)
    rng = random.Random(7)
    # The kernel sends a readahead window's requests at once and ~99 handlers finish them in
    # any order: shuffle within batches of 8 requests (two 4 MiB windows).
    for batch_start in range(0, len(reads), 8):
        batch = reads[batch_start : batch_start + 8]
        rng.shuffle(batch)
        for offset, size in batch:
            stream.on_read(offset, size)
        await trio.sleep(0.05)
    await trio.sleep(1)
    assert prefetcher.stats().resets == 0
    assert sorted(set(fetch.started)) == list(range(1, 32))


async def test_far_seek_resets_the_window(nursery: trio.Nursery, autojump_clock: trio.testing.MockClock) -> None:
    units = Units.fixed(256 * CHUNK, CHUNK)
    fetch = FakeFetch(units, delay=0)
    prefetcher = Prefetcher(nursery, max_window=16 * CHUNK, budget_bytes=16 * CHUNK)
    stream = prefetcher.open_stream("f", units, fetch)
    for offset, size in sequential(64 * CHUNK):
        stream.on_read(offset, size)
    await trio.sleep(0.1)
    assert stream.window == 16 * CHUNK
    fetch.started.clear()
    far = 200 * CHUNK
    stream.on_read(far, MiB)
    assert stream.window == INITIAL_WINDOW
    assert prefetcher.stats().resets == 1
    stream.on_read(far + MiB, MiB)  # sequential again, but only a small window ahead
    await trio.sleep(0.1)
    assert fetch.started == []  # 2 MiB into a 16 MiB chunk: the next chunk is > 8 MiB away
    for offset in range(far + 2 * MiB, far + CHUNK, MiB):
        stream.on_read(offset, MiB)
    await trio.sleep(0.1)
    assert fetch.started and min(fetch.started) == 201 and max(fetch.started) <= 203


async def test_record_boundaries_keep_read_ahead_inside_one_tensor(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    # A 64 MiB tensor from byte 5 chunks + 100 in: loading it alone must not pull in the chunks
    # after it, however far the window has grown; the run starts 2 MiB early, as the kernel's
    # read-around of a page fault does.
    units, fetch, stream = tensor_file_stream(nursery)
    tensor_start, tensor_end = 5 * CHUNK + 100, 9 * CHUNK + 100
    stream.set_boundaries([100, tensor_start, tensor_end, 13 * CHUNK + 100, 16 * CHUNK])
    for offset, size in sequential(tensor_end - (tensor_start - 2 * MiB), MiB):
        stream.on_read(tensor_start - 2 * MiB + offset, size)
        await trio.sleep(0.01)
    stream.on_read(tensor_end, 2 * MiB)  # read-around past the end, within the tolerance
    await trio.sleep(1)
    assert max(fetch.started) == units.unit_at(tensor_end - 1) == 9  # the tensor's last chunk

    # A reader that goes on past the tensor (loading them all in order) gets read-ahead again.
    for offset in range(tensor_end, tensor_end + 12 * MiB, MiB):
        stream.on_read(offset, MiB)
    await trio.sleep(1)
    assert max(fetch.started) > 10


async def test_boundaries_learnt_during_a_run_apply_to_it(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    _, fetch, stream = tensor_file_stream(nursery)
    stream.on_read(CHUNK, MiB)
    stream.set_boundaries([3 * CHUNK])
    for offset in range(CHUNK + MiB, 3 * CHUNK, MiB):
        stream.on_read(offset, MiB)
    await trio.sleep(1)
    assert sorted(set(fetch.started)) == [2]


async def test_global_budget_caps_prefetch_bytes_across_files(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    units = Units.fixed(64 * CHUNK, CHUNK)
    fetch = FakeFetch(units, delay=0.5)
    prefetcher = Prefetcher(nursery, budget_bytes=4 * CHUNK, max_window=32 * CHUNK)
    streams = [prefetcher.open_stream(f"file-{i}", units, fetch) for i in range(6)]
    for offset, size in sequential(48 * CHUNK, 4 * MiB):
        for stream in streams:
            stream.on_read(offset, size)
        await trio.sleep(0.01)
    await trio.sleep(0.1)
    assert prefetcher.stats().queued > 4  # many units want to go...
    await trio.sleep(60)
    assert fetch.peak_bytes == 4 * CHUNK  # ...but never more than the budget at once
    assert prefetcher.stats().queued == 0


async def test_budget_lets_a_unit_larger_than_itself_through_alone() -> None:
    budget = ByteBudget(10)
    async with budget.reserve(100):
        assert budget.available == 0
    assert budget.available == 10


async def test_budget_is_first_come_first_served(autojump_clock: trio.testing.MockClock) -> None:
    budget = ByteBudget(10)
    order: list[str] = []

    async def take(name: str, amount: int) -> None:
        async with budget.reserve(amount):
            order.append(name)
            await trio.sleep(1)

    async with trio.open_nursery() as n:
        n.start_soon(take, "first", 6)
        await trio.testing.wait_all_tasks_blocked()
        n.start_soon(take, "big", 10)
        await trio.testing.wait_all_tasks_blocked()
        n.start_soon(take, "small", 1)  # fits now, but must not overtake "big"
    assert order == ["first", "big", "small"]


async def test_cancelled_waiter_gives_its_turn_away() -> None:
    budget = ByteBudget(10)
    got: list[str] = []
    async with trio.open_nursery() as n:
        await budget.acquire(10)
        with trio.CancelScope() as scope:
            n.start_soon(lambda: budget.acquire(10))  # a waiter that gets cancelled below
            await trio.testing.wait_all_tasks_blocked()
            scope.cancel()
        n.cancel_scope.cancel()
    budget.release(10)
    async with budget.reserve(5):
        got.append("ok")
    assert got == ["ok"] and budget.available == 10


async def test_whole_mode_fetches_every_unit_in_order_once(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    units = Units.fixed(40 * CHUNK + 5, CHUNK)
    fetch = FakeFetch(units)
    prefetcher = Prefetcher(nursery, mode=PrefetchMode.WHOLE, budget_bytes=4 * CHUNK)
    stream = prefetcher.open_stream("model.safetensors", units, fetch)
    prefetcher.open_stream("model.safetensors", units, fetch)  # opened twice: one whole fetch
    stream.on_read(0, MiB)  # one read is not a sequential run: nothing extra is queued
    await trio.sleep(60)
    assert sorted(fetch.started) == list(range(len(units)))
    # In file order, give or take trio's shuffling of tasks that become runnable together.
    assert sorted(fetch.started[:4]) == [0, 1, 2, 3]
    assert fetch.peak_bytes <= 4 * CHUNK
    assert prefetcher.stats().whole_files == 1


async def test_whole_mode_still_reads_ahead_of_a_sequential_reader(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    # The whole-file fetch runs in file order; a reader going through the file sequentially
    # elsewhere (or behind it, after its chunks left memory) gets its own window too.
    units = Units.fixed(40 * CHUNK, CHUNK)
    fetch = FakeFetch(units, delay=10)
    prefetcher = Prefetcher(nursery, mode=PrefetchMode.WHOLE, budget_bytes=4 * CHUNK)
    stream = prefetcher.open_stream("model.bin", units, fetch)
    await trio.sleep(1)
    for offset in range(30 * CHUNK, 30 * CHUNK + 12 * MiB, MiB):
        stream.on_read(offset, MiB)
    await trio.sleep(14)  # the first 4 whole-file units finished at 10 s; the budget is FIFO
    assert 31 in fetch.started  # long before the whole-file fetch gets there
    assert max(n for n in fetch.started if n < 30) < 8


async def test_off_mode_fetches_nothing(nursery: trio.Nursery, autojump_clock: trio.testing.MockClock) -> None:
    units = Units.fixed(8 * CHUNK, CHUNK)
    fetch = FakeFetch(units)
    stream = Prefetcher(nursery, mode=PrefetchMode.OFF).open_stream("f", units, fetch)
    for offset, size in sequential(units.size):
        stream.on_read(offset, size)
    await trio.sleep(1)
    assert fetch.started == []


async def test_a_cancelled_request_does_not_cancel_the_prefetch_it_started(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    units = Units.fixed(4 * CHUNK, CHUNK)
    fetch = FakeFetch(units, delay=5)
    stream = Prefetcher(nursery).open_stream("f", units, fetch)

    async def request(offset: int) -> None:
        stream.on_read(offset, MiB)
        await trio.sleep(10)  # waiting for its own chunk when the kernel gives up on it

    with trio.move_on_after(1):
        async with trio.open_nursery() as requests:
            for offset in range(10 * MiB, 14 * MiB, MiB):
                requests.start_soon(request, offset)
    await trio.sleep(10)
    assert fetch.done == [1]


async def test_failed_prefetches_are_counted_and_contained(
    nursery: trio.Nursery, expect_log: ExpectLog, autojump_clock: trio.testing.MockClock
) -> None:
    units = Units.fixed(4 * CHUNK, CHUNK)
    fetch = FakeFetch(units)
    fetch.fail = {1}
    fetch.crash = {2}
    prefetcher = Prefetcher(nursery, mode=PrefetchMode.WHOLE)
    with expect_log("prefetch of unit 2 of f failed unexpectedly", level=logging.ERROR, count=1):
        prefetcher.open_stream("f", units, fetch)
        await trio.sleep(1)
    stats = prefetcher.stats()
    assert stats.failed == 2 and stats.completed == 2
    assert sorted(fetch.done) == [0, 3]  # completion order is trio scheduling order: random
    assert prefetcher.stats().budget_in_use == 0


async def test_closed_stream_queues_nothing_more(nursery: trio.Nursery, autojump_clock: trio.testing.MockClock) -> None:
    units = Units.fixed(8 * CHUNK, CHUNK)
    fetch = FakeFetch(units)
    stream = Prefetcher(nursery).open_stream("f", units, fetch)
    stream.close()
    for offset, size in sequential(units.size):
        stream.on_read(offset, size)
    await trio.sleep(1)
    assert fetch.started == []


async def test_background_work_never_takes_the_mount_down(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock, expect_log: ExpectLog
) -> None:
    prefetcher = Prefetcher(nursery)
    done: list[str] = []

    async def unavailable() -> None:
        raise RegistryUnavailable("registry.test: 503", status=503)

    async def buggy() -> None:
        raise RuntimeError("a bug")

    async def fine() -> None:
        await trio.sleep(0.1)
        done.append("fine")

    with expect_log(r"hints of b failed unexpectedly", level=logging.ERROR, count=1):
        prefetcher.background(unavailable, "hints of a")
        prefetcher.background(buggy, "hints of b")
        prefetcher.background(fine, "hints of c")
        await trio.sleep(1)
    assert done == ["fine"]
