"""Test-only `--app` factory: once serving, the limiter crashes until the system gives up.

`test_cli_serve_exits_non_zero_when_the_actor_system_dies` runs it with a restart intensity of
one, so the second crash ends the actor system, and `triage serve` must exit non-zero.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio

from actors.http.app import create_app
from messages.commands import Crash


class _Crasher:
    sessions = None

    def __init__(self, mon: Any) -> None:
        self.mon = mon

    def table(self) -> list:
        return []

    @asynccontextmanager
    async def lifespan(self, app: Any) -> AsyncIterator[None]:
        for _ in range(5):  # test-only: the limiter's mailbox, to crash it on purpose
            self.mon._limiter.put(Crash())
            await trio.sleep(0.05)
        yield


def create(mon: Any, http: Any) -> Any:
    return create_app(mon, http, service=_Crasher(mon))
