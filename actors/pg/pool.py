"""The connection pool: one home for connections, offers, lifetimes and closing.

Theory of operation. The admission queue (`actors.scheduler`) decides *who* may run; the
pool owns *what they run on*. A slot holder that wants a connection gets, in the same
grant, an idle one (LIFO: the warmest), leave to open one, or — while connecting backs off
after a failure — the time until it may try again (`lease`). A holder gives its connection
back with the slot, or says it was discarded (`give_back`); a failed connect backs off
exponentially, and a working connection ends the back-off.

Offers. While nobody waits, every free slot is granted in advance to a `Token` and put on
the `Offers` list kept beside the scheduler actor; an uncontended caller takes one there —
slot and connection — without a round trip, and when it is done (and still nobody waits)
puts it straight back. An arrival that must ask while offers remain first takes one back
(`Reclaim`), so offered slots never lie unused while someone waits.

Accounting. `Pool.opened` is the capacity the core has handed out: idle connections,
connections held with a slot, and leave to open one — including offered slots that have
not opened theirs yet. So it never exceeds the slots. The connections that really exist are
`opened` minus those unopened offers, and that is what snapshots report (`corrected`).

Routes. With `priority_dsn` connections go to several DSNs: each knows the priorities it
`serves`, and a grant hands out the warmest idle connection (or offer) that serves the
call's priority; failing that, another one, which `ConnectionLease` replaces (still one
connection per slot).

`ConnectionLease` is the connection half of a guarded call: it checks the lease's
lifetime, opens or replaces the connection, and gives it back — one path for `mon.db`
and for the breakers' pool probe.
"""

from __future__ import annotations

import contextlib
import math
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
import trio
from msgspec.structs import replace

from actors.pg.errors import ConnectionLimitReached, DatabaseUnavailable, connection_limit_reached
from actors.runtime.mailbox import Mailbox, tell_quietly
from messages.commands import Admit, Admitted, Reclaim, Release
from messages.errors import ShuttingDown
from messages.snapshots import PoolSnapshot, QueueSnapshot

CONNECT_BACKOFF_MIN_S = 0.25
CONNECT_BACKOFF_MAX_S = 10.0


# --- the pure part: the pool as a value, kept in the scheduler's state --------------------


class Pool(msgspec.Struct, frozen=True, kw_only=True):
    """The database connections that go with the slots (at most one per slot holder).

    `opened` counts idle connections, ones held with a slot, and leave to open one (offered
    slots' included, see the module docstring). It never exceeds max_concurrent, because a
    connection is only opened by a slot holder when none is idle.
    """

    idle: tuple = ()                 # LIFO: the warmest connection goes out first
    opened: int = 0
    retry_at: float = -math.inf      # connecting backs off after a failure until then
    backoff_s: float = 0.0
    limited: bool = False            # the back-off is the server's connection limit, not an outage
    connects: int = 0
    connect_failures: int = 0
    discarded: int = 0
    reused: int = 0
    idle_closed: int = 0             # closed after max_idle_s beyond min_idle


def serves(conn: Any, priority: int | None) -> bool:
    """Whether `conn` (None: leave to open one) suits a call of `priority` (`priority_dsn`)."""
    if conn is None or priority is None:
        return True
    routes = getattr(conn, "serves", None)
    return routes is None or priority in routes


def _warmest_for(conns: Any, priority: int | None, conn_of: Callable[[Any], Any]) -> int:
    """Index of the last (warmest) item whose connection suits `priority`, else the last."""
    last = len(conns) - 1
    for i in range(last, -1, -1):
        if serves(conn_of(conns[i]), priority):
            return i
    return last


def lease(pool: Pool, now: float, probe: bool = False, priority: int | None = None) -> tuple[Pool, dict]:
    """What a slot holder that wants a connection gets: an idle one, leave to open one, or a wait.

    A breaker's trial call (`probe`) may connect while connecting backs off: finding out
    whether the database is back is its whole purpose. With `priority_dsn`, the warmest idle
    connection to the call's DSN goes out (another one is replaced by `ConnectionLease`).
    """
    if pool.idle:
        idle = pool.idle
        i = len(idle) - 1
        if not serves(idle[i], priority):
            i = _warmest_for(idle, priority, lambda c: c)
        return replace(pool, idle=idle[:i] + idle[i + 1:], reused=pool.reused + 1), {"conn": idle[i]}
    if now < pool.retry_at and not probe:
        return pool, {"unavailable_s": pool.retry_at - now, "limited": pool.limited}
    return replace(pool, opened=pool.opened + 1, connects=pool.connects + 1), {"connect": True}


def undo_lease(pool: Pool, granted: Admitted) -> Pool:
    """An offered lease taken back unused: as if it had never been granted."""
    if granted.conn is not None:
        return replace(pool, idle=pool.idle + (granted.conn,), reused=pool.reused - 1)
    if granted.connect:
        return replace(pool, opened=pool.opened - 1, connects=pool.connects - 1)
    return pool


def give_back(pool: Pool, msg: Release, now: float) -> Pool:
    if msg.conn is not None:  # a working connection: the database answers, stop backing off
        return replace(pool, idle=pool.idle + (msg.conn,), backoff_s=0.0, retry_at=-math.inf,
                       limited=False)
    if not msg.discarded:
        return pool
    pool = replace(pool, opened=max(pool.opened - 1, 0), discarded=pool.discarded + 1)
    if msg.connect_failed:
        backoff = min(max(pool.backoff_s * 2, CONNECT_BACKOFF_MIN_S), CONNECT_BACKOFF_MAX_S)
        pool = replace(pool, backoff_s=backoff, retry_at=now + backoff, limited=msg.connect_limited,
                       connect_failures=pool.connect_failures + 1)
    return pool


def drop_idle(pool: Pool, conns: tuple, tokens: int) -> tuple[Pool, tuple]:
    """The reaper's choice: (pool without those still idle and `tokens` offered ones, conns to close)."""
    gone = tuple(c for c in pool.idle if any(c is x for x in conns))
    idle = tuple(c for c in pool.idle if not any(c is x for x in gone))
    n = len(gone) + tokens
    return replace(pool, idle=idle, opened=max(pool.opened - n, 0), idle_closed=pool.idle_closed + n), gone


def pool_snapshot(p: Pool) -> PoolSnapshot:
    """The core's view: `opened` includes offered slots' leave to open (see `corrected`)."""
    return PoolSnapshot(idle=len(p.idle), opened=p.opened, connects=p.connects,
                        connect_failures=p.connect_failures, discarded=p.discarded, reused=p.reused,
                        backoff_s=p.backoff_s, idle_closed=p.idle_closed)


class Token:
    """Identity of an offered slot (a holder that no caller has asked for yet)."""

    __slots__ = ()


class Offer:
    """Effect: put a pre-granted slot (and its lease) on the offer list (see `Offers`)."""

    __slots__ = ("token", "lease")

    def __init__(self, token: Token, lease: Admitted) -> None:
        self.token, self.lease = token, lease


class CloseConns:
    """Effect: close connections the core has just let go of."""

    __slots__ = ("conns",)

    def __init__(self, conns: tuple) -> None:
        self.conns = conns

    def perform(self, cell: Any, now: float) -> None:
        for conn in self.conns:
            conn.close_now()


class CloseIdle(msgspec.Struct, frozen=True, kw_only=True):
    """From the idle reaper (`actors.pg.pool_idle`): connections unused for too long go.

    `tokens`: offered slots whose connection the reaper has taken off the offer list and
    closed (their slots come free). `conns`: idle connections in the core's own list; the
    core closes those it still has (an effect), so one just leased out is never closed.
    """

    tokens: tuple = ()
    conns: tuple = ()


# --- the shell side: the offer list, kept beside the scheduler actor ----------------------


class OfferCounts(msgspec.Struct, frozen=True, kw_only=True):
    """Untaken offers: `idle` slots (held by the core, free to callers), `unopened` of them
    holding leave to open a connection that does not exist yet."""

    idle: int = 0
    unopened: int = 0


def corrected(snap: QueueSnapshot, offers: OfferCounts) -> QueueSnapshot:
    """A snapshot the core made, as callers see it: untaken offers are free slots, and
    connections they have not opened do not exist."""
    if not offers.idle and not offers.unopened:
        return snap
    pool = snap.pool
    if pool is not None and offers.unopened:
        pool = replace(pool, opened=max(pool.opened - offers.unopened, 0))
    return replace(snap, in_flight=snap.in_flight - offers.idle, free=snap.free + offers.idle, pool=pool)


class Offers:
    """Pre-granted slots an uncontended caller takes without a round trip (LIFO).

    `state` is the scheduler's state as of its last step (the scheduler's core keeps it
    current), read to decide whether a slot may go straight back on the list. `lent_unopened`:
    offers with leave to open a connection, taken by callers that want none (`mon.run`):
    no connection exists for them either.
    """

    __slots__ = ("entries", "inbox", "state", "lent_unopened", "routed")

    def __init__(self, inbox: Mailbox, state: Any) -> None:
        self.entries: deque = deque()
        self.inbox, self.state = inbox, state
        self.lent_unopened = 0
        self.routed = False  # connections go to several DSNs (`priority_dsn`): match on take

    def __len__(self) -> int:
        return len(self.entries)

    def take(self, conn: bool, priority: int | None = None) -> tuple[Any, Admitted] | None:
        """An offered slot, held at once; None if the caller must ask (a stale back-off lease).

        With `routed`, the warmest offer whose connection suits `priority` (or that has none).
        ShuttingDown once the scheduler has stopped, with the offer left on the list (`close`
        closes its connection).
        """
        if self.inbox.closed:
            raise ShuttingDown(self.inbox.name)
        entries = self.entries
        if conn and self.routed and not serves(entries[-1][1].conn, priority):
            i = _warmest_for(entries, priority, lambda e: e[1].conn)
            token, granted = entries[i]
            del entries[i]
        else:
            token, granted = entries.pop()  # LIFO: the warmest connection, so idle ones age out
        if not (conn and granted.unavailable_s):
            self.inbox.tell_count()
            if granted.connect and not conn:
                self.lent_unopened += 1
            return token, granted
        tell_quietly(self.inbox, Reclaim(token=token, lease=granted))
        return None

    def put_back(self, token: Any, conn: Any, granted: Admitted | None) -> bool:
        """While nobody waits, a clean slot goes straight back on the list (True)."""
        if granted is not None and granted.connect and conn is None:
            self.lent_unopened -= 1  # returned as it came (a caller that wanted no connection)
        if not self.may_keep(conn):
            return False
        if conn is not None:  # the offer it came with when that is this connection's, unwaited
            self.entries.append((token, granted if granted is not None and granted.conn is conn
                                 and not granted.waited_s else Admitted(waited_s=0.0, conn=conn)))
            return True
        if granted is not None and not granted.unavailable_s:  # untouched: offered again as it came
            self.entries.append((token, granted))
            return True
        return False

    def may_keep(self, conn: Any) -> bool:
        """Whether a slot given back (with `conn`, or None) may go straight back on the list:
        nobody waits, the system runs, the slot is within the limit."""
        s = self.state
        # While the pool backs off connecting, a working connection must reach the core: it is
        # the news that the database answers again (else callers keep getting DatabaseUnavailable).
        if self.inbox.closed or s.depth or (conn is not None and s.pool.backoff_s):
            return False
        # Above a reduced limit (set_limit) the slot goes back to the core, which offers it no more.
        return s.limit is None or len(s.holders) <= s.limit

    def reclaim_for(self, msg: Any) -> Reclaim | None:
        """Before an arrival must ask, one unused offer comes back so it can be granted
        (the most recently offered: its connection is the warmest)."""
        if type(msg) is Admit and self.entries:
            token, granted = self.entries.pop()
            return Reclaim(token=token, lease=granted)
        return None

    def counts(self) -> OfferCounts:
        entries = self.entries
        if not entries and not self.lent_unopened:
            return OfferCounts()
        unopened = sum(1 for _, g in entries if g.conn is None and g.connect)
        return OfferCounts(idle=len(entries), unopened=unopened + self.lent_unopened)

    def close(self) -> None:
        """The system has stopped: idle connections close (those in untaken offers too);
        held ones close when their holder is done."""
        conns = list(self.state.pool.idle) + [g.conn for _, g in self.entries]
        self.entries.clear()
        for conn in conns:
            if conn is not None:
                conn.close_now()


# --- the connection half of a guarded call ------------------------------------------------


class ConnectionLease:
    """The connection that goes with one slot: vetted, opened or replaced, and given back."""

    __slots__ = ("_connect", "_max_lifetime_s", "_priority", "conn", "counted", "connect_failed",
                 "connect_limited")

    def __init__(self, connect: Callable[[int | None], Awaitable[Any]], max_lifetime_s: float,
                 priority: int | None = None) -> None:
        self._connect, self._max_lifetime_s, self._priority = connect, max_lifetime_s, priority
        self.conn: Any = None
        self.counted = self.connect_failed = self.connect_limited = False

    async def take(self, granted: Admitted) -> Any:
        """The granted connection, or a fresh one if it broke, outlived `max_lifetime_s`, or
        goes to another DSN than this call's priority's (`priority_dsn`)."""
        conn = self.vet(granted, trio.current_time())
        if conn is None:
            conn = self.conn = await self._open()
        return conn

    def vet(self, granted: Admitted, now: float) -> Any:
        """`take` without a coroutine: the granted connection if it can be used as is, else
        None (then `await take(granted)` or `open()`); the pool's refusals raise here."""
        # The pool counts a connection for this slot when it gave one or leave to open one.
        self.counted = granted.conn is not None or granted.connect
        if granted.unavailable_s:
            if granted.limited:
                raise ConnectionLimitReached(granted.unavailable_s)
            raise DatabaseUnavailable(granted.unavailable_s)
        conn = granted.conn
        if conn is not None and (conn.broken or now - conn.created_at > self._max_lifetime_s
                                 or (conn.serves is not None and not serves(conn, self._priority))):
            conn.close_now()
            conn = None
        self.conn = conn
        return conn

    async def open(self) -> Any:
        """A fresh connection for a slot `vet` found none usable for."""
        self.conn = await self._open()
        return self.conn

    async def _open(self) -> Any:
        try:
            return await self._connect(self._priority)
        except BaseException as exc:
            self.connect_failed = isinstance(exc, Exception)
            if connection_limit_reached(exc):
                self.connect_limited = True
                raise ConnectionLimitReached(CONNECT_BACKOFF_MIN_S) from None
            if isinstance(exc, Exception) and not hasattr(exc, "retriable"):
                with contextlib.suppress(AttributeError):
                    exc.retriable = True  # type: ignore[attr-defined]  # nothing was sent
            raise

    async def reconnect(self) -> Any:
        """The connection was found dead before the statement went out: a fresh one."""
        if self.conn is not None:
            self.conn.close_now()
            self.conn = None
        self.conn = await self._open()
        return self.conn

    def adopt(self, conn: Any) -> None:
        """The lease of a call that took an offered slot and its connection `conn` without one."""
        self.counted, self.conn = True, conn

    def give_back(self, queue: Any, token: Any) -> None:
        """Release the slot with the connection if it is clean, else say it was discarded."""
        conn, self.conn = self.conn, None
        release_with(queue, token, conn, self.counted, self.connect_failed, self.connect_limited)


def release_with(queue: Any, token: Any, conn: Any, counted: bool, connect_failed: bool = False,
                 connect_limited: bool = False, lease: Admitted | None = None) -> None:
    """Release the slot `token` with `conn` if it is clean, else close it and say it was
    discarded (`counted`: the pool counts a connection for this slot). `lease`: the offer
    the slot came with, when `conn` is its connection (offered again as it is)."""
    if conn is not None and conn.reusable:  # the usual end (a kept connection was never a failed connect)
        offers = queue.offers  # while nobody waits, straight back on the offer list, as
        if offers is not None and offers.put_back(token, conn, lease):  # `release` would
            return
        if not queue.release(token, conn, lease=lease):
            conn.close_now()  # the system has shut down: nobody to give it back to
        return
    if conn is not None:
        conn.close_now()
    queue.release(token, discarded=counted, connect_failed=connect_failed,
                  connect_limited=connect_limited)


class Connections:
    """How the pool's connections are made: `lease()` one connection half per guarded call."""

    __slots__ = ("connect", "max_lifetime_s")

    def __init__(self, connect: Callable[[int | None], Awaitable[Any]], max_lifetime_s: float) -> None:
        self.connect, self.max_lifetime_s = connect, max_lifetime_s

    def lease(self, priority: int | None = None) -> ConnectionLease:
        """The connection half of a call of `priority` (it picks the DSN: `priority_dsn`)."""
        return ConnectionLease(self.connect, self.max_lifetime_s, priority)
