"""Run the reference service in-process on a loopback port, for load tests and scenarios.

`async with open_service(config, http) as svc:` gives `svc.mon`, `svc.url` and
`svc.send(method, path, json, headers) -> (status, body)` over one shared
keep-alive client. The service's tables are set up before it yields.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import httpx
import hypercorn.trio
import msgspec
import trio

from actors import open_monitoring
from actors.service import DemoService
from actors.web import create_app, hypercorn_config
from messages.config import Config
from messages.http_config import HttpConfig


class Service:
    def __init__(self, mon: Any, url: str, client: httpx.AsyncClient) -> None:
        self.mon, self.url, self.client = mon, url, client

    async def send(self, method: str, path: str, body: object, headers: dict) -> tuple[int, bytes]:
        content = None if body is None else msgspec.json.encode(body)
        hdrs = {**headers, **({"content-type": "application/json"} if content is not None else {})}
        response = await self.client.request(method, path, content=content, headers=hdrs)
        return response.status_code, response.content


@asynccontextmanager
async def open_service(config: Config, http: HttpConfig | None = None, *,
                       max_connections: int = 200) -> AsyncIterator[Service]:
    http = http or HttpConfig(host="127.0.0.1", port=0, trusted_proxies=("127.0.0.1/32",))
    async with open_monitoring(config) as mon, trio.open_nursery() as nursery:
        service = DemoService(mon, http)
        app = create_app(mon, http, service=service)
        stop = trio.Event()
        binds = await nursery.start(partial(hypercorn.trio.serve, app, hypercorn_config(http),
                                            shutdown_trigger=app.shutdown_trigger(stop.wait)))
        limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
        async with httpx.AsyncClient(base_url=binds[0], limits=limits, timeout=30.0) as client:
            with trio.fail_after(30):
                await service.ready.wait()
            try:
                yield Service(mon, binds[0], client)
            finally:
                stop.set()
                nursery.cancel_scope.cancel()
