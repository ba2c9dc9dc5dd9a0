"""The event bus: fan-out of events to bounded subscriptions (a slow one loses, counted)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import trio
from loguru import logger

from messages.events import BreakerTransition

if TYPE_CHECKING:
    pass


class Subscription:
    """One subscriber's bounded channel: `async for event in sub`; `sub.dropped` counts losses."""

    def __init__(self, buffer: int, accept: Callable[[Any], bool]) -> None:
        self._send, self._recv = trio.open_memory_channel(buffer)
        self.accept, self.dropped, self.delivered = accept, 0, 0

    def offer(self, event: Any) -> None:
        if not self.accept(event):
            return
        try:
            self._send.send_nowait(event)
            self.delivered += 1
        except trio.WouldBlock:
            self.dropped += 1
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Any:
        try:
            return await self._recv.receive()
        except trio.EndOfChannel:
            raise StopAsyncIteration from None

    async def receive(self) -> Any:
        return await self._recv.receive()

    def receive_nowait(self) -> Any:
        return self._recv.receive_nowait()

    def close(self) -> None:
        self._send.close()


class EventBus:
    """Fan-out of events to bounded subscriptions: a slow subscriber loses events (counted),
    never stalls the actor that emitted them."""

    def __init__(self) -> None:
        self._subs: list[Subscription] = []
        self.taps: list[Callable[[Any], None]] = []   # synchronous observers (metrics counts)

    def emit(self, event: Any) -> None:
        if type(event) is BreakerTransition:
            logger.bind(actor="breaker", tier=event.tier).info(
                "Circuit breaker {tier} {to_state} (was {from_state}): {reason}",
                tier=event.tier, to_state=event.to_state.upper(),
                from_state=event.from_state.upper(), reason=event.reason)
        for tap in self.taps:
            tap(event)
        for sub in list(self._subs):
            sub.offer(event)

    @asynccontextmanager
    async def subscribe(self, buffer: int = 256,
                        accept: Callable[[Any], bool] = lambda _e: True) -> AsyncIterator[Subscription]:
        sub = Subscription(buffer, accept)
        self._subs.append(sub)
        try:
            yield sub
        finally:
            if sub in self._subs:
                self._subs.remove(sub)
            sub.close()

    def close(self) -> None:
        for sub in self._subs:
            sub.close()
        self._subs.clear()
