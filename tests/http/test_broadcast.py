"""Streams share one snapshot: one build per tick for any number of readers; slow readers skip."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from actors.http.broadcast import AlertLog, Feed
from messages.health import Alert


def alert(n: int, severity: str = "warning") -> Alert:
    return Alert(id=f"rule:{n}", rule="rule", severity=severity, state="firing", message=f"alert {n}",
                 value=1.0, threshold=0.5, started_at="2026-01-01T00:00:00.000Z")


class Counter:
    def __init__(self) -> None:
        self.calls = 0

    async def build(self) -> bytes:
        self.calls += 1
        await trio.sleep(0)
        return b"frame %d" % self.calls


async def test_feed_builds_once_per_tick_for_fifty_readers(autojump_clock):
    counter = Counter()
    feed = Feed("test", counter.build, period_s=0.5)
    got: list[list[bytes]] = [[] for _ in range(50)]

    async def reader(out: list[bytes]) -> None:
        group = feed.join()
        try:
            seen = 0
            while True:
                seen, frame = await feed.newer(seen, group)
                out.append(frame)
        finally:
            feed.leave()

    async with trio.open_nursery() as nursery:
        for out in got:
            nursery.start_soon(reader, out)
        await trio.sleep(4.9)    # ticks at 0, 0.5, ... 4.5: ten frames
        nursery.cancel_scope.cancel()
    assert counter.calls == feed.builds == 10
    assert all(out == [b"frame %d" % i for i in range(1, 11)] for out in got)


async def test_feed_slow_reader_skips_to_the_newest_frame_and_builder_stops_when_all_leave(autojump_clock):
    counter = Counter()
    feed = Feed("test", counter.build, period_s=0.5)
    feed.join()
    seen, first = await feed.newer(0)
    await trio.sleep(3.1)        # a reader stuck in a slow write: six frames go by unread
    seen, frame = await feed.newer(seen)
    assert (first, frame, seen) == (b"frame 1", b"frame 7", 7)
    feed.leave()
    await trio.sleep(1.0)
    calls = counter.calls
    await trio.sleep(5.0)
    assert counter.calls == calls and feed.frame is None   # no reader: no builder, no stale frame
    feed.join()                  # a newcomer gets a fresh frame, not the last one of before
    _, frame = await feed.newer(0)
    assert frame == b"frame %d" % (calls + 1)
    feed.leave()


async def test_feed_a_failing_build_is_logged_and_the_stream_keeps_going(autojump_clock):
    calls = []

    async def build() -> bytes:
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("boom")
        return b"frame %d" % len(calls)

    feed = Feed("test", build, period_s=0.5)
    feed.join()
    _, a = await feed.newer(0)
    _, b = await feed.newer(1)
    feed.leave()
    assert (a, b) == (b"frame 1", b"frame 3")


async def test_alert_log_each_reader_gets_every_alert_at_its_severity_in_order():
    log = AlertLog(kept=8)
    log.add(alert(0))            # before anyone reads: not kept
    a, b = log.join(), log.join()
    for n, severity in ((1, "info"), (2, "critical"), (3, "warning")):
        log.add(alert(n, severity))
    await log.wait_newer(a)
    seen, frames = log.since(a)
    assert seen == 4 and [f.split(b"\n")[1] for f in frames] == [b"id: rule:1", b"id: rule:2", b"id: rule:3"]
    _, warnings = log.since(b, floor=1)
    assert [f.split(b"\n")[1] for f in warnings] == [b"id: rule:2", b"id: rule:3"]
    assert log.since(seen) == (seen, []) and log.dropped == 0


def test_alert_log_a_reader_far_behind_loses_the_oldest_counted_and_memory_stays_bounded():
    log = AlertLog(kept=8)
    seen = log.join()
    for n in range(100):
        log.add(alert(n))
    new, frames = log.since(seen)
    assert (new, len(frames), len(log.items), log.dropped) == (100, 8, 8, 92)
    assert frames[0].split(b"\n")[1] == b"id: rule:92"
    log.leave()
    assert not log.items


@pytest.mark.parametrize("version", [b"1.1", b"1.0"])  # 1.1: written by the feed (a wire); 1.0: through ASGI
async def test_dashboard_streams_get_the_same_frames(database_url, version, streams=3):
    from functools import partial

    import hypercorn.trio

    from actors import open_monitoring
    from actors.http.app import create_app, hypercorn_config
    from messages.config import Config
    from messages.http_config import HttpConfig

    async def frames(host: str, port: int, n: int, out: list[list[bytes]]) -> None:
        stream = await trio.open_tcp_stream(host, port)
        got: list[bytes] = []
        async with stream:
            await stream.send_all(b"GET /api/dashboard/stream HTTP/%s\r\nhost: t\r\n\r\n" % version)
            buffer = b""
            while len(got) < n:
                buffer += await stream.receive_some(65536)
                while b"event: snapshot\ndata: " in buffer and b"\n\n" in buffer.split(b"event: snapshot", 1)[1]:
                    head, rest = buffer.split(b"event: snapshot\ndata: ", 1)
                    data, buffer = rest.split(b"\n\n", 1)
                    got.append(data)
        out.append(got)

    async with open_monitoring(Config(database_url=database_url)) as mon, trio.open_nursery() as nursery:
        http = HttpConfig(host="127.0.0.1", port=0)
        stop = trio.Event()
        app = create_app(mon, http)
        binds = await nursery.start(partial(hypercorn.trio.serve, app, hypercorn_config(http),
                                            shutdown_trigger=stop.wait))
        host, port = binds[0].removeprefix("http://").rsplit(":", 1)
        seen: list[list[bytes]] = []
        with trio.fail_after(10):
            async with trio.open_nursery() as readers:
                for _ in range(streams):
                    readers.start_soon(frames, host, int(port), 4, seen)
        stop.set()
        nursery.cancel_scope.cancel()
    # every stream's frames are the one builder's: the last frames each got are the same bytes
    assert len(seen) == streams and all(len(f) == 4 for f in seen)
    common = set(seen[0]).intersection(*seen[1:])
    assert common, "the streams got frames of their own, not the shared ones"
