"""Helpers shared by the HTTP tests."""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from functools import partial
from typing import Any

import httpx
import hypercorn.trio
import psycopg
import trio

from actors import open_monitoring
from actors.http.app import TriageApp, create_app, hypercorn_config
from examples.vet_tracker.service import DemoService
from messages.config import Config
from messages.http_config import HttpConfig


@contextmanager
def throwaway_schema(database_url: str, prefix: str, nbytes: int = 3) -> Iterator[str]:
    """A schema name of this test process's own for the reference service; dropped afterwards."""
    name = f"{prefix}_{os.getpid()}_{secrets.token_hex(nbytes)}"
    try:
        yield name
    finally:
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')


def problem(r: httpx.Response) -> dict:
    """The RFC 9457 problem body of an error response, checked for its required fields."""
    assert r.headers["content-type"] == "application/problem+json"
    body = json.loads(r.content)
    assert body["status"] == r.status_code and body["detail"]
    return body


class Served:
    def __init__(self, client: httpx.AsyncClient, app: TriageApp, mon: Any, url: str, stop: trio.Event) -> None:
        self.client, self.app, self.mon, self.url, self.stop = client, app, mon, url, stop

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.url.removeprefix("http://").rsplit(":", 1)
        return host, int(port)


@asynccontextmanager
async def serving(config: Config, http: HttpConfig | None = None, *, service: bool = False,
                  routes: tuple = ()) -> AsyncIterator[Served]:
    http = http or HttpConfig(port=0)
    async with open_monitoring(config) as mon, trio.open_nursery() as nursery:
        app = create_app(mon, http, service=DemoService(mon, http) if service else None, routes=routes)
        stop = trio.Event()
        binds = await nursery.start(partial(hypercorn.trio.serve, app, hypercorn_config(http),
                                            shutdown_trigger=app.shutdown_trigger(stop.wait)))
        try:
            async with httpx.AsyncClient(base_url=binds[0], timeout=5) as client:
                yield Served(client, app, mon, binds[0], stop)
        finally:
            stop.set()


async def wait_status(mon: Any, status: str) -> None:
    with trio.fail_after(5):
        await mon.health_report.wait_value(lambda r: r.status == status)
