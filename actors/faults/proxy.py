"""A trio TCP proxy in front of PostgreSQL, with faults named after Toxiproxy's.

Theory of operation. The proxy listens on a loopback port and pumps bytes both
ways between each client and the upstream server. Faults are data
(`Fault(kind=..., ...)`), added and removed at runtime, and apply to new and
existing connections:

    down        refuse service: new connections are closed at once, existing ones cut
    latency     delay every chunk by `latency_ms` (+ up to `jitter_ms`)
    timeout     black hole: data is dropped until removed; with `timeout_ms` > 0, close after it
    reset_peer  cut every connection (new ones at once)
    bandwidth   at most `rate_kbps` KB/s per direction
    slow_close  delay closing by `delay_ms`
    limit_data  close a connection once it has carried `bytes` bytes

Counters (`connections`, `bytes_up`, `bytes_down`, `refused`) let tests prove
what reached the server.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import msgspec
import trio
from loguru import logger

from actors.faults.kinds import (
    Bandwidth,
    BlackHole,
    Fault,
    Latency,
    LimitData,
    SlowClose,
)

CHUNK = 65536

log = logger.bind(actor="faults")


class FaultProxy:
    """`async with FaultProxy(upstream_host, upstream_port) as proxy:` then `proxy.port`."""

    def __init__(self, upstream_host: str, upstream_port: int, *, listen_host: str = "127.0.0.1",
                 unix_path: str | None = None) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.unix_path = unix_path
        self.listen_host = listen_host
        self.port = 0
        self.faults: dict[str, Fault] = {}
        self.connections = self.refused = self.bytes_up = self.bytes_down = 0
        self._changed = trio.Event()
        self._conn_scopes: set[trio.CancelScope] = set()

    # --- faults ---------------------------------------------------------------------------

    def add(self, fault: Fault) -> None:
        kind = type(fault).__struct_config__.tag
        self.faults[kind] = fault
        log.warning("Fault injected: {kind}", kind=kind, fault=msgspec.to_builtins(fault))
        if kind in ("down", "reset_peer"):
            for scope in list(self._conn_scopes):
                scope.cancel()
        self._signal()

    def remove(self, kind: str) -> None:
        if self.faults.pop(kind, None) is not None:
            log.warning("Fault removed: {kind}", kind=kind)
        self._signal()

    def clear(self) -> None:
        for kind in list(self.faults):
            self.remove(kind)

    def _signal(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def has(self, kind: str) -> bool:
        return kind in self.faults

    # --- serving --------------------------------------------------------------------------

    async def __aenter__(self) -> FaultProxy:
        self._cm = self._serving()
        return await self._cm.__aenter__()

    async def __aexit__(self, *exc: Any) -> bool | None:
        return await self._cm.__aexit__(*exc)

    @asynccontextmanager
    async def _serving(self) -> AsyncIterator[FaultProxy]:
        async with trio.open_nursery() as nursery:
            await nursery.start(self.run)
            try:
                yield self
            finally:
                nursery.cancel_scope.cancel()

    async def run(self, *, task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
        """Serve until cancelled (for a host's own nursery); `self.port` is set once started."""
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(partial(trio.serve_tcp, self._handle, 0, host=self.listen_host))
            self.port = listeners[0].socket.getsockname()[1]
            task_status.started(self)

    @classmethod
    def for_dsn(cls, dsn: str) -> FaultProxy:
        """A proxy in front of the server a libpq DSN names (TCP host, or a Unix socket dir)."""
        from psycopg.conninfo import conninfo_to_dict

        params = conninfo_to_dict(dsn)
        host = params.get("hostaddr") or params.get("host") or "/var/run/postgresql"
        port = int(params.get("port") or 5432)
        if host.startswith("/"):
            return cls("unix", 0, unix_path=f"{host}/.s.PGSQL.{port}")
        return cls(host, port)

    def fronts(self, dsn: str) -> bool:
        """Whether `dsn` names this proxy's upstream server."""
        other = FaultProxy.for_dsn(dsn)
        return (other.upstream, other.unix_path) == (self.upstream, self.unix_path)

    async def _connect_upstream(self) -> trio.abc.Stream:
        if self.unix_path is not None:
            return await trio.open_unix_socket(self.unix_path)
        return await trio.open_tcp_stream(*self.upstream)

    async def _handle(self, client: trio.SocketStream) -> None:
        async with client:
            if self.has("down") or self.has("reset_peer"):
                self.refused += 1
                return
            self.connections += 1
            try:
                server = await self._connect_upstream()
            except OSError:
                self.refused += 1
                return
            async with server:
                with trio.CancelScope() as scope:
                    self._conn_scopes.add(scope)
                    try:
                        async with trio.open_nursery() as nursery:
                            carried = [0]
                            nursery.start_soon(self._pump, client, server, "up", carried, nursery)
                            nursery.start_soon(self._pump, server, client, "down", carried, nursery)
                    finally:
                        self._conn_scopes.discard(scope)
                slow = self.faults.get("slow_close")
                if isinstance(slow, SlowClose):
                    with trio.move_on_after(slow.delay_ms / 1000):
                        await trio.sleep_forever()

    async def _pump(self, src: trio.abc.Stream, dst: trio.abc.Stream, direction: str,
                    carried: list[int], nursery: trio.Nursery) -> None:
        try:
            while True:
                data = await src.receive_some(CHUNK)
                if not data:
                    break
                if not await self._apply_faults(data, carried):
                    continue  # black-holed: dropped
                await dst.send_all(data)
                carried[0] += len(data)
                if direction == "up":
                    self.bytes_up += len(data)
                else:
                    self.bytes_down += len(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        nursery.cancel_scope.cancel()

    async def _apply_faults(self, data: bytes, carried: list[int]) -> bool:
        """Delay as the faults say; False if the chunk is to be dropped (Toxiproxy's timeout)."""
        timeout = self.faults.get("timeout")
        if isinstance(timeout, BlackHole):
            if timeout.timeout_ms > 0:
                await trio.sleep(timeout.timeout_ms / 1000)
                raise trio.BrokenResourceError("timeout fault closed the connection")
            return False
        limit = self.faults.get("limit_data")
        if isinstance(limit, LimitData) and carried[0] + len(data) > limit.bytes:
            raise trio.BrokenResourceError("limit_data fault closed the connection")
        latency = self.faults.get("latency")
        if isinstance(latency, Latency):
            await trio.sleep((latency.latency_ms + random.uniform(0, latency.jitter_ms)) / 1000)
        bandwidth = self.faults.get("bandwidth")
        if isinstance(bandwidth, Bandwidth):
            await trio.sleep(len(data) / (bandwidth.rate_kbps * 1024))
        return True


def proxied_dsn(dsn: str, proxy: FaultProxy) -> str:
    """The same DSN, pointed at the proxy."""
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    params = conninfo_to_dict(dsn)
    params.update(host=proxy.listen_host, port=str(proxy.port))
    params.pop("sslmode", None)
    params.pop("hostaddr", None)
    return make_conninfo(**params)

