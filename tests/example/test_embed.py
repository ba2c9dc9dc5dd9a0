"""examples/embed.py, run as the host program it is: real PostgreSQL, real HTTP, a real SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import psycopg
import trio

ROOT = Path(__file__).resolve().parents[2]


class Lines:
    """Lines of a child's stdout, read as they come (no sleeping, no polling)."""

    def __init__(self, stream: trio.abc.ReceiveStream) -> None:
        self.stream, self.buffer, self.seen = stream, b"", []

    async def until(self, prefix: str) -> str:
        while True:
            while b"\n" in self.buffer:
                line, self.buffer = self.buffer.split(b"\n", 1)
                self.seen.append(text := line.decode())
                if text.startswith(prefix):
                    return text
            chunk = await self.stream.receive_some()
            assert chunk, f"stdout ended before {prefix!r}: {self.seen}"
            self.buffer += chunk


@asynccontextmanager
async def embed_process(database_url: str) -> AsyncIterator[tuple[trio.Process, Lines, str]]:
    env = {k: v for k, v in os.environ.items() if k not in ("NODE_ENV", "TRIAGE_CONFIG", "TRIAGE_FAULTS")}
    env.update(DATABASE_URL=database_url, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
    proc = await trio.lowlevel.open_process([sys.executable, str(ROOT / "examples" / "embed.py"),
                                             "--port", "0"], stdout=subprocess.PIPE, env=env)
    try:
        lines = Lines(proc.stdout)
        with trio.fail_after(60):
            url = (await lines.until("listening on ")).removeprefix("listening on ")
        yield proc, lines, url
    finally:
        if proc.returncode is None:
            proc.kill()
        with trio.move_on_after(10, shield=True):
            await proc.wait()


def lock_visits(database_url: str) -> psycopg.Connection:
    """A transaction holding the visits table, so the export's query waits for it."""
    conn = psycopg.connect(database_url)
    conn.execute("lock table embed_visits in access exclusive mode")
    return conn


async def test_embed_example_serves_its_routes_and_drains_in_flight_on_sigterm(database_url):
    async with embed_process(database_url) as (proc, lines, url):
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            first = await client.post("/visits")
            second = await client.post("/visits")
            assert (first.status_code, second.status_code) == (201, 201)
            assert second.json()["visit"] == first.json()["visit"] + 1
            rest = await export_across_sigterm(client, proc, lines, database_url)
        assert f"{second.json()['visit']},127.0.0.1\n" in rest
        # Well inside the example's 10 s graceful_timeout: the drain ended because the
        # in-flight request did, not because hypercorn gave up waiting.
        with trio.fail_after(5):
            assert await proc.wait() == 0
        assert await lines.until("stopped") == "stopped"


async def export_across_sigterm(client: httpx.AsyncClient, proc: trio.Process, lines: Lines,
                                database_url: str) -> str:
    """Start the export, SIGTERM the server while its query waits, then let the query finish."""
    holder = await trio.to_thread.run_sync(lock_visits, database_url)
    try:
        async with client.stream("GET", "/visits.csv") as export:
            body = export.aiter_text()
            assert export.status_code == 200
            assert await anext(body) == "id,client\n"      # the handler is running now
            proc.send_signal(signal.SIGTERM)
            with trio.fail_after(30):
                await lines.until("draining after SIGTERM")
            await trio.to_thread.run_sync(holder.commit)    # let the export's query finish
            return "".join([chunk async for chunk in body])
    finally:
        await trio.to_thread.run_sync(holder.close)


def test_embed_example_is_quoted_in_readme_exactly():
    readme = (ROOT / "README.md").read_text()
    code = (ROOT / "examples" / "embed.py").read_text()
    assert f"```python\n{code}```\n" in readme
