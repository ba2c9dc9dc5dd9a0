"""A stream's socket, written without the server's per-chunk send path.

Theory of operation. Every ASGI `send` of a body chunk costs hypercorn a trip through its
HTTP/1.1 stream, h11, a lock, a shielded cancel scope and trio's `send_all`: three task
switches (the stream's wake-up, the lock, the socket) and ~100 µs of CPU on the reference
machine, which 1,000 open dashboards pay 1,000 times a second. A `Wire` writes the same bytes
-- one chunk of the chunked body, framed exactly as h11 frames it -- straight to the
connection's socket, synchronously, from the task that has the frame (the feed's builder):

    offer(n, chunk) ──► nothing else being written (hypercorn's send lock free), socket takes it all ──► done
          │                         (no task switch, no wake-up of the stream's task)
          └─ lock held, socket full, or only part taken ──► `stalled` is set; the stream's own
             task (`catch_up`) takes the lock as hypercorn does, writes what is left, then the
             newest frame, shielded (a chunk is never cut in two)

A frame the socket cannot take is skipped, never queued: a slow reader gets the newest frame
once it reads again, as with `Feed.newer`. A write that fails (the client has gone) closes the
wire; the stream ends when hypercorn reports the disconnect, as before.

`wire_of(scope, send)` finds the socket behind hypercorn's own `send` (the server's, as the
edge got it) for a cleartext HTTP/1.1 GET whose response is chunked and has started. It reads
hypercorn's internals as of 0.18 (`HTTPStream.send`, `H11Protocol.connection`,
`TCPServer.send_lock` and `.stream`) and checks the type of each on the way: anything else
(TLS, HTTP/2, HEAD, HTTP/1.0, another server, an in-process test transport) has no wire, and
its stream sends through ASGI as before. A hypercorn that changes them gives no wire, never a
wrong write (`tests/http/test_wire.py` fails then, so the fast path is not lost unnoticed).
"""

from __future__ import annotations

import os
from typing import Any

import h11
import trio
from hypercorn.protocol.h11 import H11Protocol
from hypercorn.protocol.http_stream import ASGIHTTPState, HTTPStream
from hypercorn.trio.tcp_server import TCPServer


def chunk_of(data: bytes) -> bytes:
    """`data` as one chunk of a chunked body, byte for byte as h11 writes it."""
    return b"%x\r\n%s\r\n" % (len(data), data)


class Wire:
    """One chunked response's socket. Only the owner task and `offer` touch it; both run in the
    server's trio loop, so a synchronous write cannot interleave with one of hypercorn's."""

    __slots__ = ("_lock", "_stream", "sent", "pending", "stalled", "closed")

    def __init__(self, lock: trio.Lock, stream: trio.SocketStream) -> None:
        self._lock, self._stream = lock, stream
        self.sent = 0                # number of the newest frame written (or being written)
        self.pending = b""           # the rest of a chunk the socket did not take at once
        self.stalled = trio.Event()  # set: the owner task has writing to do (`catch_up`)
        self.closed = False

    def offer(self, number: int, chunk: bytes) -> None:
        """Frame `number` (a chunk): written now if it can be without waiting, else left to
        the owner task, which writes the newest frame when it can."""
        if self.closed or number <= self.sent:
            return
        if self.pending or self._lock.locked():
            self.stalled.set()       # something is being written: the owner catches up after it
            return
        self._write(number, chunk)

    def _write(self, number: int, chunk: bytes) -> None:
        fd = self._stream.socket.fileno()
        if fd == -1:                 # hypercorn has closed the connection
            self.closed = True
            return
        try:
            written = os.write(fd, chunk)
        except BlockingIOError:
            written = 0
        except OSError:              # reset, broken pipe: the disconnect reaches the stream too
            self.closed = True
            return
        if written == len(chunk):
            self.sent = number
            return
        if written:                  # the rest must go before anything else on this connection
            self.sent, self.pending = number, chunk[written:]
        self.stalled.set()           # (nothing written: the owner writes the newest frame instead)

    async def catch_up(self, number: int, chunk: bytes | None) -> None:
        """The owner task: finish a chunk the socket left, then write frame `number` if it is
        newer than the last written; under hypercorn's send lock, shielded as its own writes are."""
        self.stalled = trio.Event()
        async with self._lock:
            with trio.CancelScope(shield=True):
                try:
                    if self.pending:
                        data, self.pending = self.pending, b""
                        await self._stream.send_all(data)
                    if chunk is not None and number > self.sent and not self.closed:
                        self.sent = number
                        await self._stream.send_all(chunk)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    self.closed = True

    async def finish(self) -> None:
        """The stream ends: write the rest of a chunk cut short, so that what hypercorn sends
        next (the last chunk) lands on a chunk boundary."""
        if self.pending and not self.closed:
            await self.catch_up(0, None)


def wire_of(scope: dict, send: Any) -> Wire | None:
    """The socket behind hypercorn's `send` of a started, chunked HTTP/1.1 response; None when
    there is none to write to directly (see the module doc)."""
    if scope.get("method") != "GET" or scope.get("http_version") != "1.1" or scope.get("scheme") != "http":
        return None
    stream = getattr(send, "__self__", None)
    if not isinstance(stream, HTTPStream) or stream.state is not ASGIHTTPState.RESPONSE:
        return None
    protocol = getattr(getattr(stream, "send", None), "__self__", None)
    connection = getattr(protocol, "connection", None)
    if not isinstance(protocol, H11Protocol) or not isinstance(connection, h11.Connection):
        return None
    if connection.our_state is not h11.SEND_BODY or connection.their_http_version != b"1.1":
        return None
    server = getattr(getattr(protocol, "send", None), "__self__", None)
    lock, socket_stream = getattr(server, "send_lock", None), getattr(server, "stream", None)
    if not isinstance(server, TCPServer) or not isinstance(lock, trio.Lock) \
            or not isinstance(socket_stream, trio.SocketStream):
        return None
    return Wire(lock, socket_stream)
