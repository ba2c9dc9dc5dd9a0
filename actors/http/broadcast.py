"""One snapshot a tick for every stream: one builder, N readers, the latest pre-encoded bytes.

Theory of operation. A `Feed` holds the newest frame (bytes, encoded once) and its number.
While anyone reads it, one builder task — a trio system task, started by the first reader
and ending at its first tick after the last one has gone — calls `build()` every
`period_s` and publishes the result. A reader waits for a frame newer than the last it
sent; a slow reader finds only the newest when it comes back (the frames in between are
skipped, never queued), so a reader costs an integer and one wake-up per frame, and the
snapshot is built once per tick however many streams are open. Readers are woken in
`GROUPS` groups spread over half a period rather than all at once: 1,000 socket writes in
one scheduler batch would hold every other task (a health probe) for the whole burst.

A reader with a `Wire` (a plain HTTP/1.1 socket, `actors.http.wire`) is not woken at all:
the builder writes the frame, pre-framed once as a chunk for all of them, straight to its
socket, group by group; only a wire that could not take it wakes its own task to catch up.

`AlertLog` does the same for alerts, which must not be skipped while a reader keeps up: a
tap on the event bus encodes each alert once, as its server-sent event, into a bounded log
of (number, severity rank, bytes); each reader keeps its own place and takes what is newer
than it. A reader more than `kept` alerts behind loses the oldest, counted in `dropped`
(as a bounded bus subscription would), and memory never grows.

Only `join`, `leave` and the waits touch trio; both are single-threaded trio objects.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
import trio
from loguru import logger

from actors.http.wire import Wire, chunk_of
from messages.health import SEVERITY_RANK, Alert

ALERTS_KEPT = 256
GROUPS = 10              # a frame reaches its readers in 10 waves over half a period

log = logger.bind(actor="http")


class Feed:
    """The latest frame of a periodic snapshot, built once per `period_s` while anyone reads."""

    def __init__(self, name: str, build: Callable[[], Awaitable[bytes | None]], period_s: float) -> None:
        self.name, self.build, self.period_s = name, build, period_s
        self.frame: bytes | None = None
        self.chunk: bytes | None = None  # the frame as one chunk of a chunked body (for wires)
        self.number = 0          # of the newest frame; 0 before the first
        self.readers = 0
        self.builds = 0          # frames built so far (once per tick, not once per reader)
        self._changed = [trio.Event() for _ in range(GROUPS)]
        self._wires: list[set[Wire]] = [set() for _ in range(GROUPS)]
        self._joined = 0
        self._running = False

    def join(self) -> int:
        """A reader arrives: start the builder if it is not running. Its wake-up group."""
        self.readers += 1
        self._joined += 1
        if not self._running:
            self._running = True
            trio.lowlevel.spawn_system_task(self._run, name=f"feed {self.name}")
        return self._joined % GROUPS

    def leave(self) -> None:
        self.readers -= 1

    def attach(self, wire: Wire, group: int) -> None:
        """From now on the builder writes each new frame to `wire` itself (see the module doc)."""
        self._wires[group].add(wire)

    def detach(self, wire: Wire, group: int) -> None:
        self._wires[group].discard(wire)

    async def newer(self, seen: int, group: int = 0) -> tuple[int, bytes]:
        """The newest frame once its number is above `seen`: (number, frame)."""
        while self.number <= seen or self.frame is None:
            await self._changed[group].wait()
        return self.number, self.frame

    async def publish(self, frame: bytes) -> None:
        """The new frame; its readers are written to, or woken, group by group over half a period."""
        self.frame, self.chunk, self.number = frame, chunk_of(frame), self.number + 1
        number, chunk = self.number, self.chunk
        for group in range(GROUPS):
            if group:
                await trio.sleep(self.period_s / 2 / GROUPS)
            for wire in tuple(self._wires[group]):
                wire.offer(number, chunk)
            event, self._changed[group] = self._changed[group], trio.Event()
            event.set()

    async def _run(self) -> None:
        """The builder. A system task must not raise: a failed build is logged (once while it
        keeps failing) and the readers keep the last frame."""
        due, failing = trio.current_time(), False
        try:
            while self.readers > 0:
                try:
                    frame = await self.build()
                    failing = False
                except Exception:
                    if not failing:
                        log.opt(exception=True).error("stream snapshot failed", feed=self.name)
                    frame, failing = None, True
                if frame is not None:
                    self.builds += 1
                    await self.publish(frame)
                due = max(due + self.period_s, trio.current_time())
                await trio.sleep_until(due)
        finally:
            self._running = False
            self.frame = self.chunk = None  # a reader who comes later waits for a fresh one


class AlertLog:
    """Every alert since the first reader joined, encoded once, the newest `kept` of them."""

    def __init__(self, kept: int = ALERTS_KEPT) -> None:
        self.items: deque[tuple[int, int, bytes]] = deque(maxlen=kept)
        self.number = 0          # of the newest alert
        self.readers = 0
        self.dropped = 0         # alerts a slow reader never got
        self._changed = trio.Event()

    def tap(self, event: Any) -> None:
        """An event-bus tap: keeps alerts, ignores the rest."""
        if type(event) is Alert:
            self.add(event)

    def add(self, alert: Alert) -> None:
        self.number += 1
        if self.readers:  # nobody reads: nothing to encode or keep
            self.items.append((self.number, SEVERITY_RANK[alert.severity], event_bytes(alert)))
        event, self._changed = self._changed, trio.Event()
        event.set()

    def join(self) -> int:
        """A reader arrives: the place it starts from (alerts after now)."""
        self.readers += 1
        return self.number

    def leave(self) -> None:
        self.readers -= 1
        if not self.readers:
            self.items.clear()

    async def wait_newer(self, seen: int) -> None:
        while self.number <= seen:
            await self._changed.wait()

    def since(self, seen: int, floor: int = 0) -> tuple[int, list[bytes]]:
        """(the newest number, the frames after `seen` of severity rank >= `floor`)."""
        if self.number <= seen:
            return seen, []
        oldest = self.items[0][0] if self.items else self.number + 1
        if oldest > seen + 1:
            self.dropped += oldest - seen - 1
        return self.number, [data for n, rank, data in self.items if n > seen and rank >= floor]


def event_bytes(alert: Alert) -> bytes:
    """An alert as its server-sent event."""
    return b"event: alert\nid: %s\ndata: %s\n\n" % (alert.id.encode(), msgspec.json.encode(alert))
