"""The dashboard in a real headless Chromium against the running server.

The server (monitoring + HTTP edge) runs in this trio test; the browser is driven
by Playwright's sync API from a worker thread (it brings its own event loop), using
Debian's /usr/bin/chromium — no browser download.
"""

from __future__ import annotations

import shutil
from functools import partial
from importlib import resources

import hypercorn.trio
import pytest
import trio
import trio.testing
from playwright.sync_api import sync_playwright

from actors import CircuitOpen, open_monitoring
from actors.faults import Down
from actors.http.app import create_app, hypercorn_config
from messages.config import BreakerConfig, Config, FaultsConfig
from messages.http_config import HttpConfig

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.mark.chromium
async def test_dashboard_shows_breaker_open_and_recovery_live(database_url):
    cfg = Config(database_url=database_url, health_check_interval_s=0.5, faults=FaultsConfig(enabled=True),
                 tiers={**Config().tiers, "database": BreakerConfig(failure_threshold=5, recovery_timeout_s=1.0)})
    async with open_monitoring(cfg) as mon, trio.open_nursery() as nursery:
        http = HttpConfig(host="127.0.0.1", port=0)
        app = create_app(mon, http)
        stop = trio.Event()
        binds = await nursery.start(partial(hypercorn.trio.serve, app, hypercorn_config(http),
                                            shutdown_trigger=stop.wait))
        url = binds[0] + "/dashboard"

        async def break_database() -> None:
            await mon.inject(Down())
            with trio.fail_after(5):
                while True:
                    try:
                        await mon.db.fetchval("select 1")
                    except CircuitOpen:
                        return
                    except Exception:
                        pass

        async def recover() -> None:
            await mon.clear_faults()
            with trio.fail_after(5):
                await mon.breakers["database"].wait_state("half_open")
                assert await mon.db.fetchval("select 1") == 1

        def browse() -> dict:
            errors: list[str] = []
            with sync_playwright() as pw:
                browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
                page = browser.new_page(viewport={"width": 1400, "height": 1000})
                page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
                page.on("pageerror", lambda e: errors.append(str(e)))
                page.goto(url)
                page.wait_for_function("document.getElementById('status').textContent === 'HEALTHY'",
                                       timeout=10_000)
                healthy_tile = page.inner_text("#breaker-database .state")
                page.wait_for_function("document.getElementById('k-mem').textContent.endsWith('iB')",
                                       timeout=5_000)
                memory = page.inner_text("#k-mem-limit")
                legend = page.eval_on_selector_all("#c-usage .u-legend .u-value",
                                                   "els => els.map(e => e.textContent)")
                trio.from_thread.run(break_database)
                page.wait_for_function(
                    "document.querySelector('#breaker-database .state').textContent === 'OPEN'"
                    " && document.getElementById('status').textContent === 'UNHEALTHY'", timeout=2_000)
                banner = page.get_attribute("#banner", "class")
                trio.from_thread.run(recover)
                page.wait_for_function(
                    "document.querySelector('#breaker-database .state').textContent === 'CLOSED'"
                    " && document.getElementById('status').textContent === 'HEALTHY'", timeout=5_000)
                history = page.inner_text("#transitions")
                browser.close()
            return {"errors": errors, "healthy_tile": healthy_tile, "banner": banner, "history": history,
                    "memory": memory, "legend": legend}

        seen = await trio.to_thread.run_sync(browse)
        stop.set()
        nursery.cancel_scope.cancel()
    assert seen["errors"] == []
    assert seen["healthy_tile"] == "CLOSED" and "unhealthy" in seen["banner"]
    assert "database: CLOSED → OPEN" in seen["history"] and "HALF_OPEN → CLOSED" in seen["history"]
    assert " % of " in seen["memory"]
    assert "--" not in seen["legend"][1:], seen["legend"]  # the latest values, not "--"


async def test_dashboard_requires_token_in_production(database_url):
    import httpx

    token = "t" * 40
    cfg = Config(environment="production")
    async with open_monitoring(cfg) as mon, trio.open_nursery() as nursery:
        http = HttpConfig(host="127.0.0.1", port=0, health_token=token)
        app = create_app(mon, http)
        stop = trio.Event()
        binds = await nursery.start(partial(hypercorn.trio.serve, app, hypercorn_config(http),
                                            shutdown_trigger=stop.wait))
        async with httpx.AsyncClient(base_url=binds[0]) as client:
            assert (await client.get("/dashboard")).status_code == 401
            assert (await client.get("/dashboard", headers={"authorization": f"Bearer {token}"})).status_code == 200
            r = await client.get(f"/dashboard?token={token}")
            assert r.status_code == 303 and r.headers["location"] == "/dashboard"
            cookie = r.headers["set-cookie"]
            assert token not in cookie and client.cookies["triage_token"].startswith("view.")
            assert {"HttpOnly", "SameSite=strict", "Path=/"} <= {p.strip() for p in cookie.split(";")}
            assert "secure" not in cookie.lower()  # plain HTTP from a client that is no proxy
            assert (await client.get("/dashboard")).status_code == 200  # the cookie now
            client.cookies.clear()
            wrong = await client.get("/dashboard?token=" + "x" * 40)
            assert "set-cookie" not in wrong.headers
            client.cookies.set("triage_token", token)  # the raw token is no longer a cookie
            assert (await client.get("/dashboard")).status_code == 401
            assert (await client.get("/dashboard/static/uPlot.iife.min.js")).status_code == 200
            assert (await client.get("/dashboard/static/../../etc/passwd")).status_code == 404
        stop.set()
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize(("proxies", "secure"), [(("127.0.0.1/32",), True), ((), False)])
async def test_dashboard_cookie_secure_behind_a_trusted_https_proxy_only(proxies, secure):
    import httpx

    token = "t" * 40
    async with open_monitoring(Config(environment="production")) as mon, trio.open_nursery() as nursery:
        http = HttpConfig(host="127.0.0.1", port=0, health_token=token, trusted_proxies=proxies)
        stop = trio.Event()
        binds = await nursery.start(partial(hypercorn.trio.serve, create_app(mon, http), hypercorn_config(http),
                                            shutdown_trigger=stop.wait))
        async with httpx.AsyncClient(base_url=binds[0]) as client:
            r = await client.get(f"/dashboard?token={token}", headers={"x-forwarded-proto": "https"})
        stop.set()
        nursery.cancel_scope.cancel()
    attributes = {p.strip() for p in r.headers["set-cookie"].split(";")}
    assert ("Secure" in attributes) is secure and "HttpOnly" in attributes


@pytest.mark.parametrize("name", ["dashboard.js", "dashboard.css", "uPlot.iife.min.js", "uPlot.LICENSE"])
def test_dashboard_assets_ship_inside_the_package(name):
    assert len((resources.files("actors.http") / "static" / name).read_bytes()) > 100


@pytest.mark.chromium
async def test_dashboard_reconnects_after_server_restart(database_url):
    cfg = Config(database_url=database_url, health_check_interval_s=0.5)
    async with open_monitoring(cfg) as mon, trio.open_nursery() as nursery:
        state: dict = {}

        async def serve_once(port: int, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
            http = HttpConfig(host="127.0.0.1", port=port, grace_s=0.2)
            app = create_app(mon, http)
            state["stop"] = stop = trio.Event()
            await hypercorn.trio.serve(app, hypercorn_config(http), shutdown_trigger=stop.wait,
                                       task_status=task_status)

        binds = await nursery.start(serve_once, 0)
        port = int(binds[0].rsplit(":", 1)[1])

        async def restart() -> None:
            state["stop"].set()  # the server goes away (its streams end)...
            with trio.fail_after(10):  # ...and comes back on the same port
                while True:  # the old listener may take a moment to let go of the port
                    try:
                        await nursery.start(serve_once, port)
                        return
                    except OSError:
                        await trio.sleep(0.1)

        def browse() -> dict:
            errors: list[str] = []
            with sync_playwright() as pw:
                browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
                page = browser.new_page()
                page.on("pageerror", lambda e: errors.append(str(e)))
                page.goto(binds[0] + "/dashboard")
                page.wait_for_function("document.getElementById('stream').textContent === 'live'", timeout=10_000)
                trio.from_thread.run(restart)
                page.wait_for_function("document.getElementById('stream').textContent === 'reconnecting'",
                                       timeout=10_000)
                page.wait_for_function("document.getElementById('stream').textContent === 'live'", timeout=15_000)
                before = page.inner_text("#updated")
                page.wait_for_function(f"document.getElementById('updated').textContent !== {before!r}",
                                       timeout=5_000)
                browser.close()
            return {"errors": errors}

        seen = await trio.to_thread.run_sync(browse)
        state["stop"].set()
        nursery.cancel_scope.cancel()
    assert seen["errors"] == []


async def _stream_snapshots(base: str, want, timeout_s: float = 5.0) -> dict:
    """Read the dashboard's stream (raw HTTP/1.1) until a snapshot satisfies `want`; that snapshot."""
    import msgspec

    host, port = base.removeprefix("http://").rsplit(":", 1)
    with trio.fail_after(timeout_s):
        stream = await trio.open_tcp_stream(host, int(port))
        async with stream:
            await stream.send_all(b"GET /api/dashboard/stream HTTP/1.1\r\nhost: t\r\n\r\n")
            buffer = b""
            while True:
                data = await stream.receive_some(65536)
                assert data, "the stream ended"
                buffer += data
                while b"\n\n" in buffer:
                    event, buffer = buffer.split(b"\n\n", 1)
                    if b"event: snapshot\ndata: " in event:
                        snap = msgspec.json.decode(event.split(b"data: ", 1)[1].split(b"\r\n", 1)[0])
                        if want(snap):
                            return snap


async def test_dashboard_queue_depth_per_priority_as_the_page_gets_it_while_slots_are_held():
    from actors import Priority
    from messages.config import QueueConfig

    cfg = Config(queue=QueueConfig(max_concurrent=2, max_queue_size=20, request_timeout_s=30.0))
    waiting = {Priority.CRITICAL: 1, Priority.HIGH: 3, Priority.LOW: 2, Priority.BATCH: 4}
    async with open_monitoring(cfg) as mon, trio.open_nursery() as nursery:
        http = HttpConfig(host="127.0.0.1", port=0)
        stop = trio.Event()
        binds = await nursery.start(partial(hypercorn.trio.serve, create_app(mon, http), hypercorn_config(http),
                                            shutdown_trigger=stop.wait))
        url = binds[0]
        release = trio.Event()

        async def hold(priority: int) -> None:
            async with mon.guard(priority=priority):
                await release.wait()

        for _ in range(2):  # every slot held...
            nursery.start_soon(hold, Priority.NORMAL)
        await trio.testing.wait_all_tasks_blocked()
        for priority, n in waiting.items():  # ...so these wait, each in its priority's line
            for _ in range(n):
                nursery.start_soon(hold, priority)
        await trio.testing.wait_all_tasks_blocked()
        full = await _stream_snapshots(url, lambda s: s["queue"]["depth"] == 10)
        release.set()  # everyone goes through; the page then sees an empty queue
        empty = await _stream_snapshots(url, lambda s: s["queue"]["depth"] == 0 and s["queue"]["inFlight"] == 0)
        stop.set()
        nursery.cancel_scope.cancel()
    assert full["queue"]["depthByPriority"] == {"CRITICAL": 1, "HIGH": 3, "NORMAL": 0, "LOW": 2, "BATCH": 4}
    assert full["queue"]["inFlight"] == 2
    assert empty["queue"]["depthByPriority"] == dict.fromkeys(("CRITICAL", "HIGH", "NORMAL", "LOW", "BATCH"), 0)
