"""Breaker core, shared with a fleet: quorum opening, one prober, following the verdict.

Pure-core tests: the fleet agent's messages (FleetShared, FleetQuorum, ProbeLease,
FleetVerdict) are fed to `step` as the agent would send them.
"""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from actors.breaker import BreakerCore, snapshot, step
from actors.runtime.actor import Emit, Send
from messages.commands import FleetQuorum, FleetShared, FleetVerdict, ProbeLease, Tick
from messages.errors import CircuitOpen
from messages.events import BreakerTransition, ProbeDue
from tests.kernel.test_breaker import fail, new, permit


def events(effects) -> list:
    return [e.event for e in effects if isinstance(e, Emit)]


def shared(follow: str = "half_open", **cfg):
    s, effects = step(new("database", **cfg), FleetShared(shared=True, follow=follow), 0.0)
    assert effects == []
    return s


def opened(s, now: float = 0.0):
    for _ in range(s.cfg.failure_threshold):
        s, _ = fail(s, now)
    assert s.phase == "open"
    return s


def test_quorum_opens_a_closed_breaker_that_saw_no_failure():
    s = shared()
    s, effects = step(s, FleetQuorum(open=3, live=4), 1.0)
    assert s.phase == "open"
    [event] = events(effects)
    assert isinstance(event, BreakerTransition)
    assert event.reason == "fleet quorum (3 of 4 open)"
    assert s.failures == 0
    _, value, _ = permit(s, 1.5)
    assert isinstance(value, CircuitOpen)


def test_a_minority_of_open_peers_does_not_open():
    s = shared()
    for live in range(1, 9):
        for peers_open in range(0, live // 2 + 1):  # majority is live // 2 + 1
            after, effects = step(s, FleetQuorum(open=peers_open, live=live), 1.0)
            assert after.phase == "closed", (peers_open, live)
            assert effects == []


def test_two_of_three_open_is_a_quorum_one_of_two_is_not():
    s = shared()
    assert step(s, FleetQuorum(open=2, live=3), 1.0)[0].phase == "open"
    assert step(s, FleetQuorum(open=1, live=2), 1.0)[0].phase == "closed"


def test_quorum_is_ignored_while_local_only_or_disabled():
    local = new("database")
    assert step(local, FleetQuorum(open=3, live=3), 1.0)[0].phase == "closed"
    s, _ = step(shared(), FleetShared(shared=False), 0.5)
    assert step(s, FleetQuorum(open=3, live=3), 1.0)[0].phase == "closed"


def test_due_recovery_waits_for_the_lease_and_emits_probe_due_once():
    s = opened(shared())
    due = s.cfg.recovery_timeout_s
    assert BreakerCore.wakeup(s) == due
    s, effects = step(s, Tick(), due)
    assert s.phase == "open"
    [event] = events(effects)
    assert event == ProbeDue(tier="database", epoch=s.epoch, at=due)
    assert BreakerCore.wakeup(s) == math.inf  # nothing to tick until the fleet answers
    s, effects = step(s, Tick(), due + 5)
    assert effects == [] and s.phase == "open"
    s, value, emitted = permit(s, due + 5)
    assert isinstance(value, CircuitOpen) and value.retry_after_s > 0
    assert emitted == []
    assert snapshot(s, due + 5).awaiting_probe is True


def test_the_lease_winner_goes_half_open_and_runs_the_trial():
    s = opened(shared())
    s, _ = step(s, Tick(), 30.0)
    s, effects = step(s, ProbeLease(epoch=s.epoch), 30.1)
    assert s.phase == "half_open"
    [event] = events(effects)
    assert event.reason == "probe lease won: this instance runs the fleet's trial"
    s, value, _ = permit(s, 30.2)
    assert value.trial is True


def test_a_lease_for_an_older_open_period_is_ignored():
    s = opened(shared())
    stale = s.epoch - 1
    after, effects = step(s, ProbeLease(epoch=stale), 31.0)
    assert after.phase == "open" and effects == []


def test_followers_follow_the_probers_success_with_their_own_trial():
    s = opened(shared())
    s, _ = step(s, Tick(), 30.0)
    s, effects = step(s, FleetVerdict(ok=True, by="api-2"), 31.0)
    assert s.phase == "half_open"
    assert events(effects)[0].reason == "fleet probe by api-2 succeeded"


def test_followers_close_on_success_when_configured_to():
    s = opened(shared(follow="close"))
    s, _ = step(s, Tick(), 30.0)
    s, effects = step(s, FleetVerdict(ok=True, by="api-2"), 31.0)
    assert s.phase == "closed"
    assert events(effects)[0].to_state == "closed"


def test_a_failed_verdict_restarts_the_recovery_timer():
    s = opened(shared())
    s, _ = step(s, Tick(), 30.0)
    s, effects = step(s, FleetVerdict(ok=False, by="api-2"), 31.0)
    assert s.phase == "open" and effects == []
    assert BreakerCore.wakeup(s) == 31.0 + s.cfg.recovery_timeout_s
    s, effects = step(s, Tick(), 61.0)
    assert [type(e) for e in events(effects)] == [ProbeDue]


def test_redis_down_makes_a_waiting_breaker_recover_locally_at_once():
    s = opened(shared())
    s, _ = step(s, Tick(), 30.0)
    s, effects = step(s, FleetShared(shared=False), 32.0)
    assert s.phase == "half_open"
    assert snapshot(s, 32.0).fleet_shared is False


def test_forced_open_ignores_the_fleet():
    from messages.commands import ForceOpen

    s, _ = step(shared(), ForceOpen(), 0.0)
    for msg in (FleetVerdict(ok=True), ProbeLease(epoch=s.epoch), FleetQuorum(open=3, live=3)):
        after, effects = step(s, msg, 100.0)
        assert after.phase == "open" and after.forced and effects == []


def test_local_evidence_still_opens_a_shared_breaker():
    s = shared()
    s = opened(s, 1.0)
    assert s.openings == 1


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(
    st.sampled_from(["fail", "tick", "lease", "ok", "bad", "quorum", "gate_on", "gate_off", "ok_send"]),
    st.floats(0, 20)), max_size=40))
def test_fleet_messages_never_half_open_a_shared_breaker_without_lease_or_verdict(ops):
    """Shared and waiting: the only ways out of OPEN are the lease, a verdict, or Redis down."""
    s = shared()
    now = 0.0
    for op, dt in ops:
        now += dt
        before = s
        match op:
            case "fail":
                s, effects = fail(s, now)
            case "tick":
                s, effects = step(s, Tick(), now)
            case "lease":
                s, effects = step(s, ProbeLease(epoch=s.epoch), now)
            case "ok" | "ok_send":
                s, effects = step(s, FleetVerdict(ok=True, by="p"), now)
            case "bad":
                s, effects = step(s, FleetVerdict(ok=False, by="p"), now)
            case "quorum":
                s, effects = step(s, FleetQuorum(open=2, live=3), now)
            case "gate_on":
                s, effects = step(s, FleetShared(shared=True), now)
            case "gate_off":
                s, effects = step(s, FleetShared(shared=False), now)
        assert not [e for e in effects if isinstance(e, Send)]
        if before.phase == "open" and s.phase == "half_open" and before.shared:
            assert op in ("lease", "ok", "ok_send", "gate_off"), op
        if s.phase == "open" and s.shared and s.probe_wanted:
            assert BreakerCore.wakeup(s) == math.inf
