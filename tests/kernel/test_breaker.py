"""Breaker core: the spec's tier table exactly, transitions, and invariants under random input."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from actors.breaker import BreakerCore, BreakerState, snapshot, step
from actors.runtime.actor import Emit, Send
from messages.commands import (
    Configure,
    Done,
    ForceOpen,
    GetSnapshot,
    Outcome,
    Permit,
    Permitted,
    Reset,
    Tick,
)
from messages.config import Config
from messages.errors import CircuitOpen, ConfigError
from messages.events import BreakerTransition

SPEC = {"database": (5, 30.0), "critical": (3, 10.0), "analytics": (8, 45.0), "batch": (10, 60.0)}


class Token:
    """Stands in for a parked caller's Reply in pure-core tests."""

    def __repr__(self) -> str:
        return "Token"


def new(tier: str = "database", now: float = 0.0, **cfg) -> BreakerState:
    base = Config().tiers[tier]
    from msgspec.structs import replace

    return BreakerState.initial(tier, replace(base, **cfg), now=now)


def fail(s: BreakerState, now: float, trial: bool = False):
    return step(s, Outcome(result="failure", epoch=s.epoch, trial=trial), now)


def permit(s: BreakerState, now: float):
    s, effects = step(s, Permit(reply=Token()), now)
    sends = [e for e in effects if isinstance(e, Send)]
    assert len(sends) == 1
    return s, sends[0].value, [e.event for e in effects if isinstance(e, Emit)]


@pytest.mark.parametrize("tier", SPEC)
def test_breaker_spec_tier_opens_on_nth_failure_not_before(tier):
    threshold, recovery = SPEC[tier]
    s = new(tier)
    assert (s.cfg.failure_threshold, s.cfg.recovery_timeout_s) == (threshold, recovery)
    for i in range(threshold - 1):
        s, effects = fail(s, float(i))
        assert effects == [] and s.phase == "closed"
    s, effects = fail(s, float(threshold))
    assert s.phase == "open"
    (event,) = [e.event for e in effects]
    assert isinstance(event, BreakerTransition) and (event.from_state, event.to_state) == ("closed", "open")
    assert s.retry_at == threshold + recovery


@pytest.mark.parametrize("tier", SPEC)
def test_breaker_spec_tier_half_open_exactly_at_recovery_time(tier):
    threshold, recovery = SPEC[tier]
    s = new(tier)
    for _ in range(threshold):
        s, _ = fail(s, 100.0)
    just_before = 100.0 + recovery - 1e-6
    assert BreakerCore.wakeup(s) == 100.0 + recovery
    s2, value, _ = permit(s, just_before)
    assert isinstance(value, CircuitOpen) and value.tier == tier
    assert value.retry_after_s == pytest.approx(1e-6)
    s3, events = step(s2, Tick(), 100.0 + recovery)
    assert s3.phase == "half_open"
    assert [(e.event.from_state, e.event.to_state) for e in events] == [("open", "half_open")]


def test_breaker_failures_outside_window_do_not_count():
    s = new("critical")  # 3 failures within 60 s
    s, _ = fail(s, 0.0)
    s, _ = fail(s, 30.0)
    s, _ = fail(s, 60.0)  # the failure at 0 s has left the window (0 <= 60 - 60)
    assert s.phase == "closed"
    assert snapshot(s, 60.0).failures_in_window == 2
    s, _ = fail(s, 61.0)
    assert s.phase == "open"


def test_breaker_half_open_admits_max_calls_then_rejects():
    s = new("critical", half_open_max_calls=2)
    for _ in range(3):
        s, _ = fail(s, 0.0)
    s, v1, ev = permit(s, 10.0)
    assert isinstance(v1, Permitted) and v1.trial and ev[0].to_state == "half_open"
    s, v2, _ = permit(s, 10.0)
    assert isinstance(v2, Permitted) and v2.trial
    s, v3, _ = permit(s, 10.0)
    assert isinstance(v3, CircuitOpen)
    assert s.rejections == 1


def test_breaker_trial_success_closes_and_trial_failure_reopens_with_fresh_timer():
    s = new("critical", success_threshold=2, half_open_max_calls=2)
    for _ in range(3):
        s, _ = fail(s, 0.0)
    s, p, _ = permit(s, 10.0)
    s, p2, _ = permit(s, 10.0)
    s, effects = step(s, Outcome(result="success", epoch=p.epoch, trial=True), 11.0)
    assert s.phase == "half_open" and effects == []
    s, effects = step(s, Outcome(result="success", epoch=p2.epoch, trial=True), 12.0)
    assert s.phase == "closed"
    assert effects[0].event.to_state == "closed"
    for _ in range(3):
        s, _ = fail(s, 20.0)
    s, p, _ = permit(s, 30.0)
    s, effects = step(s, Outcome(result="failure", epoch=p.epoch, trial=True), 31.0)
    assert s.phase == "open" and s.retry_at == 41.0


@pytest.mark.parametrize("result", ["cancelled", "ignored", "abandoned"])
def test_breaker_trial_without_verdict_gives_slot_back(result):
    s = new("critical")
    for _ in range(3):
        s, _ = fail(s, 0.0)
    s, p, _ = permit(s, 10.0)
    s, v, _ = permit(s, 10.0)
    assert isinstance(v, CircuitOpen)
    s, _ = step(s, Outcome(result=result, epoch=p.epoch, trial=True), 10.5)
    assert s.phase == "half_open" and s.trials == 0
    s, v, _ = permit(s, 10.5)
    assert isinstance(v, Permitted) and v.trial


def test_breaker_undelivered_trial_permit_is_given_back():
    s = new("critical")
    for _ in range(3):
        s, _ = fail(s, 0.0)
    s, p, _ = permit(s, 10.0)
    back = BreakerCore.undelivered(Token(), p)
    s, _ = step(s, back, 10.0)
    assert s.trials == 0


def test_breaker_outcome_from_old_epoch_does_not_move_state():
    s = new("critical")
    old_epoch = s.epoch
    for _ in range(3):
        s, _ = fail(s, 0.0)
    s, _ = step(s, Reset(reply=Token()), 1.0)
    assert s.phase == "closed"
    for _ in range(5):
        s, _ = step(s, Outcome(result="failure", epoch=old_epoch), 2.0)
    assert s.phase == "closed" and s.failures == 8


def test_breaker_ignored_and_cancelled_do_not_count_as_failures():
    s = new("database")
    for _ in range(20):
        s, _ = step(s, Outcome(result="ignored", epoch=s.epoch), 1.0)
        s, _ = step(s, Outcome(result="cancelled", epoch=s.epoch), 1.0)
    assert s.phase == "closed" and s.failures == 0 and s.ignored == 20 and s.calls == 20


def test_breaker_force_open_holds_until_reset():
    s = new("critical")
    s, effects = step(s, ForceOpen(reply=Token()), 0.0)
    assert s.phase == "open" and s.forced and isinstance(effects[-1].value, Done)
    assert BreakerCore.wakeup(s) == math.inf
    s, v, _ = permit(s, 1e6)
    assert isinstance(v, CircuitOpen) and s.phase == "open"
    s, effects = step(s, Reset(reply=Token()), 1e6)
    assert s.phase == "closed" and not s.forced


def test_breaker_configure_changes_threshold_and_rejects_bad_values():
    s = new("database")
    s, effects = step(s, Configure(reply=Token(), failure_threshold=3, recovery_timeout_s=20.0), 0.0)
    assert isinstance(effects[0].value, Done)
    assert (s.cfg.failure_threshold, s.cfg.recovery_timeout_s) == (3, 20.0)
    s, effects = step(s, Configure(reply=Token(), failure_threshold=0), 0.0)
    assert isinstance(effects[0].value, ConfigError) and s.cfg.failure_threshold == 3
    for _ in range(3):
        s, _ = fail(s, 1.0)
    assert s.phase == "open" and s.retry_at == 21.0


def test_breaker_disabled_permits_everything_and_counts():
    s = BreakerState.initial("database", Config().tiers["database"], now=0.0, enabled=False)
    for _ in range(50):
        s, _ = fail(s, 1.0)
    s, v, _ = permit(s, 1.0)
    assert s.phase == "closed" and isinstance(v, Permitted) and s.failures == 50


def test_breaker_snapshot_reports_whole_state():
    s = new("critical")
    s, _ = step(s, Outcome(result="success", epoch=0), 1.0)
    for _ in range(3):
        s, _ = fail(s, 2.0)
    s, effects = step(s, GetSnapshot(reply=Token()), 5.0)
    snap = effects[0].value
    assert (snap.state, snap.calls, snap.successes, snap.failures, snap.openings) == ("open", 4, 1, 3, 1)
    assert snap.time_in_state_s == 3.0 and snap.retry_after_s == 7.0


messages = st.one_of(
    st.builds(lambda r, t: ("outcome", r, t), st.sampled_from(["success", "failure", "ignored", "cancelled"]),
              st.booleans()),
    st.just(("permit",)), st.just(("tick",)), st.just(("reset",)), st.just(("force",)),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(messages, st.floats(0, 20)), max_size=120))
def test_breaker_random_sequences_never_skip_half_open(seq):
    s = new("critical")
    now = 0.0
    granted: list[Permitted] = []
    for msg, dt in seq:
        now += dt
        before = s.phase
        match msg:
            case ("outcome", result, _) if granted:
                p = granted.pop(0)
                s, effects = step(s, Outcome(result=result, epoch=p.epoch, trial=p.trial), now)
            case ("outcome", result, _):
                s, effects = step(s, Outcome(result=result, epoch=s.epoch), now)
            case ("permit",):
                s, effects = step(s, Permit(reply=Token()), now)
                granted += [e.value for e in effects if isinstance(e, Send) and isinstance(e.value, Permitted)]
            case ("tick",):
                s, effects = step(s, Tick(), now)
            case ("reset",):
                s, effects = step(s, Reset(reply=Token()), now)
            case ("force",):
                s, effects = step(s, ForceOpen(reply=Token()), now)
        transitions = [e.event for e in effects if isinstance(e, Emit)]
        for ev in transitions:
            if ev.reason != "manual reset":
                assert (ev.from_state, ev.to_state) != ("open", "closed")
        if not transitions:
            assert s.phase == before
        assert 0 <= s.trials <= s.cfg.half_open_max_calls
        assert s.phase != "half_open" or s.trials <= s.cfg.half_open_max_calls
        assert len(s.failure_times) < s.cfg.failure_threshold


def test_breaker_failure_with_reply_is_answered_after_the_transition():
    s = new("critical")
    for _ in range(2):
        s, _ = fail(s, 1.0)
    reply = Token()
    s, effects = step(s, Outcome(result="failure", epoch=s.epoch, reply=reply), 1.0)
    assert s.phase == "open"
    assert isinstance(effects[0], Emit) and effects[0].event.to_state == "open"
    assert isinstance(effects[-1], Send) and effects[-1].to is reply and isinstance(effects[-1].value, Done)


@pytest.mark.parametrize(("field", "value"), [
    ("failure_threshold", "3"), ("failure_threshold", 2.5), ("failure_threshold", True),
    ("success_threshold", 0), ("recovery_timeout_s", math.inf), ("monitoring_period_s", "60"),
    ("monitoring_period_s", math.nan), ("recovery_timeout_s", -5.0),
])
def test_breaker_configure_malformed_value_is_a_config_error_reply(field, value):
    s = new("critical")
    after, effects = step(s, Configure(reply=Token(), **{field: value}), 0.0)
    assert after == s
    [effect] = effects
    assert isinstance(effect.value, ConfigError) and effect.value.field == f"tiers.critical.{field}"


def test_breaker_config_file_rejects_what_configure_rejects():
    with pytest.raises(ConfigError, match=r"tiers\.critical\.recovery_timeout_s=inf"):
        Config.from_toml("[tiers.critical]\nrecovery_timeout_s = inf\n")
    from messages.config import BreakerConfig

    with pytest.raises(ConfigError, match=r"tiers\.batch\.failure_threshold=True"):
        Config(tiers={**Config().tiers, "batch": BreakerConfig(failure_threshold=True)})
