"""The pool's one home (`actors.pg.pool`): the pure pool, the offer list, the connections
that really exist (compared with PostgreSQL's own view), and the scheduler core that keeps
offers beside it across a crash."""

from __future__ import annotations

import math
import types
import uuid

import pytest
import trio
from msgspec.structs import replace

from actors import open_monitoring
from actors.pg.connection import PgConnection
from actors.pg.pool import (
    CONNECT_BACKOFF_MIN_S,
    OfferCounts,
    Offers,
    Pool,
    Token,
    corrected,
    give_back,
    lease,
    undo_lease,
)
from actors.pg.pool_idle import reap
from actors.scheduler import SchedulerCore, SchedulerState
from messages.commands import Admit, Admitted, GetSnapshot, Release, Replenish
from messages.config import Config, DatabaseConfig, Priority, QueueConfig


class FakeConn:
    def __init__(self) -> None:
        self.closed = False

    def close_now(self) -> None:
        self.closed = True


def fake_inbox() -> types.SimpleNamespace:
    sent: list = []
    return types.SimpleNamespace(closed=False, put=sent.append, sent=sent, tell_count=lambda: None)


# --- the pure pool ----------------------------------------------------------------------------

def test_pool_lease_gives_warmest_idle_then_leave_to_open_then_a_wait_while_backing_off():
    a, b = FakeConn(), FakeConn()
    pool, got = lease(Pool(idle=(a, b), opened=2), 0.0)
    assert got == {"conn": b} and pool.idle == (a,) and pool.reused == 1
    pool, got = lease(Pool(), 0.0)
    assert got == {"connect": True} and pool.opened == 1 and pool.connects == 1
    backing_off = Pool(retry_at=5.0, limited=True)
    assert lease(backing_off, 4.0) == (backing_off, {"unavailable_s": 1.0, "limited": True})
    assert lease(backing_off, 4.0, probe=True)[1] == {"connect": True}  # a trial finds out


def test_pool_give_back_and_undo_lease_restore_the_accounting():
    conn = FakeConn()
    failed = give_back(Pool(opened=1), Release(reply=None, discarded=True, connect_failed=True), 2.0)
    assert (failed.opened, failed.backoff_s, failed.retry_at) == (0, CONNECT_BACKOFF_MIN_S, 2.0 + CONNECT_BACKOFF_MIN_S)
    back = give_back(failed, Release(reply=None, conn=conn), 3.0)
    assert back.idle == (conn,) and back.backoff_s == 0.0 and back.retry_at == -math.inf
    pool, got = lease(Pool(), 0.0)
    assert undo_lease(pool, Admitted(waited_s=0.0, **got)) == Pool()
    pool, got = lease(Pool(idle=(conn,), opened=1), 0.0)
    assert undo_lease(pool, Admitted(waited_s=0.0, **got)) == Pool(idle=(conn,), opened=1)


# --- the offer list ------------------------------------------------------------------------

def offered(max_concurrent: int = 2) -> tuple[SchedulerCore, SchedulerState, Offers]:
    state = replace(SchedulerState.initial(QueueConfig(max_concurrent=max_concurrent)), offer=True)
    offers = Offers(fake_inbox(), state)
    core = SchedulerCore(offers)
    state, effects = core.step(state, Replenish(), 0.0)
    assert effects == []  # offers go on the list, not to the shell
    return core, state, offers


def test_pool_offers_fill_free_slots_and_are_corrected_out_of_the_snapshot():
    core, state, offers = offered(2)
    assert len(offers) == 2 and offers.counts() == OfferCounts(idle=2, unopened=2)
    state, effects = core.step(state, GetSnapshot(reply=None), 0.0)
    raw = effects[0].value
    assert (raw.in_flight, raw.free, raw.pool.opened) == (2, 0, 2)
    seen = corrected(raw, offers.counts())  # an idle pool of offered slots has no connection yet
    assert (seen.in_flight, seen.free, seen.pool.opened) == (0, 2, 0)


def test_pool_offer_taken_by_a_caller_wanting_no_connection_opens_none():
    """`mon.run` takes an offered slot whose lease says "open one": it opens none, so the
    pool must not report that connection while the caller holds the slot."""
    core, state, offers = offered(2)
    token, granted = offers.take(conn=False)
    assert granted.connect and offers.counts() == OfferCounts(idle=1, unopened=2)
    assert offers.put_back(token, None, granted)
    assert offers.counts() == OfferCounts(idle=2, unopened=2) and offers.lent_unopened == 0


def test_pool_offer_put_back_only_while_nobody_waits_and_not_during_back_off():
    core, state, offers = offered(1)
    token, granted = offers.take(conn=True)
    conn = FakeConn()
    assert offers.put_back(token, conn, granted) and len(offers) == 1
    token, granted = offers.take(conn=True)
    offers.state = replace(state, pool=replace(state.pool, backoff_s=1.0))
    assert not offers.put_back(token, conn, granted)  # the news that the database answers
    offers.state = replace(state, depth=1)
    assert not offers.put_back(token, None, granted)


def test_pool_scheduler_crash_after_reclaim_keeps_the_offer_with_the_last_good_state():
    """A message that crashes the core after an offer was taken back for it: the state stays
    as it was (restart from last good state), so the offer goes back on the list too."""
    core, state, offers = offered(1)
    bad = Admit(reply=Token(), priority=Priority.NORMAL, at="not a time")  # crashes in _grant
    with pytest.raises(TypeError):
        core.step(state, bad, 0.0)
    assert len(offers) == 1 and offers.entries[0][0] in state.holders


# --- the connections that really exist, as PostgreSQL sees them --------------------------------

async def backends(url: str, app: str) -> int:
    async with await PgConnection.connect(url) as conn:
        sql = "select count(*) from pg_stat_activity where application_name = %s"
        return (await conn.execute(sql, [app])).rows[0][0]


async def pooled_in_health(mon, expected: int) -> int:
    """The health report's own pooled count, once a report shows `expected` (it re-evaluates
    at least every second)."""
    with trio.move_on_after(3.0):
        await mon.health_report.wait_value(
            lambda r: r.detailed()["components"]["database"]["ownConnections"]["pooled"] == expected)
    return mon.health_report.value.detailed()["components"]["database"]["ownConnections"]["pooled"]


async def test_pool_pooled_count_matches_pg_stat_activity_after_burst_and_after_reaper(direct_database_url):
    app = f"triage-pool-{uuid.uuid4().hex[:8]}"
    cfg = Config(database_url=direct_database_url, database=DatabaseConfig(application_name=app),
                 queue=QueueConfig(max_concurrent=4, min_idle=1, max_idle_s=3600.0))
    async with open_monitoring(cfg) as mon:
        assert (await mon.queue.snapshot()).pool.opened == 0 == await backends(direct_database_url, app)
        async with trio.open_nursery() as nursery:
            for _ in range(4):
                nursery.start_soon(mon.db.fetchval, "select pg_sleep(0.05)")
        assert await backends(direct_database_url, app) == 4
        assert (await mon.queue.snapshot()).pool.opened == 4
        assert await pooled_in_health(mon, 4) == 4
        # The reaper's pass as it runs an hour from now: all but min_idle go.
        reap(mon.queue.offers, 1, 3600.0, trio.current_time() + 3601.0)
        assert (await mon.queue.snapshot()).pool.opened == 1
        with trio.fail_after(3.0):  # a backend ends shortly after its socket closes: no event to wait on
            while await backends(direct_database_url, app) > 1:
                await trio.sleep(0.05)
        assert await backends(direct_database_url, app) == 1
        assert await pooled_in_health(mon, 1) == 1
