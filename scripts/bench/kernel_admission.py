"""Admission figures for `kernel.py`: refusals, a retry storm, contention — each against a
`trio.Semaphore` baseline doing the same work, in the same run, alternating rounds.

  * refusal: one caller refused over and over, µs each — `QueueFull` (8 slots held, 200
    waiting) and `CircuitOpen` (the `critical` breaker forced open), beside a bare refusal
    (`trio.lowlevel.checkpoint()` + raise: every guarded call is a checkpoint, so that much
    is trio's own, not the kernel's);
  * retry storm: 1,000 callers retrying refused calls as fast as they can, 8 slots, 200
    waiting, each admitted call 1 ms of work (a sleep, as a query waits): completed calls/s;
  * contention: C callers (more than the 8 slots, a queue as deep as C so nothing is refused)
    each calling again as soon as its call ends, the work one checkpoint: µs per completed call.

Rates are per second of this process's CPU time (`time.process_time`), so other load on a
shared machine inflates them less; refusals are timed the same way.

The baseline (`SemaphoreQueue`) is a trio.Semaphore with a counter of waiters: refuse past
`max_waiting`, else wait for a slot, run, release — no priorities, breaker or metrics.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from typing import Any

import trio
import trio.testing

from actors import CircuitOpen, QueueFull, open_monitoring
from messages.config import Config, Priority, QueueConfig

SLOTS, WAITING = 8, 200


class SemaphoreQueue:
    """The baseline: a trio.Semaphore and a counter of waiters."""

    def __init__(self, slots: int, max_waiting: int) -> None:
        self.sem, self.max_waiting = trio.Semaphore(slots), max_waiting
        self.waiting = self.admitted = self.rejected = 0

    async def run(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        if self.sem.value > 0:  # a free slot: taken at once (acquire is still a checkpoint)
            await self.sem.acquire()
        elif self.waiting >= self.max_waiting:
            self.rejected += 1
            await trio.lowlevel.checkpoint()
            raise QueueFull(Priority.NORMAL, self.waiting)
        else:
            self.waiting += 1
            try:
                await self.sem.acquire()
            finally:
                self.waiting -= 1
        self.admitted += 1
        try:
            return await fn(*args)
        finally:
            self.sem.release()


async def noop() -> None:
    return None


async def bare_refusal() -> None:
    await trio.lowlevel.checkpoint()
    raise QueueFull(Priority.NORMAL, WAITING)


async def refusals_per_call(call: Callable[[], Awaitable[Any]], errors: type[BaseException] | tuple,
                            n: int) -> float:
    t0 = time.process_time()
    for _ in range(n):
        try:
            await call()
        except errors:
            pass
    return (time.process_time() - t0) / n * 1e6


async def _fill(run: Callable, nursery: trio.Nursery, release: trio.Event, n: int) -> None:
    for _ in range(n):
        nursery.start_soon(run, release.wait)
    await trio.testing.wait_all_tasks_blocked()


async def bench_refusals(rounds: int, calls: int) -> dict[str, float]:
    """Median µs per refused call: QueueFull, CircuitOpen, the baseline's and a bare one."""
    out: dict[str, list[float]] = {"queue_full": [], "circuit_open": [], "semaphore_full": [],
                                   "bare_refusal": []}
    async with AsyncExitStack() as stack:
        mon = await stack.enter_async_context(open_monitoring(Config()))
        nursery = await stack.enter_async_context(trio.open_nursery())
        release = trio.Event()
        base = SemaphoreQueue(SLOTS, WAITING)
        await _fill(mon.run, nursery, release, SLOTS + WAITING)
        await _fill(base.run, nursery, release, SLOTS + WAITING)
        await mon.breakers["critical"].force_open()

        def open_breaker() -> Awaitable[None]:
            return mon.run(noop, tier="critical")

        cases = [("queue_full", lambda: mon.run(noop), QueueFull),
                 ("circuit_open", open_breaker, CircuitOpen),
                 ("semaphore_full", lambda: base.run(noop), QueueFull),
                 ("bare_refusal", bare_refusal, QueueFull)]
        for case in cases:
            await refusals_per_call(case[1], case[2], calls // 10)  # warm up
        for r in range(rounds):
            for name, call, errors in cases[r % 2:] + cases[:r % 2]:
                out[name].append(await refusals_per_call(call, errors, calls))
        release.set()
    return {k: statistics.median(v) for k, v in out.items()}


async def _completed_per_s(run: Callable, callers: int, work: Callable[[], Awaitable[Any]],
                           seconds: float, warmup_s: float = 0.2) -> float:
    done = [0]

    async def caller() -> None:
        while True:
            try:
                await run(work)
                done[0] += 1
            except QueueFull:
                pass

    async with trio.open_nursery() as nursery:
        for _ in range(callers):
            nursery.start_soon(caller)
        await trio.sleep(warmup_s)
        n0, t0 = done[0], time.process_time()
        await trio.sleep(seconds)
        n1, t1 = done[0], time.process_time()
        nursery.cancel_scope.cancel()
    return (n1 - n0) / (t1 - t0)


async def one_ms() -> None:
    await trio.sleep(0.001)


async def bench_storm(rounds: int, seconds: float, callers: int = 1000) -> dict[str, float]:
    """Completed calls/s with `callers` retrying refused calls as fast as they can."""
    out: dict[str, list[float]] = {"triage": [], "semaphore": []}
    for r in range(rounds):
        for name in (("triage", "semaphore") if r % 2 == 0 else ("semaphore", "triage")):
            if name == "triage":
                async with open_monitoring(Config()) as mon:
                    out[name].append(await _completed_per_s(mon.run, callers, one_ms, seconds))
            else:
                base = SemaphoreQueue(SLOTS, WAITING)
                out[name].append(await _completed_per_s(base.run, callers, one_ms, seconds))
    return {k: statistics.median(v) for k, v in out.items()}


async def bench_contention(rounds: int, seconds: float, levels: tuple[int, ...]) -> dict[str, float]:
    """µs per completed call with C callers, none refused (the queue is as deep as C)."""
    out: dict[str, list[float]] = {}
    for c in levels:
        cfg = Config(queue=QueueConfig(max_concurrent=SLOTS, max_queue_size=c))
        for r in range(rounds):
            for name in (("triage", "semaphore") if r % 2 == 0 else ("semaphore", "triage")):
                if name == "triage":
                    async with open_monitoring(cfg) as mon:
                        rate = await _completed_per_s(mon.run, c, trio.lowlevel.checkpoint, seconds)
                else:
                    base = SemaphoreQueue(SLOTS, c)
                    rate = await _completed_per_s(base.run, c, trio.lowlevel.checkpoint, seconds)
                out.setdefault(f"C{c}_{name}", []).append(1e6 / rate)
    return {k: statistics.median(v) for k, v in out.items()}


def report(refusal: dict[str, float], storm: dict[str, float], contention: dict[str, float],
           levels: tuple[int, ...]) -> None:
    bare = refusal["bare_refusal"]
    print(f"bare refusal (checkpoint + raise) {bare:8.2f} µs")
    for name in ("queue_full", "circuit_open", "semaphore_full"):
        v = refusal[name]
        print(f"{name + ' refusal':26} {v:8.2f} µs   beyond the bare refusal {v - bare:6.2f} µs"
              f"   ({v / refusal['semaphore_full']:.2f}x the semaphore's)")
    ratio = storm["triage"] / storm["semaphore"]
    print(f"retry storm, 1,000 callers: {storm['triage']:9,.0f} calls/s   semaphore "
          f"{storm['semaphore']:9,.0f} calls/s   ratio {ratio:.2f}x")
    for c in levels:
        t, s = contention[f"C{c}_triage"], contention[f"C{c}_semaphore"]
        print(f"contention C={c:5}: {t:7.2f} µs/call   semaphore {s:7.2f} µs/call   "
              f"ratio {t / s:.2f}x  (target <= 1.5)")
