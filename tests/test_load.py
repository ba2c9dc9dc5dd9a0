"""The load engine's own logic, with a fake transport (its collaborator) on MockClock."""

from __future__ import annotations

import random

import msgspec
import pytest
import trio

from actors.load import (
    SCENARIOS,
    Phase,
    Scenario,
    check_loopback,
    classify,
    run,
    schedule,
    summary,
    verdicts,
)


def test_load_schedule_is_open_loop_and_exact():
    s = Scenario(name="t", phases=(Phase(2.0, 5.0), Phase(1.0, 10.0)))
    offsets = schedule(s)
    assert len(offsets) == 20
    assert offsets[:3] == [0.0, 0.2, 0.4] and offsets[10] == 2.0 and offsets[-1] == pytest.approx(2.9)


@pytest.mark.parametrize(("status", "body", "outcome"), [
    (200, b"{}", "ok"), (201, b"", "ok"), (429, b"{}", "rate_limited"),
    (503, b'{"outcome": "circuit_open"}', "breaker_open"), (503, b'{"outcome": "queue_full"}', "queue_full"),
    (503, b'{"outcome": "queue_timeout"}', "queue_timeout"), (503, b"not json", "errors"),
    (500, b"{}", "errors"), (400, b"{}", "errors"),
])
def test_load_classify_status_and_problem_body(status, body, outcome):
    assert classify(status, body) == outcome


def test_load_refuses_non_loopback_targets():
    check_loopback("http://127.0.0.1:8000")
    check_loopback("http://localhost:1")
    with pytest.raises(ValueError, match="loopback"):
        check_loopback("http://10.0.0.5:8000")


async def test_load_every_request_gets_one_outcome_under_random_failures(autojump_clock):
    rng = random.Random(3)
    answers = [(200, b"{}"), (429, b"{}"), (503, b'{"outcome": "circuit_open"}'),
               (503, b'{"outcome": "queue_full"}'), (500, b"{}")]

    async def send(method, path, body, headers):
        await trio.sleep(rng.uniform(0, 0.5))
        roll = rng.random()
        if roll < 0.1:
            raise OSError("connection reset")
        if roll < 0.15:
            await trio.sleep(100)  # hangs: the client timeout decides
        return rng.choice(answers)

    scenario = Scenario(name="chaos", phases=(Phase(5.0, 40.0),))
    ledger = await run(scenario, send, timeout_s=2.0)
    assert ledger.sent == 200 and ledger.balanced
    s = summary(ledger, 5.0)
    assert sum(s["outcomes"].values()) == 200
    assert s["outcomes"]["errors"] >= 20 and s["outcomes"]["breaker_open"] > 0
    assert verdicts(s)["ledger balances"] is True and verdicts(s)["error rate < 1 %"] is False


async def test_load_slow_server_does_not_slow_arrivals(autojump_clock):
    starts: list[float] = []

    async def send(method, path, body, headers):
        starts.append(trio.current_time())
        await trio.sleep(5)
        return 200, b"{}"

    t0 = trio.current_time()
    ledger = await run(Scenario(name="slow", phases=(Phase(1.0, 10.0),)), send, timeout_s=10)
    assert [round(t - t0, 3) for t in starts] == [round(i / 10, 3) for i in range(10)]
    assert ledger.outcomes == {"ok": 10}


def test_load_shipped_scenarios_are_bounded():
    for s in SCENARIOS.values():
        assert sum(p.duration_s for p in s.phases) <= 60
        assert len(schedule(s)) <= 10_000
        assert msgspec.convert(msgspec.to_builtins(s), Scenario) == s
