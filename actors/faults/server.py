"""Server-side faults, through PostgreSQL itself: terminate this instance's backends, exhaust
the server's connection slots, hold a table lock (slow queries). Each touches only this
instance, and refuses where it could not (behind a connection pooler, backends are shared).
"""

from __future__ import annotations

import os
import socket
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from loguru import logger
from psycopg import sql

from actors.pg.connection import PgConnection
from messages.errors import TriageError

log = logger.bind(actor="faults")


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



@asynccontextmanager
async def locked_table(admin_dsn: str, table: str) -> AsyncIterator[None]:
    """Hold `table` ACCESS EXCLUSIVE in an open transaction until the block ends."""


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

