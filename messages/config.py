"""The whole configuration of Triage as frozen values, with the spec's defaults.

`Config()` alone is the spec (production-monitoring.md) exactly. `Config.from_env()`
reads the spec's environment variables (milliseconds where the spec uses
milliseconds) and an optional TOML file named by `TRIAGE_CONFIG` for everything
else; it needs `DATABASE_URL` unless the embedded server is asked for
(`TRIAGE_EMBEDDED_DB=1`). Every bad value raises `ConfigError` naming the variable or field and why.
"""

from __future__ import annotations

import enum
import math
import os
import tomllib
from collections.abc import Mapping
from typing import Any, Literal

import msgspec

from messages.errors import ConfigError
from messages.fleet_config import (
    FLEET_DOWN_MODES,
    FleetConfig,
    FleetDownMode,
    on_fleet_down_default,
    validate_fleet,
)

TIERS = ("database", "critical", "analytics", "batch")
POLICIES = ("general", "auth", "recording", "heavy", "upload")

# Exceptions a caller's bad query raises: they say nothing about the database's health.
PSYCOPG_CALLER_ERRORS = (
    "psycopg.errors.IntegrityError",
    "psycopg.errors.ProgrammingError",
    "psycopg.errors.DataError",
)


class Priority(enum.IntEnum):
    """Admission priority; lower value is served first."""

    CRITICAL = 0
    HIGH = 1
    NORMAL = 2
    LOW = 3
    BATCH = 4


class _Frozen(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    pass


class BreakerConfig(_Frozen):
    failure_threshold: int = 5
    recovery_timeout_s: float = 30.0
    monitoring_period_s: float = 60.0
    half_open_max_calls: int = 1
    success_threshold: int = 1
    # The tier guards database work: in HALF_OPEN the monitor's probe through the pool is a
    # trial call for it, so it recovers without traffic (see `actors.pg.pool_probe`).
    guards_database: bool = True
    # Dotted names of exception classes that do not count as failures.
    ignore_exceptions: tuple[str, ...] = ()


# A policy without `algorithm` is an exact sliding window up to this many requests (the log
# costs 8 bytes a request per key), GCRA above it (one float per key).
SLIDING_WINDOW_DEFAULT_MAX = 64
RATE_ALGORITHMS = ("sliding_window", "gcra")


class RatePolicy(_Frozen):
    limit: int
    window_s: float
    algorithm: str | None = None  # "sliding_window" | "gcra"; None: by `limit` (see above)
    # With [fleet] and Redis down: "share" (L / live instances each) or "local" (L each).
    # None: "share" for auth and upload, "local" for the rest (messages.fleet_config).
    on_fleet_down: FleetDownMode | None = None

    def resolved_algorithm(self) -> str:
        if self.algorithm is not None:
            return self.algorithm
        return "sliding_window" if self.limit <= SLIDING_WINDOW_DEFAULT_MAX else "gcra"

    def resolved_on_fleet_down(self, name: str) -> FleetDownMode:
        return self.on_fleet_down or on_fleet_down_default(name)


class LimiterConfig(_Frozen):
    max_keys: int = 100_000
    exempt_keys: tuple[str, ...] = ()
    # policy -> key -> its own limit (a user's own quota)
    overrides: dict[str, dict[str, RatePolicy]] = {}


class QueueConfig(_Frozen):
    max_concurrent: int = 8
    max_queue_size: int = 200
    request_timeout_s: float = 30.0
    # The pool, when idle, keeps `min_idle` connections; the others close once unused for
    # `max_idle_s` (a small hosted PostgreSQL has ~10 connections: don't sit on them).
    min_idle: int = 1
    max_idle_s: float = 60.0


class Thresholds(_Frozen):
    max_response_time_ms: float = 5000.0
    max_usage_percentage: float = 80.0
    max_connection_count: int = 10


class DatabaseConfig(_Frozen):
    connect_timeout_s: float = 10.0
    # None: the queue's request timeout (spec: 30 s), so no backend outlives a caller's wait
    statement_timeout_s: float | None = None
    # Client-side bound on a query when the caller gives no timeout_s. None: statement timeout
    # + 2 s — a black-holed connection (no answer at all) must not hold a slot forever.
    query_timeout_s: float | None = None
    max_lifetime_s: float = 1800.0       # recycle connections after this long
    probe_timeout_s: float | None = None  # monitor probe; None: min(5 s, health check interval)
    embedded: bool = False               # start an embedded PostgreSQL (pgserver) when no URL
    embedded_data_dir: str | None = None  # None: a temporary directory
    # None: one per instance, `triage/<host>/<pid>` (`/2`, `/3`… for more systems in one process),
    # so pg_stat_activity tells instances apart and TerminateBackends hits only this pool's backends.
    # A name given here is used as is: give each instance its own.
    application_name: str | None = None
    # Between Triage and the server, backends may be shared with other clients (PgBouncer):
    # TerminateBackends is then refused. None: detect it; True: declared so; False: declared not.
    behind_pooler: bool | None = None
    # Another DSN for calls of these priorities (names: CRITICAL, HIGH, NORMAL, LOW, BATCH), e.g.
    # another PgBouncer pool user, so urgent work keeps connections when batch work fills the
    # rest. Env: DATABASE_URL_<PRIORITY>. Priorities not named use `database_url`.
    priority_dsn: dict[str, str] = {}

    def __repr__(self) -> str:  # never show a DSN (it may hold a password)
        hidden = {k: "set" for k in self.priority_dsn}
        return f"DatabaseConfig(priority_dsn={hidden!r}, ...)"

    def named_dsns(self) -> dict[int, str]:
        """Priority value -> DSN, for the priorities `priority_dsn` names."""
        return {Priority[name].value: url for name, url in self.priority_dsn.items()}


class AlertRule(_Frozen):
    """Fires once its condition has held for `for_s`; resolves once clear for `clear_for_s`.

    The condition is `value > threshold`; it is clear when `value < clear_threshold`
    (hysteresis: between the two, a firing alert stays firing and a quiet one quiet).
    """

    severity: Literal["info", "warning", "critical"]
    threshold: float
    clear_threshold: float
    for_s: float = 0.0
    clear_for_s: float = 0.0
    enabled: bool = True


def _default_rules() -> dict[str, AlertRule]:
    return {
        # critical (the spec's "PagerDuty" list)
        "health_unhealthy": AlertRule(severity="critical", threshold=0.5, clear_threshold=0.5,
                                      for_s=30.0, clear_for_s=60.0),
        "breaker_open_long": AlertRule(severity="critical", threshold=0.5, clear_threshold=0.5,
                                       for_s=300.0),
        "db_usage_critical": AlertRule(severity="critical", threshold=90.0, clear_threshold=85.0,
                                       for_s=60.0, clear_for_s=60.0),
        "error_rate_critical": AlertRule(severity="critical", threshold=0.05, clear_threshold=0.04,
                                         for_s=60.0, clear_for_s=60.0),
        # warning (the spec's "Slack" list)
        "p95_slow": AlertRule(severity="warning", threshold=3.0, clear_threshold=2.5,
                              for_s=60.0, clear_for_s=60.0),
        "queue_depth_high": AlertRule(severity="warning", threshold=100.0, clear_threshold=80.0,
                                      for_s=30.0, clear_for_s=30.0),
        "rate_limit_violations_high": AlertRule(severity="warning", threshold=100.0, clear_threshold=80.0),
        "breaker_activation": AlertRule(severity="warning", threshold=0.5, clear_threshold=0.5),
        # the spec's "memory usage < 90 %": RSS in % of the cgroup limit, else of the host's memory
        "memory_high": AlertRule(severity="warning", threshold=90.0, clear_threshold=85.0,
                                 for_s=60.0, clear_for_s=60.0),
    }


class AlertsConfig(_Frozen):
    rules: dict[str, AlertRule] = msgspec.field(default_factory=_default_rules)
    summary_every_s: float = 900.0       # the info-level trend summary
    webhook_url: str | None = None       # ALERT_WEBHOOK_URL
    webhook_timeout_s: float = 5.0
    webhook_retries: int = 5


class HealthRule(_Frozen):
    """A health rule that can degrade holds for `for_s` before it does, and clears with hysteresis.

    The same state machine as the alert rules (`actors.hysteresis`): degraded once the value
    has been over its threshold for `for_s`; healthy again once it has been under
    threshold x `clear_ratio` for `clear_for_s`. None: two health-check intervals, so one
    database probe (which holds its value for an interval) never flips the status.
    """

    for_s: float | None = None
    clear_for_s: float | None = None
    clear_ratio: float = 0.8
    enabled: bool = True


HEALTH_RULES = ("response_time", "usage", "error_rate", "queue_depth")


def _default_health_rules() -> dict[str, HealthRule]:
    return {
        "response_time": HealthRule(),
        "usage": HealthRule(),
        "error_rate": HealthRule(for_s=30.0, clear_for_s=60.0, clear_ratio=0.5),
        "queue_depth": HealthRule(for_s=10.0, clear_for_s=10.0),
    }


class HealthConfig(_Frozen):
    # Which backends in pg_stat_activity count against MAX_CONNECTION_COUNT: the whole server
    # (what a hosted free tier limits), this database, or this role (TRIAGE_CONNECTION_SCOPE).
    connection_scope: Literal["server", "database", "role"] = "server"
    rules: dict[str, HealthRule] = msgspec.field(default_factory=_default_health_rules)
    max_error_rate: float = 0.01         # the spec's "overall error rate < 1 %", last minute
    min_requests: int = 20               # fewer requests in the minute: no error-rate verdict


class FaultsConfig(_Frozen):
    # Put a fault proxy in front of the database (mon.inject / mon.clear_faults). Off in production.
    enabled: bool = False
    # Where server-side faults (terminate_backends, exhaust_connections, lock_table) connect:
    # straight to PostgreSQL when DATABASE_URL goes through PgBouncer. Env TRIAGE_FAULTS_DATABASE_URL.
    # None: DATABASE_URL.
    database_url: str | None = None

    def __repr__(self) -> str:  # never show a DSN
        return f"FaultsConfig(enabled={self.enabled!r}, database_url={'set' if self.database_url else None!r})"


class SupervisorConfig(_Frozen):
    # OTP-style restart intensity: more than max_restarts within period_s fails the system.
    max_restarts: int = 5
    period_s: float = 60.0
    backoff_s: float = 0.1
    backoff_max_s: float = 5.0


def _default_tiers() -> dict[str, BreakerConfig]:
    return {
        "database": BreakerConfig(
            failure_threshold=5, recovery_timeout_s=30.0, ignore_exceptions=PSYCOPG_CALLER_ERRORS
        ),
        "critical": BreakerConfig(
            failure_threshold=3, recovery_timeout_s=10.0, ignore_exceptions=PSYCOPG_CALLER_ERRORS
        ),
        "analytics": BreakerConfig(
            failure_threshold=8, recovery_timeout_s=45.0, ignore_exceptions=PSYCOPG_CALLER_ERRORS
        ),
        "batch": BreakerConfig(
            failure_threshold=10, recovery_timeout_s=60.0, ignore_exceptions=PSYCOPG_CALLER_ERRORS
        ),
    }


def _default_policies() -> dict[str, RatePolicy]:
    return {
        "general": RatePolicy(limit=100, window_s=60.0),
        "auth": RatePolicy(limit=5, window_s=900.0),
        "recording": RatePolicy(limit=30, window_s=60.0),
        "heavy": RatePolicy(limit=10, window_s=60.0),
        "upload": RatePolicy(limit=10, window_s=300.0),
    }


# --- alert sinks (`[sinks.*]` in TOML; ALERTMANAGER_URL, SLACK_WEBHOOK_URL, ALERT_WEBHOOK_*) ---


class _SinkRepr:
    """A sink's URL (Slack's holds its token), secret and header values never show in a repr."""

    __slots__ = ()

    def __repr__(self) -> str:
        shown = []
        for name in self.__struct_fields__:  # type: ignore[attr-defined]
            value = getattr(self, name)
            if name in ("url", "secret"):
                value = "set" if value else None
            elif name == "headers":
                value = {k: "***" for k in value}
            shown.append(f"{name}={value!r}")
        return f"{type(self).__name__}({', '.join(shown)})"


class SinkDelivery(_Frozen):
    """How one sink delivers: retried with back-off on 5xx, 429 and network errors."""

    timeout_s: float = 5.0
    retries: int = 5                     # attempts after the first
    backoff_s: float = 0.5               # doubled each retry, up to backoff_max_s
    backoff_max_s: float = 30.0
    outbox: int = 256                    # bodies waiting; beyond it the oldest is dropped (counted)


class AlertmanagerSink(_SinkRepr, _Frozen):
    url: str | None = None               # ALERTMANAGER_URL: the base, e.g. http://alertmanager:9093
    min_severity: Literal["info", "warning", "critical"] = "info"  # Alertmanager routes itself
    # Firing alerts are re-sent this often with endsAt = now + 4 x resend_s (Prometheus'
    # rule: Alertmanager resolves an alert whose endsAt passed, so a dead Triage's alerts end).
    resend_s: float = 60.0
    delivery: SinkDelivery = SinkDelivery()


class SlackSink(_SinkRepr, _Frozen):
    url: str | None = None               # SLACK_WEBHOOK_URL (an incoming webhook: it is a secret)
    min_severity: Literal["info", "warning", "critical"] = "warning"
    delivery: SinkDelivery = SinkDelivery()


class WebhookSink(_SinkRepr, _Frozen):
    """Alertmanager's webhook body (version 4), so receivers written for Alertmanager work."""

    url: str | None = None               # ALERT_WEBHOOK_URL
    min_severity: Literal["info", "warning", "critical"] = "warning"
    headers: dict[str, str] = {}         # e.g. Authorization (ALERT_WEBHOOK_AUTHORIZATION)
    secret: str | None = None            # ALERT_WEBHOOK_SECRET: HMAC-SHA256 of the body
    signature_header: str = "X-Triage-Signature"
    delivery: SinkDelivery = SinkDelivery()


class SinksConfig(_Frozen):
    service: str = "triage"              # the `service` label (TRIAGE_SERVICE_NAME)
    instance: str | None = None          # the `instance` label; None: the host name
    dashboard_url: str | None = None     # generatorURL and Slack's link (TRIAGE_DASHBOARD_URL)
    alertmanager: AlertmanagerSink = AlertmanagerSink()
    slack: SlackSink = SlackSink()
    webhook: WebhookSink = WebhookSink()


SINK_ENV = {"ALERTMANAGER_URL": ("alertmanager", "url"), "SLACK_WEBHOOK_URL": ("slack", "url"),
            "ALERT_WEBHOOK_URL": ("webhook", "url"), "ALERT_WEBHOOK_SECRET": ("webhook", "secret"),
            "TRIAGE_SERVICE_NAME": (None, "service"), "TRIAGE_INSTANCE": (None, "instance"),
            "TRIAGE_DASHBOARD_URL": (None, "dashboard_url")}


def sinks_env(env: Mapping[str, str]) -> dict:
    """The `sinks` overlay from the environment (empty values are unset)."""
    out: dict = {}
    for name, (sink, key) in SINK_ENV.items():
        value = (env.get(name) or "").strip()
        if value:
            (out.setdefault(sink, {}) if sink else out)[key] = value
    auth = (env.get("ALERT_WEBHOOK_AUTHORIZATION") or "").strip()
    if auth:
        out.setdefault("webhook", {})["headers"] = {"Authorization": auth}
    return out


def validate_sinks(s: SinksConfig) -> None:
    for name in ("alertmanager", "slack", "webhook"):
        sink = getattr(s, name)
        field = f"sinks.{name}"
        _require(sink.url is None or sink.url.startswith(("http://", "https://")), f"{field}.url",
                 None, "expected an http:// or https:// URL")  # never echoed: it may hold a token
        d = sink.delivery
        _require(d.timeout_s > 0, f"{field}.delivery.timeout_s", d.timeout_s, "must be > 0")
        _require(d.retries >= 0, f"{field}.delivery.retries", d.retries, "must be >= 0")
        _require(0 < d.backoff_s <= d.backoff_max_s, f"{field}.delivery.backoff_s", d.backoff_s,
                 "expected 0 < backoff_s <= backoff_max_s")
        _require(d.outbox >= 1, f"{field}.delivery.outbox", d.outbox, "must be >= 1")
    _require(s.alertmanager.resend_s > 0, "sinks.alertmanager.resend_s", s.alertmanager.resend_s, "must be > 0")
    _require(s.dashboard_url is None or s.dashboard_url.startswith(("http://", "https://")),
             "sinks.dashboard_url", s.dashboard_url, "expected an http:// or https:// URL")


class Config(_Frozen):
    database_url: str | None = None
    environment: Literal["production", "development", "test"] = "development"
    health_check_interval_s: float = 30.0
    circuit_breaker_enabled: bool = True
    rate_limiting_enabled: bool = True
    thresholds: Thresholds = Thresholds()
    tiers: dict[str, BreakerConfig] = msgspec.field(default_factory=_default_tiers)
    policies: dict[str, RatePolicy] = msgspec.field(default_factory=_default_policies)
    limiter: LimiterConfig = LimiterConfig()
    queue: QueueConfig = QueueConfig()
    database: DatabaseConfig = DatabaseConfig()
    alerts: AlertsConfig = AlertsConfig()
    sinks: SinksConfig = SinksConfig()
    faults: FaultsConfig = FaultsConfig()
    # The HTTP edge's settings (`[http]` in TOML), validated by messages.http_config.HttpConfig.
    http: dict[str, Any] = {}
    supervisor: SupervisorConfig = SupervisorConfig()
    health: HealthConfig = HealthConfig()
    fleet: FleetConfig = FleetConfig()  # [fleet]: several instances over Redis (off by default)

    def __post_init__(self) -> None:
        validate(self)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, *, embedded: bool = False) -> Config:
        """The spec's variables from `environ` (default `os.environ`) over `TRIAGE_CONFIG`.

        A database is required: `DATABASE_URL` (or `database_url` in the file), or the embedded
        PostgreSQL asked for by `TRIAGE_EMBEDDED_DB=1` (`database.embedded`). `embedded=True`
        makes the embedded server the default when nothing names one (`triage serve` in
        development). In production the URL is required whatever asks for embedded."""
        env = os.environ if environ is None else environ
        serving_database_url(env)  # first: a bad URL must fail before anything could echo it
        base = _load_toml(env["TRIAGE_CONFIG"]) if env.get("TRIAGE_CONFIG") else {}
        overlay = _env_overlay(env)
        merged = _merge(base, overlay)
        database = merged.setdefault("database", {})
        if isinstance(database, dict) and "embedded" not in database:  # the serving rule
            database["embedded"] = embedded and not merged.get("database_url")
        config = _convert(merged)
        if config.environment == "production" and not config.database_url:
            raise ConfigError("DATABASE_URL", None, "required when NODE_ENV=production (the embedded "
                              "PostgreSQL is for development and tests: its data is lost on restart)")
        if not config.database_url and not config.database.embedded:
            raise ConfigError("DATABASE_URL", None, "not set: set it to postgresql://user:password@"
                              "host:port/db, or TRIAGE_EMBEDDED_DB=1 for an embedded PostgreSQL "
                              "(development and tests)")
        return config

    @classmethod
    def from_toml(cls, text: str) -> Config:
        return _convert(_parse_toml(text, "<toml>"))

    def __repr__(self) -> str:  # never show a DSN (it may hold a password)
        shown = "set" if self.database_url else None
        return f"Config(database_url={shown!r}, environment={self.environment!r}, ...)"


# --- the database: one rule for serving and the scripts ------------------------------------


def serving_database_url(environ: Mapping[str, str] | None = None) -> str | None:
    """The serving rule (`triage serve`, scripts/*): `DATABASE_URL` if set, else None, meaning
    "start the embedded PostgreSQL" (development and tests only; `triage serve` and the
    scripts ask for it, a host's `Config.from_env` does not). The URL is checked first."""
    env = os.environ if environ is None else environ
    url = (env.get("DATABASE_URL") or "").strip()
    if not url:
        return None
    check_database_url(url, "DATABASE_URL")
    return url


_SCHEMES = ("postgresql://", "postgres://")
_UNPARSABLE = ("not a PostgreSQL URL libpq can parse (postgresql://user:password@host:port/db; "
               "%-encode special characters in the password, bracket IPv6 hosts)")


def check_database_url(url: str, field: str) -> None:
    """A URL (or key=value string) libpq accepts. The error never carries the value: it may
    hold a password, and psycopg's own parse errors quote it."""
    from psycopg.conninfo import conninfo_to_dict

    if "://" in url.split("?")[0] and not url.lower().startswith(_SCHEMES):
        raise ConfigError(field, None, "unknown scheme: expected postgresql:// or postgres://")
    try:
        params = conninfo_to_dict(url)
    except Exception:  # ProgrammingError quoting the URL; never chain it
        raise ConfigError(field, None, _UNPARSABLE) from None
    for port in str(params.get("port") or "5432").split(","):
        if not (port.strip().isdigit() and 1 <= int(port) <= 65535):
            raise ConfigError(field, None, "the port must be a number 1-65535")


# --- environment ---------------------------------------------------------------------------


def _number(env: Mapping[str, str], name: str, lo: float, hi: float, what: str) -> float | None:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return None
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(name, raw, f"expected {what}") from None
    if not lo <= value <= hi or value != value:
        raise ConfigError(name, raw, f"expected {what}")
    return value


def _flag(env: Mapping[str, str], name: str) -> bool | None:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return None
    v = raw.strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off"):
        return False
    raise ConfigError(name, raw, "expected true or false")


def _env_overlay(env: Mapping[str, str]) -> dict:
    out: dict = {}
    thresholds: dict = {}
    url = serving_database_url(env)
    if url:
        out["database_url"] = url
    out["database"] = {}
    by_priority = {name: env[f"DATABASE_URL_{name}"].strip() for name in Priority.__members__
                   if (env.get(f"DATABASE_URL_{name}") or "").strip()}
    for name, value in by_priority.items():
        check_database_url(value, f"DATABASE_URL_{name}")
    if by_priority:
        out["database"]["priority_dsn"] = by_priority
    embedded = _flag(env, "TRIAGE_EMBEDDED_DB")
    if embedded is not None:
        out["database"]["embedded"] = embedded
    faults = _flag(env, "TRIAGE_FAULTS")
    if faults is not None:
        out["faults"] = {"enabled": faults}
    admin = (env.get("TRIAGE_FAULTS_DATABASE_URL") or "").strip()
    if admin:
        check_database_url(admin, "TRIAGE_FAULTS_DATABASE_URL")
        out.setdefault("faults", {})["database_url"] = admin
    sinks = sinks_env(env)
    if sinks:
        out["sinks"] = sinks
    redis_url = (env.get("REDIS_URL") or "").strip()
    if redis_url:
        out["fleet"] = {"redis_url": redis_url}
    if env.get("TRIAGE_DATA_DIR"):
        out["database"]["embedded_data_dir"] = env["TRIAGE_DATA_DIR"]
    if env.get("NODE_ENV"):
        node_env = env["NODE_ENV"].strip().lower()
        if node_env not in ("production", "development", "test"):
            raise ConfigError("NODE_ENV", env["NODE_ENV"], "expected production, development or test")
        out["environment"] = node_env
    interval = _number(env, "HEALTH_CHECK_INTERVAL", 1, 86_400_000, "milliseconds 1-86400000")
    if interval is not None:
        out["health_check_interval_s"] = interval / 1000.0
    for name, key in (("CIRCUIT_BREAKER_ENABLED", "circuit_breaker_enabled"),
                      ("RATE_LIMITING_ENABLED", "rate_limiting_enabled")):
        flag = _flag(env, name)
        if flag is not None:
            out[key] = flag
    rt = _number(env, "MAX_RESPONSE_TIME", 1, 3_600_000, "milliseconds 1-3600000")
    if rt is not None:
        thresholds["max_response_time_ms"] = rt
    usage = _number(env, "MAX_DB_USAGE_PERCENTAGE", 0, 100, "a number 0-100")
    if usage is not None:
        thresholds["max_usage_percentage"] = usage
    count = _number(env, "MAX_CONNECTION_COUNT", 1, 100_000, "a whole number 1-100000")
    if count is not None:
        if count != int(count):
            raise ConfigError("MAX_CONNECTION_COUNT", env["MAX_CONNECTION_COUNT"], "expected a whole number 1-100000")
        thresholds["max_connection_count"] = int(count)
    if thresholds:
        out["thresholds"] = thresholds
    scope = env.get("TRIAGE_CONNECTION_SCOPE", "").strip().lower()
    if scope:
        if scope not in ("server", "database", "role"):
            raise ConfigError("TRIAGE_CONNECTION_SCOPE", env["TRIAGE_CONNECTION_SCOPE"],
                              "expected server, database or role")
        out["health"] = {"connection_scope": scope}
    return out


# --- TOML and conversion -----------------------------------------------------------------


def _parse_toml(text: str, source: str) -> dict:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(source, None, f"invalid TOML: {exc}") from None


def _load_toml(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as exc:
        raise ConfigError("TRIAGE_CONFIG", path, f"cannot read file: {exc.strerror}") from None
    return _parse_toml(text, f"TRIAGE_CONFIG={path}")


def _merge(base: dict, overlay: dict) -> dict:
    out = dict(base)
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _over_defaults(given: dict, defaults: dict) -> dict:
    merged = {k: msgspec.to_builtins(v) for k, v in defaults.items()}
    for k, v in given.items():
        merged[k] = _merge(merged.get(k, {}), v) if isinstance(v, dict) else v
    return merged


def _with_default_entries(raw: dict) -> dict:
    """A TOML `[tiers.database]` table adjusts that tier; tiers it doesn't name keep their defaults.

    The same holds for `[policies.*]` and `[alerts.rules.*]`.
    """
    raw = dict(raw)
    for name, defaults in (("tiers", _default_tiers()), ("policies", _default_policies())):
        if isinstance(raw.get(name), dict):
            raw[name] = _over_defaults(raw[name], defaults)
    alerts = raw.get("alerts")
    if isinstance(alerts, dict) and isinstance(alerts.get("rules"), dict):
        raw["alerts"] = {**alerts, "rules": _over_defaults(alerts["rules"], _default_rules())}
    health = raw.get("health")
    if isinstance(health, dict) and isinstance(health.get("rules"), dict):
        raw["health"] = {**health, "rules": _over_defaults(health["rules"], _default_health_rules())}
    return raw


def _convert(raw: dict) -> Config:
    try:
        return msgspec.convert(_with_default_entries(raw), Config)
    except msgspec.ValidationError as exc:
        raise ConfigError(_path_of(exc), None, str(exc).split(" - at ")[0]) from None


def _path_of(exc: msgspec.ValidationError) -> str:
    text = str(exc)
    return text.split(" - at `$.")[-1].rstrip("`") if " - at `$." in text else "config"


# --- validation ----------------------------------------------------------------------------


def _require(ok: bool, field: str, value: object, why: str) -> None:
    if not ok:
        raise ConfigError(field, value, why)


BREAKER_COUNTS = ("failure_threshold", "half_open_max_calls", "success_threshold")
BREAKER_DURATIONS = ("recovery_timeout_s", "monitoring_period_s")


def check_breaker_field(prefix: str, name: str, value: object) -> None:
    """One tunable breaker field (`prefix` is e.g. "tiers.critical"); ConfigError naming it."""
    field = f"{prefix}.{name}"
    if name in BREAKER_COUNTS:
        whole = isinstance(value, int) and not isinstance(value, bool)
        _require(whole and value >= 1, field, value, "must be a whole number >= 1")  # type: ignore[operator]
    elif name in BREAKER_DURATIONS:
        number = isinstance(value, int | float) and not isinstance(value, bool)
        _require(number and math.isfinite(value) and value > 0, field, value,  # type: ignore[arg-type]
                 "must be a finite number of seconds > 0")
    else:
        raise ConfigError(field, None, f"unknown field; known: {', '.join(BREAKER_COUNTS + BREAKER_DURATIONS)}")


def check_breaker_config(prefix: str, t: BreakerConfig) -> None:
    for name in BREAKER_COUNTS + BREAKER_DURATIONS:
        check_breaker_field(prefix, name, getattr(t, name))


def validate(cfg: Config) -> None:
    if cfg.database_url:
        check_database_url(cfg.database_url, "database_url")
    if cfg.faults.database_url:
        check_database_url(cfg.faults.database_url, "faults.database_url")
    for name, url in cfg.database.priority_dsn.items():
        field = f"database.priority_dsn.{name}"
        _require(name in Priority.__members__, field, None,
                 f"unknown priority; expected one of {', '.join(Priority.__members__)}")
        check_database_url(url, field)
    _require(not cfg.database.priority_dsn or bool(cfg.database_url) or cfg.database.embedded,
             "database.priority_dsn", None, "needs database_url (DATABASE_URL) for the other priorities")
    _require(cfg.health_check_interval_s > 0, "health_check_interval_s", cfg.health_check_interval_s, "must be > 0")
    for tier in TIERS:
        _require(tier in cfg.tiers, f"tiers.{tier}", None, "the spec's tiers are required")
    for name, t in cfg.tiers.items():
        check_breaker_config(f"tiers.{name}", t)
    for name, pol in cfg.policies.items():
        _require(pol.limit >= 1, f"policies.{name}.limit", pol.limit, "must be >= 1")
        _require(pol.window_s > 0, f"policies.{name}.window_s", pol.window_s, "must be > 0")
        _require(pol.algorithm is None or pol.algorithm in RATE_ALGORITHMS, f"policies.{name}.algorithm",
                 pol.algorithm, f"expected one of {', '.join(RATE_ALGORITHMS)}")
        _require(pol.on_fleet_down is None or pol.on_fleet_down in FLEET_DOWN_MODES,
                 f"policies.{name}.on_fleet_down", pol.on_fleet_down, "expected share or local")
    q = cfg.queue
    _require(q.max_concurrent >= 1, "queue.max_concurrent", q.max_concurrent, "must be >= 1")
    _require(q.max_queue_size >= 0, "queue.max_queue_size", q.max_queue_size, "must be >= 0")
    _require(q.request_timeout_s > 0, "queue.request_timeout_s", q.request_timeout_s, "must be > 0")
    _require(0 <= q.min_idle <= q.max_concurrent, "queue.min_idle", q.min_idle, "expected 0 to queue.max_concurrent")
    _require(q.max_idle_s > 0, "queue.max_idle_s", q.max_idle_s, "must be > 0")
    db = cfg.database
    _require(db.connect_timeout_s > 0, "database.connect_timeout_s", db.connect_timeout_s, "must be > 0")
    _require(db.max_lifetime_s > 0, "database.max_lifetime_s", db.max_lifetime_s, "must be > 0")
    _require(db.statement_timeout_s is None or db.statement_timeout_s > 0,
             "database.statement_timeout_s", db.statement_timeout_s, "must be > 0")
    _require(cfg.limiter.max_keys >= 1, "limiter.max_keys", cfg.limiter.max_keys, "must be >= 1")
    th = cfg.thresholds
    _require(0 <= th.max_usage_percentage <= 100, "thresholds.max_usage_percentage", th.max_usage_percentage, "expected a number 0-100")
    _require(th.max_response_time_ms > 0, "thresholds.max_response_time_ms", th.max_response_time_ms, "must be > 0")
    _require(th.max_connection_count >= 1, "thresholds.max_connection_count", th.max_connection_count, "must be >= 1")
    _validate_health(cfg.health)
    validate_sinks(cfg.sinks)
    validate_fleet(cfg.fleet)
    for tier in cfg.fleet.shared_tiers:
        _require(tier in cfg.tiers, "fleet.share_breakers", tier, "not a configured tier")


def _validate_health(h: HealthConfig) -> None:
    _require(0 < h.max_error_rate <= 1, "health.max_error_rate", h.max_error_rate, "expected a fraction 0-1, > 0")
    _require(h.min_requests >= 1, "health.min_requests", h.min_requests, "must be >= 1")
    for name, r in h.rules.items():
        p = f"health.rules.{name}"
        _require(name in HEALTH_RULES, p, None, f"unknown health rule; known: {', '.join(HEALTH_RULES)}")
        _require(r.for_s is None or r.for_s >= 0, f"{p}.for_s", r.for_s, "must be >= 0")
        _require(r.clear_for_s is None or r.clear_for_s >= 0, f"{p}.clear_for_s", r.clear_for_s, "must be >= 0")
        _require(0 < r.clear_ratio <= 1, f"{p}.clear_ratio", r.clear_ratio, "expected a fraction 0-1, > 0")
