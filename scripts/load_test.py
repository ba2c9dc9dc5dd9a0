#!/usr/bin/env python3
"""Load tests against the reference service (the spec's `scripts/load-test.ts`).

    .venv/bin/python scripts/load_test.py all                 # every scenario, one after another
    .venv/bin/python scripts/load_test.py scenario normal     # normal | spike | stress | outage
    .venv/bin/python scripts/load_test.py scenario spike --speed 0.5 --json
    .venv/bin/python scripts/load_test.py scenario normal --url http://127.0.0.1:3000  # a running server
    .venv/bin/python scripts/load_test.py flood --url http://127.0.0.1:3000 --clients 300 --seconds 20

Without --url the service runs in-process on a loopback port, on DATABASE_URL if set, else
on an embedded PostgreSQL (the serving rule). Arrivals are open-loop (requests start on schedule
whether or not earlier ones finished). Prints, per scenario: throughput, P50/P95/P99,
status-code counts, and the outcome ledger — sent = ok + rate_limited + circuit_open +
queue_full + queue_timeout + … + error (every outcome) — against the spec's targets (P95 < 2 s, error rate
< 1 %, 5xx < 0.5 %). Exit status 1 if a target fails or a ledger does not balance
(so it can gate a pipeline), 2 for bad arguments.

`flood` is no scenario but the worst crowd: --clients keep-alive connections (default 300)
to a running server (--url), each sending its next `GET --path` (default /api/animals) as
soon as the last is answered, a refusal (429, 503) included -- at once, or after its
Retry-After with --honour-retry-after -- for --seconds. Prints requests/s and the outcome
ledger; exit status 1 only if the ledger does not balance (refusals are the point).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import msgspec
import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from actors.tools.load import (  # noqa: E402
    SCENARIOS,
    check_loopback,
    exit_status,
    flood,
    run,
    summary,
    verdicts,
)


def print_summary(s: dict) -> None:
    o = s["outcomes"]
    print(f"\n=== {s['scenario']}: {s['sent']} requests, {s['throughput_per_s']} req/s")
    print(f"  latency  P50 {s['p50_ms']} ms   P95 {s['p95_ms']} ms   P99 {s['p99_ms']} ms")
    print(f"  statuses {s['statuses']}")
    terms = " + ".join(f"{k} {n}" for k, n in o.items())
    print(f"  ledger   sent {s['sent']} = {terms}   ({'balanced' if s['balanced'] else 'DOES NOT BALANCE'})")
    print("  targets  " + "   ".join(f"{k}: {'PASS' if ok else 'FAIL'}" for k, ok in verdicts(s).items())
          + f"   (error rate {s['error_rate'] * 100:.2f} %, 5xx {s['five_xx_rate'] * 100:.2f} %)")


async def outage(mon, seconds: float) -> None:
    """The outage scenario: the database goes away for the middle third, then comes back."""
    from actors.faults import Down

    await trio.sleep(seconds / 3)
    print(f"  [{seconds / 3:5.1f}s] fault: database down")
    await mon.inject(Down())
    await trio.sleep(seconds / 3)
    print(f"  [{2 * seconds / 3:5.1f}s] fault removed")
    await mon.clear_faults()


async def run_one(name: str, speed: float, send, mon=None) -> dict:
    scenario = SCENARIOS[name]
    print(f"--- {name}: {scenario.description}")
    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        if name == "outage" and mon is not None:
            nursery.start_soon(outage, mon, sum(p.duration_s for p in scenario.phases) * speed)
        ledger = await run(scenario, send, speed=speed)
    return summary(ledger, trio.current_time() - start)


async def run_flood(args: argparse.Namespace) -> int:
    if not args.url:
        print("flood needs --url (a running server)", file=sys.stderr)
        return 2
    t0 = trio.current_time()
    ledger = await flood(args.url, args.path, clients=args.clients, seconds=args.seconds,
                         honour_retry_after=args.honour_retry_after)
    elapsed = trio.current_time() - t0
    if args.json:
        print(msgspec.json.encode({**msgspec.structs.asdict(ledger), "per_s": round(ledger.sent / elapsed, 1),
                                   "balanced": ledger.balanced}).decode())
    else:
        print(f"=== flood {args.path}: {ledger.clients} clients, {ledger.sent} requests, "
              f"{ledger.sent / elapsed:.0f} req/s")
        print(f"  statuses {dict(sorted(ledger.statuses.items()))}")
        terms = " + ".join(f"{k} {n}" for k, n in ledger.outcomes.items())
        print(f"  ledger   sent {ledger.sent} = {terms}   ({'balanced' if ledger.balanced else 'DOES NOT BALANCE'})")
    return 0 if ledger.balanced else 1


async def main(args: argparse.Namespace) -> int:
    if args.command == "flood":
        return await run_flood(args)
    names = list(SCENARIOS) if args.command == "all" else [args.name]
    results = []
    if args.url:
        check_loopback(args.url)
        import httpx

        async with httpx.AsyncClient(base_url=args.url, timeout=30.0) as client:
            # writes need a session: one demo login signs them all (they share its quota)
            login = await client.post("/api/auth/login", json={"username": "alice", "password": "alice-demo-password"})
            auth = {"authorization": f"Bearer {login.json()['token']}"} if login.status_code == 200 else {}

            async def send(method, path, body, headers):
                signed = {**headers, **auth} if path in ("/api/administrations", "/api/inventory/import") else headers
                r = await client.request(method, path, json=body, headers=signed)
                return r.status_code, r.content
            for name in names:
                results.append(await run_one(name, args.speed, send))
    else:
        from examples.vet_tracker.harness import open_service
        from messages.config import Config, DatabaseConfig, FaultsConfig, serving_database_url

        url = serving_database_url()
        config = Config(database_url=url, faults=FaultsConfig(enabled=True),
                        database=DatabaseConfig(embedded=url is None))
        for name in names:
            async with open_service(config) as svc:
                results.append(await run_one(name, args.speed, svc.send, svc.mon))
    for s in results:
        print(msgspec.json.encode(s).decode() if args.json else "", end="\n" if args.json else "")
        if not args.json:
            print_summary(s)
    return exit_status(results)


if __name__ == "__main__":
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", help="a running server on loopback (default: start one in-process)")
    common.add_argument("--speed", type=float, default=1.0, help="time scale (0.5 = twice as fast)")
    common.add_argument("--json", action="store_true", help="one JSON summary per line")
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    sub.add_parser("all", parents=[common])
    sc = sub.add_parser("scenario", parents=[common])
    sc.add_argument("name", choices=list(SCENARIOS))
    fl = sub.add_parser("flood", parents=[common], help="closed-loop clients re-sending refusals at once")
    fl.add_argument("--clients", type=int, default=300)
    fl.add_argument("--seconds", type=float, default=20.0)
    fl.add_argument("--path", default="/api/animals")
    fl.add_argument("--honour-retry-after", action="store_true",
                    help="wait a refusal's Retry-After before re-sending (default: re-send at once)")
    sys.exit(trio.run(main, ap.parse_args()))
