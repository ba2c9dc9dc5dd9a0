"""Delivery to one receiver: a bounded outbox, one POST at a time, retries with back-off.

Theory of operation. A sink formats each alert into a body and `offer`s it; the outbox
holds at most `outbox` bodies and, when full, drops the oldest (counted), so a dead
receiver costs a fixed amount of memory and the newest news — often a resolve — is
kept. One task takes bodies in order and POSTs each:

    2xx                          -> delivered
    5xx, 429, network error      -> retried after 0.5 s, 1 s, 2 s … (backoff_max_s),
                                    at least the 429's Retry-After; given up after
                                    `retries` retries (counted: dropped, gave_up)
    any other 4xx                -> never retried (counted: dropped, rejected): the
                                    receiver said the request itself is wrong

Every sleep is `trio.sleep`, so MockClock drives the back-off in tests.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Literal

import httpx
import msgspec
import trio
from loguru import logger

from messages.config import SinkDelivery

Verdict = Literal["delivered", "retry", "rejected"]


class SinkStatistics(msgspec.Struct, frozen=True, kw_only=True):
    """One sink's lifetime counts, as `/metrics` shows them."""

    sink: str
    delivered: int = 0
    retries: int = 0
    dropped: dict[str, int] = {}     # reason: outbox_full | gave_up | rejected | subscription
    outbox: int = 0                  # bodies waiting now


def verdict(status: int | None) -> Verdict:
    """None is a network error (refused, reset, timeout)."""
    if status is not None and 200 <= status < 300:
        return "delivered"
    if status is None or status >= 500 or status == 429:
        return "retry"
    return "rejected"


def backoff(retry: int, cfg: SinkDelivery, retry_after: str | None = None) -> float:
    """Seconds before retry number `retry` (0-based): doubling, capped, never under Retry-After."""
    delay = min(cfg.backoff_s * 2 ** retry, cfg.backoff_max_s)
    if retry_after and retry_after.strip().isdigit():
        delay = max(delay, min(float(retry_after), cfg.backoff_max_s))
    return delay


class Delivery:
    """`offer(body)` never blocks; `run` POSTs what is offered (start it with `nursery.start`)."""

    def __init__(self, sink: str, url: str, cfg: SinkDelivery, headers: dict[str, str] | None = None,
                 sign: Any = None, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.sink, self.url, self.cfg = sink, url, cfg
        self.headers = {"content-type": "application/json", **(headers or {})}
        self.sign = sign                      # body -> extra headers (the HMAC signature)
        self.transport = transport            # tests: httpx.MockTransport, so MockClock is safe
        self._outbox: deque[bytes] = deque()
        self._ready = trio.Event()
        self._counts = {"delivered": 0, "retries": 0}
        self._dropped: dict[str, int] = {}
        self.subscription: Any = None         # set by the sink: its drops are counted too
        self._log = logger.bind(actor="alerts", sink=sink)

    def offer(self, body: bytes) -> None:
        if len(self._outbox) >= self.cfg.outbox:
            self._outbox.popleft()
            self._drop("outbox_full")
        self._outbox.append(body)
        self._ready.set()

    def statistics(self) -> SinkStatistics:
        dropped = dict(self._dropped)
        lost = getattr(self.subscription, "dropped", 0)
        if lost:
            dropped["subscription"] = lost
        return SinkStatistics(sink=self.sink, delivered=self._counts["delivered"],
                              retries=self._counts["retries"], dropped=dropped, outbox=len(self._outbox))

    async def run(self, *, task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
        async with httpx.AsyncClient(timeout=self.cfg.timeout_s, transport=self.transport) as client:
            task_status.started()
            while True:
                while not self._outbox:
                    await self._ready.wait()
                    self._ready = trio.Event()
                await self._deliver(client, self._outbox.popleft())

    async def _deliver(self, client: httpx.AsyncClient, body: bytes) -> None:
        headers = {**self.headers, **(self.sign(body) if self.sign else {})}
        for retry in range(self.cfg.retries + 1):
            status, retry_after, why = await self._post(client, body, headers)
            outcome = verdict(status)
            if outcome == "delivered":
                self._counts["delivered"] += 1
                return
            if outcome == "rejected" or retry == self.cfg.retries:
                break
            self._counts["retries"] += 1
            await trio.sleep(backoff(retry, self.cfg, retry_after))
        reason = "rejected" if outcome == "rejected" else "gave_up"
        self._drop(reason)
        self._log.warning("Alert sink {sink} dropped an alert ({reason}): {why}", sink=self.sink,
                          reason=reason, why=why)

    async def _post(self, client: httpx.AsyncClient, body: bytes,
                    headers: dict[str, str]) -> tuple[int | None, str | None, str]:
        try:
            response = await client.post(self.url, content=body, headers=headers)
        except Exception as exc:  # refused, reset, timeout, a bad header: named by class, never the URL
            return None, None, type(exc).__name__
        return response.status_code, response.headers.get("retry-after"), f"HTTP {response.status_code}"

    def _drop(self, reason: str) -> None:
        self._dropped[reason] = self._dropped.get(reason, 0) + 1
