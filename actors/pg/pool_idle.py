"""An idle pool shrinks: beyond `min_idle`, connections unused for `max_idle_s` are closed.

Theory of operation. A burst opens up to `max_concurrent` connections; when it is over
they sit idle, and on a small hosted PostgreSQL (the spec's ~10 connections) 8 pooled +
the monitor's read as 90 % usage: degraded, though nothing is happening. So the reaper
keeps the `min_idle` most recently used idle connections and closes every other one once
it has been unused for `max_idle_s` (defaults 1 and 60 s).

Idle connections live in two places: the offer list (pre-granted slots, see
`actors.pg.pool.Offers`) and the core's own idle list (rarely non-empty). The decision is pure
(`idle_to_close(idle, min_idle, max_idle_s, now)`); the shell (`reap`) takes the chosen
offers off the list and closes them at once — nobody else can reach them then — and asks
the core to drop the chosen idle ones (`CloseIdle`), which it closes only if they are
still idle. It wakes exactly when the next connection is due, or `max_idle_s` from now
(any connection that becomes idle later is due no earlier than that).

Offers are taken LIFO (`Offers.take`), so light traffic keeps reusing the warmest
connection and the others age out instead of being used in turn.
"""

from __future__ import annotations

import math
from typing import Any

import trio

from actors.pg.pool import CloseIdle, Offers
from actors.runtime.mailbox import tell_quietly


def idle_to_close(idle: list[tuple[Any, float]], min_idle: int, max_idle_s: float,
                  now: float) -> tuple[list[Any], float]:
    """`idle`: (connection, last used at). (Those to close now, when to look again.)"""
    ranked = sorted(idle, key=lambda c: c[1], reverse=True)[min_idle:]
    close = [conn for conn, used in ranked if now - used >= max_idle_s]
    due = min((used + max_idle_s for _, used in ranked if now - used < max_idle_s), default=math.inf)
    return close, min(due, now + max_idle_s)


def reap(offers: Offers, min_idle: int, max_idle_s: float, now: float) -> float:
    """Close what is due; returns the next instant to look again."""
    entries = offers.entries
    offered = {id(g.conn): (token, g) for token, g in entries if g.conn is not None}
    candidates = [(g.conn, g.conn.last_used_at) for _, g in offered.values()]
    candidates += [(conn, conn.last_used_at) for conn in offers.state.pool.idle]
    close, wake = idle_to_close(candidates, min_idle, max_idle_s, now)
    tokens, conns = [], []
    for conn in close:
        entry = offered.get(id(conn))
        if entry is None:
            conns.append(conn)
            continue
        entries.remove(entry)
        conn.close_now()
        tokens.append(entry[0])
    if tokens or conns:
        tell_quietly(offers.inbox, CloseIdle(tokens=tuple(tokens), conns=tuple(conns)))
    return wake


async def run_reaper(offers: Offers, min_idle: int, max_idle_s: float, *,
                     task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
    task_status.started()
    while not offers.inbox.closed:
        await trio.sleep_until(reap(offers, min_idle, max_idle_s, trio.current_time()))
