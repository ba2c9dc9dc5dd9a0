"""Server-sent events over raw ASGI: the pieces both streams (alerts, dashboard) use."""

from __future__ import annotations

from typing import Any

import trio

HEADERS = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-store"),
           (b"x-accel-buffering", b"no")]


async def until_disconnect(receive: Any, scope: trio.CancelScope) -> None:
    """Cancel `scope` once the client has gone."""
    while (await receive())["type"] != "http.disconnect":
        pass
    scope.cancel()


async def chunk(send: Any, data: bytes) -> None:
    await send({"type": "http.response.body", "body": data, "more_body": True})
