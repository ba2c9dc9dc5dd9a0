"""The load engine's own logic, with a fake transport (its collaborator) on MockClock."""

from __future__ import annotations

import random
from functools import partial

import msgspec
import pytest
import trio

from actors.tools.load import (
    SCENARIOS,
    Phase,
    Scenario,
    check_loopback,
    exit_status,
    outcome_of_response,
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
    (200, b"{}", "ok"), (201, b"", "ok"), (429, b'{"outcome": "rate_limited"}', "rate_limited"),
    (503, b'{"outcome": "circuit_open"}', "circuit_open"), (503, b'{"outcome": "queue_full"}', "queue_full"),
    (503, b'{"outcome": "queue_timeout"}', "queue_timeout"), (503, b"not json", "error"),
    (504, b'{"outcome": "unknown"}', "unknown"), (503, b'{"outcome": "shutting_down"}', "shutting_down"),
    (503, b'{"outcome": "made_up"}', "error"), (500, b"{}", "error"), (400, b"{}", "error"),
    (429, b"{}", "error"),  # a 429 that is not Triage's names no outcome
])
def test_load_classify_status_and_problem_body(status, body, outcome):
    assert outcome_of_response(status, body) == outcome


def test_load_refuses_non_loopback_targets():
    check_loopback("http://127.0.0.1:8000")
    check_loopback("http://localhost:1")
    with pytest.raises(ValueError, match="loopback"):
        check_loopback("http://10.0.0.5:8000")


async def test_load_every_request_gets_one_outcome_under_random_failures(autojump_clock):
    rng = random.Random(3)
    answers = [(200, b"{}"), (429, b'{"outcome": "rate_limited"}'), (503, b'{"outcome": "circuit_open"}'),
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
    assert s["outcomes"]["error"] >= 20
    assert s["outcomes"]["circuit_open"] > 0
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


async def test_load_exit_status_fails_when_a_target_fails_even_if_the_ledger_balances(autojump_clock):
    async def failing(method, path, body, headers):
        return 500, b"{}"

    async def fine(method, path, body, headers):
        return 200, b"{}"

    scenario = Scenario(name="s", phases=(Phase(2.0, 10.0),))
    bad = summary(await run(scenario, failing), 2.0)
    good = summary(await run(scenario, fine), 2.0)
    assert bad["balanced"] and not verdicts(bad)["5xx < 0.5 %"]
    assert exit_status([good]) == 0
    assert exit_status([good, bad]) == 1
    assert exit_status([]) == 1


ROOT = __import__("pathlib").Path(__file__).resolve().parents[2]


async def answer_500(stream: trio.SocketStream) -> None:
    """A loopback server whose every answer is a 500 (one request per connection)."""
    async with stream:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = await stream.receive_some(65536)
            if not chunk:
                return
            data += chunk
        await stream.send_all(b"HTTP/1.1 500 Internal Server Error\r\ncontent-type: application/json\r\n"
                              b"content-length: 2\r\nconnection: close\r\n\r\n{}")


async def test_load_test_script_exits_1_when_a_target_fails():
    import sys

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, answer_500, 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        with trio.fail_after(60):
            done = await trio.run_process(
                [sys.executable, str(ROOT / "scripts" / "load_test.py"), "scenario", "normal",
                 "--speed", "0.05", "--url", f"http://127.0.0.1:{port}"],
                capture_stdout=True, capture_stderr=True, check=False)
        nursery.cancel_scope.cancel()
    out = done.stdout.decode()
    assert done.returncode == 1, out + done.stderr.decode()
    assert "5xx < 0.5 %: FAIL" in out and "(balanced)" in out


@pytest.mark.parametrize("script", ["load_test.py", "run_scenario.py", "monitor_during_load.py",
                                    "dashboard_screenshot.py"])
def test_load_scripts_print_help(script):
    import subprocess
    import sys

    done = subprocess.run([sys.executable, str(ROOT / "scripts" / script), "--help"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage:")
