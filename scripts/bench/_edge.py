"""What the stream and loop-lag benchmarks share: a served child, raw HTTP on loopback, CPU time.

A before/after run passes `--before DIR`: a tree of the baseline commit, made with
`git archive`, e.g. ``mkdir -p /tmp/base && git archive main | tar -x -C /tmp/base``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import trio

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # this tree's own tools (the servers run may be another tree)
    sys.path.insert(0, str(ROOT))

from actors.tools.procs import stop  # noqa: E402

__all__ = ["stop"]
SERVED = Path(__file__).resolve().parent / "_served.py"
TICKS = os.sysconf("SC_CLK_TCK")


def trees(before: str | None) -> dict[str, Path]:
    """{"before": baseline tree, "after": this checkout}, or just "after"."""
    out = {"before": Path(before).resolve()} if before else {}
    out["after"] = ROOT
    return out


def start(tree: Path, database_url: str | None, routes: int, rate: float) -> tuple[subprocess.Popen, int]:
    args = [sys.executable, str(SERVED), "--tree", str(tree), "--routes", str(routes), "--rate", str(rate)]
    if database_url:
        args += ["--database-url", database_url]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True, cwd=tree, env=env)
    line = proc.stdout.readline()
    if not line.strip().isdigit():
        proc.kill()
        raise RuntimeError(f"the server did not start (tree {tree})")
    return proc, int(line)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


async def get(stream: trio.SocketStream, path: str, buffer: bytearray) -> tuple[int, bytes]:
    """One request on a keep-alive connection: (status, body)."""
    await stream.send_all(b"GET %s HTTP/1.1\r\nhost: bench\r\n\r\n" % path.encode())
    while True:
        end = buffer.find(b"\r\n\r\n")
        if end >= 0:
            head = bytes(buffer[:end]).lower()
            at = head.find(b"content-length:")
            length = int(head[at + 15:].split(b"\r\n", 1)[0]) if at >= 0 else 0
            if len(buffer) >= end + 4 + length:
                body = bytes(buffer[end + 4:end + 4 + length])
                del buffer[:end + 4 + length]
                return int(head[9:12]), body
        data = await stream.receive_some(65536)
        if not data:
            raise ConnectionError("server closed the connection")
        buffer += data


async def fetch(port: int, path: str) -> tuple[int, bytes, float]:
    """One request on a fresh connection: (status, body, seconds)."""
    t0 = time.perf_counter()
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        status, body = await get(stream, path, bytearray())
    return status, body, time.perf_counter() - t0


async def sse_reader(port: int, path: str, opened: trio.Semaphore, counts: list[int]) -> None:
    """Open an event stream and read it until cancelled, counting the events."""
    async with opened:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(b"GET %s HTTP/1.1\r\nhost: bench\r\n\r\n" % path.encode())
    async with stream:
        while True:
            data = await stream.receive_some(65536)
            if not data:
                return
            counts[0] += data.count(b"event: snapshot")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[int(q * (len(ordered) - 1))] if ordered else float("nan")
