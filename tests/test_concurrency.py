"""The "one of each" concurrency helpers: single flight and first-error gather.

What callers rely on: one load per key however many ask at once; waiters get the leader's
value, or its very exception when it is theirs to share; a cancelled leader never strands its
waiters; gather returns results in order and raises the first failure bare.
"""

from __future__ import annotations

import pytest
import trio
import trio.testing

from ocifs.concurrency import SingleFlight, gather
from ocifs.errors import NotFound, OcifsError, RegistryUnavailable


async def test_single_flight_runs_one_load_for_concurrent_callers() -> None:
    flights: SingleFlight[str, bytes | None] = SingleFlight()
    loads = 0
    release = trio.Event()
    outcomes: list[tuple[bytes | None, bool]] = []

    async def load() -> bytes | None:
        nonlocal loads
        loads += 1
        await release.wait()
        return None  # a value that is None is still a value

    async def ask() -> None:
        outcomes.append(await flights.run("k", load))

    async with trio.open_nursery() as nursery:
        for _ in range(5):
            nursery.start_soon(ask)
        await trio.testing.wait_all_tasks_blocked()
        assert "k" in flights and len(flights) == 1
        release.set()
    assert loads == 1
    assert sorted(led for _, led in outcomes) == [False, False, False, False, True]
    assert all(value is None for value, _ in outcomes)
    assert "k" not in flights  # nothing is remembered once the flight ends


async def test_waiters_in_the_leaders_scope_get_its_exception_others_load_themselves() -> None:
    flights: SingleFlight[str, str] = SingleFlight()
    release = trio.Event()
    first_error = NotFound("repo-a: blob unknown")
    raised: dict[str, BaseException] = {}
    results: dict[str, str] = {}

    async def failing() -> str:
        await release.wait()
        raise first_error

    async def succeeding() -> str:
        return "from repo-b"

    async def ask(name: str, scope: str, load: object) -> None:
        try:
            value, _ = await flights.run("digest", load, scope=scope)  # type: ignore[arg-type]
        except OcifsError as exc:
            raised[name] = exc
        else:
            results[name] = value

    async with trio.open_nursery() as nursery:
        nursery.start_soon(ask, "leader", "repo-a", failing)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(ask, "same scope", "repo-a", succeeding)
        nursery.start_soon(ask, "other scope", "repo-b", succeeding)
        await trio.testing.wait_all_tasks_blocked()
        release.set()
    assert raised == {"leader": first_error, "same scope": first_error}  # the object itself
    assert results == {"other scope": "from repo-b"}


async def test_without_shared_errors_every_waiter_tries_itself() -> None:
    flights: SingleFlight[int, int] = SingleFlight(shared_errors=())
    attempts = 0
    release = trio.Event()

    async def flaky() -> int:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            await release.wait()
            raise RegistryUnavailable("registry.test: connection reset")
        await trio.sleep(0)  # the other waiter comes in meanwhile and joins this load
        return attempts

    values: list[int] = []

    async def ask() -> None:
        try:
            values.append((await flights.run(7, flaky))[0])
        except RegistryUnavailable:
            values.append(-1)

    async with trio.open_nursery() as nursery:
        for _ in range(3):
            nursery.start_soon(ask)
        await trio.testing.wait_all_tasks_blocked()
        release.set()
    assert sorted(values) == [-1, 2, 2]  # one waiter led the second load, the other joined it
    assert attempts == 2


async def test_a_cancelled_leader_hands_over_to_a_waiter() -> None:
    flights: SingleFlight[str, str] = SingleFlight()
    calls: list[str] = []
    got: list[tuple[str, bool]] = []

    async def slow() -> str:
        calls.append("leader")
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    async def quick() -> str:
        calls.append("waiter")
        return "done"

    async def waiter() -> None:
        got.append(await flights.run("k", quick))

    leader_scope = trio.CancelScope()

    async def leader() -> None:
        with leader_scope:
            await flights.run("k", slow)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(leader)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(waiter)
        await trio.testing.wait_all_tasks_blocked()
        leader_scope.cancel()
    assert calls == ["leader", "waiter"]
    assert got == [("done", True)]


async def test_gather_returns_results_in_order() -> None:
    async def after(delay: float, value: int | None) -> int | None:
        await trio.sleep(delay)
        return value

    calls = [lambda d=d, v=v: after(d, v) for d, v in ((0.03, 1), (0.0, None), (0.01, 3))]
    assert await gather(calls) == [1, None, 3]
    assert await gather([]) == []


async def test_gather_raises_the_first_failure_bare_and_cancels_the_rest() -> None:
    finished: list[str] = []
    failure = RegistryUnavailable("registry.test: down")

    async def fails() -> str:
        await trio.sleep(0.01)
        raise failure

    async def never_ends() -> str:
        await trio.sleep_forever()
        finished.append("never")
        return "never"

    with trio.fail_after(10), pytest.raises(RegistryUnavailable) as info:
        await gather([fails, never_ends])
    assert info.value is failure and finished == []


async def test_gather_lets_a_bug_through_as_trio_raises_it() -> None:
    async def bug() -> int:
        raise RuntimeError("a bug")

    with pytest.raises(ExceptionGroup) as info:
        await gather([bug])
    assert info.group_contains(RuntimeError)
