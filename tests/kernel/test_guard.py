"""A guard means what it says (issue #10, items 1-3), from the caller's side.

1. The call that reaches `failure_threshold` has opened the breaker by the time it raises
   to its caller (MockClock and real clock; mon.run, mon.guard and mon.db).
2. Every guarded call is a checkpoint, even when the guarded operation never awaits.
3. Caller input never crashes an actor: bad arguments are typed errors to the caller.
"""

from __future__ import annotations

import math

import psycopg.errors
import pytest
import trio
import trio.testing

from actors import CircuitOpen, ConfigError, RateLimited, open_monitoring
from actors.pg.database import QueryTimeout
from messages.config import Config, Priority


class Boom(Exception):
    pass


async def boom() -> None:
    raise Boom()


@pytest.fixture(params=["mock_clock", "real_clock"])
def clock(request):
    """pytest-trio runs the test on whichever Clock a fixture hands it (none: the real one)."""
    return trio.testing.MockClock(autojump_threshold=0) if request.param == "mock_clock" else None


# --- 1. a caller sees its own failure ------------------------------------------------------


async def test_guard_run_threshold_failure_refuses_the_next_call(clock):
    ran = []

    async def op() -> None:
        ran.append(1)

    with trio.fail_after(5):
        async with open_monitoring(Config()) as mon:
            for _ in range(3):  # tier critical: failure_threshold = 3
                with pytest.raises(Boom):
                    await mon.run(boom, tier="critical")
            assert mon.breakers["critical"].state == "open"
            with pytest.raises(CircuitOpen):
                await mon.run(op, tier="critical")
            with pytest.raises(CircuitOpen):
                async with mon.guard(tier="critical"):
                    ran.append(2)
            assert ran == []


async def test_guard_block_threshold_failure_refuses_the_next_call(clock):
    ran = []

    async def op() -> None:
        ran.append(1)

    with trio.fail_after(5):
        async with open_monitoring(Config()) as mon:
            for _ in range(3):
                with pytest.raises(Boom):
                    async with mon.guard(tier="critical"):
                        raise Boom()
            with pytest.raises(CircuitOpen):
                await mon.run(op, tier="critical")
            assert ran == []


async def test_guard_failure_report_keeps_the_callers_exception_when_cancelled(autojump_clock):
    async with open_monitoring(Config()) as mon:
        for _ in range(3):
            with trio.CancelScope() as cs, pytest.raises(Boom):
                async with mon.guard(tier="critical"):
                    cs.cancel()  # cancelled while the failure is being reported: still Boom
                    raise Boom()
        assert mon.breakers["critical"].state == "open"


async def test_guard_db_sql_error_threshold_refuses_the_next_query(database_url):
    with trio.fail_after(10):
        async with open_monitoring(Config(database_url=database_url)) as mon:
            for _ in range(3):  # XX000 internal_error: the server's trouble, not the caller's query
                with pytest.raises(psycopg.errors.InternalError_, match="boom"):
                    await mon.db.execute("do $$ begin raise exception 'boom' using errcode = 'XX000'; end $$",
                                         tier="critical")
            with pytest.raises(CircuitOpen):
                await mon.db.fetchval("select 1", tier="critical")
            with pytest.raises(CircuitOpen):
                async with mon.db.transaction(tier="critical"):
                    pytest.fail("an open breaker must not start a transaction")


async def test_guard_db_query_timeouts_on_database_tier_refuse_the_next_query(database_url):
    with trio.fail_after(10):
        async with open_monitoring(Config(database_url=database_url)) as mon:
            for _ in range(5):  # tier database: failure_threshold = 5
                with pytest.raises(QueryTimeout):
                    await mon.db.fetchval("select pg_sleep(5)", timeout_s=0.02)
            with pytest.raises(CircuitOpen):
                await mon.db.fetchval("select 1")


async def test_guard_db_failed_transaction_threshold_refuses_the_next_query(database_url):
    with trio.fail_after(10):
        async with open_monitoring(Config(database_url=database_url)) as mon:
            for _ in range(3):
                with pytest.raises(Boom):
                    async with mon.db.transaction(tier="critical") as tx:
                        await tx.execute("select 1")
                        raise Boom()
            with pytest.raises(CircuitOpen):
                await mon.db.fetchval("select 1", tier="critical")


# --- 2. every guarded call is a checkpoint -------------------------------------------------


async def quick() -> int:
    return 1


async def raise_now() -> None:
    raise Boom()


async def test_guard_run_of_an_operation_that_never_awaits_is_a_checkpoint(autojump_clock):
    async with open_monitoring(Config()) as mon:
        with trio.testing.assert_checkpoints():
            assert await mon.run(quick) == 1
        with trio.testing.assert_checkpoints(), pytest.raises(Boom):
            await mon.run(raise_now, tier="batch")
        with trio.testing.assert_checkpoints():
            async with mon.guard():
                pass


async def test_guard_run_when_already_cancelled_raises_cancelled_before_running(autojump_clock):
    ran = []

    async def op() -> None:
        ran.append(1)

    async with open_monitoring(Config()) as mon:
        with trio.CancelScope() as cs:
            cs.cancel()
            await mon.run(op)
        assert cs.cancelled_caught and ran == []
        assert (await mon.queue.snapshot()).in_flight == 0


async def test_guard_raising_operation_loop_opens_breaker_and_lets_others_run(autojump_clock):
    others = 0

    async def other() -> None:
        nonlocal others
        while True:
            others += 1
            await trio.lowlevel.checkpoint()

    async with open_monitoring(Config()) as mon, trio.open_nursery() as nursery:
        nursery.start_soon(other)
        booms = refused = 0
        for _ in range(10_000):
            try:
                await mon.run(raise_now)
            except Boom:
                booms += 1
            except CircuitOpen:
                refused += 1
        nursery.cancel_scope.cancel()
    assert (booms, refused) == (5, 9_995)
    assert others >= 1000


# --- 3. caller input never crashes an actor ------------------------------------------------


@pytest.mark.parametrize(("cost", "error"), [(2.5, TypeError), (math.nan, TypeError), ("3", TypeError),
                                             (None, TypeError), (True, TypeError), (0, ValueError),
                                             (-1, ValueError)])
async def test_guard_check_rate_bad_cost_is_an_error_to_the_caller(autojump_clock, cost, error):
    async with open_monitoring(Config()) as mon:
        with pytest.raises(error, match="cost"):
            await mon.check_rate("general", "k", cost=cost)
        assert (await mon.check_rate("general", "k")).allowed
        assert mon.actors()["limiter"].restarts == 0


async def test_guard_check_rate_cost_above_limit_is_a_refusal_that_says_so(autojump_clock):
    async with open_monitoring(Config()) as mon:
        d = await mon.check_rate("auth", "k", cost=6)  # auth: 5 per 900 s
        assert (d.allowed, d.retry_after_s, d.reason) == (False, math.inf, "cost_exceeds_limit")
        assert (d.limit, d.remaining) == (5, 5)  # nothing was consumed
        with pytest.raises(RateLimited, match="exceeds the limit"):
            await mon.enforce_rate("auth", "k", cost=6)
        assert (await mon.check_rate("auth", "k", cost=5)).allowed


@pytest.mark.parametrize(("priority", "error"), [(None, TypeError), ("HIGH", TypeError), (1.0, TypeError),
                                                 (True, TypeError), (99, ValueError), (-1, ValueError)])
async def test_guard_bad_priority_is_an_error_to_the_caller(autojump_clock, priority, error):
    async with open_monitoring(Config()) as mon:
        with pytest.raises(error, match="priority"):
            await mon.run(quick, priority=priority)
        with pytest.raises(error, match="priority"):
            async with mon.guard(priority=priority):
                pytest.fail("a bad priority must not run the block")
        assert await mon.run(quick, priority=Priority.HIGH) == 1
        assert await mon.run(quick, priority=4) == 1
        assert mon.actors()["scheduler"].restarts == 0
        assert (await mon.queue.snapshot()).in_flight == 0


async def test_guard_bad_priority_while_queue_is_busy_is_an_error_to_the_caller(autojump_clock):
    async with open_monitoring(Config()) as mon, trio.open_nursery() as nursery:
        for _ in range(mon.config.queue.max_concurrent):  # every slot held: an arrival must ask
            nursery.start_soon(mon.run, trio.sleep, 10)
        await trio.testing.wait_all_tasks_blocked()
        for bad in (None, "HIGH", 99):
            with pytest.raises((TypeError, ValueError), match="priority"):
                await mon.run(quick, priority=bad)
        assert mon.actors()["scheduler"].restarts == 0


@pytest.mark.parametrize(("field", "value"), [
    ("failure_threshold", 2.5), ("failure_threshold", True), ("failure_threshold", "3"),
    ("failure_threshold", 0), ("success_threshold", -1), ("half_open_max_calls", 1.0),
    ("recovery_timeout_s", -1.0), ("recovery_timeout_s", math.inf), ("recovery_timeout_s", "10"),
    ("monitoring_period_s", 0), ("monitoring_period_s", math.nan), ("monitoring_period_s", math.inf),
])
async def test_guard_configure_bad_value_is_a_config_error_naming_the_field(autojump_clock, field, value):
    async with open_monitoring(Config()) as mon:
        breaker = mon.breakers["critical"]
        with pytest.raises(ConfigError) as info:
            await breaker.configure(**{field: value})
        assert info.value.field == f"tiers.critical.{field}"
        snap = await breaker.snapshot()
        assert (snap.failure_threshold, snap.recovery_timeout_s, snap.monitoring_period_s) == (3, 10.0, 60.0)
        for _ in range(3):
            with pytest.raises(Boom):
                await mon.run(boom, tier="critical")
        assert breaker.state == "open"
        assert mon.actors()["breaker.critical"].restarts == 0


async def test_guard_configure_unknown_field_is_a_config_error(autojump_clock):
    async with open_monitoring(Config()) as mon:
        with pytest.raises(ConfigError, match="tiers.critical.threshold"):
            await mon.breakers["critical"].configure(threshold=3)


async def test_guard_many_bad_calls_leave_the_system_serving(autojump_clock):
    async with open_monitoring(Config()) as mon:
        for _ in range(4):  # well past the supervisor's restart intensity (5 within 60 s)
            for call in (lambda: mon.check_rate("general", "k", cost="3"),
                         lambda: mon.run(quick, priority=None),
                         lambda: mon.breakers["database"].configure(failure_threshold=2.5)):
                with pytest.raises((TypeError, ValueError, ConfigError)):
                    await call()
        for _ in range(5):
            with pytest.raises(Boom):
                await mon.run(boom)
        assert mon.breakers["database"].state == "open"
        assert (await mon.check_rate("general", "k")).allowed
        assert all(a.restarts == 0 for a in mon.actors().values())


async def test_guard_reset_rate_and_wait_state_bad_arguments_are_errors(autojump_clock):
    from actors.limiter_core import UnknownPolicy

    async with open_monitoring(Config()) as mon:
        with pytest.raises(UnknownPolicy, match="nope"):
            await mon.reset_rate("nope")
        with pytest.raises(TypeError, match="key"):
            await mon.reset_rate("general", key=123)
        with pytest.raises(ValueError, match="half_open"):
            await mon.breakers["database"].wait_state("opened")
        with pytest.raises(ValueError, match="timeout_s"):
            await mon.run(quick, timeout_s=math.nan)
        with pytest.raises(TypeError, match="timeout_s"):
            async with mon.guard(timeout_s="5"):
                pytest.fail("a bad timeout must not run the block")
        await mon.reset_rate("general", key="k")
        assert mon.actors()["limiter"].restarts == 0


async def test_guard_db_bad_priority_is_an_error_to_the_caller(database_url):
    with trio.fail_after(10):
        async with open_monitoring(Config(database_url=database_url)) as mon:
            with pytest.raises(ValueError, match="priority"):
                await mon.db.fetchval("select 1", priority=99)
            with pytest.raises(TypeError, match="priority"):
                async with mon.db.transaction(priority="HIGH"):
                    pytest.fail("a bad priority must not start a transaction")
            assert await mon.db.fetchval("select 1", priority=Priority.LOW) == 1
            assert (await mon.queue.snapshot()).in_flight == 0


# --- one guard: mon.run, mon.guard and mon.db (issue #11, point 2) -----------------------------


async def test_guard_guards_name_the_tier_and_refuse_once_closed(autojump_clock):
    from actors import ShuttingDown, UnknownTier
    from actors.guard import Guard

    async with open_monitoring(Config()) as mon:
        assert type(mon.guard()) is Guard and type(mon.guards("database", Priority.NORMAL, None)) is Guard
        with pytest.raises(UnknownTier):
            mon.guards("nope", Priority.NORMAL, None)
    with pytest.raises(ShuttingDown):
        mon.guards("database", Priority.NORMAL, None, conn=True)


def test_guard_no_module_reaches_into_another_objects_privates():
    """The handle's breaker lookup, the metrics mailbox and a breaker's published view are
    the guard's business (actors/guard.py); the generic runtime knows nothing of offers."""
    from pathlib import Path

    import actors

    root = Path(actors.__file__).parent
    reaches = {"mon._breaker", "_mon._", "._view", "._queue.admit", "._queue.release"}
    found = [(str(p.relative_to(root)), r) for p in root.rglob("*.py") if p.name != "guard.py"
             for r in reaches if r in p.read_text()]
    assert found == []
    runtime = " ".join(p.read_text().lower() for p in (root / "runtime").rglob("*.py"))
    assert "offers" not in runtime and "pre_step" not in runtime and "pool" not in runtime
