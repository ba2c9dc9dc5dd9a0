"""A stream's frames written straight to its socket (`actors.http.wire`), under a real hypercorn.

The client side parses every response with h11 (the strict chunked decoder), so a chunk cut in
two or written between two of hypercorn's shows as a protocol error, not as a lost frame.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import h11
import hypercorn.config
import hypercorn.trio
import trio

from actors.http.sse import until_disconnect
from actors.http.wire import Wire, chunk_of, wire_of


class Served:
    """A raw ASGI app whose GET / streams what the test offers through the wire (if it gets one)."""

    def __init__(self, catches_up: bool = True) -> None:
        self.catches_up = catches_up  # False: the stream's task leaves a stalled wire alone until it ends
        self.wires: list[Wire | None] = []
        self.arrived, self.end = trio.Event(), trio.Event()
        self.number, self.chunk = 0, None

    def frame(self, body: bytes) -> bytes:
        self.number += 1
        self.chunk = chunk_of(b"id: %d\ndata: %s\n\n" % (self.number, body))
        return self.chunk

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/event-stream")]})
        await send({"type": "http.response.body", "body": b"retry: 1000\n\n", "more_body": True})
        wire = wire_of(scope, send)
        self.wires.append(wire)
        self.arrived.set()
        if wire is None:
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return
        async with trio.open_nursery() as nursery:
            nursery.start_soon(until_disconnect, receive, nursery.cancel_scope)
            nursery.start_soon(self._ends, nursery.cancel_scope)
            try:
                while not wire.closed and self.catches_up:
                    await wire.stalled.wait()
                    await wire.catch_up(self.number, self.chunk)
                await trio.sleep_forever()
            finally:
                with trio.move_on_after(5, shield=True):
                    await wire.finish()
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _ends(self, scope: trio.CancelScope) -> None:
        await self.end.wait()
        scope.cancel()


async def serve(nursery: trio.Nursery, app: Served) -> int:
    config = hypercorn.config.Config()
    config.bind, config.accesslog = ["127.0.0.1:0"], None
    binds = await nursery.start(partial(hypercorn.trio.serve, app, config))
    return int(binds[0].rsplit(":", 1)[1])


@asynccontextmanager
async def wired(app: Served, within_s: float) -> AsyncIterator[tuple[Client, Wire]]:
    """`app` served, one client's GET / under way and its stream's wire found: (client, wire),
    all within `within_s`; then the client closed and the server stopped."""
    async with trio.open_nursery() as nursery:
        port = await serve(nursery, app)
        client = await Client.open(port)
        with trio.fail_after(within_s):
            await app.arrived.wait()
            (wire,) = app.wires
            yield client, wire
        await client.stream.aclose()
        nursery.cancel_scope.cancel()


class Client:
    """One HTTP/1.1 request, its response read through h11."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream, self.h11 = stream, h11.Connection(h11.CLIENT)
        self.status: int | None = None
        self.body = b""
        self.ended = False

    @classmethod
    async def open(cls, port: int, method: bytes = b"GET") -> Client:
        client = cls(await trio.open_tcp_stream("127.0.0.1", port))
        await client.stream.send_all(client.h11.send(h11.Request(method=method, target="/",
                                                                 headers=[("host", "t")])))
        await client.stream.send_all(client.h11.send(h11.EndOfMessage()))
        return client

    async def read_until(self, done: Any) -> None:
        while not done(self):
            data = await self.stream.receive_some(1 << 20)
            self.h11.receive_data(data)
            while (event := self.h11.next_event()) is not h11.NEED_DATA:
                if isinstance(event, h11.Response):
                    self.status = event.status_code
                elif isinstance(event, h11.Data):
                    self.body += bytes(event.data)
                elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
                    self.ended = True
                    return

    def ids(self) -> list[int]:
        return [int(line[4:]) for line in self.body.split(b"\n") if line.startswith(b"id: ")]


async def test_wire_frames_offered_reach_the_client_as_valid_chunks():
    app = Served()
    async with wired(app, within_s=10) as (client, wire):
        assert isinstance(wire, Wire), "hypercorn's internals changed: the streams lost their fast path"
        for _ in range(5):
            wire.offer(app.number + 1, app.frame(b"x" * 3000))
            assert not wire.stalled.is_set()    # written at once, by the offering task
        await client.read_until(lambda c: c.ids()[-1:] == [5])
        assert client.status == 200 and client.ids() == [1, 2, 3, 4, 5]
        assert client.body.startswith(b"retry: 1000\n\n")


async def test_wire_a_reader_that_stops_reading_skips_to_the_newest_frame_and_chunks_stay_whole():
    app = Served()
    async with wired(app, within_s=20) as (client, wire):
        big = b"y" * (256 * 1024)
        while not wire.stalled.is_set():      # the client reads nothing: the socket fills
            wire.offer(app.number + 1, app.frame(big))
        stalled_at = app.number
        for _ in range(3):                     # not taken: left to the stream's own task
            wire.offer(app.number + 1, app.frame(big))
        newest = app.number
        await client.read_until(lambda c: c.ids()[-1:] == [newest])
        ids = client.ids()
        assert ids == sorted(set(ids)) and ids[-1] == newest
        assert stalled_at + 1 not in ids and stalled_at + 2 not in ids  # skipped, never queued
        for event in client.body.split(b"id: ")[1:]:  # every frame whole
            assert event.partition(b"\ndata: ")[2] == big + b"\n\n"


async def test_wire_a_stream_ended_with_a_chunk_cut_short_still_ends_on_a_chunk_boundary():
    app = Served(catches_up=False)  # cancelled before its task could catch up (a drain, say)
    async with wired(app, within_s=20) as (client, wire):
        wire.offer(1, app.frame(b"w" * (4 << 20)))   # more than the socket takes at once
        assert wire.pending
        app.end.set()                                # the stream ends: `finish` writes the rest
        await client.read_until(lambda c: c.ended)  # h11 raises on a broken chunk
        assert client.ids() == [1] and client.body.endswith(b"w" * 1000 + b"\n\n")


async def test_wire_a_client_gone_closes_the_wire_without_an_error():
    app = Served()
    async with wired(app, within_s=10) as (client, wire):
        await client.stream.aclose()
        while not wire.closed:
            wire.offer(app.number + 1, app.frame(b"z" * 3000))
            await trio.sleep(0.01)


async def test_wire_of_none_for_head_http10_and_any_other_send():
    app = Served()
    async with trio.open_nursery() as nursery:
        port = await serve(nursery, app)
        client = await Client.open(port, b"HEAD")
        with trio.fail_after(10):
            await client.read_until(lambda c: c.ended)
        await client.stream.aclose()
        async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
            await stream.send_all(b"GET / HTTP/1.0\r\nhost: t\r\n\r\n")
            with trio.fail_after(10):
                answer = b""
                while data := await stream.receive_some(65536):  # HTTP/1.0: ends with the connection
                    answer += data
        assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"retry: 1000\n\n")
        assert app.wires == [None, None]
        nursery.cancel_scope.cancel()

    async def other_send(message: dict) -> None: ...

    scope = {"type": "http", "method": "GET", "http_version": "1.1", "scheme": "http"}
    assert wire_of(scope, other_send) is None and wire_of(scope, None) is None
