"""The operational listener: health, liveness, readiness and metrics on a port of their own.

    async with trio.open_nursery() as nursery:
        await nursery.start(serve_ops, app, http)      # http.ops_port (TRIAGE_OPS_PORT)

Theory of operation. One trio loop runs every connection of the main listener in turn: with
hundreds of clients re-sending refused requests, a probe's few steps (accept, read, answer)
each wait behind all of them, and health took seconds to answer. `serve_ops` runs a second
trio loop, in a thread of its own, with its own hypercorn on ``ops_port``. It needs the GIL
only for the microseconds each answer takes (CPython hands the GIL over within 5 ms), and
computes health, live and ready there from what the main loop publishes -- the health
actor's latest report and the edge's drain flag, immutable values read without a lock
(`TriageApp.health_answer`, `ready_answer`). ``/metrics`` is rendered by the main loop (its
collector asks actors), reached through `trio.from_thread`.

A thread that answers for a wedged main loop would hide it: a heartbeat task in the main
loop stamps `time.monotonic()` every `BEAT_S`; when the stamp is older than `STALL_S`, live
and ready answer 503 ``{"status":"stalled"}`` (health says so too), so the orchestrator
restarts the process as it would if the loop answered nothing.

Requests on this listener are not in the request metrics (the metrics actor's mailbox belongs
to the main loop); health's own answers are in no error rate anyway. Any other route answers
404 naming the four it serves.
"""

from __future__ import annotations

import time
from functools import partial
from typing import Any

import hypercorn.trio
import trio
from loguru import logger

from actors.http.app import hypercorn_config
from actors.http.problems import problem_body
from messages.errors import ConfigError
from messages.http_config import HttpConfig

__all__ = ["BEAT_S", "STALL_S", "OpsApp", "ops_config", "serve_ops"]

BEAT_S = 0.5
STALL_S = 5.0
ROUTES = ("/api/health", "/api/health/live", "/api/health/ready", "/metrics")
_JSON = (b"content-type", b"application/json")
_PROBLEM = (b"content-type", b"application/problem+json")
_NO_STORE = (b"cache-control", b"no-store")
_STALLED = b'{"status":"stalled"}'

log = logger.bind(actor="web")


class OpsApp:
    """The listener's ASGI app (plain ASGI: four routes need no router)."""

    def __init__(self, app: Any, main_token: trio.lowlevel.TrioToken, stall_s: float = STALL_S) -> None:
        self.app, self.main_token, self.stall_s = app, main_token, stall_s
        self.beat = time.monotonic()

    def stalled(self) -> bool:
        return time.monotonic() - self.beat > self.stall_s

    async def heartbeat(self) -> None:
        """In the main loop: proof that it still runs its tasks."""
        while True:
            self.beat = time.monotonic()
            await trio.sleep(min(BEAT_S, self.stall_s / 4))

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            return await _lifespan(receive, send)
        if scope["type"] != "http":
            return
        status, body, ctype = await self._answer(scope)
        await send({"type": "http.response.start", "status": status,
                    "headers": [ctype, _NO_STORE, (b"content-length", b"%d" % len(body))]})
        await send({"type": "http.response.body", "body": body})

    async def _answer(self, scope: dict) -> tuple[int, bytes, tuple[bytes, bytes]]:
        path = scope["path"]
        if path not in ROUTES:
            return 404, problem_body(404, "The operational listener serves " + ", ".join(ROUTES)), _PROBLEM
        if scope["method"] != "GET":
            return 405, problem_body(405, "Method not allowed for this route"), _PROBLEM
        if path == "/metrics":
            return await self._metrics(scope)
        if self.stalled():
            return 503, _STALLED, _JSON
        if path == "/api/health":
            return (*self.app.health_answer(scope), _JSON)
        if path == "/api/health/ready":
            return (*self.app.ready_answer(), _JSON)
        return 200, b'{"status":"live"}', _JSON

    async def _metrics(self, scope: dict) -> tuple[int, bytes, tuple[bytes, bytes]]:
        if self.stalled():
            return 503, problem_body(503, "The main event loop is stalled"), _PROBLEM
        ask = partial(trio.from_thread.run, self.app.metrics_answer, scope, trio_token=self.main_token)
        try:
            status, body, ctype = await trio.to_thread.run_sync(ask, abandon_on_cancel=True)
        except trio.RunFinishedError:
            return 503, problem_body(503, "The service is shutting down"), _PROBLEM
        return status, body, (b"content-type", ctype.encode("latin-1"))


async def _lifespan(receive: Any, send: Any) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            return await send({"type": "lifespan.shutdown.complete"})


def ops_config(http: HttpConfig, port: int) -> Any:
    hc = hypercorn_config(http, errorlog=None)
    host = f"[{http.host}]" if ":" in http.host and not http.host.startswith("[") else http.host
    hc.bind = [f"{host}:{port}"]
    hc.graceful_timeout = 1.0  # its answers take microseconds: nothing to drain
    return hc


async def serve_ops(app: Any, http: HttpConfig, *, stall_s: float = STALL_S,
                    task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
    """Serve `app`'s operational routes on ``http.ops_port`` from a thread with its own trio loop,
    until cancelled. `task_status.started(binds)` once it listens (the bound addresses)."""
    if http.ops_port is None:
        raise ConfigError("TRIAGE_OPS_PORT", None, "serve_ops needs an ops port")
    if not hasattr(app, "health_answer"):
        raise ConfigError("TRIAGE_OPS_PORT", http.ops_port, "the operational listener needs the app "
                          "create_app builds (actors.http.app.TriageApp)")
    ops = OpsApp(app, trio.lowlevel.current_trio_token(), stall_s)
    listening = trio.Event()
    state: dict[str, Any] = {}

    def started(binds: list[str], ops_token: trio.lowlevel.TrioToken, stop: trio.Event) -> None:
        state.update(binds=binds, token=ops_token, stop=stop)  # run in the main loop (run_sync_soon)
        listening.set()

    async def ops_loop() -> None:
        stop = trio.Event()
        async with trio.open_nursery() as nursery:
            binds = await nursery.start(partial(hypercorn.trio.serve, ops, ops_config(http, http.ops_port),
                                                shutdown_trigger=stop.wait))
            ops.main_token.run_sync_soon(started, binds, trio.lowlevel.current_trio_token(), stop)

    def thread_main() -> None:
        try:
            trio.run(ops_loop)
        except BaseException as exc:  # e.g. the port is taken: the main loop learns it below
            state["error"] = exc
            ops.main_token.run_sync_soon(listening.set)

    async def run_thread() -> None:
        await trio.to_thread.run_sync(thread_main, abandon_on_cancel=False)
        if "error" in state:  # the listener died: fail loudly rather than serve without it
            raise state["error"]

    async with trio.open_nursery() as nursery:
        nursery.start_soon(ops.heartbeat)
        nursery.start_soon(run_thread)
        try:
            await listening.wait()
            if "error" in state:
                raise state["error"]
            log.info("Operational listener (health, live, ready, metrics) on {binds}", binds=state["binds"])
            task_status.started(state["binds"])
            await trio.sleep_forever()
        finally:
            with trio.CancelScope(shield=True):
                await listening.wait()  # the thread says once it listens, or that it failed
                if "token" in state:
                    state["token"].run_sync_soon(state["stop"].set)  # its hypercorn stops; it ends
