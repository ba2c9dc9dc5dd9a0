"""The fleet over HTTP: GET /api/fleet (the detailed health report's access rule), the
triage_fleet_* families on /metrics (promtool-clean), the dashboard's fleet panel asset."""

from __future__ import annotations

import subprocess

import pytest
import trio
from msgspec.structs import replace
from playwright.sync_api import sync_playwright
from prometheus_client.parser import text_string_to_metric_families

from actors import open_monitoring
from messages.http_config import HttpConfig
from tests._http import problem, serving
from tests.fleet.redis_helpers import redis_prefix
from tests.fleet.test_fleet_gate import fleet_config
from tests.http.test_dashboard import ARGS, CHROMIUM
from tests.http.test_prometheus import promtool

TOKEN = "t" * 40


async def test_fleet_api_shows_the_fleet_with_details_access_only():
    async with redis_prefix() as (_, prefix):
        cfg = replace(fleet_config(prefix, "web-1"), environment="production",
                      database_url="postgresql://nobody@127.0.0.1:1/none")
        async with serving(cfg, HttpConfig(port=0, health_token=TOKEN)) as s:
            denied = await s.client.get("/api/fleet")
            assert denied.status_code == 403 and "fleet" in problem(denied)["detail"]
            r = await s.client.get("/api/fleet", headers={"authorization": f"Bearer {TOKEN}"})
            assert r.status_code == 200 and r.headers["cache-control"] == "no-store"
            body = r.json()
            assert body["enabled"] and body["instance_id"] == "web-1" and body["live"] == 1
            assert [i["instance_id"] for i in body["instances"]] == ["web-1"]
            assert "redis_url" not in r.text and "6379" not in r.text  # never the URL


async def test_fleet_metrics_mode_per_policy_and_redis_rtt_pass_promtool():
    tool = promtool()
    async with redis_prefix() as (_, prefix), serving(fleet_config(prefix, "web-1")) as s:
        await s.mon.check_rate("general", "ip:192.0.2.9")
        text = (await s.client.get("/metrics")).text
        js = (await s.client.get("/dashboard/static/fleet.js")).status_code
    families = {f.name: f for f in text_string_to_metric_families(text)}
    modes = {(x.labels["policy"], x.labels["mode"]): x.value for x in families["triage_fleet_mode"].samples}
    assert modes[("general", "global")] == 1 and modes[("general", "local")] == 0
    assert modes[("auth", "share")] == 0 and len(modes) == 3 * 5
    rtt = families["triage_fleet_redis_rtt_seconds"]
    assert rtt.type == "histogram" and any(x.name.endswith("_count") and x.value >= 1 for x in rtt.samples)
    assert families["triage_fleet_redis_up"].samples[0].value == 1
    assert js == 200
    done = subprocess.run([tool, "check", "metrics"], input=text.encode(), capture_output=True, timeout=30)
    assert done.returncode == 0 and not done.stdout.strip() and not done.stderr.strip(), \
        (done.stdout.decode() + done.stderr.decode())


@pytest.mark.chromium
async def test_fleet_dashboard_panel_lists_the_instances_live():
    async with redis_prefix() as (_, prefix), serving(fleet_config(prefix, "web-1")) as s:
        other_done = trio.Event()
        gone = trio.Event()

        async def other() -> None:
            async with open_monitoring(fleet_config(prefix, "web-2")):
                await other_done.wait()
            gone.set()

        def browse() -> dict:
            errors: list[str] = []
            with sync_playwright() as pw:
                browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
                page = browser.new_page()
                page.on("pageerror", lambda e: errors.append(str(e)))
                page.goto(s.url + "/dashboard")
                both = "document.querySelectorAll('#fleet-instances tr').length === 2"
                page.wait_for_function(both, timeout=10_000)
                rows = page.inner_text("#fleet-instances")
                summary = page.inner_text("#fleet-summary")
                trio.from_thread.run_sync(other_done.set)
                trio.from_thread.run(gone.wait)
                page.wait_for_function("document.querySelectorAll('#fleet-instances tr').length === 1",
                                       timeout=10_000)
                browser.close()
            return {"errors": errors, "rows": rows, "summary": summary}

        async with trio.open_nursery() as nursery:
            nursery.start_soon(other)
            seen = await trio.to_thread.run_sync(browse)
    assert seen["errors"] == []
    assert "web-1 (this one)" in seen["rows"] and "web-2" in seen["rows"]
    assert "2 live instance(s)" in seen["summary"] and "auth: global" in seen["summary"]
