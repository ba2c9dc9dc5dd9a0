"""Heartbeats: which instances are alive, and what each one says about itself.

Every `heartbeat_s` each instance writes its summary to ``<prefix>fleet:<instance_id>``
with a TTL of `heartbeat_ttl_s`, and scores its id in the index ``<prefix>fleet`` (a sorted
set) with the instant its heartbeat runs out, both on Redis's clock (`TIME`, in one script:
the instances' clocks never matter). Reading the fleet drops the ids whose instant has
passed and returns the others' summaries: a killed instance is gone within the TTL. The
heartbeat's reply is the live count N, which the `share` fallback divides limits by; the
same call is the Redis breaker's trial while it is open (`actors.fleet.link`), so recovery
needs no traffic. On a clean stop an instance removes itself at once.

The summary is whatever `summary()` returns (a JSON object): `actors.fleet.wiring` puts in
status, breaker states, queue depth and connection usage; more may be added.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec
import trio
from loguru import logger

from actors.fleet.link import RedisLink, RedisUnavailable
from messages.fleet_config import FleetConfig

__all__ = ["BEAT_LUA", "VIEW_LUA", "Heartbeat"]

log = logger.bind(actor="fleet")

# KEYS: index, own key.  ARGV: id, summary, ttl in ms.  Returns {live count, now in ms}.
BEAT_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[3])
redis.call('SET', KEYS[2], ARGV[2], 'PX', ttl)
redis.call('ZADD', KEYS[1], now + ttl, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('PEXPIRE', KEYS[1], ttl)
return {redis.call('ZCARD', KEYS[1]), now}
"""

# KEYS: index.  ARGV: the instance keys' prefix.  Returns {now in ms, id, expires, summary, ...}.
VIEW_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local out = {now}
local live = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. now, '+inf', 'WITHSCORES')
for i = 1, #live, 2 do
  local summary = redis.call('GET', ARGV[1] .. live[i])
  if summary then
    table.insert(out, live[i]); table.insert(out, live[i + 1]); table.insert(out, summary)
  end
end
return out
"""


class Heartbeat:
    def __init__(self, cfg: FleetConfig, instance_id: str, link: RedisLink,
                 summary: Callable[[], dict[str, Any]]) -> None:
        self.cfg, self.instance_id, self.link, self.summary = cfg, instance_id, link, summary
        self.index = f"{cfg.key_prefix}fleet"
        self.own = f"{cfg.key_prefix}fleet:{instance_id}"
        self.live = 1           # N: the last known live count (this instance at least)
        self.beats = 0
        self.last_beat_at: float | None = None

    async def beat(self) -> int:
        body = msgspec.json.encode(self.summary())
        ttl_ms = round(self.cfg.heartbeat_ttl_s * 1000)
        reply = await self.link.call(lambda c: c.eval(BEAT_LUA, keys=[self.index, self.own],
                                                      args=[self.instance_id, body, ttl_ms]))
        self.live = max(1, int(reply[0]))
        self.beats += 1
        self.last_beat_at = trio.current_time()
        return self.live

    async def run(self, *, task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
        said = self.link.last_words = trio.Event()
        task_status.started()
        try:
            while True:
                await trio.sleep(self.cfg.heartbeat_s)
                try:
                    await self.beat()
                except RedisUnavailable:
                    pass  # counted by the link; the fleet view says Redis is down
        finally:
            with trio.move_on_after(self.cfg.redis_call_timeout_s, shield=True):
                try:  # a clean stop leaves the fleet at once, not a TTL later
                    await self.link.call(lambda c: _leave(c, self.index, self.own, self.instance_id))
                except RedisUnavailable:
                    pass
            said.set()

    async def instances(self) -> list[dict[str, Any]]:
        """The live instances' summaries, each with `instance_id`, `last_seen_s` (seconds since
        its last heartbeat) and `expires_in_s`; `RedisUnavailable` when Redis does not answer."""
        prefix = f"{self.cfg.key_prefix}fleet:"
        reply = await self.link.call(lambda c: c.eval(VIEW_LUA, keys=[self.index], args=[prefix]))
        now_ms, out = int(reply[0]), []
        for i in range(1, len(reply), 3):
            iid, expires, raw = _text(reply[i]), float(reply[i + 1]), reply[i + 2]
            try:
                summary = msgspec.json.decode(raw)
            except msgspec.DecodeError:
                summary = {}
            summary = summary if isinstance(summary, dict) else {}
            left = (expires - now_ms) / 1000
            out.append({**summary, "instance_id": iid, "self": iid == self.instance_id,
                        "last_seen_s": round(max(0.0, self.cfg.heartbeat_ttl_s - left), 3),
                        "expires_in_s": round(left, 3)})
        self.live = max(1, len(out))
        return sorted(out, key=lambda s: s["instance_id"])


async def _leave(client: Any, index: str, own: str, instance_id: str) -> None:
    async with client.pipeline(transaction=False) as pipe:
        pipe.zrem(index, [instance_id])
        pipe.delete([own])


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
