#!/usr/bin/env python3
"""A live terminal view of a running Triage server (the spec's monitor-during-load).

    .venv/bin/python scripts/monitor_during_load.py                      # http://127.0.0.1:3000
    .venv/bin/python scripts/monitor_during_load.py --url http://127.0.0.1:3000 --token $HEALTH_TOKEN
    .venv/bin/python scripts/monitor_during_load.py --once               # one frame, then exit

Refreshes once a second from `/api/health?detailed=true` and `/metrics`: status and HTTP
code, breakers per tier, queue depth per priority, P50/P95/P99, request and error rates,
database usage, active alerts. Loopback targets only.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import httpx
import trio
from rich.console import Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from actors.tools.load import check_loopback  # noqa: E402

COLOURS = {"healthy": "green", "degraded": "yellow", "unhealthy": "red",
           "CLOSED": "green", "HALF_OPEN": "yellow", "OPEN": "red"}


def prom_values(text: str) -> dict[str, float]:
    """`name{labels} value` lines of the Prometheus exposition, keyed by `name{labels}`."""
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            try:
                out[key] = float(value)
            except ValueError:
                continue
    return out


def ms(seconds: float | None) -> str:
    return "–" if seconds is None else f"{seconds * 1000:.1f} ms"


def render(health: dict, code: int, prom: dict[str, float]) -> Group:
    status = health.get("status", "?")
    head = Text(f" {status.upper()}  (HTTP {code})  uptime {health.get('uptime', 0) / 1000:.0f} s ",
                style=f"bold white on {COLOURS.get(status, 'grey50')}")
    reasons = Text("\n".join(f"• {d['reason']}" for d in health.get("degradation", [])) or "all checks pass")

    breakers = Table(title="Circuit breakers", expand=True)
    for col in ("tier", "state", "failures", "time in state"):
        breakers.add_column(col)
    for tier, b in health.get("components", {}).get("circuitBreakers", {}).items():
        breakers.add_row(tier, Text(b["state"], style=COLOURS.get(b["state"], "")), str(b["failures"]),
                         f"{b['timeInState']:.0f} s")

    q = health.get("metrics", {}).get("queue") or {}
    queue = Table(title="Queue", expand=True)
    queue.add_column("priority")
    queue.add_column("waiting", justify="right")
    for prio, depth in (q.get("depthByPriority") or {}).items():
        queue.add_row(prio, str(depth))
    queue.add_row("in flight", f"{q.get('inFlight', '–')} / {q.get('maxConcurrent', '–')}")

    m = health.get("metrics", {})
    lat = (m.get("latency") or {}).get("1m") or {}
    err = (m.get("errors") or {}).get("1m") or {}
    db = m.get("database") or {}
    perf = Table(title="Performance (last minute)", expand=True)
    for col in ("P50", "P95", "P99", "req/s", "errors", "DB usage", "DB response"):
        perf.add_column(col, justify="right")
    perf.add_row(ms(lat.get("p50")), ms(lat.get("p95")), ms(lat.get("p99")),
                 f"{err.get('ratePerSecond', 0):.1f}", f"{err.get('errorRate', 0) * 100:.2f} %",
                 f"{db.get('usagePercentage') or 0:.0f} %",
                 "–" if db.get("responseTimeMs") is None else f"{db['responseTimeMs']:.1f} ms")

    alerts = Table(title="Active alerts", expand=True)
    for col in ("severity", "alert", "since"):
        alerts.add_column(col)
    for a in health.get("alerts", []):
        alerts.add_row(Text(a["severity"], style="red" if a["severity"] == "critical" else "yellow"),
                       a["message"], a["startedAt"])
    scrape = Text(f"/metrics: {len(prom)} samples; limiter refusals "
                  f"{sum(v for k, v in prom.items() if k.startswith('triage_ratelimit_decisions_total') and 'rejected' in k):.0f}",
                  style="dim")
    return Group(Panel(Group(head, reasons), title="Triage"), perf, breakers, queue, alerts, scrape)


async def frame(client: httpx.AsyncClient) -> Group:
    r = await client.get("/api/health", params={"detailed": "true"})
    health = r.json()
    try:
        prom = prom_values((await client.get("/metrics")).text)
    except httpx.HTTPError:
        prom = {}
    return render(health, r.status_code, prom)


async def main(args: argparse.Namespace) -> None:
    check_loopback(args.url)
    headers = {"authorization": f"Bearer {args.token}"} if args.token else {}
    async with httpx.AsyncClient(base_url=args.url, headers=headers, timeout=5.0) as client:
        if args.once:
            from rich.console import Console

            try:
                Console().print(await frame(client))
            except httpx.HTTPError as exc:
                sys.exit(f"cannot reach {args.url}: {type(exc).__name__} (is `triage serve` running?)")
            return
        with Live(refresh_per_second=2, screen=False) as live:
            while True:
                try:
                    live.update(await frame(client))
                except httpx.HTTPError as exc:
                    live.update(Text(f"cannot reach {args.url}: {type(exc).__name__}", style="red"))
                await trio.sleep(1.0)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", default="http://127.0.0.1:3000")
    ap.add_argument("--token", default=None, help="HEALTH_TOKEN, for a production server")
    ap.add_argument("--once", action="store_true")
    try:
        trio.run(main, ap.parse_args())
    except KeyboardInterrupt:
        pass
