"""Admission queue core: priority order, displacement, clearing, and slot conservation."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from msgspec.structs import replace

from actors.runtime.actor import Send
from actors.scheduler import SchedulerCore, SchedulerState, step
from messages.commands import (
    Admit,
    Admitted,
    Clear,
    Done,
    GetSnapshot,
    Release,
    SetLimit,
    Tick,
    Withdraw,
)
from messages.config import Config, Priority, QueueConfig
from messages.errors import ConfigError, QueueCleared, QueueFull


class Token:
    def __init__(self, name: str = "") -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"Token({self.name})"


def new(max_concurrent: int = 2, max_queue_size: int = 3) -> SchedulerState:
    return SchedulerState.initial(QueueConfig(max_concurrent=max_concurrent, max_queue_size=max_queue_size))


def admit(s, prio, now=0.0, name=""):
    t = Token(name)
    s, effects = step(s, Admit(reply=t, priority=prio, at=now), now)
    return s, t, effects


def granted(effects):
    return [e.to for e in effects if isinstance(e, Send) and isinstance(e.value, Admitted)]


def check_invariants(s: SchedulerState) -> None:
    assert 0 <= s.in_flight <= s.cfg.max_concurrent
    assert s.in_flight + s.free == s.cfg.max_concurrent
    assert s.depth == sum(len(q) for q in s.waiting) <= s.cfg.max_queue_size
    assert s.free == 0 or s.depth == 0


def test_scheduler_grants_free_slots_at_once():
    s = new()
    s, a, ea = admit(s, Priority.NORMAL)
    s, b, eb = admit(s, Priority.LOW)
    assert granted(ea) == [a] and granted(eb) == [b]
    assert (s.in_flight, s.free, s.depth) == (2, 0, 0)


def test_scheduler_serves_by_priority_then_fifo():
    s = new(max_concurrent=1, max_queue_size=10)
    s, holder, _ = admit(s, Priority.NORMAL)
    order = [(Priority.BATCH, "b1"), (Priority.NORMAL, "n1"), (Priority.CRITICAL, "c1"),
             (Priority.NORMAL, "n2"), (Priority.HIGH, "h1"), (Priority.CRITICAL, "c2")]
    for prio, name in order:
        s, _, effects = admit(s, prio, name=name)
        assert effects == []
    served = []
    current = holder
    for _ in order:
        s, effects = step(s, Release(reply=current), 1.0)
        (current,) = granted(effects)
        served.append(current.name)
        check_invariants(s)
    assert served == ["c1", "c2", "h1", "n1", "n2", "b1"]


def test_scheduler_full_queue_refuses_equal_or_lower_priority():
    s = new(max_concurrent=1, max_queue_size=2)
    s, _, _ = admit(s, Priority.NORMAL)
    s, _, _ = admit(s, Priority.NORMAL)
    s, _, _ = admit(s, Priority.HIGH)
    s, t, effects = admit(s, Priority.NORMAL)
    assert len(effects) == 1 and effects[0].to is t and isinstance(effects[0].value, QueueFull)
    assert not effects[0].value.displaced and s.rejected == 1 and s.depth == 2


def test_scheduler_full_queue_displaces_newest_lowest_priority_waiter():
    s = new(max_concurrent=1, max_queue_size=3)
    s, _, _ = admit(s, Priority.NORMAL)
    s, b1, _ = admit(s, Priority.BATCH, name="b1")
    s, b2, _ = admit(s, Priority.BATCH, name="b2")
    s, lo, _ = admit(s, Priority.LOW, name="lo")
    s, crit, effects = admit(s, Priority.CRITICAL, name="crit")
    assert [(e.to, type(e.value), e.value.displaced) for e in effects] == [(b2, QueueFull, True)]
    assert s.displaced == 1 and s.depth == 3
    assert [w.reply for w in s.waiting[Priority.CRITICAL]] == [crit]
    assert [w.reply for w in s.waiting[Priority.BATCH]] == [b1]


def test_scheduler_withdraw_removes_waiter_and_counts_reason():
    s = new(max_concurrent=1, max_queue_size=5)
    s, _, _ = admit(s, Priority.NORMAL)
    s, a, _ = admit(s, Priority.LOW)
    s, b, _ = admit(s, Priority.LOW)
    s, _ = step(s, Withdraw(reply=a, reason="timeout"), 30.0)
    s, _ = step(s, Withdraw(reply=b, reason="cancelled"), 30.0)
    assert (s.depth, s.timed_out, s.cancelled) == (0, 1, 1)
    s, effects = step(s, Withdraw(reply=b), 30.0)  # late duplicate: ignored
    assert effects == [] and s.in_flight == 1


def test_scheduler_undelivered_grant_moves_to_next_waiter():
    s = new(max_concurrent=1, max_queue_size=5)
    s, holder, _ = admit(s, Priority.NORMAL)
    s, gone, _ = admit(s, Priority.NORMAL)
    s, nxt, _ = admit(s, Priority.NORMAL)
    s, effects = step(s, Release(reply=holder), 1.0)
    assert granted(effects) == [gone]
    back = SchedulerCore.undelivered(gone, effects[0].value)
    s, effects = step(s, back, 1.0)
    assert granted(effects) == [nxt] and s.in_flight == 1 and s.depth == 0


def test_scheduler_release_twice_frees_one_slot():
    s = new(max_concurrent=2)
    s, a, _ = admit(s, Priority.NORMAL)
    s, _ = step(s, Release(reply=a), 1.0)
    s, _ = step(s, Release(reply=a), 1.0)
    assert (s.in_flight, s.free) == (0, 2)


def test_scheduler_clear_answers_every_waiter():
    s = new(max_concurrent=1, max_queue_size=5)
    s, holder, _ = admit(s, Priority.NORMAL)
    waiters = []
    for p in (Priority.LOW, Priority.HIGH, Priority.BATCH):
        s, t, _ = admit(s, p)
        waiters.append(t)
    s, effects = step(s, Clear(reply=Token()), 2.0)
    cleared = [e.to for e in effects if isinstance(e.value, QueueCleared)]
    assert set(cleared) == set(waiters) and isinstance(effects[-1].value, Done)
    assert (s.depth, s.cleared, s.in_flight) == (0, 3, 1)


def test_scheduler_snapshot_counts_and_oldest_wait():
    s = new(max_concurrent=1, max_queue_size=5)
    s, _, _ = admit(s, Priority.NORMAL, now=0.0)
    s, _, _ = admit(s, Priority.LOW, now=2.0)
    s, _, _ = admit(s, Priority.HIGH, now=3.0)
    s, effects = step(s, GetSnapshot(reply=Token()), 10.0)
    snap = effects[0].value
    assert (snap.in_flight, snap.free, snap.depth, snap.admitted) == (1, 0, 2, 1)
    assert snap.depth_by_priority == {"CRITICAL": 0, "HIGH": 1, "NORMAL": 0, "LOW": 1, "BATCH": 0}
    assert snap.oldest_wait_s == 8.0


ops = st.one_of(
    st.tuples(st.just("admit"), st.sampled_from(list(Priority))),
    st.tuples(st.just("release"), st.integers(0, 50)),
    st.tuples(st.just("withdraw"), st.integers(0, 50)),
    st.tuples(st.just("undelivered"), st.integers(0, 50)),
    st.tuples(st.just("clear"), st.just(0)),
)


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 4), st.integers(0, 6), st.lists(ops, max_size=150))
def test_scheduler_random_sequences_conserve_slots(max_concurrent, max_queue_size, seq):
    s = new(max_concurrent, max_queue_size)
    tokens: list[Token] = []
    answered: dict[int, object] = {}
    for now, (op, arg) in enumerate(seq):
        if op == "admit":
            s, t, effects = admit(s, arg, now=float(now))
            tokens.append(t)
        elif not tokens:
            continue
        elif op == "release":
            s, effects = step(s, Release(reply=tokens[arg % len(tokens)]), float(now))
        elif op == "withdraw":
            s, effects = step(s, Withdraw(reply=tokens[arg % len(tokens)]), float(now))
        elif op == "undelivered":
            t = tokens[arg % len(tokens)]
            s, effects = step(s, SchedulerCore.undelivered(t, Admitted(waited_s=0.0)), float(now))
        else:
            s, effects = step(s, Clear(), float(now))
        for e in effects:
            if e.to is not None:
                assert id(e.to) not in answered, "a caller answered twice"
                answered[id(e.to)] = e.value
        check_invariants(s)
        assert all(t in tokens for t in s.holders)


# --- offers: slots granted ahead of demand, taken without a round trip ------------------------

from actors.pg.pool import Offer  # noqa: E402
from actors.pg.pool import Token as Slot  # noqa: E402
from messages.commands import Reclaim, Replenish, Taken  # noqa: E402


class Shell:
    """What the actor shell and the queue handle do around the core, as a plain model."""

    def __init__(self, max_concurrent: int, max_queue_size: int) -> None:
        self.s = replace(new(max_concurrent, max_queue_size), offer=True)
        self.offers: list = []
        self.held: dict[object, Admitted] = {}    # slot -> lease, held by callers
        self.waiting: list[Slot] = []
        self.step(Replenish())

    def step(self, msg) -> None:
        if type(msg) is Admit and self.offers:      # pre_step: take an unused offer back
            token, lease = self.offers.pop(0)
            self.step(Reclaim(token=token, lease=lease))
        self.s, effects = step(self.s, msg, 0.0)
        for e in effects:
            if isinstance(e, Offer):
                self.offers.append((e.token, e.lease))
            elif isinstance(e.value, Admitted):
                self.waiting.remove(e.to) if e.to in self.waiting else None
                self.held[e.to] = e.value
            elif e.to in self.waiting:
                self.waiting.remove(e.to)

    def acquire(self) -> None:
        if self.offers:
            token, lease = self.offers.pop(0)
            self.held[token] = lease
            self.step(Taken(n=1))
        else:
            t = Slot()
            self.waiting.append(t)
            self.step(Admit(reply=t, priority=Priority.NORMAL, at=0.0, conn=True))

    def release(self, i: int) -> None:
        if not self.held:
            return
        token = list(self.held)[i % len(self.held)]
        lease = self.held.pop(token)
        if self.s.depth == 0 and not lease.unavailable_s:
            self.offers.append((token, lease))       # straight back on the list
        else:
            self.step(Release(reply=token, conn=lease.conn, discarded=lease.connect))


def test_scheduler_offers_fill_free_slots_and_count_when_taken():
    sh = Shell(max_concurrent=3, max_queue_size=5)
    assert len(sh.offers) == 3 and sh.s.free == 0 and sh.s.admitted == 0
    sh.acquire()
    assert len(sh.held) == 1 and sh.s.admitted == 1 and len(sh.offers) == 2


def test_scheduler_arrival_that_must_ask_reclaims_an_offer():
    sh = Shell(max_concurrent=2, max_queue_size=5)
    t = Slot()
    sh.step(Admit(reply=t, priority=Priority.LOW, at=0.0))  # as if it missed the list
    assert t in sh.held and len(sh.offers) == 1 and sh.s.depth == 0


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 4), st.integers(0, 4),
       st.lists(st.tuples(st.sampled_from(["acquire", "release"]), st.integers(0, 10)), max_size=120))
def test_scheduler_offers_conserve_slots_and_never_idle_while_someone_waits(max_concurrent, max_queue_size, ops):
    sh = Shell(max_concurrent, max_queue_size)
    for op, arg in ops:
        sh.acquire() if op == "acquire" else sh.release(arg)
        s = sh.s
        assert len(s.holders) + s.free == s.cfg.max_concurrent
        assert {t for t, _ in sh.offers} | set(sh.held) <= set(s.holders)
        assert len(sh.offers) + len(sh.held) == len(s.holders)
        assert s.depth == 0 or not sh.offers          # nobody waits while a slot lies unused
        assert s.pool.opened <= s.cfg.max_concurrent


# --- an idle pool shrinks to min_idle (issue #10 item 13, pool part) -------------------------

class FakeConn:
    """A pooled connection as the reaper sees it: when it was last used, whether it is closed."""

    def __init__(self, last_used_at: float) -> None:
        self.last_used_at, self.closed = last_used_at, False

    def close_now(self) -> None:
        self.closed = True


def test_scheduler_idle_to_close_keeps_min_idle_most_recent_and_closes_the_rest_when_due():
    from actors.pg.pool_idle import idle_to_close

    a, b, c = FakeConn(0.0), FakeConn(10.0), FakeConn(20.0)
    idle = [(a, 0.0), (b, 10.0), (c, 20.0)]
    assert idle_to_close(idle, 1, 60.0, 59.9) == ([], 60.0)       # a is due at exactly 60
    assert idle_to_close(idle, 1, 60.0, 60.0) == ([a], 70.0)
    assert idle_to_close(idle, 1, 60.0, 500.0) == ([b, a], 560.0)  # c, the warmest, stays
    assert idle_to_close(idle, 0, 60.0, 500.0) == ([c, b, a], 560.0)
    assert idle_to_close(idle, 3, 60.0, 500.0) == ([], 560.0)
    assert idle_to_close([], 1, 60.0, 5.0) == ([], 65.0)


def test_scheduler_close_idle_frees_offered_slots_and_closes_only_still_idle_conns():
    from actors.pg.pool import CloseConns, CloseIdle, Offer

    s = replace(new(max_concurrent=2), offer=True)
    held, idle_conn, gone = Token("held"), FakeConn(0.0), FakeConn(0.0)
    s, _ = step(s, Admit(reply=held, priority=Priority.NORMAL, at=0.0, conn=True), 0.0)
    s = replace(s, pool=replace(s.pool, idle=(idle_conn,), opened=2))
    s, effects = step(s, CloseIdle(conns=(idle_conn, gone)), 5.0)
    assert [type(e) for e in effects] == [CloseConns, Offer]  # the freed slot is offered again
    effects[0].perform(None, 5.0)
    assert idle_conn.closed and not gone.closed   # `gone` was not the core's to close
    assert s.pool.idle == () and s.pool.idle_closed == 1
    offer_token = effects[1].token
    s, effects = step(s, CloseIdle(tokens=(offer_token, Token("unknown"))), 6.0)
    assert s.pool.idle_closed == 2 and held in s.holders
    check_invariants(s)


async def test_scheduler_reaper_closes_extra_idle_offers_exactly_at_max_idle_s(autojump_clock):
    import types

    import trio

    from actors.pg.pool import CloseIdle, Offers
    from actors.pg.pool_idle import run_reaper

    sent: list = []
    inbox = types.SimpleNamespace(closed=False, put=sent.append)
    conns = [FakeConn(0.0), FakeConn(1.0), FakeConn(2.0)]
    offers = Offers(inbox, new(max_concurrent=3))
    offers.entries.extend((Token(str(i)), Admitted(waited_s=0.0, conn=c)) for i, c in enumerate(conns))
    async with trio.open_nursery() as nursery:
        await nursery.start(run_reaper, offers, 1, 10.0)
        await trio.sleep_until(10.0 - 1e-6)
        assert not any(c.closed for c in conns)
        await trio.sleep_until(11.0 + 1e-6)
        assert [c.closed for c in conns] == [True, True, False]
        assert [len(m.tokens) for m in sent if isinstance(m, CloseIdle)] == [1, 1]
        assert [lease.conn for _, lease in offers.entries] == [conns[2]]
        await trio.sleep(100.0)
        assert not conns[2].closed  # min_idle = 1: the warmest stays however long it idles
        nursery.cancel_scope.cancel()


def test_scheduler_pool_idle_config_defaults_and_validation():
    q = Config.from_toml("").queue
    assert (q.min_idle, q.max_idle_s) == (1, 60.0)
    for queue, field in (("min_idle = -1", "queue.min_idle"), ("min_idle = 9", "queue.min_idle"),
                         ("max_idle_s = 0", "queue.max_idle_s")):
        with pytest.raises(ConfigError) as info:
            Config.from_toml(f"[queue]\n{queue}\n")
        assert info.value.field == field

@pytest.mark.parametrize(("priority", "error"), [(None, TypeError), ("HIGH", TypeError), (2.0, TypeError),
                                                 (99, ValueError), (-1, ValueError)])
def test_scheduler_admit_malformed_priority_is_an_error_reply_not_a_clamp(priority, error):
    for s in (new(max_concurrent=1), admit(new(max_concurrent=1), Priority.NORMAL)[0]):  # free, and full
        t = Token()
        after, effects = step(s, Admit(reply=t, priority=priority, at=0.0), 0.0)
        assert after == s
        [effect] = effects
        assert effect.to is t and isinstance(effect.value, error) and "priority" in str(effect.value)


# --- the mutable core: each message is one transaction (restart from the last good state) ---

def fake_inbox():
    import types
    return types.SimpleNamespace(closed=False, put=lambda _m: None, tell_count=lambda: None)


def test_scheduler_core_crash_half_way_through_a_message_leaves_the_last_good_state():
    from actors.pg.pool import Offers

    s = SchedulerState.initial(QueueConfig(max_concurrent=1, max_queue_size=5))
    core = SchedulerCore(Offers(fake_inbox(), s))
    holder, bad, good = Token("holder"), Token("bad"), Token("good")
    s, _ = core.step(s, Admit(reply=holder, priority=Priority.NORMAL, at=0.0), 0.0)
    s, _ = core.step(s, Admit(reply=bad, priority=Priority.HIGH, at="not a time"), 0.0)  # a bug, waiting
    s, _ = core.step(s, Admit(reply=good, priority=Priority.LOW, at=0.0), 0.0)
    before = s.copy()
    with pytest.raises(TypeError):  # the slot goes to `bad`, whose grant cannot be computed
        core.step(s, Release(reply=holder), 1.0)
    assert s == before and s.holders == {holder} and s.depth == 2
    s, effects = core.step(s, Withdraw(reply=bad), 1.0)  # the restarted core goes on from there
    s, effects = core.step(s, Release(reply=holder), 2.0)
    assert granted(effects) == [good] and effects[0].value.waited_s == 2.0


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 3), st.integers(0, 4),
       st.lists(st.tuples(st.sampled_from(["admit", "release", "limit", "withdraw", "tick"]),
                          st.integers(0, 9), st.integers(0, 3)), max_size=60))
def test_scheduler_core_crash_at_any_grant_undoes_the_whole_message(max_concurrent, max_queue_size, ops):
    """Whatever a message had changed in place when the core crashed, the state (and the offer
    list beside it) are exactly as before that message."""
    import actors.scheduler as sched
    from actors.pg.pool import Offers

    s = replace(SchedulerState.initial(QueueConfig(max_concurrent=max_concurrent,
                                                   max_queue_size=max_queue_size)), offer=True)
    offers = Offers(fake_inbox(), s)
    core = SchedulerCore(offers)
    s, _ = core.step(s, sched.Replenish(), 0.0)
    real_grant, tokens = sched._grant, []
    for now, (op, arg, crash_at) in enumerate(ops):
        if op == "admit":
            tokens.append(Token())
            msg = Admit(reply=tokens[-1], priority=arg % 5, at=float(now), deadline=now + 2.5)
        elif op == "limit":
            msg = SetLimit(reply=None, max_concurrent=None if arg % 3 == 0 else min(arg % 3, max_concurrent))
        elif op == "tick":
            msg = sched.Tick()
        elif tokens:
            msg = (Release if op == "release" else Withdraw)(reply=tokens[arg % len(tokens)])
        else:
            continue
        before, entries_before, calls = s.copy(), list(offers.entries), [0]

        def grant(*args, calls=calls, crash_at=crash_at, **kw):
            calls[0] += 1
            if calls[0] > crash_at:
                raise RuntimeError("injected")
            return real_grant(*args, **kw)

        sched._grant = grant
        try:
            s, _ = core.step(s, msg, float(now))
        except RuntimeError:
            assert s == before and list(offers.entries) == entries_before
        finally:
            sched._grant = real_grant
        assert s.journal is None
        assert s.depth == sum(len(q) for q in s.waiting) <= s.cfg.max_queue_size
        assert {t for t, _ in offers.entries} <= s.holders


# --- the contended hot path: park and pass_on are Admit and Release, without the message ---

@settings(max_examples=300, deadline=None)
@given(st.integers(1, 3), st.integers(0, 5),
       st.lists(st.tuples(st.sampled_from(["admit", "admit_conn", "release", "withdraw", "limit", "tick"]),
                          st.integers(0, 9)), max_size=60))
def test_scheduler_park_and_pass_on_change_the_state_exactly_as_admit_and_release(
        max_concurrent, max_queue_size, ops):
    """Wherever the fast path takes an Admit or a Release, the state after it (and the one
    grant it hands out) is exactly what `step` makes of the message; elsewhere it declines."""
    from actors.scheduler import park, pass_on

    s = new(max_concurrent=max_concurrent, max_queue_size=max_queue_size)
    tokens: list = []
    for now, (op, arg) in enumerate(ops):
        now = float(now)
        if op in ("admit", "admit_conn"):
            tokens.append(Token(str(now)))
            deadline = now + 1.0 + arg % 3
            msg = Admit(reply=tokens[-1], priority=arg % 5, at=now, deadline=deadline, conn=op == "admit_conn")
            after, effects = step(s, msg, now)
            fast = s.copy()
            if op == "admit" and park(fast, lambda: tokens[-1], arg % 5, now, deadline) is tokens[-1]:
                assert fast == after and effects == []
            else:
                assert fast == s
        elif op == "limit":
            after, _ = step(s, SetLimit(reply=None, max_concurrent=None if arg % 2 else 1), now)
        elif op == "tick":
            after, _ = step(s, Tick(), now + arg)
        elif tokens:
            token = tokens[arg % len(tokens)]
            after, effects = step(s, (Release if op == "release" else Withdraw)(reply=token), now)
            fast = s.copy()
            handed = pass_on(fast, token, now) if op == "release" else None
            if handed is not None:
                assert fast == after
                [grant] = effects
                assert handed == (grant.to, grant.value)
            else:
                assert fast == s
        else:
            continue
        s = after
        assert s.depth == sum(len(q) for q in s.waiting) <= s.cfg.max_queue_size
        assert s.free == 0 or s.depth == 0


def test_scheduler_pass_on_declines_a_waiter_that_wants_a_connection_and_a_lowered_limit():
    from actors.scheduler import pass_on

    s = new(max_concurrent=2, max_queue_size=3)
    s, a, _ = admit(s, Priority.NORMAL)
    s, b, _ = admit(s, Priority.NORMAL)
    s, _ = step(s, Admit(reply=Token("db"), priority=Priority.NORMAL, at=0.0, conn=True), 0.0)
    assert pass_on(s.copy(), a, 1.0) is None  # its grant leases a connection: through `step`
    s, _ = step(s, Withdraw(reply=s.waiting[Priority.NORMAL][0].reply), 1.0)
    s, w, _ = admit(s, Priority.HIGH, now=1.0)
    s, _ = step(s, SetLimit(reply=None, max_concurrent=1), 1.0)
    assert pass_on(s.copy(), a, 2.0) is None  # above the lowered limit: the slot is not handed on
    s, effects = step(s, Release(reply=a), 2.0)
    assert effects == [] and pass_on(s.copy(), b, 3.0) == (w, Admitted(waited_s=2.0))
