"""The fleet's one Redis connection: every call bounded, behind a breaker of its own.

Theory of operation. `RedisLink.run` owns a `coredis` client (anyio, so it runs on trio)
for the life of the system. `await link.call(fn)` runs ``await fn(client)`` within
`redis_call_timeout_s` (the client's own stream and connect timeouts are the same, and it never
retries: a retry is the caller's business). Calls run in the background (leases, heartbeats);
a request waits for one at most `redis_timeout_s` (`actors.fleet.gate`). The two differ on
purpose: a fresh connection's handshake on a loaded machine takes more than a request may
wait, and a call given up on throws its connection away, so a call bound as tight as the
request's would, under load, only ever be a handshake that never finishes.

Any failure (a timeout, a refused or cut connection, an error reply) raises
`RedisUnavailable` and counts; a timed-out call may leave its connection waiting for a
reply that will never come (a black hole), so after a failure the client is thrown away and
a fresh one made.

The breaker: `redis_failures` consecutive failures open it; while open, calls fail at once
(no request waits on a Redis known to be gone) until `redis_retry_s` has passed, when one
call is let through as a trial: success closes it, failure opens it again. `up` is the
state others read (`AsyncValue`, so they can wait for a change); each change calls
`on_change(up)`. Round trips (pipelines count one) and their latency are counted for
/metrics and the benchmark.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import coredis
import trio
from coredis.retry import NoRetryPolicy
from loguru import logger

from actors.runtime.mailbox import AsyncValue
from messages.errors import TriageError
from messages.fleet_config import FleetConfig

__all__ = ["RTT_BUCKETS", "RedisLink", "RedisUnavailable", "listen"]

T = TypeVar("T")
RTT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25)

log = logger.bind(actor="fleet")


class RedisUnavailable(TriageError):
    """A Redis call failed, timed out, or was not tried (the Redis breaker is open)."""


class RedisLink:
    def __init__(self, cfg: FleetConfig, on_change: Callable[[bool], None] = lambda up: None) -> None:
        self.cfg, self.on_change = cfg, on_change
        self.timeout_s = cfg.redis_timeout_s       # what a request waits, at most
        self.call_timeout_s = cfg.redis_call_timeout_s
        self.client: Any = None
        self.up = AsyncValue(True)  # optimistic until the first call says otherwise
        self.failures = 0           # consecutive
        self.retry_at = 0.0
        self.round_trips = self.errors = 0
        self.rtt_buckets = [0] * len(RTT_BUCKETS)  # cumulative counts, Prometheus' way
        self.rtt_sum = 0.0
        self.rtt_last_s: float | None = None
        self.last_error: str | None = None
        self._reset = trio.Event()
        # Set by a task with something to say on the way out (the heartbeat leaving the fleet):
        # a cancelled `run` keeps the client open, shielded and briefly, until it is said.
        self.last_words: trio.Event | None = None

    def _new_client(self) -> Any:
        return coredis.Redis.from_url(self.cfg.redis_url, connect_timeout=self.call_timeout_s,
                                      stream_timeout=self.call_timeout_s, retry_policy=NoRetryPolicy(),
                                      verify_version=False)

    async def run(self, *, task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
        # The client's own tasks run shielded, so that when the system stops, what must still
        # be said (`last_words`: the heartbeat leaving the fleet) can be, briefly; then they stop.
        shielded = trio.CancelScope(shield=True)
        async with trio.open_nursery() as nursery:
            await nursery.start(self._serve, shielded)
            task_status.started()
            try:
                await trio.sleep_forever()
            finally:
                if self.last_words is not None:
                    with trio.move_on_after(self.call_timeout_s, shield=True):
                        await self.last_words.wait()
                shielded.cancel()

    async def _serve(self, scope: trio.CancelScope, *,
                     task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
        started = False
        with scope:
            while True:
                client = self._new_client()
                self._reset = trio.Event()
                async with client:
                    self.client = client
                    if not started:
                        started = True
                        task_status.started()
                    await self._reset.wait()
                    self.client = None
        self.client = None

    def available(self) -> bool:
        """False while the breaker is open and no trial is due: a call would fail at once."""
        return self.up.value or trio.current_time() >= self.retry_at

    async def call(self, fn: Callable[[Any], Awaitable[T]]) -> T:
        """``await fn(client)`` within the timeout; `RedisUnavailable` if it cannot be had."""
        now = trio.current_time()
        if (not self.up.value and now < self.retry_at) or self.client is None:
            await trio.lowlevel.checkpoint()
            raise RedisUnavailable("Redis breaker open" if self.client is not None else "Redis client restarting")
        if not self.up.value:
            self.retry_at = now + self.cfg.redis_retry_s  # this call is the one trial
        client = self.client
        try:
            with trio.fail_after(self.call_timeout_s):
                result = await fn(client)
        except Exception as exc:  # timeouts, refused or cut connections, error replies, a closed client
            self._failed(client, exc)
            raise RedisUnavailable(f"Redis call failed: {type(exc).__name__}") from None
        self._succeeded(trio.current_time() - now)
        return result

    def _failed(self, client: Any, exc: BaseException) -> None:
        # The class only: a message could quote the URL, and the URL may hold a password.
        self.last_error = type(exc).__name__
        log.debug("Redis call failed: {error}", error=self.last_error)
        self.errors += 1
        self.failures += 1
        if client is self.client:
            self.client = None  # no later call may wait behind a reply that will not come
            self._reset.set()
        if self.up.value and self.failures >= self.cfg.redis_failures:
            self.retry_at = trio.current_time() + self.cfg.redis_retry_s
            log.warning("Redis unreachable: fleet rate limits fall back ({failures} failed calls, "
                        "the last: {error})", failures=self.failures, error=self.last_error)
            self.up.set(False)
            self.on_change(False)
        elif not self.up.value:
            self.retry_at = trio.current_time() + self.cfg.redis_retry_s

    def _succeeded(self, rtt: float) -> None:
        self.round_trips += 1
        self.rtt_sum += rtt
        self.rtt_last_s = rtt
        for i, bound in enumerate(RTT_BUCKETS):
            if rtt <= bound:
                self.rtt_buckets[i] += 1
        self.failures = 0
        if not self.up.value:
            log.info("Redis reachable again: fleet rate limits are global")
            self.up.set(True)
            self.on_change(True)


async def listen(client_of: Callable[[], Any], channels: list[str],
                 on_message: Callable[[str, bytes], Awaitable[None]], retry_s: float) -> None:
    """Subscribe to `channels` for good: ``await on_message(channel, data)`` for each message
    (pub/sub is at-most-once: whatever must not be missed is in keys too). A dropped
    subscription (Redis down, the link replacing its client) is made again `retry_s` later;
    `client_of()` is the client to subscribe with, None while there is none."""
    while True:
        try:
            client = client_of()
            if client is None:
                await trio.sleep(retry_s)
                continue
            async with client.pubsub(channels=channels) as pubsub:
                async for message in pubsub:
                    if message.get("type") != "message":
                        continue
                    channel = message["channel"]
                    await on_message(channel.decode() if isinstance(channel, bytes) else channel,
                                     message["data"])
        except Exception as exc:  # noqa: BLE001 — the subscription dropped: again soon
            log.debug("Redis subscription lost ({error}); again in {s} s", error=type(exc).__name__, s=retry_s)
            await trio.sleep(retry_s)
