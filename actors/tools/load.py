"""Open-loop load against the reference service, with an outcome ledger that must balance.

Theory of operation. A scenario is a list of phases, each a duration and an
arrival rate. Requests start *on schedule* — the i-th arrival of a phase at
its planned instant — whether or not earlier ones have finished, so a slow
server cannot slow the load down and hide its own latency (no coordinated
omission). Each request gets exactly one outcome:

    an `Outcome` value: ok | rate_limited | circuit_open | queue_full | queue_timeout
    | shutting_down | unknown | error  (`messages.outcome`, the kernel's own words)

A refusal is told apart by the problem body's `outcome` field (Triage's edge and
rate limiter set it, from the same `outcome_of` the metrics use); anything
else that is not 2xx, and every transport failure or client timeout, is an
error. `sent == sum(outcomes)` is checked, not assumed.

Bounded: every scenario has a fixed duration and request count; each request has
a client timeout; loopback only (the URL is checked).
"""

from __future__ import annotations

import random
import statistics
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

import msgspec
import trio

from messages.outcome import Outcome

OUTCOMES = tuple(Outcome)
# Not the service failing: answered, or refused with a Retry-After on purpose.
_NOT_ERRORS = (Outcome.OK, Outcome.RATE_LIMITED, Outcome.CIRCUIT_OPEN, Outcome.QUEUE_FULL,
               Outcome.QUEUE_TIMEOUT)
LOOPBACK = ("127.0.0.1", "localhost", "::1", "[::1]")


class Phase(msgspec.Struct, frozen=True):
    duration_s: float
    rate_per_s: float


class Scenario(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    phases: tuple[Phase, ...]
    description: str = ""
    users: int = 50                      # distinct client identities (X-Forwarded-For from a trusted proxy)


SCENARIOS = {
    "normal": Scenario(name="normal", description="steady everyday traffic",
                       phases=(Phase(20.0, 20.0),)),
    "spike": Scenario(name="spike", description="quiet, a 10x burst, quiet again",
                      phases=(Phase(5.0, 10.0), Phase(5.0, 150.0), Phase(10.0, 10.0))),
    "stress": Scenario(name="stress", description="ramp past what 8 connections can serve",
                       phases=(Phase(5.0, 50.0), Phase(5.0, 150.0), Phase(5.0, 300.0), Phase(5.0, 500.0))),
    "outage": Scenario(name="outage", description="steady traffic while the database goes away and back",
                       phases=(Phase(30.0, 30.0),)),
}

# A realistic mix over the reference routes: (weight, method, path, json body or None)
MIX: tuple[tuple[int, str, str, object], ...] = (
    (50, "GET", "/api/animals", None),
    (15, "GET", "/api/trpc/animals.list", None),
    (20, "POST", "/api/administrations", {"animalId": 1, "medicationId": 1, "dose": 1}),
    (8, "GET", "/api/reports/adherence", None),
    (4, "POST", "/api/auth/login", {"username": "alice", "password": "alice-demo-password"}),
    (3, "POST", "/api/inventory/import",
     [{"medicationId": 1, "lot": "LOAD-1", "quantity": 100, "expiresOn": "2030-01-01"}]),
)


class Sample(msgspec.Struct, frozen=True, array_like=True):
    started_at: float
    latency_s: float
    status: int
    outcome: Outcome
    route: str


class Ledger(msgspec.Struct, kw_only=True):
    scenario: str
    sent: int = 0
    outcomes: dict[str, int] = {}
    statuses: dict[str, int] = {}
    samples: list[Sample] = []

    def record(self, s: Sample) -> None:
        self.samples.append(s)
        self.outcomes[s.outcome] = self.outcomes.get(s.outcome, 0) + 1
        self.statuses[str(s.status)] = self.statuses.get(str(s.status), 0) + 1

    @property
    def balanced(self) -> bool:
        return self.sent == sum(self.outcomes.values()) == len(self.samples)


def check_loopback(url: str) -> None:
    host = urlsplit(url).hostname or ""
    if host not in ("127.0.0.1", "localhost", "::1") and not host.startswith("127."):
        raise ValueError(f"load tests only target loopback addresses, not {host!r}")


def outcome_of_response(status: int, body: bytes) -> Outcome:
    """A 2xx is ok; otherwise the problem body's `outcome` field, else an error."""
    if 200 <= status < 300:
        return Outcome.OK
    try:
        return Outcome(msgspec.json.decode(body).get("outcome"))
    except (msgspec.DecodeError, AttributeError, ValueError):
        return Outcome.ERROR


def schedule(scenario: Scenario, speed: float = 1.0) -> list[float]:
    """Planned start offsets (seconds) of every request: evenly spaced within each phase."""
    out, t0 = [], 0.0
    for phase in scenario.phases:
        duration = phase.duration_s * speed
        n = int(phase.rate_per_s * phase.duration_s)
        out += [t0 + i * duration / n for i in range(n)] if n else []
        t0 += duration
    return out


Send = Callable[[str, str, object, dict], Awaitable[tuple[int, bytes]]]


async def run(scenario: Scenario, send: Send, *, speed: float = 1.0, timeout_s: float = 10.0,
              seed: int = 7, on_tick: Callable[[float], Awaitable[None]] | None = None) -> Ledger:
    """Run one scenario; `send(method, path, body, headers) -> (status, body)`."""
    rng = random.Random(seed)
    weights = [w for w, *_ in MIX]
    ledger = Ledger(scenario=scenario.name)
    start = trio.current_time()

    async def one(offset: float, route: tuple, user: int) -> None:
        _, method, path, body = route
        t0 = trio.current_time()
        status, outcome = 0, Outcome.ERROR
        with trio.move_on_after(timeout_s):
            try:
                status, payload = await send(method, path, body, {"x-forwarded-for": f"10.1.{user // 250}.{user % 250 + 1}"})
                outcome = outcome_of_response(status, payload)
            except Exception:  # transport failure: one outcome, an error
                status, outcome = 0, Outcome.ERROR
        ledger.record(Sample(offset, trio.current_time() - t0, status, outcome, f"{method} {path}"))

    async with trio.open_nursery() as outer:
        if on_tick is not None:
            outer.start_soon(_ticker, on_tick, start)
        async with trio.open_nursery() as requests:
            for offset in schedule(scenario, speed):
                await trio.sleep_until(start + offset)
                route = rng.choices(MIX, weights)[0]
                ledger.sent += 1
                requests.start_soon(one, offset, route, rng.randrange(scenario.users))
        outer.cancel_scope.cancel()  # every request has its outcome: stop the ticker
    return ledger


async def _ticker(on_tick: Callable[[float], Awaitable[None]], start: float) -> None:
    while True:
        await trio.sleep(1.0)
        await on_tick(trio.current_time() - start)


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(int(q * len(ordered)), len(ordered) - 1)]


def summary(ledger: Ledger, elapsed_s: float) -> dict:
    lat = [s.latency_s for s in ledger.samples if s.outcome == "ok"]
    all_lat = [s.latency_s for s in ledger.samples]
    n = max(ledger.sent, 1)
    errors = sum(n for k, n in ledger.outcomes.items() if k not in _NOT_ERRORS)
    five_xx = sum(c for code, c in ledger.statuses.items() if code.startswith("5"))
    return {
        "scenario": ledger.scenario, "sent": ledger.sent, "throughput_per_s": round(ledger.sent / elapsed_s, 1),
        "p50_ms": _ms(percentile(all_lat, 0.50)), "p95_ms": _ms(percentile(all_lat, 0.95)),
        "p99_ms": _ms(percentile(all_lat, 0.99)), "ok_p95_ms": _ms(percentile(lat, 0.95)),
        "outcomes": {k: ledger.outcomes.get(k, 0) for k in OUTCOMES},
        "statuses": dict(sorted(ledger.statuses.items())),
        "error_rate": round(errors / n, 4), "five_xx_rate": round(five_xx / n, 4),
        "balanced": ledger.balanced,
        "median_latency_ms": _ms(statistics.median(all_lat)) if all_lat else None,
    }


def _ms(v: float | None) -> float | None:
    return None if v is None else round(v * 1000, 1)


TARGETS = {"p95_ms": 2000.0, "error_rate": 0.01, "five_xx_rate": 0.005}


def verdicts(s: dict) -> dict[str, bool]:
    """The spec's targets: P95 < 2 s, error rate < 1 %, 5xx < 0.5 %."""
    return {"p95 < 2 s": (s["p95_ms"] or 0) < TARGETS["p95_ms"],
            "error rate < 1 %": s["error_rate"] < TARGETS["error_rate"],
            "5xx < 0.5 %": s["five_xx_rate"] < TARGETS["five_xx_rate"],
            "ledger balances": s["balanced"]}


def exit_status(summaries: list[dict]) -> int:
    """A load test's exit status: 1 if any target failed or any ledger does not balance, so
    it can gate a pipeline; 1 too for no summaries at all (nothing was measured)."""
    return 0 if summaries and all(all(verdicts(s).values()) for s in summaries) else 1


def per_second(ledger: Ledger) -> list[dict]:
    """A timeline: per second of the schedule, count, p50/p95 and outcome counts."""
    buckets: dict[int, list[Sample]] = {}
    for s in ledger.samples:
        buckets.setdefault(int(s.started_at), []).append(s)
    out = []
    for sec in sorted(buckets):
        rows = buckets[sec]
        lat = [r.latency_s for r in rows]
        out.append({"t": sec, "n": len(rows), "p50_ms": _ms(percentile(lat, 0.5)),
                    "p95_ms": _ms(percentile(lat, 0.95)),
                    "outcomes": {str(k): n for k, n in Counter(r.outcome for r in rows).items()}})
    return out


# -- flood: closed-loop clients that re-send refused requests at once ---------------------------

class FloodLedger(msgspec.Struct, kw_only=True):
    """What a flood did: every request sent has exactly one outcome (and a status; 0 = none)."""

    path: str
    clients: int
    seconds: float
    sent: int = 0
    outcomes: dict[str, int] = {}
    statuses: dict[str, int] = {}

    def record(self, status: int, outcome: Outcome) -> None:
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1
        self.statuses[str(status)] = self.statuses.get(str(status), 0) + 1

    @property
    def balanced(self) -> bool:
        return self.sent == sum(self.outcomes.values()) == sum(self.statuses.values())


async def flood(url: str, path: str = "/api/animals", *, clients: int = 300, seconds: float = 10.0,
                honour_retry_after: bool = False, timeout_s: float = 10.0) -> FloodLedger:
    """`clients` keep-alive connections, each sending its next request as soon as the last is
    answered -- a refusal (429, 503) too, at once unless `honour_retry_after` -- for `seconds`.

    The worst a crowd of impatient clients can do. HTTP/1.1 on raw trio sockets (a small
    client, so the generator spends little CPU per request); a connection the server closed is
    reopened; loopback only.
    """
    check_loopback(url)
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    request = f"GET {path} HTTP/1.1\r\nhost: {parts.netloc}\r\n\r\n".encode()
    ledger = FloodLedger(path=path, clients=clients, seconds=seconds)
    until = trio.current_time() + seconds

    async def client() -> None:
        stream: Any = None
        while trio.current_time() < until:
            ledger.sent += 1
            status, outcome, wait_s = 0, Outcome.ERROR, 0.0
            with trio.move_on_after(timeout_s) as scope:
                try:
                    if stream is None:
                        stream = _Conn(await trio.open_tcp_stream(host, port))
                    status, headers, body = await stream.exchange(request)
                    outcome = outcome_of_response(status, body)
                    if honour_retry_after and status in (429, 503):
                        wait_s = float(headers.get(b"retry-after", b"1") or 1)
                    if headers.get(b"connection") == b"close":
                        stream = await _close(stream)
                except (OSError, trio.BrokenResourceError, trio.ClosedResourceError, ValueError):
                    stream = await _close(stream)
            if scope.cancelled_caught:  # no answer in time: the connection's state is unknown
                stream = await _close(stream)
            ledger.record(status, outcome)
            if wait_s:
                await trio.sleep(min(wait_s, max(until - trio.current_time(), 0.0)))
        await _close(stream)

    async with trio.open_nursery() as nursery:
        for _ in range(clients):
            nursery.start_soon(client)
    return ledger


class _Conn:
    """One keep-alive HTTP/1.1 connection: send a request, read one Content-Length answer."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream, self.buffer = stream, b""

    async def exchange(self, request: bytes) -> tuple[int, dict[bytes, bytes], bytes]:
        await self.stream.send_all(request)
        while (end := self.buffer.find(b"\r\n\r\n")) < 0:
            await self._more()
        lines = self.buffer[:end].split(b"\r\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(b":") for line in lines[1:])}
        length = int(headers.get(b"content-length", b"0"))
        while len(self.buffer) < end + 4 + length:
            await self._more()
        body, self.buffer = self.buffer[end + 4:end + 4 + length], self.buffer[end + 4 + length:]
        return int(lines[0].split()[1]), headers, body

    async def _more(self) -> None:
        chunk = await self.stream.receive_some(65536)
        if not chunk:
            raise trio.BrokenResourceError("the server closed the connection")
        self.buffer += chunk


async def _close(conn: _Conn | None) -> None:
    if conn is not None:
        with trio.CancelScope(shield=True):
            await conn.stream.aclose()
    return None
