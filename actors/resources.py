"""Process memory: resident set size as a share of the memory this process may use.

The limit is the cgroup's when one is set (a container's `memory.max` in cgroup v2,
`memory.limit_in_bytes` in v1) — that is where the kernel's OOM killer acts — else the
host's total memory (`/proc/meminfo` MemTotal). Each read is a few small files under
`/proc` and `/sys`: cheap enough for the health actor to sample at every evaluation.
Off Linux (no `/proc`) `read_memory` answers None and nothing is reported.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import msgspec

PROC_STATUS = Path("/proc/self/status")
MEMINFO = Path("/proc/meminfo")
CGROUP_V2 = Path("/sys/fs/cgroup/memory.max")
CGROUP_V1 = Path("/sys/fs/cgroup/memory/memory.limit_in_bytes")
# cgroup v1 says "no limit" with a huge number (LONG_MAX rounded to the page): treat anything
# at or above this as unset.
V1_UNLIMITED = 1 << 60


class Memory(msgspec.Struct, frozen=True, kw_only=True):
    """One reading: RSS, the limit it is measured against, and the share in percent."""

    rss_bytes: int
    limit_bytes: int
    limit_source: Literal["cgroup", "host"]
    percent: float


def _kib_field(path: Path, field: str) -> int | None:
    """`field:   1234 kB` from a /proc file, in bytes; None when absent or unreadable."""
    try:
        for line in path.read_text().splitlines():
            name, _, rest = line.partition(":")
            if name == field:
                return int(rest.split()[0]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _cgroup_limit(v2: Path, v1: Path) -> int | None:
    """The cgroup memory limit in bytes, or None when there is none ("max", unlimited, absent)."""
    for path in (v2, v1):
        try:
            text = path.read_text().strip()
        except OSError:
            continue
        if text == "max":
            return None
        try:
            value = int(text)
        except ValueError:
            continue
        return value if 0 < value < V1_UNLIMITED else None
    return None


def read_memory(status: Path = PROC_STATUS, meminfo: Path = MEMINFO,
                cgroup_v2: Path = CGROUP_V2, cgroup_v1: Path = CGROUP_V1) -> Memory | None:
    """RSS (VmRSS) against the cgroup limit if set, else the host's MemTotal; None if unknown."""
    rss = _kib_field(status, "VmRSS")
    if rss is None:
        return None
    limit, source = _cgroup_limit(cgroup_v2, cgroup_v1), "cgroup"
    if limit is None:
        limit, source = _kib_field(meminfo, "MemTotal"), "host"
    if not limit:
        return None
    return Memory(rss_bytes=rss, limit_bytes=limit, limit_source=source,
                  percent=round(rss * 100.0 / limit, 2))
