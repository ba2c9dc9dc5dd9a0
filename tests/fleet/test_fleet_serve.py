"""Four real `triage serve` processes sharing one Redis, under an open-loop generator.

Policies with short windows: `general` GCRA 20 per 1 s, `auth` a sliding window of 10 per 2 s,
`recording` 100 per 1 s (driven below its limit). The generator's send times are not the
servers' admission times (a loaded machine delays some requests more than others), so the
sliding window is checked against the issue's "limit + instances", not the exact limit that
holds on Redis's clock. ~200 requests/s for 6 s, round robin over the
instances, each request sent on schedule whatever the others are doing (open loop). Then one
instance is killed (SIGKILL: no clean leave) and must be gone from /api/fleet within its
heartbeat TTL (3 s).
"""

from __future__ import annotations

import math
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import trio

from tests.fleet.redis_helpers import REDIS_URL, redis_prefix
from tests.fleet.test_fleet_gate import exact_gcra

ROOT = Path(__file__).resolve().parents[2]
INSTANCES = 4
RATE, DURATION_S = 200, 6.0
ROUTES = ("/g", "/a", "/r")


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _toml(prefix: str) -> str:
    return f"""
[policies.general]
limit = 20
window_s = 1.0
algorithm = "gcra"
[policies.auth]
limit = 10
window_s = 2.0
[policies.recording]
limit = 100
window_s = 1.0
algorithm = "gcra"
[fleet]
redis_url = "{REDIS_URL}"
key_prefix = "{prefix}"
# A 2-core CI machine shared with other jobs stalls now and then for a second or more: the
# Redis breaker must not take that for an outage here (test_fleet_faults.py tests real ones).
redis_timeout_s = 0.25
redis_call_timeout_s = 2.0
redis_failures = 5
"""


def _start(port: int, config: Path, database_url: str, log: Any) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k not in ("NODE_ENV", "TRIAGE_FAULTS", "REDIS_URL")}
    env.update(PYTHONPATH=str(ROOT), DATABASE_URL=database_url, TRIAGE_CONFIG=str(config),
               HEALTH_CHECK_INTERVAL="1000", LOG_LEVEL="DEBUG")
    return subprocess.Popen([sys.executable, "-m", "actors.cli", "serve", "--app",
                             "tests.fleet.fleet_app:create", "--port", str(port)],
                            env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=log)


async def _ready(client: httpx.AsyncClient, url: str) -> None:
    with trio.fail_after(30):
        while True:
            try:
                if (await client.get(f"{url}/api/health/live")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await trio.sleep(0.1)


class _Conns:
    """Keep-alive HTTP/1.1 connections to one instance, raw (httpx costs more CPU per request
    than the servers do, on a 2-core machine): a request takes an idle one or opens one."""

    def __init__(self, port: int) -> None:
        self.port, self.idle = port, []

    async def get(self, path: str) -> int:
        if self.idle:  # a kept-alive connection the server may have closed meanwhile: once more
            try:
                return await self._get(self.idle.pop(), path)
            except OSError:
                pass
        return await self._get(await trio.open_tcp_stream("127.0.0.1", self.port), path)

    async def _get(self, stream: trio.SocketStream, path: str) -> int:
        try:
            await stream.send_all(f"GET {path} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
            buf = b""
            while b"\r\n\r\n" not in buf:
                chunk = await stream.receive_some(65536)
                if not chunk:
                    raise OSError("closed")
                buf += chunk
            head, _, body = buf.partition(b"\r\n\r\n")
            length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length:"))
            while len(body) < length:
                body += await stream.receive_some(65536)
        except trio.BrokenResourceError as exc:
            await stream.aclose()
            raise OSError("connection broken") from exc
        except BaseException:
            await stream.aclose()
            raise
        self.idle.append(stream)
        return int(head.split(b" ")[1])

    async def aclose(self) -> None:
        for stream in self.idle:
            await stream.aclose()


async def _load(ports: list[int]) -> tuple[list[tuple[float, str, int]], float]:
    """Open loop: request i leaves at i / RATE, whatever became of the ones before it.
    Returns the results and the generator's worst lag behind its schedule."""
    results: list[tuple[float, str, int]] = []
    conns = [_Conns(p) for p in ports]
    start = trio.current_time()
    lag = 0.0

    async def one(at: float, conn: _Conns, path: str) -> None:
        try:
            status = await conn.get(path)
        except OSError:
            status = 0
        results.append((at, path, status))

    async with trio.open_nursery() as nursery:
        for i in range(int(RATE * DURATION_S)):
            await trio.sleep_until(start + i / RATE)
            at = trio.current_time() - start
            lag = max(lag, at - i / RATE)
            nursery.start_soon(one, at, conns[i % INSTANCES], ROUTES[i % 3])
    for c in conns:
        await c.aclose()
    return results, lag


async def test_fleet_four_serve_processes_admit_within_the_global_bound(database_url, tmp_path):
    async with redis_prefix() as (_, prefix):
        config = tmp_path / "fleet.toml"
        config.write_text(_toml(prefix))
        ports = _free_ports(INSTANCES)
        logs = [tmp_path / f"{p}.log" for p in ports]
        files = [log.open("w") for log in logs]
        procs = [_start(p, config, database_url, f) for p, f in zip(ports, files, strict=True)]
        urls = [f"http://127.0.0.1:{p}" for p in ports]
        try:
            limits = httpx.Limits(max_connections=400, max_keepalive_connections=100)
            async with httpx.AsyncClient(timeout=10, limits=limits) as client:
                for url in urls:
                    await _ready(client, url)
                with trio.fail_after(10):  # every instance sees the three others
                    while (await client.get(f"{urls[0]}/api/fleet")).json()["live"] < INSTANCES:
                        await trio.sleep(0.2)
                results, lag = await _load(ports)
                print(f"\ngenerator: {len(results)} requests, worst lag behind schedule {lag:.3f} s")
                by = {path: sorted((at, s) for at, p, s in results if p == path) for path in ROUTES}
                assert all(s in (200, 429) for at, p, s in results), {s for _, _, s in results}

                late = {"general": 0, "auth": 0}  # admitted by a fallback: Redis late on a loaded machine
                for url in urls:  # what each instance paid for it
                    m = (await client.get(f"{url}/metrics")).text
                    print(url, *(line for line in m.splitlines() if line.startswith(
                        ("triage_fleet_redis_rtt_seconds_count", "triage_fleet_fallbacks_total",
                         "triage_fleet_fallback_admitted_total", "triage_fleet_redis_errors_total",
                         "triage_fleet_redis_up"))))
                    for policy in late:
                        line = f'triage_fleet_fallback_admitted_total{{policy="{policy}"}} '
                        late[policy] += int(float(next(x for x in m.splitlines() if x.startswith(line))[len(line):]))
                print(f"admitted by a fallback while Redis was late: {late}")
                for log in logs:
                    print(*[line for line in log.read_text().splitlines() if "Redis" in line][:8], sep="\n")
                g = by["/g"]
                admitted = sum(s == 200 for _, s in g)
                exact = exact_gcra([at for at, _ in g], 20, 1.0)
                span = g[-1][0] - g[0][0]
                bound = 20 + math.ceil((span + 1.0) / 0.05)
                print(f"general (GCRA 20/s): admitted {admitted} of {len(g)}, exact GCRA {exact}, "
                      f"ratio {admitted / exact:.3f}, bound {bound}, per-instance limits would admit "
                      f"~{INSTANCES * exact}")
                # The bounds hold for what Redis decided; a fallback's allowances (Redis answering
                # later than redis_timeout_s) come on top, counted by each instance.
                assert admitted - late["general"] <= bound
                assert (admitted - late["general"]) / exact <= 1.05
                assert admitted >= 0.85 * exact  # and not far under it

                a = [at for at, s in by["/a"] if s == 200]
                worst = max(sum(1 for x in a if t <= x < t + 2.0) for t in a)
                print(f"auth (window 10/2 s): admitted {len(a)} of {len(by['/a'])}, worst 2 s window {worst}")
                assert worst <= 10 + INSTANCES + late["auth"] and len(a) >= 10

                r = by["/r"]
                refused = sum(s == 429 for _, s in r)
                print(f"recording (100/s, driven at ~{RATE // 3}/s): refused {refused} of {len(r)}")
                # below the limit, only credits parked on the other instances (leased, not yet
                # spent or refunded: at most tau's worth each) can refuse a request
                assert refused <= 0.02 * len(r)

                victim = procs[-1]
                victim.send_signal(signal.SIGKILL)
                killed_at = trio.current_time()
                with trio.fail_after(5):
                    while len((await client.get(f"{urls[0]}/api/fleet")).json()["instances"]) == INSTANCES:
                        await trio.sleep(0.1)
                gone_after = trio.current_time() - killed_at
                print(f"killed instance gone from /api/fleet after {gone_after:.2f} s")
                assert gone_after <= 3.0 + 0.3
        finally:
            for p in procs:
                if p.poll() is None:
                    p.terminate()
            for p in procs:
                try:
                    p.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    p.kill()
            for f in files:
                f.close()
