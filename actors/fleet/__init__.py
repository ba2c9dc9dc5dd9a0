"""The fleet: several instances sharing rate limits and a view of each other through Redis.

`run_fleet(config, mon, emit, *, task_status)` is started by `actors.system` when `[fleet]`
names a Redis (it is loaded by name then, so the kernel runs without the `fleet` extra).
It hands back a `Fleet`: the link (`actors.fleet.link`), the gate `mon.check_rate`
consults after a local allow (`actors.fleet.gate`) and the heartbeat
(`actors.fleet.heartbeat`). `await fleet.view()` is `mon.fleet()` and `GET /api/fleet`.
"""

from __future__ import annotations

import datetime as dt
import os
import socket
import time
from collections.abc import Callable
from typing import Any

import msgspec
import trio
from loguru import logger

from actors.fleet.breaker_agent import BreakerAgent
from actors.fleet.gate import FleetGate
from actors.fleet.heartbeat import Heartbeat
from actors.fleet.link import RTT_BUCKETS, RedisLink, RedisUnavailable, listen
from actors.runtime.mailbox import AsyncValue
from messages.config import Config
from messages.errors import TriageError
from messages.health import Alert

__all__ = ["RTT_BUCKETS", "Fleet", "RedisUnavailable", "default_instance_id", "run_fleet"]

ALERT_ID = "fleet_redis_down"
log = logger.bind(actor="fleet")


class _ResetNews(msgspec.Struct, frozen=True):
    """`mon.reset_rate` on one instance, told to the others on `<prefix>reset`."""
    source: str = msgspec.field(name="from")
    policy: str | None = None
    key: str | None = None


def default_instance_id() -> str:
    return f"{socket.gethostname()[:40]}/{os.getpid()}"


def _iso(wall: float) -> str:
    return dt.datetime.fromtimestamp(wall, dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Fleet:
    def __init__(self, config: Config, mon: Any, emit: Callable[[Any], None]) -> None:
        f = config.fleet
        self.config, self.mon, self.emit = config, mon, emit
        self.instance_id = f.instance_id or default_instance_id()
        self.started_at = _iso(time.time())
        self.link = RedisLink(f, on_change=self._link_changed)
        self.heartbeat = Heartbeat(f, self.instance_id, self.link, self.summary)
        self.gate = FleetGate(config, self.link, lambda: self.heartbeat.live)
        self.breakers = BreakerAgent(
            mon, prefix=f.key_prefix, instance_id=self.instance_id, tiers=f.shared_tiers,
            follow=f.follow_recovery, heartbeat_s=f.heartbeat_s, live_ids=self._live_ids,
            run=self.link.call, pubsub_client=lambda: self.link.client, unavailable=(RedisUnavailable,))
        self._down_since: str | None = None
        self._reset_channel = f"{f.key_prefix}reset"
        self.resets_heard = AsyncValue(0)  # other instances' resets applied here (tests, tools)
        self._last_instances: list[dict[str, Any]] = []

    def _link_changed(self, up: bool) -> None:
        self.gate.link_changed(up)
        modes = ", ".join(f"{p}: {m}" for p, m in sorted(self.gate.modes.items()))
        if up:
            log.info("Rate limit fleet mode global again (Redis answers)", modes=modes)
        else:
            log.warning("Rate limit fleet mode changed: Redis unreachable ({modes})", modes=modes)
        now = _iso(time.time())
        if not up:
            self._down_since = now
        self.emit(Alert(id=ALERT_ID, rule=ALERT_ID, severity="warning",
                        state="resolved" if up else "firing",
                        message="Fleet rate limits global again: Redis answers" if up else
                        f"Fleet rate limits fall back, Redis unreachable ({modes})",
                        value=0 if up else 1, threshold=1, started_at=self._down_since or now,
                        resolved_at=now if up else None))

    def summary(self) -> dict[str, Any]:
        """What this instance's heartbeat says about it."""
        mon = self.mon
        queue = mon.queue.statistics()
        pool = queue.pool
        return {"status": mon.health_report.value.status, "pid": os.getpid(),
                "started_at": self.started_at,
                "breakers": {tier: b.statistics().state for tier, b in mon.breakers.items()},
                "queue_depth": queue.depth, "in_flight": queue.in_flight,
                "max_concurrent": queue.max_concurrent,
                "connections": {"open": pool.opened if pool else 0, "idle": pool.idle if pool else 0},
                "modes": dict(self.gate.modes)}

    def statistics(self) -> dict[str, Any]:
        link = self.link
        return {"instance_id": self.instance_id, "live": self.heartbeat.live,
                "redis_up": link.up.value, "round_trips": link.round_trips, "errors": link.errors,
                "rtt_bounds": RTT_BUCKETS, "rtt_buckets": list(link.rtt_buckets), "rtt_sum": link.rtt_sum,
                "rtt_last_s": link.rtt_last_s, **self.gate.statistics()}

    async def view(self) -> dict[str, Any]:
        """The fleet as Redis sees it now; the last known view (`stale`) while it is down."""
        stale = False
        try:
            self._last_instances = await self.heartbeat.instances()
        except RedisUnavailable:
            stale = True
        link = self.link
        return {"enabled": True, "instance_id": self.instance_id, "stale": stale,
                "redis": {"up": link.up.value, "rtt_ms": None if link.rtt_last_s is None
                          else round(link.rtt_last_s * 1000, 3), "round_trips": link.round_trips,
                          "errors": link.errors},
                "live": self.heartbeat.live, "modes": dict(self.gate.modes),
                "breakers": {"shared": list(self.breakers.tiers),
                             "mode": "fleet" if self.breakers.shared else "local",
                             "probes": dict(self.breakers.probes)},
                "instances": self._last_instances}

    async def reset_rate(self, policy: str | None, key: str | None) -> None:
        """`mon.reset_rate` with a fleet: the fleet's counts in Redis are deleted and every
        instance is told (pub/sub) to drop what it holds for those keys — its credits, its
        cached refusals, its own local counts — so the reset holds wherever the next request
        lands. `RedisUnavailable` if Redis can't be had (this instance's counts are reset all
        the same); an instance that misses the message holds its credits at most `credit_ttl_s`,
        its cached refusal until it was due to end."""
        exact, patterns = self.gate.forget(policy, key)
        news = msgspec.json.encode(_ResetNews(source=self.instance_id, policy=policy, key=key))

        async def delete(client: Any) -> None:
            keys: list[Any] = list(exact)
            for pattern in patterns:
                keys += [k async for k in client.scan_iter(match=pattern, count=1000)]
            if keys:
                await client.delete(keys)
            await client.publish(self._reset_channel, news)

        await self.link.call(delete)

    async def _on_reset(self, channel: str, data: bytes) -> None:
        try:
            news = msgspec.json.decode(data, type=_ResetNews)
        except msgspec.DecodeError:
            return  # not ours
        if news.source == self.instance_id:
            return
        try:
            await self.mon._reset_here(news.policy, news.key)
        except TriageError as exc:  # a policy this instance's configuration does not have
            log.debug("Fleet reset of {policy!r} not applied here: {error}", policy=news.policy,
                      error=type(exc).__name__)
            return
        self.gate.forget(news.policy, news.key)
        self.resets_heard.set(self.resets_heard.value + 1)

    async def run(self, *, task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(self.link.run)
            await nursery.start(self.gate.run)
            try:  # the first heartbeat before serving: the live count is known from the start
                await self.heartbeat.beat()
            except RedisUnavailable:
                log.warning("Redis unreachable at start: fleet rate limits fall back until it answers")
            await nursery.start(self.heartbeat.run)
            nursery.start_soon(listen, lambda: self.link.client, [self._reset_channel], self._on_reset,
                               self.config.fleet.heartbeat_s)
            if self.config.fleet.share_breakers:
                await nursery.start(self.breakers.run)
            task_status.started(self)

    async def _live_ids(self) -> set[str]:
        return {i["instance_id"] for i in await self.heartbeat.instances()}


async def run_fleet(config: Config, mon: Any, emit: Callable[[Any], None], *,
                    task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
    fleet = Fleet(config, mon, emit)
    await fleet.run(task_status=task_status)
