"""The two concurrency patterns ocifs uses in several places, written once: single flight and
first-error gather.

Owns: :class:`SingleFlight` (at most one load per key at a time; callers asking meanwhile wait
for its outcome) and :func:`gather` (run calls concurrently, results in order, the first
failure raised as itself). Must not: know about blobs, files, caches or the registry — keys
and values are the caller's — nor hold state across trio runs (an instance belongs to the
trio run that uses it; no locks, because trio tasks switch only at awaits).

Start with :meth:`SingleFlight.run`; the fetcher (per digest), the filesystem's chunk indexes
(per file) and its Range pieces of large plain layers (per piece) use it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Hashable, Sequence
from typing import Generic, TypeVar

import trio

from ocifs.errors import OcifsError

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")
T = TypeVar("T")


class _Flight(Generic[V]):
    """One load in progress. After ``done`` is set, ``led`` says whether it produced a value:
    ``value`` is then set; else ``error`` is the leader's exception when waiters may share it
    (see :class:`SingleFlight`), or ``None`` (cancelled, or an error waiters must not share)."""

    __slots__ = ("done", "error", "led", "scope", "value")

    def __init__(self, scope: Hashable) -> None:
        self.scope = scope
        self.done = trio.Event()
        self.led = False
        self.value: V | None = None
        self.error: BaseException | None = None


class SingleFlight(Generic[K, V]):
    """At most one ``load`` per key at a time; whoever asks while it runs waits for it.

    The first caller of :meth:`run` for a key is the *leader*: it runs its ``load``. Callers
    that come while it runs are *waiters*: they get the leader's value, or its exception
    object itself (so its traceback shows the one real failure) when the exception is one of
    ``shared_errors`` and the waiter asked in the same ``scope`` as the leader (the fetcher's
    scope is the repository: a 404 from another repository says nothing about ours). In every
    other case — the leader was cancelled, or failed with an error not to be shared — waiters
    go round again: one of them leads a new load. Nothing is remembered once a flight ends:
    caching the value is the caller's business (the next call starts a new flight).

    ``shared_errors`` defaults to :class:`~ocifs.errors.OcifsError`: a bug in a leader is not
    handed to others, who try for themselves. ``shared_errors=()`` makes every waiter retry
    the load itself after any failure.
    """

    def __init__(self, *, shared_errors: tuple[type[BaseException], ...] = (OcifsError,)) -> None:
        self._shared_errors = shared_errors
        self._flights: dict[K, _Flight[V]] = {}

    def __contains__(self, key: K) -> bool:
        """Whether a load of ``key`` is running now."""
        return key in self._flights

    def __len__(self) -> int:
        """How many loads are running now."""
        return len(self._flights)

    async def run(self, key: K, load: Callable[[], Awaitable[V]], *, scope: Hashable = None) -> tuple[V, bool]:
        """``(value, led)``: the value of ``key`` from ``load`` run by this task (``led``) or
        from the flight of another task that was running it. ``load`` is called only by a
        leader, and only once per call of :meth:`run`."""
        while True:
            flight = self._flights.get(key)
            if flight is None:
                return await self._lead(key, load, scope), True
            await flight.done.wait()
            if flight.led:
                return flight.value, False  # type: ignore[return-value]  # V may include None
            if flight.error is not None and flight.scope == scope:
                raise flight.error
            # Cancelled, or an error that is not ours to share: go round (maybe as the leader).

    async def _lead(self, key: K, load: Callable[[], Awaitable[V]], scope: Hashable) -> V:
        flight: _Flight[V] = _Flight(scope)
        self._flights[key] = flight
        try:
            value = await load()
        except self._shared_errors as exc:
            flight.error = exc
            raise
        else:
            flight.value, flight.led = value, True
            return value
        finally:
            # Also on cancellation: the flight ends with no outcome and the waiters go round,
            # so nobody waits forever on a leader that is gone.
            del self._flights[key]
            flight.done.set()


async def gather(
    calls: Sequence[Callable[[], Awaitable[T]]], *, errors: tuple[type[Exception], ...] = (OcifsError,)
) -> list[T]:
    """Run ``calls`` concurrently; their results in order.

    The first failure that is one of ``errors`` cancels the others and is raised as itself, not
    wrapped in an ``ExceptionGroup``: callers and the FUSE adapter see the real error (the
    request fails anyway, so nobody waits for the rest). Any other exception (a bug) leaves
    through the nursery as trio raises it.
    """
    results: list[T] = []
    if not calls:
        return results
    slots: list[tuple[T] | None] = [None] * len(calls)
    failures: list[Exception] = []

    async def run_one(i: int, call: Callable[[], Awaitable[T]], nursery: trio.Nursery) -> None:
        try:
            slots[i] = (await call(),)
        except errors as exc:
            failures.append(exc)
            nursery.cancel_scope.cancel()

    async with trio.open_nursery() as nursery:
        for i, call in enumerate(calls):
            nursery.start_soon(run_one, i, call, nursery)
    if failures:
        raise failures[0]
    for slot in slots:
        assert slot is not None  # every call returned: none failed, and nothing cancelled them
        results.append(slot[0])
    return results
