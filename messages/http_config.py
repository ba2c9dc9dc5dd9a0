"""The HTTP edge's configuration: where to listen, who may see what, how long to wait.

Kept apart from `messages.config.Config` (the kernel's) so the kernel does not
grow HTTP concerns. `HttpConfig.from_env()` reads the variables below;
durations from the environment are milliseconds, as the spec's own
(`HEALTH_CHECK_INTERVAL`, `MAX_RESPONSE_TIME`) are.

    HOST, PORT                     where to listen (127.0.0.1:3000)
    HEALTH_TOKEN                   bearer token for full health in production (>= 32 bytes)
    ADMIN_TOKEN                    bearer token for /api/admin/* (>= 32 bytes; else HEALTH_TOKEN)
    HEALTH_ALLOW_NETWORKS          CIDRs that see full health without a token
    TRUSTED_PROXIES                CIDRs whose X-Forwarded-For is believed
    HEALTH_DEGRADED_STATUS         HTTP code for "degraded" (206)
    MAX_BODY_BYTES                 request body cap (1 MiB)
    BODY_TIMEOUT                   deadline for a whole request body (10000 ms)
    SHUTDOWN_GRACE_PERIOD          in-flight requests' time to finish at shutdown (10000 ms)
    SSE_HEARTBEAT_INTERVAL         comment line on an idle alert stream (15000 ms)
    SESSION_SECRET                 key signing login sessions (>= 32 bytes; else random per process)
    SESSION_TTL                    login session lifetime (3600000 ms)
    IDEMPOTENCY_TTL                how long an Idempotency-Key and its response are kept (86400000 ms)
    DEMO_USERS                     seed the demo logins (1/0; default: only when NODE_ENV=development);
                                   refused with NODE_ENV=production
    TRIAGE_DEMO_SCHEMA             the reference service's schema (triage_demo)
    LOG_FORMAT, LOG_LEVEL, LOG_FILE   logging (text|json, INFO, unset)

Secrets never appear in a `repr` or in a `ConfigError` message.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from typing import Literal

import msgspec

from messages.errors import ConfigError

MIN_TOKEN_BYTES = 32
DEMO_IN_PRODUCTION = ("the demo users have published passwords: refusing to seed them with "
                      "NODE_ENV=production (unset DEMO_USERS)")
_IDENTIFIER = re.compile(r"[a-z_][a-z0-9_]{0,62}")
_SECRETS = ("health_token", "admin_token", "session_secret")


class LogConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    format: Literal["text", "json"] = "text"
    level: str = "INFO"
    file: str | None = None          # rotated at `rotation`, `retention` files kept
    rotation: str = "10 MB"
    retention: int = 5

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> LogConfig:
        env = os.environ if environ is None else environ
        fmt = (env.get("LOG_FORMAT") or "text").strip().lower()
        if fmt not in ("text", "json"):
            raise ConfigError("LOG_FORMAT", env.get("LOG_FORMAT"), "expected text or json")
        level = (env.get("LOG_LEVEL") or "INFO").strip().upper()
        if level not in ("TRACE", "DEBUG", "INFO", "SUCCESS", "WARNING", "ERROR", "CRITICAL"):
            raise ConfigError("LOG_LEVEL", env.get("LOG_LEVEL"), "expected a loguru level, e.g. INFO")
        return cls(format=fmt, level=level, file=(env.get("LOG_FILE") or None))  # type: ignore[arg-type]


class HttpConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    host: str = "127.0.0.1"
    port: int = 3000
    # The operational listener (health, live, ready, metrics) on a port of its own, answered by a
    # thread of its own: probes stay fast while the main listener is saturated. None: off.
    ops_port: int | None = None
    health_token: str | None = None
    admin_token: str | None = None
    allow_networks: tuple[str, ...] = ()
    trusted_proxies: tuple[str, ...] = ()
    degraded_status_code: int = 206
    max_body_bytes: int = 1_048_576
    body_timeout_s: float = 10.0
    grace_s: float = 10.0
    sse_heartbeat_s: float = 15.0
    session_secret: str | None = None
    session_ttl_s: float = 3600.0
    idempotency_ttl_s: float = 86400.0
    demo_users: bool | None = None   # None: only in development
    demo_schema: str = "triage_demo"

    def __post_init__(self) -> None:
        validate(self)

    @property
    def effective_admin_token(self) -> str | None:
        """ADMIN_TOKEN, else HEALTH_TOKEN, else None (admin disabled)."""
        return self.admin_token or self.health_token

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None,
                 base: Mapping[str, object] | None = None) -> HttpConfig:
        """The variables above, over `base` (the `[http]` table of the TOML config, if any)."""
        env = os.environ if environ is None else environ
        fields: dict = {}
        if base:
            try:
                fields = msgspec.structs.asdict(msgspec.convert(dict(base), cls))
            except msgspec.ValidationError as exc:
                raise ConfigError("http", None, str(exc).replace("`$.", "`http.")) from None
        if _given(env, "HOST"):
            fields["host"] = env["HOST"].strip()
        for name, key, lo, hi in (("PORT", "port", 0, 65535), ("TRIAGE_OPS_PORT", "ops_port", 0, 65535),
                                  ("HEALTH_DEGRADED_STATUS", "degraded_status_code", 200, 599),
                                  ("MAX_BODY_BYTES", "max_body_bytes", 0, 2**40)):
            if _given(env, name):
                fields[key] = _whole(env, name, lo, hi)
        for name, key in (("BODY_TIMEOUT", "body_timeout_s"), ("SHUTDOWN_GRACE_PERIOD", "grace_s"),
                          ("SSE_HEARTBEAT_INTERVAL", "sse_heartbeat_s"), ("SESSION_TTL", "session_ttl_s")):
            if _given(env, name):
                fields[key] = _whole(env, name, 1, 86_400_000) / 1000.0
        for name, key in (("HEALTH_TOKEN", "health_token"), ("ADMIN_TOKEN", "admin_token"),
                          ("SESSION_SECRET", "session_secret")):
            if _given(env, name):
                fields[key] = env[name].strip()
        for name, key in (("HEALTH_ALLOW_NETWORKS", "allow_networks"), ("TRUSTED_PROXIES", "trusted_proxies")):
            if _given(env, name):
                fields[key] = tuple(p.strip() for p in env[name].split(",") if p.strip())
        if _given(env, "IDEMPOTENCY_TTL"):
            fields["idempotency_ttl_s"] = _whole(env, "IDEMPOTENCY_TTL", 1000, 30 * 86_400_000) / 1000.0
        if _given(env, "DEMO_USERS"):
            fields["demo_users"] = _flag(env, "DEMO_USERS")
        if fields.get("demo_users") and (env.get("NODE_ENV") or "").strip().lower() == "production":
            raise ConfigError("DEMO_USERS", env.get("DEMO_USERS"), DEMO_IN_PRODUCTION)
        if _given(env, "TRIAGE_DEMO_SCHEMA"):
            fields["demo_schema"] = env["TRIAGE_DEMO_SCHEMA"].strip()
        try:
            return cls(**fields)
        except ConfigError as exc:  # name the variable, not the field
            raise ConfigError(_ENV_NAMES.get(exc.field, exc.field), _shown(exc), exc.why) from None

    def __repr__(self) -> str:  # never show a secret
        hidden = {name: ("set" if getattr(self, name) else None) for name in _SECRETS}
        shown = ", ".join(f"{f}={getattr(self, f)!r}" for f in self.__struct_fields__ if f not in hidden)
        return f"HttpConfig({shown}, " + ", ".join(f"{k}={v!r}" for k, v in hidden.items()) + ")"


_ENV_NAMES = {"host": "HOST", "port": "PORT", "ops_port": "TRIAGE_OPS_PORT", "health_token": "HEALTH_TOKEN", "admin_token": "ADMIN_TOKEN",
              "allow_networks": "HEALTH_ALLOW_NETWORKS", "trusted_proxies": "TRUSTED_PROXIES",
              "degraded_status_code": "HEALTH_DEGRADED_STATUS", "max_body_bytes": "MAX_BODY_BYTES",
              "body_timeout_s": "BODY_TIMEOUT", "grace_s": "SHUTDOWN_GRACE_PERIOD",
              "sse_heartbeat_s": "SSE_HEARTBEAT_INTERVAL", "session_secret": "SESSION_SECRET",
              "session_ttl_s": "SESSION_TTL", "demo_schema": "TRIAGE_DEMO_SCHEMA",
              "idempotency_ttl_s": "IDEMPOTENCY_TTL", "demo_users": "DEMO_USERS"}


def _shown(exc: ConfigError) -> object:
    return None if exc.field in _SECRETS else exc.value


def _given(env: Mapping[str, str], name: str) -> bool:
    return bool(env.get(name, "").strip())


def _flag(env: Mapping[str, str], name: str) -> bool:
    raw = env[name].strip().lower()
    if raw not in ("1", "true", "yes", "on", "0", "false", "no", "off"):
        raise ConfigError(name, env[name], "expected 1 or 0")
    return raw in ("1", "true", "yes", "on")


def _whole(env: Mapping[str, str], name: str, lo: int, hi: int) -> int:
    raw = env[name].strip()
    if not raw.isdigit() or not lo <= int(raw) <= hi:
        raise ConfigError(name, env[name], f"expected a whole number {lo}-{hi}")
    return int(raw)


def _require(ok: bool, field: str, value: object, why: str) -> None:
    if not ok:
        raise ConfigError(field, None if field in _SECRETS else value, why)


def validate(c: HttpConfig) -> None:
    _require(0 <= c.port <= 65535, "port", c.port, "expected 0-65535")
    _require(c.ops_port is None or 0 <= c.ops_port <= 65535, "ops_port", c.ops_port, "expected 0-65535")
    _require(c.ops_port is None or c.ops_port == 0 or c.ops_port != c.port, "ops_port", c.ops_port,
             "must differ from port")
    _require(200 <= c.degraded_status_code <= 599, "degraded_status_code", c.degraded_status_code,
             "expected an HTTP status 200-599")
    for name in _SECRETS:
        secret = getattr(c, name)
        _require(secret is None or len(secret.encode()) >= MIN_TOKEN_BYTES, name, secret,
                 f"must be at least {MIN_TOKEN_BYTES} bytes (e.g. `openssl rand -hex 32`)")
    for name in ("allow_networks", "trusted_proxies"):
        for spec in getattr(c, name):
            try:
                ipaddress.ip_network(spec, strict=False)
            except ValueError:
                raise ConfigError(name, spec, "not an IP network (e.g. 10.0.0.0/8)") from None
    _require(c.max_body_bytes >= 0, "max_body_bytes", c.max_body_bytes, "must be >= 0")
    for name in ("body_timeout_s", "grace_s", "sse_heartbeat_s", "session_ttl_s", "idempotency_ttl_s"):
        _require(getattr(c, name) > 0, name, getattr(c, name), "must be > 0")
    _require(bool(_IDENTIFIER.fullmatch(c.demo_schema)), "demo_schema", c.demo_schema,
             "expected a lower-case SQL identifier ([a-z_][a-z0-9_]*, at most 63)")
