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
import contextlib
import itertools
import os
import secrets
import sys
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from actors.tools.load import Phase, Scenario, per_second, run, summary  # noqa: E402
from actors.tools.scenario import Observer, check, chosen, config_for, load, run_steps  # noqa: E402
from examples.vet_tracker.harness import open_service  # noqa: E402
from messages.config import serving_database_url  # noqa: E402


async def run_file(path: str, url: str | None, quiet: bool = False) -> bool:
    sc = load(path)
    n = sc.instances
    print(f"=== {sc.name} ({Path(path).name}): {sc.description}"
          + (f" [{n} instances]" if n > 1 else ""))
    results: list = []
    # Server-side faults straight to PostgreSQL when DATABASE_URL goes through PgBouncer.
    faults_url = os.environ.get("TRIAGE_FAULTS_DATABASE_URL") or None
    prefix = f"triage:scenario:{secrets.token_hex(4)}:"
    async with contextlib.AsyncExitStack() as stack:
        services = [await stack.enter_async_context(
                        open_service(config_for(sc, url, faults_url, index=i, key_prefix=prefix)))
                    for i in range(n)]
        if "fleet" in sc.config:
            stack.push_async_callback(delete_prefix, services[0].mon.config.fleet.redis_url, prefix)
        start = trio.current_time()
        observers = [Observer(svc.mon, start, f"[{i + 1}] " if n > 1 else "") for i, svc in enumerate(services)]
        load_plan = Scenario(name=sc.name, phases=(Phase(sc.duration_s, sc.rate_per_s),))
        turn = itertools.cycle(services)

        async def send(*args):  # round robin, as a load balancer in front of the instances
            return await next(turn).send(*args)

        async with trio.open_nursery() as nursery:
            for i, observer in enumerate(observers):
                nursery.start_soon(observer.watch_events)
                nursery.start_soon(observer.sample_health)
                nursery.start_soon(run_steps, observer, [st for st in sc.step if i in chosen(st.instance, n)])
            async with trio.open_nursery() as checks:
                for e in sc.expect:
                    for i in chosen(e.instance, n):
                        checks.start_soon(check, observers[i], e, results)
                ledger = await run(load_plan, send, timeout_s=10.0)
            nursery.cancel_scope.cancel()
        elapsed = trio.current_time() - start
    report(observers, ledger, elapsed, quiet)
    ok = all(passed for _, passed, _ in results) and ledger.balanced
    failed = [e.describe() for e, passed, _ in results if not passed]
    print(f"--- {sc.name}: {'PASS' if ok else 'FAIL'} ({len(results) - len(failed)}/{len(results)} expectations)"
          + "".join(f"\n    failed: {f}" for f in failed) + ("" if ledger.balanced else "\n    ledger does not balance"))
    return ok


async def delete_prefix(redis_url: str, prefix: str) -> None:
    """The run's own keys only (they have TTLs too): never a FLUSH."""
    import coredis

    client = coredis.Redis.from_url(redis_url)
    async with client:
        keys = [k async for k in client.scan_iter(match=f"{prefix}*")]
        if keys:
            await client.delete(keys)


def report(observers: list[Observer], ledger, elapsed: float, quiet: bool) -> None:
    seconds = {row["t"]: row for row in per_second(ledger)}
    events: dict[int, list[str]] = {}
    for t, text in sorted(line for observer in observers for line in observer.lines):
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
