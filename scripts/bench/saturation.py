"""Health under saturation: `/api/health` latency while the queue is full and 300 clients re-send.

    .venv/bin/python scripts/bench/saturation.py [--clients 300] [--seconds 15] [--rounds 3]
        [--database-url URL] [--baseline-tree DIR] [--ops-port]

Each run starts `triage serve` (the reference service) as its own process on loopback, with a
`general` rate-limit policy no run reaches (so every request reaches the queue) and the
default queue (8 slots, 200 waiting). Once it answers, this script takes an ACCESS EXCLUSIVE
lock on the service's `animals` table in a transaction of its own: every `GET /api/animals`
holds its slot until the lock goes, so 8 hold, 200 wait, and every other one is refused
(`queue_full`). The load generator, a separate process
(`scripts/load_test.py flood --url ... --clients N`), keeps N keep-alive connections each
re-sending its refused request at once. After 2 s (the queue is full) this process probes
`GET /api/health` every 0.25 s for the rest of the run, each probe on a new connection (as
an orchestrator's probe does; a probe not answered in 10 s counts as 10 s), and prints per
run the probes' p50 / p99 / worst and the flood's requests/s and outcomes; then the medians.

`--baseline-tree DIR` runs the same thing, alternating, against another checkout's server
(e.g. `git archive <commit> | tar -x -C DIR`), with this tree's load generator, and prints the
ratio of the p99s. `--ops-port` serves the operational routes on their own listener
(`TRIAGE_OPS_PORT`) and probes that one. Target: health p99 < 1 s. Needs PostgreSQL (the
serving rule without --database-url: DATABASE_URL, else an embedded one). Both run on the
same cores (no pinning): the generator's CPU is part of the load.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# This folder holds http.py, which would shadow the standard library's `http`.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import msgspec  # noqa: E402
import psycopg  # noqa: E402
import trio  # noqa: E402

from actors.pg.embedded import serving_database  # noqa: E402
from actors.tools.procs import free_port  # noqa: E402

CONFIG = """
[policies.general]
limit = 1000000000
window_s = 60
"""
SCHEMA = "triage_demo"
PROBE_EVERY_S = 0.25
PROBE_TIMEOUT_S = 10.0
FILL_S = 2.0


def start_server(tree: Path, url: str, config: Path, ops_port: int | None) -> tuple[subprocess.Popen, int]:
    port = free_port()
    env = {**os.environ, "DATABASE_URL": url, "PYTHONPATH": str(tree), "TRIAGE_DEMO_SCHEMA": SCHEMA,
           "LOG_LEVEL": "WARNING"}
    if ops_port is not None:
        env["TRIAGE_OPS_PORT"] = str(ops_port)
    proc = subprocess.Popen([sys.executable, "-m", "actors.cli", "serve", "--port", str(port),
                             "--config", str(config)], cwd=tree, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return proc, port


async def get(port: int, path: str) -> int:
    """One GET on a new connection: the status."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(f"GET {path} HTTP/1.1\r\nhost: probe\r\nconnection: close\r\n\r\n".encode())
        data = b""
        while b"\r\n" not in data:
            chunk = await stream.receive_some(65536)
            if not chunk:
                raise ConnectionError("closed before answering")
            data += chunk
    return int(data.split(b" ", 2)[1])


async def until_ready(port: int, timeout_s: float = 60.0) -> None:
    with trio.fail_after(timeout_s):
        while True:
            try:
                if await get(port, "/api/animals") == 200:
                    return
            except OSError:
                pass
            await trio.sleep(0.2)


async def probe(port: int, seconds: float) -> list[float]:
    """GET /api/health every PROBE_EVERY_S on its own schedule (a slow probe delays no other)."""
    latencies: list[float] = []

    async def one() -> None:
        t0 = time.perf_counter()
        with trio.move_on_after(PROBE_TIMEOUT_S):
            try:
                await get(port, "/api/health")
                latencies.append(time.perf_counter() - t0)
                return
            except OSError:
                pass
        latencies.append(PROBE_TIMEOUT_S)

    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        n = 0
        while (at := start + n * PROBE_EVERY_S) < start + seconds:
            await trio.sleep_until(at)
            nursery.start_soon(one)
            n += 1
    return latencies


async def one_run(tree: Path, url: str, config: Path, clients: int, seconds: float, ops: bool) -> dict:
    ops_port = free_port() if ops else None
    server, port = start_server(tree, url, config, ops_port)
    flood = None
    try:
        await until_ready(port)
        with psycopg.connect(url) as lock:  # a transaction of its own: every animals query waits
            lock.execute(f"LOCK TABLE {SCHEMA}.animals IN ACCESS EXCLUSIVE MODE")
            flood = subprocess.Popen([sys.executable, str(ROOT / "scripts/load_test.py"), "flood", "--url",
                                      f"http://127.0.0.1:{port}", "--clients", str(clients),
                                      "--seconds", str(seconds), "--json"],
                                     cwd=ROOT, stdout=subprocess.PIPE, text=True)
            await trio.sleep(FILL_S)
            latencies = await probe(ops_port or port, seconds - FILL_S)
            out, _ = await trio.to_thread.run_sync(flood.communicate)
            lock.rollback()
    finally:
        if flood is not None and flood.poll() is None:
            flood.kill()
        server.terminate()
        server.wait(timeout=20)
    ledger = msgspec.json.decode(out.strip().splitlines()[-1])
    latencies.sort()
    return {"p50": latencies[len(latencies) // 2], "p99": latencies[min(int(0.99 * len(latencies)), len(latencies) - 1)],
            "max": latencies[-1], "probes": len(latencies), "per_s": ledger["per_s"],
            "outcomes": {k: v for k, v in ledger["outcomes"].items() if v}, "balanced": ledger["balanced"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, default=300)
    p.add_argument("--seconds", type=float, default=15.0)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--database-url")
    p.add_argument("--baseline-tree", type=Path)
    p.add_argument("--ops-port", action="store_true", help="probe health on TRIAGE_OPS_PORT's listener")
    args = p.parse_args()
    with (serving_database() if not args.database_url else _given(args.database_url)) as url, \
            tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "saturation.toml"
        config.write_text(CONFIG)
        trees = {"triage": ROOT, **({"baseline": args.baseline_tree.resolve()} if args.baseline_tree else {})}
        print(f"/api/health while the queue is full and {args.clients} clients re-send at once; "
              f"{args.seconds:g} s per run, {args.rounds} rounds, {os.cpu_count()} CPUs"
              f"{', health on the ops listener' if args.ops_port else ''}")
        results: dict[str, list[dict]] = {k: [] for k in trees}
        for r in range(args.rounds):
            for kind in (list(trees) if r % 2 == 0 else list(reversed(trees))):
                res = trio.run(one_run, trees[kind], url, config, args.clients, args.seconds,
                               args.ops_port and kind == "triage")
                results[kind].append(res)
                print(f"  round {r + 1} {kind:<8}  health p50 {res['p50'] * 1000:7.1f} ms  p99 "
                      f"{res['p99'] * 1000:7.1f} ms  worst {res['max'] * 1000:7.1f} ms  ({res['probes']} probes)"
                      f"   flood {res['per_s']:6.0f} req/s {res['outcomes']}"
                      f"{'' if res['balanced'] else '  LEDGER DOES NOT BALANCE'}")
    med = {k: {f: statistics.median(x[f] for x in v) for f in ("p50", "p99", "max", "per_s")}
           for k, v in results.items()}
    for kind, m in med.items():
        print(f"median {kind:<8}  health p50 {m['p50'] * 1000:7.1f} ms  p99 {m['p99'] * 1000:7.1f} ms  "
              f"worst {m['max'] * 1000:7.1f} ms   flood {m['per_s']:6.0f} req/s")
    if "baseline" in med:
        print(f"ratio triage/baseline health p99: {med['triage']['p99'] / med['baseline']['p99']:.2f}")
    print(f"target health p99 < 1 s: {'OK' if med['triage']['p99'] < 1.0 else 'MISSED'}")


class _given:
    def __init__(self, url: str) -> None:
        self.url = url

    def __enter__(self) -> str:
        return self.url

    def __exit__(self, *exc: object) -> None:
        return None


if __name__ == "__main__":
    main()
