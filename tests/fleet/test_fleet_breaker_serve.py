"""Three real `triage serve` processes sharing one Redis, each reaching PostgreSQL through its
own fault proxy, with `[fleet]` at its defaults for the breaker (`share_breakers` is
["database"] when `[fleet]` is set; heartbeat 1 s).

What a user of the fleet sees, from each instance's own /metrics and /api/fleet:
- the database down for one instance opens that instance's breaker only (the others see their
  database answer and stay closed all along);
- down for two, the third opens too, by quorum (2 of 3), within one heartbeat of the second
  and without a failure of its own (its database answers throughout);
- back: one probe for the whole fleet (counted: each instance's leases won), then all three
  close and stay closed.
Each instance is sent a `SELECT 1` request every 0.1 s all along.
"""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import psycopg
import trio

from actors.faults.kinds import Down
from actors.faults.proxy import FaultProxy
from actors.tools.procs import free_port, stop
from tests.fleet.redis_helpers import REDIS_URL, redis_prefix
from tests.fleet.test_fleet_serve import _ready, _start

ROOT = Path(__file__).resolve().parents[2]
HEARTBEAT_S = 1.0   # FleetConfig's default
RECOVERY_S = 3.0
POLL_S = 0.05
_STATE = re.compile(r'^triage_breaker_state\{state="(\w+)",tier="database"\} 1\.0$', re.M)
_FAILURES = re.compile(r'^triage_breaker_failures_in_window\{tier="database"\} (\S+)$', re.M)


def _toml(prefix: str) -> str:
    return f"""
[policies.recording]
limit = 1000
window_s = 1.0
algorithm = "gcra"
[tiers.database]
failure_threshold = 3
recovery_timeout_s = {RECOVERY_S}
[fleet]
redis_url = "{REDIS_URL}"
key_prefix = "{prefix}"
instance_id = "__ID__"
# A 2-core CI machine stalls now and then for a second: not a Redis outage (see test_fleet_serve).
redis_timeout_s = 0.25
redis_call_timeout_s = 2.0
redis_failures = 5
"""


class _Instance:
    def __init__(self, i: int, port: int, proxy: FaultProxy, client: httpx.AsyncClient) -> None:
        self.name, self.url, self.proxy, self.client = f"i{i + 1}", f"http://127.0.0.1:{port}", proxy, client
        self.sent = self.answered = 0

    async def breaker(self) -> tuple[str, float]:
        """(the database breaker's state, its failures in the window), from /metrics."""
        text = (await self.client.get(f"{self.url}/metrics")).text
        state, failures = _STATE.search(text), _FAILURES.search(text)
        assert state and failures, text[:400]
        return state.group(1), float(failures.group(1))

    async def probes(self) -> int:
        return (await self.client.get(f"{self.url}/api/fleet")).json()["breakers"]["probes"]["database"]

    async def load(self) -> None:
        """A `SELECT 1` request every 0.1 s; any answer will do (the breakers are watched)."""
        while True:
            self.sent += 1
            try:
                await self.client.get(f"{self.url}/db")
                self.answered += 1
            except httpx.TransportError:
                pass
            await trio.sleep(0.1)


async def _states(fleet: list[_Instance]) -> list[str]:
    return [(await inst.breaker())[0] for inst in fleet]


async def _until(fleet: list[_Instance], want: list[str | None], within_s: float) -> float:
    """Poll until every instance whose entry is not None is in that state; the time then."""
    with trio.fail_after(within_s):
        while True:
            states = await _states(fleet)
            if all(w is None or s == w for s, w in zip(states, want, strict=True)):
                return trio.current_time()
            await trio.sleep(POLL_S)


async def _steady(fleet: list[_Instance], want: list[str | None], for_s: float) -> None:
    """Every sample for `for_s` seconds has those instances in that state (from then on)."""
    end = trio.current_time() + for_s
    while trio.current_time() < end:
        states = await _states(fleet)
        assert all(w is None or s == w for s, w in zip(states, want, strict=True)), states
        await trio.sleep(POLL_S)


async def test_fleet_three_serve_processes_agree_on_the_database_breaker(database_url, tmp_path):
    async with redis_prefix() as (_, prefix), FaultProxy.for_dsn(database_url) as p1, \
            FaultProxy.for_dsn(database_url) as p2, FaultProxy.for_dsn(database_url) as p3:
        proxies = [p1, p2, p3]
        ports = [free_port() for _ in proxies]
        logs = [tmp_path / f"i{i + 1}.log" for i in range(3)]
        files = [log.open("w") for log in logs]
        procs = []
        for i, (port, proxy) in enumerate(zip(ports, proxies, strict=True)):
            config = tmp_path / f"i{i + 1}.toml"
            config.write_text(_toml(prefix).replace("__ID__", f"i{i + 1}"))
            dsn = psycopg.conninfo.make_conninfo(database_url, host="127.0.0.1", port=str(proxy.port))
            procs.append(_start(port, config, dsn, files[i]))
        try:
            async with httpx.AsyncClient(timeout=10) as client, trio.open_nursery() as nursery:
                fleet = [_Instance(i, port, proxy, client) for i, (port, proxy) in enumerate(zip(ports, proxies, strict=True))]
                for inst in fleet:
                    await _ready(client, inst.url)
                with trio.fail_after(10):  # every instance counts the three
                    for inst in fleet:
                        while (await client.get(f"{inst.url}/api/fleet")).json()["live"] < 3:
                            await trio.sleep(0.2)
                for inst in fleet:
                    nursery.start_soon(inst.load)
                await _steady(fleet, ["closed"] * 3, 1.0)
                i1, i2, i3 = fleet

                # Down for i1 only: only i1 opens; i2 and i3 stay closed all along.
                p1.add(Down())
                await _until(fleet, ["open", None, None], 10)
                await _steady(fleet, ["open", "closed", "closed"], 2 * HEARTBEAT_S + 0.5)
                p1.remove("down")
                await _until(fleet, ["closed"] * 3, RECOVERY_S + 5)
                await _steady(fleet, ["closed"] * 3, 1.0)

                # Down for i1 and i2: i3 follows the quorum within a heartbeat of the second.
                before = [await inst.probes() for inst in fleet]
                p1.add(Down())
                p2.add(Down())
                second = await _until(fleet, ["open", "open", None], 10)
                third = await _until(fleet, ["open", "open", "open"], HEARTBEAT_S + 1.0)
                state, failures = await i3.breaker()
                print(f"\ni3 opened {third - second:.2f} s after the second (polled every {POLL_S} s), "
                      f"its own failures in the window: {failures}")
                assert third - second <= HEARTBEAT_S + 2 * POLL_S + 0.3
                assert (state, failures) == ("open", 0.0)  # its database answered: the fleet's verdict

                # Back: one probe for the fleet, then all close and stay closed.
                p1.remove("down")
                p2.remove("down")
                await _until(fleet, ["closed"] * 3, RECOVERY_S + 5)
                await _steady(fleet, ["closed"] * 3, 2 * HEARTBEAT_S)
                after = [await inst.probes() for inst in fleet]
                probes = [a - b for a, b in zip(after, before, strict=True)]
                print(f"probes per instance over the outage: {probes}; requests answered "
                      f"{[inst.answered for inst in fleet]} of {[inst.sent for inst in fleet]}")
                assert sum(probes) == 1, probes
                nursery.cancel_scope.cancel()
            quorum = "Circuit breaker database OPEN (was CLOSED): fleet quorum (2 of 3 open)"
            assert quorum in logs[2].read_text()
            assert quorum not in logs[0].read_text() + logs[1].read_text()
        finally:
            for proc in procs:
                stop(proc)
            for f in files:
                f.close()
