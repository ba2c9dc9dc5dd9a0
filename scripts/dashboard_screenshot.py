#!/usr/bin/env python3
"""Screenshot of the live dashboard under load, for the README (docs/dashboard.png).

    .venv/bin/python scripts/dashboard_screenshot.py [--out docs/dashboard.png] [--seconds 25]

Runs the reference service in-process, drives open-loop load at it, opens /dashboard in
headless Chromium (Debian's /usr/bin/chromium), and part-way through takes the database
down for a few seconds so the page shows a breaker opening and recovering.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import msgspec
import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from actors.faults import Down  # noqa: E402
from actors.tools.load import Phase, Scenario, run  # noqa: E402
from examples.vet_tracker.harness import open_service  # noqa: E402
from messages.config import BreakerConfig, Config, FaultsConfig, serving_database_url  # noqa: E402

ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def shoot(url: str, out: str, wait_s: float) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS)
        page = browser.new_page(viewport={"width": 1500, "height": 1250})
        page.goto(url)
        page.wait_for_timeout(wait_s * 1000)
        page.screenshot(path=out, full_page=True)
        browser.close()


async def main(args: argparse.Namespace) -> None:
    url = serving_database_url()  # DATABASE_URL, else an embedded server
    cfg = Config(database_url=url, faults=FaultsConfig(enabled=True),
                 database=msgspec.structs.replace(Config().database, embedded=url is None),
                 health_check_interval_s=1.0,
                 tiers={**Config().tiers, "database": BreakerConfig(failure_threshold=5, recovery_timeout_s=4.0)})
    async with open_service(cfg) as svc:
        async def outage():
            await trio.sleep(args.seconds * 0.45)
            await svc.mon.inject(Down())
            await trio.sleep(4)
            await svc.mon.clear_faults()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(outage)
            nursery.start_soon(run, Scenario(name="shot", phases=(Phase(args.seconds + 5, 60.0),)), svc.send)
            await trio.to_thread.run_sync(shoot, svc.url + "/dashboard", args.out, args.seconds)
            nursery.cancel_scope.cancel()
    print(f"wrote {args.out}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default="docs/dashboard.png")
    ap.add_argument("--seconds", type=float, default=25.0)
    trio.run(main, ap.parse_args())
