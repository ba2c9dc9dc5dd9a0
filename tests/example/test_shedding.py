"""The edge sheds what the kernel would refuse, before a body is read or a route runs.

From the client's side, over real HTTP on loopback, on the reference service and a real
PostgreSQL: an open breaker or a full admission queue answers at once with the kernel's own
503 problem body and Retry-After, without waiting for a body the client never sends.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import trio
import trio.testing
from _http import serving, throwaway_schema

from messages.config import Config, Priority, QueueConfig
from messages.http_config import HttpConfig

SLOW_BODY_S = 30.0  # the body deadline: a test that waits for it fails its own fail_after first


@pytest.fixture(scope="module")
def schema(database_url: str):
    with throwaway_schema(database_url, "triage_shed") as name:
        yield name


def _http(schema: str) -> HttpConfig:
    return HttpConfig(port=0, demo_schema=schema, body_timeout_s=SLOW_BODY_S)


async def raw(address: tuple[str, int], head: bytes) -> tuple[int, dict[str, str], dict]:
    """Send only a request head (a body it announces never comes); read the whole answer."""
    stream = await trio.open_tcp_stream(*address)
    async with stream:
        await stream.send_all(head)
        data = b""
        with trio.fail_after(5):  # far below SLOW_BODY_S: an answer that waited for the body fails
            while b"\r\n\r\n" not in data:
                data += await stream.receive_some(65536)
            top, _, rest = data.partition(b"\r\n\r\n")
            lines = top.decode().split("\r\n")
            headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
            while len(rest) < int(headers["content-length"]):
                rest += await stream.receive_some(65536)
    return int(lines[0].split()[1]), headers, json.loads(rest)


def _post_head(path: str, length: int = 1000) -> bytes:
    return (f"POST {path} HTTP/1.1\r\nhost: t\r\ncontent-type: application/json\r\n"
            f"content-length: {length}\r\n\r\n").encode()


async def metric_count(s: Any, route: str, outcome: str) -> float:
    text = (await s.client.get("/metrics")).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("triage_http_requests_total{") and f'route="{route}"' in line
               and f'outcome="{outcome}"' in line)


async def test_open_breaker_is_shed_before_the_body_is_read(database_url, schema):
    async with serving(Config(database_url=database_url), _http(schema), service=True) as s:
        with trio.fail_after(30):
            await s.app.service.ready.wait()
        await s.mon.breakers["batch"].force_open()
        calls = s.mon.breakers["batch"].statistics().calls
        status, headers, body = await raw(s.address, _post_head("/api/inventory/import"))
        shed = await metric_count(s, "/api/inventory/import", "circuit_open")
        assert s.mon.breakers["batch"].statistics().calls == calls  # no guarded call was tried
    assert status == 503 and int(headers["retry-after"]) >= 1
    assert headers["content-type"] == "application/problem+json"
    assert headers["connection"] == "close"  # the unread body cannot be followed by another request
    assert body["outcome"] == "circuit_open" and body["tier"] == "batch" and body["status"] == 503
    assert "Circuit breaker 'batch' is open" in body["detail"]
    assert shed == 1


async def test_open_breaker_of_a_route_with_a_fallback_is_not_shed(database_url, schema):
    async with serving(Config(database_url=database_url), _http(schema), service=True) as s:
        with trio.fail_after(30):
            await s.app.service.ready.wait()
        fresh = await s.client.get("/api/animals")
        await s.mon.breakers["database"].force_open()
        stale = await s.client.get("/api/animals")
    assert fresh.status_code == stale.status_code == 200
    assert stale.json() == {"animals": fresh.json()["animals"], "stale": True}


async def test_full_queue_sheds_what_it_would_refuse_and_admits_what_would_displace(database_url, schema):
    config = Config(database_url=database_url, queue=QueueConfig(max_concurrent=1, max_queue_size=2))
    async with serving(config, _http(schema), service=True) as s, trio.open_nursery() as nursery:
        with trio.fail_after(30):
            await s.app.service.ready.wait()
        release = trio.Event()

        async def hold(priority: int) -> None:
            async with s.mon.guard(priority=priority):
                await release.wait()

        for _ in range(3):  # one holds the only slot, two wait: the queue is at its limit
            nursery.start_soon(hold, Priority.NORMAL)
        await trio.testing.wait_all_tasks_blocked()
        assert s.mon.queue.statistics().depth == 2
        rejected = s.mon.queue.statistics().rejected

        animals = await s.client.get("/api/animals")                      # NORMAL: refused
        status, headers, body = await raw(s.address, _post_head("/api/inventory/import"))  # BATCH
        record = await s.client.post("/api/administrations", json={"animalId": 1, "medicationId": 1,
                                                                   "dose": 1})  # CRITICAL: would displace
        health = await s.client.get("/api/health")
        assert s.mon.queue.statistics().rejected == rejected  # the kernel never saw the shed ones
        shed = await metric_count(s, "/api/animals", "queue_full")
        release.set()
        await trio.testing.wait_all_tasks_blocked()
        after = await s.client.get("/api/animals")
    assert animals.status_code == 503 and animals.headers["retry-after"] == "1"
    assert animals.json()["outcome"] == "queue_full" and "queue is full" in animals.json()["detail"]
    assert "connection" not in animals.headers or animals.headers["connection"] != "close"  # no body: keep-alive
    assert status == 503 and headers["retry-after"] == "1" and headers["connection"] == "close"
    assert body["outcome"] == "queue_full"
    assert record.status_code == 401  # its route ran (no session): a CRITICAL write is never shed here
    assert health.status_code != 503 or health.json().get("status") == "unhealthy"  # answered, not shed
    assert "outcome" not in health.json()
    assert shed == 1
    assert after.status_code == 200
