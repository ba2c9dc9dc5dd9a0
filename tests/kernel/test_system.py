"""The kernel through its public handle, on trio's MockClock (autojump: no real I/O here)."""

from __future__ import annotations

import random

import pytest
import trio
import trio.testing

from actors import (
    ActorCrashed,
    CircuitOpen,
    QueueCleared,
    QueueFull,
    QueueTimeout,
    ShuttingDown,
    UnknownTier,
    open_monitoring,
    run_monitoring,
)
from messages.commands import Crash
from messages.config import Config, Priority, QueueConfig, SupervisorConfig
from messages.errors import Refused
from messages.events import ActorRestarted, BreakerTransition
from messages.snapshots import SystemStatistics


class Boom(Exception):
    pass


async def boom() -> None:
    raise Boom()


async def ok(value: object = "ok") -> object:
    return value


def small_queue(max_concurrent: int = 1, max_queue_size: int = 10) -> Config:
    return Config(queue=QueueConfig(max_concurrent=max_concurrent, max_queue_size=max_queue_size))


async def test_system_run_returns_result_and_counts(autojump_clock):
    async with open_monitoring(Config()) as mon:
        assert await mon.run(ok, 42) == 42
        snap = await mon.snapshot()
        assert snap.breakers["database"].state == "closed"
        assert snap.breakers["database"].successes == 1
        assert (snap.queue.in_flight, snap.queue.depth, snap.queue.admitted) == (0, 0, 1)
        assert set(snap.actors) == {"limiter", "breaker.database", "breaker.critical",
                                    "breaker.analytics", "breaker.batch", "scheduler", "metrics",
                                    "alerts", "health"}


@pytest.mark.parametrize(("tier", "threshold", "recovery"),
                         [("database", 5, 30), ("critical", 3, 10), ("analytics", 8, 45), ("batch", 10, 60)])
async def test_system_tier_opens_on_threshold_and_half_opens_at_recovery(autojump_clock, tier, threshold, recovery):
    async with open_monitoring(Config()) as mon:
        for _ in range(threshold - 1):
            with pytest.raises(Boom):
                await mon.run(boom, tier=tier)
        assert (await mon.snapshot()).breakers[tier].state == "closed"
        with pytest.raises(Boom):
            await mon.run(boom, tier=tier)
        await mon.breakers[tier].wait_state("open")
        opened_at = trio.current_time()
        with pytest.raises(CircuitOpen) as info:
            await mon.run(ok, tier=tier)
        assert info.value.tier == tier and info.value.retry_after_s == pytest.approx(recovery)
        assert await mon.run(ok, tier=tier, fallback=lambda: "cached") == "cached"
        await mon.breakers[tier].wait_state("half_open")
        assert trio.current_time() - opened_at == pytest.approx(recovery)
        assert await mon.run(ok, "fresh", tier=tier) == "fresh"
        await mon.breakers[tier].wait_state("closed")


async def test_system_guard_block_exception_is_the_outcome(autojump_clock):
    async with open_monitoring(Config()) as mon:
        for _ in range(3):
            with pytest.raises(Boom):
                async with mon.guard(priority=Priority.CRITICAL, tier="critical"):
                    raise Boom()
        await mon.breakers["critical"].wait_state("open")
        with pytest.raises(CircuitOpen):
            async with mon.guard(tier="critical"):
                pytest.fail("an open breaker must not run the block")


async def test_system_caller_errors_do_not_trip_database_breaker(autojump_clock):
    import psycopg.errors

    async def bad_query():
        raise psycopg.errors.UndefinedTable("relation does not exist")

    async with open_monitoring(Config()) as mon:
        for _ in range(20):
            with pytest.raises(psycopg.errors.UndefinedTable):
                await mon.run(bad_query)
        snap = (await mon.snapshot()).breakers["database"]
        assert (snap.state, snap.ignored, snap.failures) == ("closed", 20, 0)


async def test_system_cancelled_call_is_not_a_failure(autojump_clock):
    async with open_monitoring(Config()) as mon:
        for _ in range(10):
            with trio.move_on_after(1):
                await mon.run(trio.sleep, 5, tier="critical")
        snap = await mon.snapshot()
        assert snap.breakers["critical"].state == "closed"
        assert snap.queue.in_flight == 0


async def test_system_cancelled_trial_gives_half_open_slot_back(autojump_clock):
    async with open_monitoring(Config()) as mon:
        await mon.breakers["critical"].force_open()
        await mon.breakers["critical"].reset()
        for _ in range(3):
            with pytest.raises(Boom):
                await mon.run(boom, tier="critical")
        await trio.sleep(10)
        with trio.move_on_after(1):
            await mon.run(trio.sleep, 5, tier="critical")   # the trial, cancelled
        assert await mon.run(ok, tier="critical") == "ok"   # the slot came back
        await mon.breakers["critical"].wait_state("closed")


async def test_system_queue_serves_priority_order(autojump_clock):
    async with open_monitoring(small_queue(max_concurrent=1)) as mon:
        order: list[str] = []
        gate = trio.Event()

        async def hold():
            await gate.wait()

        async def record(name: str):
            order.append(name)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(mon.run, hold)
            await trio.sleep(1)
            for prio, name in [(Priority.BATCH, "batch"), (Priority.LOW, "low"), (Priority.NORMAL, "n1"),
                               (Priority.CRITICAL, "critical"), (Priority.HIGH, "high"), (Priority.NORMAL, "n2")]:
                nursery.start_soon(lambda p=prio, n=name: mon.run(record, n, priority=p))
                await trio.sleep(0.01)
            assert (await mon.queue.snapshot()).depth == 6
            gate.set()
        assert order == ["critical", "high", "n1", "n2", "low", "batch"]


async def test_system_slot_handed_to_a_caller_cancelled_while_waiting_moves_on_to_the_next(autojump_clock):
    """The holder's release hands its slot on from its own task: a waiter cancelled a moment
    before (it has not left the queue yet) cannot take it, so it goes to the one after."""
    async with open_monitoring(small_queue(max_concurrent=1)) as mon:
        gate, ran = trio.Event(), []
        waiter = trio.CancelScope()

        async def record(name: str):
            ran.append(name)

        async def hold():
            await gate.wait()
            waiter.cancel()  # just before this call's release, in the same step of this task

        async def cancelled():
            with waiter:
                await mon.run(record, "cancelled")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(mon.run, trio.sleep, 1.5)  # the offered slot: `hold` is granted it
            await trio.sleep(1)
            nursery.start_soon(mon.run, hold)
            await trio.sleep(1)
            nursery.start_soon(cancelled)
            await trio.sleep(1)
            nursery.start_soon(mon.run, record, "next")
            await trio.sleep(1)
            assert mon.queue.statistics().depth == 2
            gate.set()
        assert ran == ["next"]
        snap = await mon.queue.snapshot()
        assert (snap.in_flight, snap.depth, snap.free) == (0, 0, 1)


async def test_system_queue_timeout_at_exactly_request_timeout(autojump_clock):
    async with open_monitoring(small_queue(max_concurrent=1)) as mon:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(mon.run, trio.sleep, 100)
            await trio.sleep(1)
            start = trio.current_time()
            with pytest.raises(QueueTimeout) as info:
                await mon.run(ok)
            assert trio.current_time() - start == 30.0
            assert info.value.retry_after_s > 0
            nursery.cancel_scope.cancel()
        snap = await mon.queue.snapshot()
        assert (snap.timed_out, snap.depth, snap.in_flight) == (1, 0, 0)


async def test_system_full_queue_displaces_batch_for_critical(autojump_clock):
    # One slot (held), two places: b1, b2 wait; n displaces the newest BATCH (b2), then c
    # displaces the last BATCH (b1). When the slot frees, c runs before n.
    async with open_monitoring(small_queue(max_concurrent=1, max_queue_size=2)) as mon:
        results: dict[str, object] = {}
        finished: list[str] = []

        async def attempt(name: str, prio: Priority):
            try:
                results[name] = await mon.run(ok, name, priority=prio)
                finished.append(name)
            except Refused as exc:
                results[name] = (type(exc), exc.priority, exc.displaced)

        gate = trio.Event()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(mon.run, gate.wait)
            await trio.testing.wait_all_tasks_blocked()
            for name, prio in [("b1", Priority.BATCH), ("b2", Priority.BATCH),
                               ("n", Priority.NORMAL), ("c", Priority.CRITICAL)]:
                nursery.start_soon(attempt, name, prio)
                await trio.testing.wait_all_tasks_blocked()   # each arrival queued in order
            assert (await mon.queue.snapshot()).depth == 2
            gate.set()
        assert results == {"b1": (QueueFull, Priority.BATCH, True),
                           "b2": (QueueFull, Priority.BATCH, True), "n": "n", "c": "c"}
        assert finished == ["c", "n"]


async def test_system_queue_clear_answers_waiters(autojump_clock):
    async with open_monitoring(small_queue(max_concurrent=1)) as mon:
        results = []

        async def attempt():
            try:
                await mon.run(ok)
            except QueueCleared as exc:
                results.append(exc)

        async with trio.open_nursery() as nursery:
            gate = trio.Event()
            nursery.start_soon(mon.run, gate.wait)
            await trio.sleep(1)
            for _ in range(5):
                nursery.start_soon(attempt)
            await trio.sleep(1)
            await mon.queue.clear()
            await trio.sleep(1)
            gate.set()
        assert len(results) == 5
        assert (await mon.queue.snapshot()).cleared == 5


async def test_system_check_rate_allows_exact_quota(autojump_clock):
    async with open_monitoring(Config()) as mon:
        decisions = [await mon.check_rate("auth", key="user:42") for _ in range(6)]
        assert [d.allowed for d in decisions] == [True] * 5 + [False]
        assert [d.remaining for d in decisions[:5]] == [4, 3, 2, 1, 0]
        assert decisions[-1].retry_after_s == pytest.approx(900.0)  # a sliding window: the oldest leaves at +900 s
        assert (await mon.check_rate("auth", key="user:43")).allowed
        snap = await mon.snapshot()
        assert snap.limiter.policies["auth"].rejected == 1


async def test_system_rate_limiting_disabled_allows_everything(autojump_clock):
    async with open_monitoring(Config(rate_limiting_enabled=False)) as mon:
        assert all([(await mon.check_rate("auth", key="k")).allowed for _ in range(50)])


async def test_system_breakers_disabled_never_open(autojump_clock):
    async with open_monitoring(Config(circuit_breaker_enabled=False)) as mon:
        for _ in range(20):
            with pytest.raises(Boom):
                await mon.run(boom, tier="critical")
        snap = (await mon.snapshot()).breakers["critical"]
        assert (snap.state, snap.failures) == ("closed", 20)


async def test_system_admin_reset_force_open_configure(autojump_clock):
    async with open_monitoring(Config()) as mon:
        b = mon.breakers["database"]
        await b.force_open()
        with pytest.raises(CircuitOpen):
            await mon.run(ok)
        await trio.sleep(3600)
        assert b.state == "open"
        await b.reset()
        assert await mon.run(ok) == "ok"
        await b.configure(failure_threshold=2, recovery_timeout_s=5.0)
        for _ in range(2):
            with pytest.raises(Boom):
                await mon.run(boom)
        await b.wait_state("open")
        await b.wait_state("half_open")
        snap = await b.snapshot()
        assert snap.failure_threshold == 2 and snap.openings == 2


async def test_system_unknown_tier_is_a_clear_error(autojump_clock):
    async with open_monitoring(Config()) as mon:
        with pytest.raises(UnknownTier, match="unknown breaker tier 'nope'"):
            await mon.run(ok, tier="nope")


async def test_system_events_carry_transitions(autojump_clock):
    async with open_monitoring(Config()) as mon, mon.events() as events:
        for _ in range(3):
            with pytest.raises(Boom):
                await mon.run(boom, tier="critical")
        event = await events.receive()
        assert isinstance(event, BreakerTransition)
        assert (event.tier, event.from_state, event.to_state) == ("critical", "closed", "open")
        assert "3 failures" in event.reason


async def test_system_crashed_actor_is_restarted_from_last_state(autojump_clock):
    async with open_monitoring(Config()) as mon, mon.events() as events:
        async with mon.guard():
            from actors.runtime.mailbox import ask

            with pytest.raises(ActorCrashed):
                await ask(mon.queue._inbox, lambda r: Crash(reply=r))
            event = await events.receive()
            assert isinstance(event, ActorRestarted) and event.actor == "scheduler"
            snap = await mon.snapshot()
            assert snap.queue.in_flight == 1 and snap.queue.restarts == 1
            assert snap.actors["scheduler"].restarts == 1
        assert (await mon.queue.snapshot()).in_flight == 0


async def test_system_restart_intensity_exceeded_fails_loudly(autojump_clock):
    from actors.runtime.actor import ActorCrashedError

    cfg = Config(supervisor=SupervisorConfig(max_restarts=2, period_s=60.0, backoff_s=0.1))
    with pytest.raises(ActorCrashedError, match="limiter"):
        async with open_monitoring(cfg) as mon:
            for _ in range(5):
                mon._limiter.put(Crash())
                await trio.sleep(1)


async def test_system_shutdown_answers_pending_and_refuses_new(autojump_clock):
    results: list[object] = []
    async with trio.open_nursery() as outer:
        async with open_monitoring(small_queue(max_concurrent=1)) as mon:
            async def attempt():
                try:
                    results.append(await mon.run(ok))
                except ShuttingDown as exc:
                    results.append(exc)

            outer.start_soon(mon.run, trio.sleep_forever)
            await trio.sleep(1)
            for _ in range(5):
                outer.start_soon(attempt)
            await trio.sleep(1)
        await trio.sleep(1)
        assert len(results) == 5 and all(isinstance(r, ShuttingDown) for r in results)
        with pytest.raises(ShuttingDown):
            await mon.run(ok)
        outer.cancel_scope.cancel()


async def test_system_run_monitoring_in_host_nursery(autojump_clock):
    async with trio.open_nursery() as nursery:
        mon = await nursery.start(run_monitoring, Config())
        assert await mon.run(ok, 1) == 1
        nursery.cancel_scope.cancel()


async def test_system_body_exception_is_not_wrapped(autojump_clock):
    with pytest.raises(Boom):
        async with open_monitoring(Config()):
            raise Boom()


async def test_system_thousand_concurrent_calls_each_get_one_outcome(autojump_clock):
    """1,000 guarded calls with random cancellations and timeouts: the ledger balances."""
    rng = random.Random(1234)
    cfg = Config(queue=QueueConfig(max_concurrent=8, max_queue_size=200, request_timeout_s=0.3))
    outcomes: dict[int, str] = {}

    async with open_monitoring(cfg) as mon:
        async def call(i: int, work: float, cancel_after: float | None, fails: bool):
            async def op():
                await trio.sleep(work)
                if fails:
                    raise Boom()
                return i

            with trio.CancelScope() as scope:
                if cancel_after is not None:
                    scope.deadline = trio.current_time() + cancel_after
                try:
                    tier = rng.choice(["database", "analytics", "batch"])
                    result = await mon.run(op, priority=rng.choice(list(Priority)), tier=tier)
                    assert result == i
                    outcomes[i] = "ok"
                except Refused as exc:
                    assert i not in outcomes
                    outcomes[i] = type(exc).__name__
                except Boom:
                    outcomes[i] = "error"
            if scope.cancelled_caught:
                assert i not in outcomes
                outcomes[i] = "cancelled"

        async with trio.open_nursery() as nursery:
            for i in range(1000):
                nursery.start_soon(call, i, rng.uniform(0.0, 0.05),
                                   rng.choice([None, None, rng.uniform(0, 1.0)]), rng.random() < 0.02)
                if i % 50 == 0:
                    await trio.sleep(0.01)
        snap = await mon.queue.snapshot()
        assert len(outcomes) == 1000
        assert (snap.in_flight, snap.free, snap.depth) == (0, 8, 0)
        kinds = set(outcomes.values())
        assert {"ok", "cancelled"} <= kinds
        assert kinds & {"QueueFull", "QueueTimeout"}
        ran = sum(1 for v in outcomes.values() if v in ("ok", "error"))
        assert ran <= snap.admitted <= ran + sum(1 for v in outcomes.values() if v == "cancelled")
        refused = sum(1 for v in outcomes.values() if v in ("QueueFull", "QueueTimeout"))
        assert refused == snap.rejected + snap.displaced + snap.timed_out


async def test_system_malformed_messages_are_answered_not_crashes(autojump_clock):
    from actors.limiter_core import UnknownPolicy
    from actors.runtime.mailbox import ask
    from messages.commands import Admit, Configure
    from messages.errors import ConfigError, InvalidArgumentType

    async with open_monitoring(Config()) as mon:
        for _ in range(3):  # past no restart intensity: none of these is a crash
            with pytest.raises(InvalidArgumentType, match="priority"):
                await ask(mon.queue._inbox, lambda r: Admit(reply=r, priority=None, at=trio.current_time()))
            with pytest.raises(ConfigError, match="tiers.critical.failure_threshold"):
                await ask(mon.breakers["critical"]._inbox, lambda r: Configure(reply=r, failure_threshold="3"))
            with pytest.raises(UnknownPolicy, match="nope"):
                await mon.reset_rate("nope")
        assert all(a.restarts == 0 for a in mon.actors().values())
        assert await mon.run(ok, 7) == 7
        assert (await mon.queue.snapshot()).in_flight == 0


class _Picky:
    """A core for the shell alone: refuses odd numbers on purpose, and has a bug on negatives."""

    name = "picky"

    def step(self, s: int, msg, now: float):
        from actors.runtime.actor import Send
        from messages.errors import InvalidArgument

        if msg.n < 0:
            raise ZeroDivisionError("a bug")
        if msg.n % 2:
            raise InvalidArgument(f"n must be even, got {msg.n}")
        return s + msg.n, [Send(msg.reply, s + msg.n)]

    def wakeup(self, s: int) -> float:
        return float("inf")

    def parked(self, s: int) -> tuple:
        return ()

    def undelivered(self, reply, value) -> None:
        return None


class _Add:
    def __init__(self, reply, n: int) -> None:
        self.reply, self.n = reply, n


async def test_system_actor_refusal_is_the_reply_and_a_bug_still_crashes(autojump_clock):
    from actors.runtime.actor import SupervisedActor, supervise
    from actors.runtime.mailbox import Mailbox, ask
    from messages.errors import InvalidArgument

    inbox = Mailbox("picky")
    cell = SupervisedActor(_Picky(), 0, inbox, lambda event: None)
    async with trio.open_nursery() as nursery:
        await nursery.start(supervise, cell, SupervisorConfig(max_restarts=1), lambda c, e: None)
        for _ in range(5):
            with pytest.raises(InvalidArgument, match="even"):
                await ask(inbox, lambda r: _Add(r, 3))
        assert cell.restarts == 0 and cell.state == 0
        assert await ask(inbox, lambda r: _Add(r, 4)) == 4
        with pytest.raises(ActorCrashed):
            await ask(inbox, lambda r: _Add(r, -1))
        assert cell.restarts == 1
        assert await ask(inbox, lambda r: _Add(r, 2)) == 6  # restarted from its last good state
        nursery.cancel_scope.cancel()


async def test_system_statistics_are_published_values_without_a_round_trip(autojump_clock):
    """Each handle's statistics(): the last published state as a frozen value, no checkpoint (so
    no ask); mon.statistics() gathers them, and agrees with an asked-for mon.snapshot()."""
    async with open_monitoring(Config()) as mon:
        await mon.breakers["critical"].force_open()
        await mon.health_report.wait_value(lambda r: r.status == "degraded")
        with trio.testing.assert_no_checkpoints():
            stats = mon.statistics()
            one = (mon.breakers["critical"].statistics(), mon.queue.statistics(), mon.limiter.statistics())
        asked = await mon.snapshot()
    assert isinstance(stats, SystemStatistics)
    assert (stats.breakers["critical"].state, stats.breakers["database"].state) == ("open", "closed")
    assert one == (stats.breakers["critical"], stats.queue, stats.limiter)
    assert (stats.breakers, stats.queue, stats.limiter, stats.actors) == \
        (asked.breakers, asked.queue, asked.limiter, asked.actors)
    assert stats.health.status == "degraded" and stats.metrics is mon.metrics_snapshot.value
    for value in (stats, *one):
        assert type(value).__struct_config__.frozen
    with pytest.raises(AttributeError):
        stats.queue = None
