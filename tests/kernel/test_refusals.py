"""Refusals decided from published state (issue #13, goal 4): a full queue's `QueueFull` and an
open breaker's `CircuitOpen` cost no round trip to the actor, yet are the very answer the actor
would give — same exception, same fields, counted the same — and a refused call is still a
checkpoint. Where the published state cannot be exact (mail waits in the actor's inbox that
could change the answer), the call asks the actor as before.
"""

from __future__ import annotations

from functools import partial

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from actors import CircuitOpen, QueueCleared, QueueFull, open_monitoring
from actors.breaker import BreakerState, refused_retry
from actors.breaker import step as breaker_step
from actors.runtime.actor import Send
from actors.scheduler import SchedulerState, refuses, step
from messages.commands import (
    Admit,
    Clear,
    ForceOpen,
    Outcome,
    Permit,
    Release,
    Reset,
    Tick,
    Withdraw,
)
from messages.config import Config, Priority, QueueConfig


class Token:
    pass


async def noop() -> None:
    return None


def small_queue(max_concurrent: int = 1, max_queue_size: int = 2) -> Config:
    return Config(queue=QueueConfig(max_concurrent=max_concurrent, max_queue_size=max_queue_size))


# --- the decision is the core's own ---------------------------------------------------------

@settings(max_examples=300, deadline=None)
@given(st.integers(1, 3), st.integers(0, 4),
       st.lists(st.tuples(st.sampled_from(["admit", "release", "withdraw"]), st.integers(0, 9)), max_size=40),
       st.sampled_from(list(Priority)), st.sampled_from([-1.0, 0.0, 0.5, 30.0]))
def test_refusals_queue_refuses_exactly_when_the_core_answers_queue_full(
        max_concurrent, max_queue_size, ops, priority, wait_s):
    s = SchedulerState.initial(QueueConfig(max_concurrent=max_concurrent, max_queue_size=max_queue_size))
    tokens: list[Token] = []
    for op, arg in ops:
        if op == "admit":
            tokens.append(Token())
            s, _ = step(s, Admit(reply=tokens[-1], priority=arg % 5, at=0.0, deadline=30.0), 0.0)
        elif tokens:
            msg = Release if op == "release" else Withdraw
            s, _ = step(s, msg(reply=tokens[arg % len(tokens)]), 0.0)
    arrival = Token()
    after, effects = step(s, Admit(reply=arrival, priority=priority, at=1.0, deadline=1.0 + wait_s), 1.0)
    answer = [e.value for e in effects if isinstance(e, Send) and e.to is arrival]
    core_refused = bool(answer) and isinstance(answer[0], QueueFull)
    assert refuses(s, priority, 1.0 + wait_s, 1.0) == core_refused
    if core_refused:
        assert not answer[0].displaced and answer[0].depth == s.depth and after.depth == s.depth


breaker_ops = st.one_of(
    st.tuples(st.just("outcome"), st.sampled_from(["success", "failure", "ignored", "cancelled"])),
    st.tuples(st.just("permit"), st.just("")), st.tuples(st.just("tick"), st.just("")),
    st.tuples(st.just("reset"), st.just("")), st.tuples(st.just("force"), st.just("")),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(breaker_ops, st.floats(0, 15)), max_size=60), st.floats(0, 15))
def test_refusals_breaker_refuses_exactly_when_the_core_answers_circuit_open(seq, dt):
    s, now, trials = BreakerState.initial("critical", Config().tiers["critical"], now=0.0), 0.0, []
    for (op, result), step_dt in seq:
        now += step_dt
        if op == "outcome":
            trial = trials.pop(0) if trials else None
            epoch = trial.epoch if trial is not None else s.epoch
            s, _ = breaker_step(s, Outcome(result=result, epoch=epoch, trial=trial is not None), now)
        elif op == "permit":
            s, effects = breaker_step(s, Permit(reply=Token()), now)
            trials += [e.value for e in effects if isinstance(e, Send) and getattr(e.value, "trial", False)]
        else:
            msg = {"tick": Tick(), "reset": Reset(reply=Token()), "force": ForceOpen(reply=Token())}[op]
            s, _ = breaker_step(s, msg, now)
    now += dt
    _, effects = breaker_step(s, Permit(reply=Token()), now)
    [answer] = [e.value for e in effects if isinstance(e, Send)]
    retry = refused_retry(s, now)
    if isinstance(answer, CircuitOpen):
        assert retry is not None and max(retry, 0.0) == answer.retry_after_s
    else:
        assert retry is None


# --- through the handle: the same answer, counted, and a checkpoint ---------------------------

async def fill(mon, nursery, release: trio.Event, holders: int, waiters: int) -> None:
    for _ in range(holders + waiters):
        nursery.start_soon(mon.run, release.wait)
    await trio.testing.wait_all_tasks_blocked()


async def test_refusals_full_queue_refuses_from_published_state_counted_and_a_checkpoint(autojump_clock):
    async with open_monitoring(small_queue()) as mon, trio.open_nursery() as nursery:
        release = trio.Event()
        await fill(mon, nursery, release, holders=1, waiters=2)
        before = mon.queue.statistics().rejected
        with trio.testing.assert_checkpoints(), pytest.raises(QueueFull) as info:
            await mon.run(noop, priority=Priority.NORMAL)
        assert (info.value.priority, info.value.depth, info.value.displaced) == (Priority.NORMAL, 2, False)
        assert "Queue overflow: NORMAL request refused (depth 2)" in str(info.value)
        assert mon.queue.refused == 1  # decided by the handle: no round trip
        assert mon.queue.statistics().rejected == before + 1 == (await mon.queue.snapshot()).rejected
        with pytest.raises(QueueFull):
            async with mon.guard(priority=Priority.LOW):
                pass
        assert mon.queue.statistics().rejected == before + 2
        totals = (await mon.metrics(totals=True)).totals
        assert {(p, n) for p, d, n in totals.queue if d == "queue_full"} == {("NORMAL", 1), ("LOW", 1)}
        release.set()


async def test_refusals_higher_priority_arrival_still_displaces_through_the_actor(autojump_clock):
    async with open_monitoring(small_queue()) as mon, trio.open_nursery() as nursery:
        release = trio.Event()
        nursery.start_soon(mon.run, release.wait)
        await trio.testing.wait_all_tasks_blocked()
        displaced = []

        async def low() -> None:
            try:
                await mon.run(release.wait, priority=Priority.BATCH)
            except QueueFull as exc:
                displaced.append(exc.displaced)

        nursery.start_soon(low)
        nursery.start_soon(low)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(partial(mon.run, release.wait, priority=Priority.CRITICAL))
        await trio.testing.wait_all_tasks_blocked()
        assert displaced == [True] and mon.queue.refused == 0
        release.set()


async def test_refusals_mail_waiting_in_the_inbox_means_the_arrival_asks_and_is_queued(autojump_clock):
    async with open_monitoring(small_queue(max_concurrent=1, max_queue_size=1)) as mon, \
            trio.open_nursery() as nursery:
        release, outcomes = trio.Event(), []

        async def call(fn) -> None:
            try:
                outcomes.append(await mon.run(fn))
            except (QueueFull, QueueCleared) as exc:
                outcomes.append(type(exc).__name__)

        nursery.start_soon(call, release.wait)   # the holder
        nursery.start_soon(call, release.wait)   # the one waiter: the queue is full
        await trio.testing.wait_all_tasks_blocked()
        mon.queue._inbox.put(Clear())  # told, not yet handled: the published state is stale
        assert mon.queue.statistics().depth == 1
        nursery.start_soon(call, noop)
        await trio.testing.wait_all_tasks_blocked()
        assert mon.queue.refused == 0 and mon.queue.statistics().depth == 1  # queued, not refused
        assert outcomes == ["QueueCleared"]
        release.set()
        await trio.testing.wait_all_tasks_blocked()
        assert sorted(map(str, outcomes)) == ["None", "None", "QueueCleared"]
        assert mon.queue.statistics().rejected == 0


async def test_refusals_loop_of_refused_calls_lets_others_run_and_honours_cancellation(autojump_clock):
    async with open_monitoring(small_queue()) as mon, trio.open_nursery() as nursery:
        release = trio.Event()
        await fill(mon, nursery, release, holders=1, waiters=2)
        ticks = []

        async def other() -> None:
            for i in range(5):
                ticks.append(i)
                await trio.lowlevel.checkpoint()

        nursery.start_soon(other)
        for _ in range(10):
            with pytest.raises(QueueFull):
                await mon.run(noop)
        assert ticks == [0, 1, 2, 3, 4]
        with trio.CancelScope() as cs:
            cs.cancel()
            await mon.run(noop)  # cancelled before anything: Cancelled, not QueueFull
        assert cs.cancelled_caught and mon.queue.refused == 10
        release.set()


async def test_refusals_open_breaker_refuses_from_published_state_until_its_recovery_time(autojump_clock):
    async with open_monitoring(Config()) as mon:
        breaker = mon.breakers["critical"]  # failure_threshold 3, recovery 10 s
        for _ in range(3):
            with pytest.raises(ZeroDivisionError):
                await mon.run(_raise, tier="critical")
        opened_at = trio.current_time()
        await trio.sleep(4.0)
        with trio.testing.assert_checkpoints(), pytest.raises(CircuitOpen) as info:
            await mon.run(noop, tier="critical")
        assert info.value.retry_after_s == pytest.approx(6.0) and info.value.tier == "critical"
        assert breaker.refused == 1
        assert breaker.statistics().rejections == 1 == (await breaker.snapshot()).rejections
        assert await mon.run(noop, tier="critical", fallback=lambda: "cached") == "cached"
        await trio.sleep_until(opened_at + 10.0)
        assert await mon.run(noop, tier="critical") is None  # the trial: through the actor
        await trio.testing.wait_all_tasks_blocked()
        assert breaker.state == "closed" and breaker.refused == 2  # the fallback's refusal too


async def test_refusals_breaker_with_mail_waiting_asks_the_actor(autojump_clock):
    async with open_monitoring(Config()) as mon:
        breaker = mon.breakers["critical"]
        await breaker.force_open()
        breaker._inbox.put(Reset())  # told, not yet handled: the published OPEN is stale
        assert breaker.state == "open"
        assert await mon.run(noop, tier="critical") is None  # the actor: reset first, then permit
        assert breaker.refused == 0 and breaker.state == "closed"


async def _raise() -> None:
    raise ZeroDivisionError()


async def test_refusals_half_open_with_its_trial_busy_refuses_from_published_state(autojump_clock):
    async with open_monitoring(Config()) as mon, trio.open_nursery() as nursery:
        breaker = mon.breakers["critical"]  # half_open_max_calls 1
        for _ in range(3):
            with pytest.raises(ZeroDivisionError):
                await mon.run(_raise, tier="critical")
        await trio.sleep(10.0)
        trial_done = trio.Event()
        nursery.start_soon(partial(mon.run, trial_done.wait, tier="critical"))
        await trio.testing.wait_all_tasks_blocked()
        assert (breaker.state, breaker.statistics().trials_in_flight) == ("half_open", 1)
        with pytest.raises(CircuitOpen) as info:
            await mon.run(noop, tier="critical")
        assert info.value.retry_after_s == 1.0 and breaker.refused == 1
        trial_done.set()
        await trio.testing.wait_all_tasks_blocked()
        assert breaker.state == "closed" and await mon.run(noop, tier="critical") is None
