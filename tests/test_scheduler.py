"""Admission queue core: priority order, displacement, clearing, and slot conservation."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from actors.actor import Send
from actors.errors import QueueCleared, QueueFull
from actors.scheduler import SchedulerCore, SchedulerState, step
from messages.commands import Admit, Admitted, Clear, Done, GetSnapshot, Release, Withdraw
from messages.config import Priority, QueueConfig


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
