"""`[fleet]`: several instances sharing their rate limits and their view through Redis.

Absent (no `redis_url`, no `REDIS_URL`): a single instance, exactly as without it. The
URL may hold a password: it is never echoed by an error, a repr or a log line.
"""

from __future__ import annotations

import math
from typing import Literal

import msgspec

from messages.errors import ConfigError

FLEET_DOWN_MODES = ("share", "local")
# Policies where N instances each allowing the full limit would be the wrong answer while Redis
# is down (a brute-force login, a disk filled by uploads): they share the limit by default.
SHARED_WHEN_DOWN = frozenset({"auth", "upload"})
_SCHEMES = ("redis://", "rediss://", "unix://")

FleetDownMode = Literal["share", "local"]


class FleetConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    redis_url: str | None = None      # or REDIS_URL; None: single instance
    instance_id: str | None = None    # None: "<host>/<pid>"
    key_prefix: str = "triage:"       # every key Triage writes starts with it (and has a TTL)
    credit_ttl_s: float = 1.0         # tau: a leased credit unspent for this long is refunded
    max_batch: int = 64               # b_max: the most tokens one lease asks for
    redis_timeout_s: float = 0.05     # a request waits at most this for Redis, then falls back
    redis_call_timeout_s: float = 0.5  # a background call (lease, heartbeat) gives up after this
    redis_failures: int = 3           # consecutive failed calls that open the Redis breaker
    redis_retry_s: float = 1.0        # open Redis breaker: the next call tried after this
    heartbeat_s: float = 1.0          # each instance writes its summary this often ...
    heartbeat_ttl_s: float = 3.0      # ... and is gone from the fleet this long after its last
    # Tiers whose breaker the fleet agrees on (quorum opening, one prober); [] turns it off
    # (breakers per instance). After the prober's success the others go half_open (a trial
    # of their own) or, with "close", closed.
    share_breakers: tuple[str, ...] = ("database",)
    follow_recovery: Literal["half_open", "close"] = "half_open"

    @property
    def shared_tiers(self) -> tuple[str, ...]:
        return self.share_breakers

    @property
    def enabled(self) -> bool:
        return bool(self.redis_url)

    def __repr__(self) -> str:  # the URL may hold a password
        return f"FleetConfig(redis_url={'set' if self.redis_url else None!r}, instance_id={self.instance_id!r}, ...)"


def on_fleet_down_default(policy: str) -> FleetDownMode:
    return "share" if policy in SHARED_WHEN_DOWN else "local"


def _require(ok: bool, field: str, value: object, why: str) -> None:
    if not ok:
        raise ConfigError(field, value, why)


def validate_fleet(f: FleetConfig) -> None:
    if f.redis_url is not None:  # the value is never shown: it may hold a password
        _require(f.redis_url.lower().startswith(_SCHEMES), "fleet.redis_url", None,
                 "expected a redis://, rediss:// or unix:// URL")
    if f.instance_id is not None:
        _require(0 < len(f.instance_id) <= 64 and f.instance_id.isprintable() and " " not in f.instance_id,
                 "fleet.instance_id", f.instance_id, "expected 1-64 printable characters, no spaces")
    _require(0 < len(f.key_prefix) <= 64 and f.key_prefix.isprintable(), "fleet.key_prefix", f.key_prefix,
             "expected 1-64 printable characters")
    for name in ("credit_ttl_s", "redis_timeout_s", "redis_call_timeout_s", "redis_retry_s", "heartbeat_s",
                 "heartbeat_ttl_s"):
        value = getattr(f, name)
        _require(math.isfinite(value) and value > 0, f"fleet.{name}", value, "must be a finite number of seconds > 0")
    _require(f.redis_call_timeout_s >= f.redis_timeout_s, "fleet.redis_call_timeout_s", f.redis_call_timeout_s,
             "must be >= fleet.redis_timeout_s")
    _require(f.heartbeat_ttl_s > f.heartbeat_s, "fleet.heartbeat_ttl_s", f.heartbeat_ttl_s,
             "must be longer than fleet.heartbeat_s")
    _require(1 <= f.max_batch <= 10_000, "fleet.max_batch", f.max_batch, "expected 1-10000")
    _require(1 <= f.redis_failures <= 1000, "fleet.redis_failures", f.redis_failures, "expected 1-1000")
