"""Asking and telling actors: one-shot replies, mailboxes, published values.

Theory of operation. A caller that *asks* puts a message carrying a fresh
`Reply` into the actor's inbox (a bounded trio memory channel) and parks on
the reply with `trio.lowlevel.wait_task_rescheduled`; the actor answers by
rescheduling the parked task with the value. That costs one task switch each
way and no channel per request.

If the caller is cancelled while parked, the reply becomes *abandoned* and a
later `deliver` returns False, so the actor knows its answer was not taken
(the admission queue uses this to hand an undelivered slot straight back).
Once `deliver` succeeds, the caller can no longer be cancelled out of the
wait: exactly one of "got the value" and "was cancelled" happens.

A *tell* is fire-and-forget, but never lossy: if the inbox is full the
sender waits (shielded, so a Release cannot be lost to a cancellation).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import outcome
import trio
from trio.lowlevel import Abort, current_task, reschedule, wait_task_rescheduled

from actors.errors import ShuttingDown

_WAITING, _DELIVERED, _ABANDONED = 0, 1, 2


class Reply:
    """A one-shot reply slot for one parked caller."""

    __slots__ = ("_task", "_state")

    def __init__(self) -> None:
        self._task = current_task()
        self._state = _WAITING

    @property
    def abandoned(self) -> bool:
        return self._state == _ABANDONED

    def deliver(self, value: Any) -> bool:
        """Wake the caller with `value` (raised if it is an exception). False if nobody waits."""
        if self._state != _WAITING:
            return False
        self._state = _DELIVERED
        result = outcome.Error(value) if isinstance(value, BaseException) else outcome.Value(value)
        reschedule(self._task, result)
        return True

    async def wait(self) -> Any:
        def abort(_raise_cancel: Any) -> Abort:
            self._state = _ABANDONED
            return Abort.SUCCEEDED

        return await wait_task_rescheduled(abort)


def send_now(inbox: trio.MemorySendChannel, msg: Any) -> bool:
    """Put `msg` in `inbox` without waiting; False if it is full. ShuttingDown if it is gone."""
    try:
        inbox.send_nowait(msg)
        return True
    except trio.WouldBlock:
        return False
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        raise ShuttingDown() from None


async def tell(inbox: trio.MemorySendChannel, msg: Any) -> None:
    """Deliver `msg` for sure: waits (shielded from cancellation) only when the inbox is full."""
    if send_now(inbox, msg):
        return
    with trio.CancelScope(shield=True):
        try:
            await inbox.send(msg)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise ShuttingDown() from None


def tell_quietly(inbox: trio.MemorySendChannel, msg: Any) -> bool:
    """Best effort from synchronous code (a `finally` with nothing to await): False if not sent."""
    try:
        return send_now(inbox, msg)
    except ShuttingDown:
        return False


async def ask(inbox: trio.MemorySendChannel, make: Callable[[Reply], Any]) -> Any:
    """Send `make(reply)` and wait for the answer (raised if it is an exception)."""
    reply = Reply()
    msg = make(reply)
    if not send_now(inbox, msg):
        try:
            await inbox.send(msg)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise ShuttingDown() from None
    return await reply.wait()


class Published:
    """A value one actor replaces and anyone reads (trio-util's AsyncValue, minus the lock)."""

    __slots__ = ("value", "_event")

    def __init__(self, value: Any) -> None:
        self.value = value
        self._event = trio.Event()

    def set(self, value: Any) -> None:
        self.value = value
        event, self._event = self._event, trio.Event()
        event.set()

    async def wait_value(self, predicate: Callable[[Any], bool]) -> Any:
        """Return the first value (current or future) for which `predicate` holds."""
        while not predicate(self.value):
            await self._event.wait()
        return self.value


INF = math.inf
