"""Run the reference service in-process on a loopback port, for load tests and scenarios.

`async with open_service(config, http) as svc:` gives `svc.mon`, `svc.url` and
`svc.send(method, path, json, headers) -> (status, body)` over one shared
keep-alive client. The service's tables are set up before it yields.

Writes need a login session, so the harness adds `LOAD_USERS` users to the
service's table (unusable password hashes: nobody can log in as one) and
`send` signs each write with the session of the user its ``X-Forwarded-For``
identity maps to, so each simulated client keeps its own rate-limit quota.
"""

from __future__ import annotations

import zlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import httpx
import hypercorn.trio
import msgspec
import trio

from actors import open_monitoring
from actors.http.app import create_app, hypercorn_config
from examples.vet_tracker.service import DemoService
from messages.config import Config
from messages.http_config import HttpConfig

LOAD_USERS = 250
WRITES = ("/api/administrations", "/api/inventory/import")


class RunningService:
    def __init__(self, mon: Any, url: str, client: httpx.AsyncClient, tokens: list[str] | None = None) -> None:
        self.mon, self.url, self.client = mon, url, client
        self.tokens = tokens or []

    async def send(self, method: str, path: str, body: object, headers: dict) -> tuple[int, bytes]:
        content = None if body is None else msgspec.json.encode(body)
        hdrs = {**headers, **({"content-type": "application/json"} if content is not None else {})}
        if path in WRITES and self.tokens and "authorization" not in {k.lower() for k in hdrs}:
            who = zlib.crc32(str(headers.get("x-forwarded-for", "")).encode()) % len(self.tokens)
            hdrs["authorization"] = f"Bearer {self.tokens[who]}"
        response = await self.client.request(method, path, content=content, headers=hdrs)
        return response.status_code, response.content


@asynccontextmanager
async def open_service(config: Config, http: HttpConfig | None = None, *,
                       max_connections: int = 200) -> AsyncIterator[RunningService]:
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
                tokens = [service.sessions.issue(uid) for uid in await _load_users(mon.db, service.q.schema)]
            try:
                yield RunningService(mon, binds[0], client, tokens)
            finally:
                stop.set()
                nursery.cancel_scope.cancel()


async def _load_users(db: Any, schema: str) -> list[int]:
    """The ids of the load users, created if missing ("!" is no password hash: no login)."""
    await db.execute(f'INSERT INTO "{schema}".users (username, display_name, password_hash) '
                     "SELECT 'load-' || n, 'Load test user ' || n, '!' FROM generate_series(1, %s) AS n "
                     "ON CONFLICT (username) DO NOTHING", (LOAD_USERS,))
    rows = await db.fetch(f"SELECT id FROM \"{schema}\".users WHERE username ~ '^load-[0-9]+$' ORDER BY id")
    return [r[0] for r in rows]
