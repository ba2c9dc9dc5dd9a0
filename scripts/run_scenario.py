#!/usr/bin/env python3
"""Run a scripted fault scenario against the reference service, under load.

    .venv/bin/python scripts/run_scenario.py scripts/scenarios/database_down.toml
    .venv/bin/python scripts/run_scenario.py scripts/scenarios/*.toml    # several, one after another
    .venv/bin/python scripts/run_scenario.py --quiet scripts/scenarios/*.toml   # no timeline

Starts the service in-process on a loopback port (DATABASE_URL if set, else an embedded
PostgreSQL: the serving rule) with the fault proxy in front of the database (server-side
faults connect to TRIAGE_FAULTS_DATABASE_URL if set: straight to PostgreSQL behind PgBouncer), runs
open-loop load for the scenario's duration, applies its timeline of faults, and checks
its expectations against the running system. Prints a timeline (faults, breaker
transitions, health codes, alerts, latency percentiles per second) and the outcome
ledger. Exit status 1 if an expectation failed or the ledger does not balance.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from actors.tools.load import Phase, Scenario, per_second, run, summary  # noqa: E402
from actors.tools.scenario import Observer, check, config_for, load, run_steps  # noqa: E402
from examples.vet_tracker.harness import open_service  # noqa: E402
from messages.config import serving_database_url  # noqa: E402


async def run_file(path: str, url: str | None, quiet: bool = False) -> bool:
    sc = load(path)
    print(f"=== {sc.name} ({Path(path).name}): {sc.description}")
    results: list = []
    # Server-side faults straight to PostgreSQL when DATABASE_URL goes through PgBouncer.
    faults_url = os.environ.get("TRIAGE_FAULTS_DATABASE_URL") or None
    async with open_service(config_for(sc, url, faults_url)) as svc:
        start = trio.current_time()
        observer = Observer(svc.mon, start)
        load_plan = Scenario(name=sc.name, phases=(Phase(sc.duration_s, sc.rate_per_s),))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(observer.watch_events)
            nursery.start_soon(observer.sample_health)
            nursery.start_soon(run_steps, observer, sc.step)
            async with trio.open_nursery() as checks:
                for e in sc.expect:
                    checks.start_soon(check, observer, e, results)
                ledger = await run(load_plan, svc.send, timeout_s=10.0)
            nursery.cancel_scope.cancel()
        elapsed = trio.current_time() - start
    report(observer, ledger, elapsed, quiet)
    ok = all(passed for _, passed, _ in results) and ledger.balanced
    failed = [e.describe() for e, passed, _ in results if not passed]
    print(f"--- {sc.name}: {'PASS' if ok else 'FAIL'} ({len(results) - len(failed)}/{len(results)} expectations)"
          + "".join(f"\n    failed: {f}" for f in failed) + ("" if ledger.balanced else "\n    ledger does not balance"))
    return ok


def report(observer: Observer, ledger, elapsed: float, quiet: bool) -> None:
    seconds = {row["t"]: row for row in per_second(ledger)}
    events: dict[int, list[str]] = {}
    for t, text in observer.lines:
        events.setdefault(int(t), []).append(text)
    if not quiet:
        for sec in range(int(elapsed) + 1):
            row = seconds.get(sec)
            load_txt = (f"{row['n']:4d} req  p50 {row['p50_ms']:7.1f} ms  p95 {row['p95_ms']:7.1f} ms  "
                        f"{row['outcomes']}") if row else "   - "
            print(f"  t={sec:3d}s  {load_txt}")
            for text in events.get(sec, []):
                print(f"           * {text}")
    s = summary(ledger, elapsed)
    o = s["outcomes"]
    terms = " + ".join(f"{k} {n}" for k, n in o.items())
    print(f"  ledger: sent {s['sent']} = {terms} ({'balanced' if s['balanced'] else 'UNBALANCED'}); "
          f"P50 {s['p50_ms']} ms, "
          f"P95 {s['p95_ms']} ms, P99 {s['p99_ms']} ms")


async def main(paths: list[str], quiet: bool) -> int:
    url = serving_database_url()
    results = [await run_file(p, url, quiet) for p in paths]
    return 0 if all(results) else 1


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("scenarios", nargs="+", metavar="FILE.toml", help="scenario files")
    ap.add_argument("--quiet", action="store_true", help="no per-second timeline")
    args = ap.parse_args(argv)
    for path in args.scenarios:
        if not Path(path).is_file():
            ap.error(f"no such scenario file: {path}")
    return args


if __name__ == "__main__":
    args = parse()
    sys.exit(trio.run(main, args.scenarios, args.quiet))
