"""A temporarily reduced queue limit (issue #12 item 17): `set_limit`, in the core and through the handle."""

from __future__ import annotations

import types

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from actors import ActorCrashed, InvalidArgument, open_monitoring
from actors.pg.pool import Offers
from actors.runtime.actor import Emit, Send
from actors.runtime.mailbox import ask
from actors.scheduler import SchedulerCore, SchedulerState, step
from messages.commands import Admit, Admitted, Crash, Done, Release, SetLimit
from messages.config import Config, Priority, QueueConfig
from messages.events import QueueLimitChanged


class Token:
    def __init__(self, name: str = "") -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"Token({self.name})"


def new(max_concurrent: int = 3, max_queue_size: int = 5) -> SchedulerState:
    return SchedulerState.initial(QueueConfig(max_concurrent=max_concurrent, max_queue_size=max_queue_size))


def granted(effects: list) -> list:
    return [e.to for e in effects if isinstance(e, Send) and isinstance(e.value, Admitted)]


def holding(n: int, **kw) -> tuple[SchedulerState, list[Token]]:
    s, tokens = new(**kw), [Token(f"h{i}") for i in range(n)]
    for t in tokens:
        s, _ = step(s, Admit(reply=t, priority=Priority.NORMAL, at=0.0), 0.0)
    return s, tokens


def test_scheduler_set_limit_lets_holders_above_it_finish_and_new_arrivals_wait():
    s, (a, b, c) = holding(3)
    reply = Token("admin")
    s, effects = step(s, SetLimit(reply=reply, max_concurrent=1), 1.0)
    emitted, answered = effects  # the change told (health shows it at once), then the answer
    assert type(emitted) is Emit and emitted.event == QueueLimitChanged(max_concurrent=1, at=1.0)
    assert (answered.to, answered.value) == (reply, Done())
    assert s.holders == {a, b, c} and (s.max_concurrent, s.free) == (1, 0)  # nobody is cut
    waiter = Token("w")
    s, effects = step(s, Admit(reply=waiter, priority=Priority.CRITICAL, at=1.0), 1.0)
    assert effects == [] and s.depth == 1
    s, effects = step(s, Release(reply=a), 2.0)
    assert granted(effects) == [] and s.in_flight == 2        # still above the limit
    s, effects = step(s, Release(reply=b), 3.0)
    assert granted(effects) == [] and s.in_flight == 1        # at the limit: still waits
    s, effects = step(s, Release(reply=c), 4.0)
    assert granted(effects) == [waiter] and effects[0].value.waited_s == 3.0
    assert (s.in_flight, s.free, s.depth) == (1, 0, 0)


def test_scheduler_set_limit_none_restores_configured_slots_and_serves_waiters_at_once():
    s, _ = holding(1)
    s, _ = step(s, SetLimit(reply=Token(), max_concurrent=1), 0.0)
    waiters = [Token("w1"), Token("w2")]
    for w in waiters:
        s, _ = step(s, Admit(reply=w, priority=Priority.NORMAL, at=0.0), 0.0)
    snap_reduced = step(s, SetLimit(reply=Token(), max_concurrent=1), 0.0)[0]
    s, effects = step(s, SetLimit(reply=Token(), max_concurrent=None), 5.0)
    assert granted(effects) == waiters and (s.in_flight, s.free, s.limit) == (3, 0, None)
    assert snap_reduced.max_concurrent == 1 and s.max_concurrent == 3


@pytest.mark.parametrize("value", [0, -1, 4, True, 2.0, "2"])
def test_scheduler_set_limit_out_of_range_is_an_error_reply_and_changes_nothing(value):
    s, _ = holding(1)
    reply = Token()
    after, effects = step(s, SetLimit(reply=reply, max_concurrent=value), 0.0)
    assert after == s and len(effects) == 1 and effects[0].to is reply
    assert isinstance(effects[0].value, InvalidArgument) and "max_concurrent" in str(effects[0].value)


def test_scheduler_set_limit_shows_in_snapshot_with_configured_value():
    from actors.scheduler import snapshot

    s, _ = holding(2)
    assert snapshot(s, 0.0).configured_max_concurrent is None
    s, _ = step(s, SetLimit(reply=Token(), max_concurrent=2), 0.0)
    snap = snapshot(s, 0.0)
    assert (snap.max_concurrent, snap.configured_max_concurrent, snap.in_flight, snap.free) == (2, 3, 2, 0)


def test_scheduler_set_limit_reclaims_offered_slots_beyond_the_new_limit():
    inbox = types.SimpleNamespace(closed=False, tell_count=lambda: None)
    state = SchedulerState(cfg=QueueConfig(max_concurrent=4, max_queue_size=5), offer=True)
    offers = Offers(inbox, state)
    core = SchedulerCore(offers)
    s, _ = core.step(state, Admit(reply=Token("first"), priority=Priority.NORMAL, at=0.0), 0.0)
    s, _ = core.step(s, Release(reply=next(iter(s.holders))), 0.0)  # free slots go on the list
    assert len(offers) == 4
    s, effects = core.step(s, SetLimit(reply=Token(), max_concurrent=2), 1.0)
    assert len(offers) == 2 and len(s.holders) == 2 and s.free == 0  # the other two came back
    s, effects = core.step(s, SetLimit(reply=Token(), max_concurrent=None), 2.0)
    assert len(offers) == 4 and len(s.holders) == 4


async def test_scheduler_set_limit_through_the_handle_on_mock_clock(autojump_clock):
    config = Config(queue=QueueConfig(max_concurrent=3, max_queue_size=10))
    async with open_monitoring(config) as mon, trio.open_nursery() as nursery:
        release = [trio.Event() for _ in range(3)]
        finished: list[float] = []

        async def hold(i: int) -> None:
            await mon.run(release[i].wait)
            finished.append(i)

        for i in range(3):
            nursery.start_soon(hold, i)
        await trio.testing.wait_all_tasks_blocked()
        await mon.queue.set_limit(1)
        assert mon.queue.statistics().in_flight == 3          # holders above the limit keep going
        admitted_at: list[float] = []

        async def late() -> None:
            await mon.run(trio.sleep, 0)
            admitted_at.append(trio.current_time())
        nursery.start_soon(late)
        await trio.testing.wait_all_tasks_blocked()
        for i in range(2):
            release[i].set()
            await trio.sleep(1.0)
        assert admitted_at == [] and mon.queue.statistics().depth == 1  # 1 holder = the limit
        with pytest.raises(InvalidArgument):
            await mon.queue.set_limit(4)
        with pytest.raises(ActorCrashed):  # a restart from the last state keeps the reduced limit
            await ask(mon.queue._inbox, lambda r: Crash(reply=r))
        assert (await mon.queue.snapshot()).configured_max_concurrent == 3
        t_last = trio.current_time()
        release[2].set()
        await trio.sleep(1.0)
        assert admitted_at == [t_last]                        # the moment the last holder left
        assert sorted(finished) == [0, 1, 2]
        await mon.queue.set_limit(None)
        assert (mon.queue.statistics().max_concurrent, mon.queue.statistics().configured_max_concurrent) == (3, None)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["admit", "release", "limit"]), st.integers(0, 5)), max_size=80))
def test_scheduler_set_limit_random_sequences_never_grant_above_the_limit_nor_cut_a_holder(ops):
    s, holders = new(max_concurrent=4, max_queue_size=6), []
    for op, arg in ops:
        before = set(s.holders)
        if op == "admit":
            msg = Admit(reply=Token(), priority=arg % 5, at=0.0)
        elif op == "release" and holders:
            msg = Release(reply=holders.pop(arg % len(holders)))
        else:
            msg = SetLimit(reply=Token(), max_concurrent=None if arg == 0 else min(arg, 4))
        s, effects = step(s, msg, 0.0)
        new_grants = granted(effects)
        holders += new_grants
        assert set(holders) == set(s.holders)
        if new_grants:
            assert len(s.holders) <= s.max_concurrent               # grants only below the limit
        gone = before - set(s.holders)
        assert gone <= ({msg.reply} if type(msg) is Release else set())  # nobody is cut
        assert s.free == max(s.max_concurrent - len(s.holders), 0)
        assert s.free == 0 or s.depth == 0


async def test_scheduler_set_limit_holders_released_while_nobody_waits_are_not_offered_again(autojump_clock):
    config = Config(queue=QueueConfig(max_concurrent=3, max_queue_size=10))
    async with open_monitoring(config) as mon, trio.open_nursery() as nursery:
        first, second = trio.Event(), trio.Event()
        for _ in range(3):
            nursery.start_soon(mon.run, first.wait)
        await trio.testing.wait_all_tasks_blocked()
        await mon.queue.set_limit(1)
        first.set()                                   # all three leave while nobody waits
        await trio.testing.wait_all_tasks_blocked()
        assert mon.queue.statistics().in_flight == 0
        for _ in range(2):
            nursery.start_soon(mon.run, second.wait)
        await trio.testing.wait_all_tasks_blocked()
        stats = mon.queue.statistics()
        assert (stats.in_flight, stats.depth, stats.free) == (1, 1, 0)  # the limit holds
        second.set()
