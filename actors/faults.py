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

import os
import random
import socket
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from typing import Any, Literal

import msgspec
import trio
from loguru import logger

from actors.errors import TriageError

FaultKind = Literal["down", "latency", "timeout", "reset_peer", "bandwidth", "slow_close", "limit_data"]
CHUNK = 65536

log = logger.bind(actor="faults")


class Fault(msgspec.Struct, frozen=True, kw_only=True, tag=True, tag_field="kind"):
    """Base: one fault in the proxy (Toxiproxy's names and parameters)."""


class Down(Fault, tag="down"):
    pass


class Latency(Fault, tag="latency"):
    latency_ms: float = 1000.0
    jitter_ms: float = 0.0


class Timeout(Fault, tag="timeout"):
    timeout_ms: float = 0.0          # 0: never close


class ResetPeer(Fault, tag="reset_peer"):
    pass


class Bandwidth(Fault, tag="bandwidth"):
    rate_kbps: float = 100.0


class SlowClose(Fault, tag="slow_close"):
    delay_ms: float = 1000.0


class LimitData(Fault, tag="limit_data"):
    bytes: int = 0


class TerminateBackends(Fault, tag="terminate_backends"):
    """Server side, one shot: pg_terminate_backend every backend of this instance's pool (its
    own application_name); refused behind a connection pooler (`FaultRefused`)."""


class ExhaustConnections(Fault, tag="exhaust_connections"):
    """Server side, until removed: hold every free connection slot but `leave`."""

    leave: int = 0


class LockTable(Fault, tag="lock_table"):
    """Server side, until removed: a session holds `table` ACCESS EXCLUSIVE (and sleeps), so
    every query touching it waits — slow queries, ended by statement_timeout or removal."""

    table: str


ProxyFault = Down | Latency | Timeout | ResetPeer | Bandwidth | SlowClose | LimitData
AnyFault = ProxyFault | TerminateBackends | ExhaustConnections | LockTable


def kind_of(fault: Fault) -> str:
    return type(fault).__struct_config__.tag


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
        if isinstance(timeout, Timeout):
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


# --- server-side faults, through PostgreSQL itself ----------------------------------------------


class FaultRefused(TriageError):
    """The fault would reach beyond this instance, so it was not injected."""


async def through_pooler(admin_dsn: str) -> bool:
    """Whether something sits between us and the server that may share backends (PgBouncer).

    Two tells, on one fresh connection: PgBouncer hands out its own cancel key, so the pid
    of the start-up handshake differs from `pg_backend_pid()`; and any relay makes the
    server's view of its client differ from our socket (TCP: `inet_client_port()` against
    our local port; Unix socket: the peer's pid -- the postmaster, which accepted the
    connection, then forked the backend -- against the backend's parent).
    """
    from actors.pgconn import PgConnection

    async with await PgConnection.connect(admin_dsn, application_name="triage-faults") as conn:
        pid, port = (await conn.execute("select pg_backend_pid(), inet_client_port()")).rows[0]
        sock = socket.socket(fileno=os.dup(conn._sock))  # our end of the connection, borrowed
    with sock:
        if sock.family == socket.AF_UNIX:
            peer_pid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                           struct.calcsize("3i")))[0]
            return pid != conn.backend_pid or peer_pid not in (pid, _parent_pid(pid, peer_pid))
        return pid != conn.backend_pid or port != sock.getsockname()[1]


def _parent_pid(pid: int, default: int) -> int:
    """The parent of a local process (/proc); `default` where /proc can't say (not Linux)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("PPid:"))
    except (OSError, StopIteration, ValueError):
        return default


async def terminate_backends(admin_dsn: str, application_name: str) -> int:
    """`pg_terminate_backend` every backend of `application_name`; how many were terminated."""
    from actors.pgconn import PgConnection

    async with await PgConnection.connect(admin_dsn, application_name="triage-faults") as conn:
        result = await conn.execute(
            "select count(*) filter (where pg_terminate_backend(pid)) from pg_stat_activity "
            "where application_name = %s and pid <> pg_backend_pid()", [application_name])
    n = result.rows[0][0]
    log.warning("Fault injected: terminated {n} backends", n=n, application_name=application_name)
    return n


@asynccontextmanager
async def exhausted_connections(admin_dsn: str, leave: int = 0) -> AsyncIterator[int]:
    """Take connection slots until the server refuses, then give back `leave` of them.

    Superuser-reserved slots are taken too (when `admin_dsn` is a superuser's), so what a
    new client then meets is PostgreSQL's own "too many clients" (53300) refusal.
    Yields how many connections are held.
    """
    from actors.pgconn import PgConnection

    async with await PgConnection.connect(admin_dsn, application_name="triage-faults") as conn:
        limit = int((await conn.execute("show max_connections")).rows[0][0])
    held: list[PgConnection] = []
    try:
        for _ in range(limit + 1):
            try:
                held.append(await PgConnection.connect(admin_dsn, application_name="triage-faults-hold"))
            except Exception:
                break
        for _ in range(min(leave, len(held))):
            held.pop().close_now()
        log.warning("Fault injected: holding {n} connections", n=len(held))
        yield len(held)
    finally:
        for c in held:
            c.close_now()
        log.warning("Fault removed: released {n} connections", n=len(held))


class FaultInjector:
    """`mon.inject(fault)` / `mon.clear_faults()`: proxy faults and server faults in one place."""

    def __init__(self, proxy: FaultProxy, admin_dsn: str, application_name: str,
                 nursery: trio.Nursery, *, behind_pooler: bool | None = None) -> None:
        self.proxy, self.admin_dsn, self.application_name = proxy, admin_dsn, application_name
        self.behind_pooler = behind_pooler
        self._nursery = nursery
        self._server: dict[str, trio.CancelScope] = {}   # server-side faults held until removed
        self.held_connections = 0

    @property
    def active(self) -> list[str]:
        return sorted(self.proxy.faults) + sorted(self._server)

    async def inject(self, fault: Fault) -> None:
        if isinstance(fault, TerminateBackends):
            await self._check_own_backends()
            await terminate_backends(self.admin_dsn, self.application_name)
        elif isinstance(fault, ExhaustConnections):
            self.remove("exhaust_connections")
            self._server["exhaust_connections"] = await self._nursery.start(self._hold, fault.leave)
        elif isinstance(fault, LockTable):
            self.remove("lock_table")
            self._server["lock_table"] = await self._nursery.start(self._lock, fault.table)
        else:
            self.proxy.add(fault)

    async def _check_own_backends(self) -> None:
        """Behind a pooler our application_name may label backends other clients share."""
        if self.behind_pooler:
            raise FaultRefused("terminate_backends refused: database.behind_pooler is set, and "
                               "behind a connection pooler backends are shared with other clients")
        if self.behind_pooler is None and await through_pooler(self.admin_dsn):
            raise FaultRefused(
                "terminate_backends refused: DATABASE_URL reaches the server through a connection "
                "pooler or relay, whose backends may be shared with other clients; terminating "
                "them could hit other services (set database.behind_pooler = false if it is a "
                "plain TCP forwarder)")

    def remove(self, kind: str) -> None:
        scope = self._server.pop(kind, None)
        if scope is not None:
            scope.cancel()
        elif kind not in ("exhaust_connections", "lock_table"):
            self.proxy.remove(kind)

    def clear(self) -> None:
        self.proxy.clear()
        for kind in list(self._server):
            self.remove(kind)

    async def _hold(self, leave: int, *, task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
        with trio.CancelScope() as scope:
            async with exhausted_connections(self.admin_dsn, leave) as held:
                self.held_connections = held
                task_status.started(scope)
                await trio.sleep_forever()
        self.held_connections = 0

    async def _lock(self, table: str, *, task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
        with trio.CancelScope() as scope:
            async with locked_table(self.admin_dsn, table):
                task_status.started(scope)
                await trio.sleep_forever()


@asynccontextmanager
async def locked_table(admin_dsn: str, table: str) -> AsyncIterator[None]:
    """Hold `table` ACCESS EXCLUSIVE in an open transaction until the block ends."""
    from psycopg import sql

    from actors.pgconn import PgConnection

    conn = await PgConnection.connect(admin_dsn, application_name="triage-faults-lock")
    try:
        await conn.execute("BEGIN")
        parts = table.split(".")
        ident = sql.Identifier(*parts).as_string(None) if len(parts) <= 2 else None
        if ident is None:
            raise ValueError(f"not a table name: {table!r}")
        await conn.execute(f"LOCK TABLE {ident} IN ACCESS EXCLUSIVE MODE")
        log.warning("Fault injected: table {table} locked", table=table)
        yield
    finally:
        conn.close_now()  # the server rolls back and releases the lock
        log.warning("Fault removed: table {table} unlocked", table=table)
