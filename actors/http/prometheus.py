"""Prometheus exposition of the kernel's snapshots, through `prometheus_client`.

Theory of operation. `TriageCollector` is a custom collector on its own
`CollectorRegistry` (never the process-global one, so two systems in one
process do not collide and nothing else leaks into the page). Collectors are
synchronous and the actors are not, so a scrape first `await`s a `Frame` —
every actor's last published state (`mon.statistics()`, no round trip, never
the admission queue or the database), the health report, a fresh metrics
summary (`await mon.metrics()`, for the per-route series) and the database
monitor's latest probe — then renders it. Counters are the actors' own lifetime counts.
Latency is a histogram of cumulative bucket counts since start
(`actors.metrics_totals`: requests by route, method, status and outcome;
guarded calls by tier and outcome), so `histogram_quantile(0.95, sum by (le)
(rate(...[5m])))` adds a fleet together; the DDSketch windows' percentiles stay
for health and the dashboard. The fresh summary is asked without per-route
series (`routes=False`: no sketch merge per route) and with the totals, a copy of
a few integers per label set, so a scrape costs the actor little at the route cap.
The process collector (`process_*`) is on the same registry.

Names: ``triage_<component>_<what>[_unit][_total]``; label values are tier,
policy, priority, route templates (at most 200, then "other"), HTTP methods
(unknown ones are "OTHER"), statuses, outcomes and window names, all bounded.
`promtool check metrics` passes without a lint warning (a test runs it).
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from typing import Any

import msgspec
import trio
from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.utils import floatToGoString

from actors.http.fleet_metrics import FleetCollector
from actors.http.sink_metrics import SinkCollector
from messages.config import Priority

__all__ = ["Frame", "TriageCollector", "families", "new_registry"]

STATES = ("closed", "open", "half_open")
HEALTH = ("healthy", "degraded", "unhealthy")


class Frame(msgspec.Struct, frozen=True, kw_only=True):
    """Everything one scrape shows, captured at one instant."""

    system: Any                  # SystemSnapshot
    health: Any                  # HealthReport
    metrics: Any = None          # MetricsSnapshot
    database: Any = None         # DatabaseMetrics (None without a database)
    maintenance: bool = False
    extra: dict[str, float] = {}  # edge gauges: in-flight requests, SSE clients


class TriageCollector:
    """`registry = CollectorRegistry(); registry.register(TriageCollector(mon))`."""

    def __init__(self, mon: Any, extra: Any = None) -> None:
        self.mon = mon
        self._extra = extra or dict
        self._one_at_a_time = trio.CapacityLimiter(1)

    async def capture(self) -> Frame:
        mon = self.mon
        monitor = getattr(getattr(mon, "db", None), "monitor", None)
        return Frame(system=mon.statistics(), health=mon.health_report.value,
                     metrics=await mon.metrics(routes=False, totals=True),
                     database=monitor.metrics.value if monitor is not None else None,
                     maintenance=mon.in_maintenance, extra=self._extra())

    async def render(self, registry: CollectorRegistry, accept: str | None = None) -> tuple[bytes, str]:
        """One scrape: capture, then `registry` in the format `accept` asks for
        (Prometheus text 0.0.4 by default, OpenMetrics on request): (body, content type).

        The registry's other collectors (sinks, process) read live state, so they are collected
        here, on the trio thread; the frame is a frozen value, so its families are built and the
        page encoded in a worker thread: at the 200-route cap that is ~100 ms of Python, which
        would otherwise stall every request on the loop. One scrape at a time."""
        encoder, content_type = choose_encoder(accept or "")
        frame = await self.capture()
        live = list(registry.collect())  # this collector yields nothing outside `_Page`
        async with self._one_at_a_time:
            body = await trio.to_thread.run_sync(_encode_uncollected, encoder, _Page(frame, live))
        return body, content_type

    def describe(self) -> list[Metric]:
        return []  # nothing to check at registration: names are fixed and ours alone

    def collect(self) -> Iterator[Metric]:
        return iter(())  # a scrape's families come from its frame (`render`)


def _encode_uncollected(encoder: Any, page: Any) -> bytes:
    """`encoder(page)` with the cyclic collector paused: the page's tens of thousands of
    samples are alive while it is built, and every collection meanwhile would walk them all
    holding the GIL (a 15-25 ms stall of the loop). Built and dropped, they are freed by their
    reference counts; the collector resumes as it was."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        return encoder(page)
    finally:
        if enabled:
            gc.enable()


class _Page:
    """What `encoder(registry)` needs of a registry: one scrape's families."""

    def __init__(self, frame: Frame, live: list[Metric]) -> None:
        self.frame, self.live = frame, live

    def collect(self) -> Iterator[Metric]:
        yield from families(self.frame)
        yield from self.live


def families(frame: Frame) -> Iterator[Metric]:
    """Every family of one frame (no I/O, no trio: safe in a worker thread)."""
    yield from _health(frame)
    yield from _breakers(frame.system.breakers)
    yield from _queue(frame.system.queue)
    yield from _limiter(frame.system.limiter, frame.metrics)
    yield from _database(frame.database)
    if frame.metrics is not None:
        yield from _requests(frame.metrics)
        if frame.metrics.totals is not None:
            yield from _totals(frame.metrics.totals)
    yield from _alerts(frame.health.alerts)
    yield from _actors(frame.system.actors)


def _gauge(name: str, doc: str, labels: tuple[str, ...] = (), unit: str = "") -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, labels=list(labels), unit=unit)


def _counter(name: str, doc: str, labels: tuple[str, ...] = ()) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, labels=list(labels))


def _health(frame: Frame) -> Iterator[Metric]:
    status = _gauge("triage_health_status", "1 for the current health status", ("status",))
    for s in HEALTH:
        status.add_metric([s], 1.0 if frame.health.status == s else 0.0)
    yield status
    yield GaugeMetricFamily("triage_uptime_seconds", "Time since the monitoring system started",
                            value=frame.health.uptime_ms / 1000.0)
    yield GaugeMetricFamily("triage_maintenance_mode", "1 while maintenance mode is on",
                            value=1.0 if frame.maintenance else 0.0)
    memory = frame.health.metrics.get("resources", {}).get("memory")
    if memory is not None:  # process_resident_memory_bytes / this is the memory_high ratio
        yield GaugeMetricFamily("triage_memory_limit_bytes", "The memory this process may use: its "
                                "cgroup's limit when set, else the host's total memory",
                                value=float(memory["limit_bytes"]))
    for name, value in frame.extra.items():
        yield GaugeMetricFamily(f"triage_http_{name}", f"HTTP edge: {name.replace('_', ' ')}", value=value)


def _breakers(breakers: dict[str, Any]) -> Iterator[Metric]:
    state = _gauge("triage_breaker_state", "1 for the breaker's current state", ("tier", "state"))
    window = _gauge("triage_breaker_failures_in_window", "Failures inside the monitoring period", ("tier",))
    forced = _gauge("triage_breaker_forced_open", "1 while held open by an operator", ("tier",))
    counters = {field: _counter(f"triage_breaker_{field}", f"Breaker {field} since start", ("tier",))
                for field in ("calls", "successes", "failures", "ignored", "rejections", "openings")}
    for tier, b in breakers.items():
        for s in STATES:
            state.add_metric([tier, s], 1.0 if b.state == s else 0.0)
        window.add_metric([tier], b.failures_in_window)
        forced.add_metric([tier], 1.0 if b.forced else 0.0)
        for field, family in counters.items():
            family.add_metric([tier], getattr(b, field))
    yield state
    yield window
    yield forced
    yield from counters.values()


def _queue(q: Any) -> Iterator[Metric]:
    depth = _gauge("triage_queue_depth", "Requests waiting for a slot", ("priority",))
    for p in Priority:
        depth.add_metric([p.name], q.depth_by_priority.get(p.name, 0))
    yield depth
    yield GaugeMetricFamily("triage_queue_in_flight", "Slots held", value=q.in_flight)
    yield GaugeMetricFamily("triage_queue_max_concurrent", "Slots", value=q.max_concurrent)
    yield GaugeMetricFamily("triage_queue_max_size", "Waiting room", value=q.max_queue_size)
    yield GaugeMetricFamily("triage_queue_oldest_wait_seconds", "Wait of the oldest waiter",
                            value=q.oldest_wait_s)
    for field in ("admitted", "rejected", "displaced", "timed_out", "cancelled", "cleared"):
        yield CounterMetricFamily(f"triage_queue_{field}", f"Queue requests {field.replace('_', ' ')}",
                                  value=getattr(q, field))


def _limiter(lim: Any, metrics: Any) -> Iterator[Metric]:
    decisions = _counter("triage_ratelimit_decisions", "Rate-limit decisions", ("policy", "decision"))
    limit = _gauge("triage_ratelimit_limit", "Requests allowed per window", ("policy",))
    window = _gauge("triage_ratelimit_window_seconds", "Window length", ("policy",))
    keys = _gauge("triage_ratelimit_keys", "Keys tracked", ("policy",))
    per_hour = _gauge("triage_ratelimit_violations_last_hour", "Refusals in the last hour", ("policy",))
    violations = metrics.rate_limit_violations_per_hour if metrics is not None else {}
    for policy, p in lim.policies.items():
        decisions.add_metric([policy, "allowed"], p.allowed)
        decisions.add_metric([policy, "rejected"], p.rejected)
        limit.add_metric([policy], p.limit)
        window.add_metric([policy], p.window_s)
        keys.add_metric([policy], p.keys)
        per_hour.add_metric([policy], violations.get(policy, 0))
    yield from (decisions, limit, window, keys, per_hour)
    yield GaugeMetricFamily("triage_ratelimit_enabled", "1 when rate limiting is on",
                            value=1.0 if lim.enabled else 0.0)


def _database(db: Any) -> Iterator[Metric]:
    if db is None:
        return
    yield GaugeMetricFamily("triage_db_up", "1 when the last probe succeeded", value=1.0 if db.is_healthy else 0.0)
    for name, doc, value, scale in (
            ("triage_db_response_time_seconds", "Round trip of the last probe", db.response_time_ms, 1e-3),
            ("triage_db_connections", "Client backends on the server", db.connection_count, 1),
            ("triage_db_usage_ratio", "Connections / connection limit", db.usage_percentage, 1e-2),
            ("triage_db_max_connections", "The server's max_connections", db.max_connections, 1)):
        if value is not None:
            yield GaugeMetricFamily(name, doc, value=value * scale)
    yield GaugeMetricFamily("triage_db_connection_limit", "Connections the monitor counts against",
                            value=db.connection_limit)
    yield CounterMetricFamily("triage_db_probes", "Database probes", value=db.probes)
    yield CounterMetricFamily("triage_db_probe_failures", "Failed database probes", value=db.failures)


def _requests(m: Any) -> Iterator[Metric]:
    """The rolling windows, overall and per tier (per route: the counters and histograms)."""
    rate = _gauge("triage_requests_per_second", "Request rate over a rolling window", ("scope", "name", "window"))
    errors = _gauge("triage_request_error_ratio", "Error fraction over a rolling window", ("scope", "name", "window"))
    count = _gauge("triage_requests_in_window", "Requests in a rolling window", ("scope", "name", "window"))
    series = [("overall", m.overall)] + [("tier", s) for s in m.tiers.values()]
    for kind, s in series:
        for wname, w in s.windows.items():
            labels = [kind, s.name, wname]
            rate.add_metric(labels, w.rate_per_s)
            errors.add_metric(labels, w.error_rate)
            count.add_metric(labels, w.requests)
    yield from (rate, errors, count)
    activations = _gauge("triage_breaker_activations_last_hour", "Breaker openings in the last hour", ("tier",))
    for tier, n in m.breaker_activations_per_hour.items():
        activations.add_metric([tier], n)
    yield activations


def _totals(t: Any) -> Iterator[Metric]:
    """Histograms and counters since start (`messages.metrics.TotalsSnapshot`)."""
    bounds = [floatToGoString(b) for b in t.buckets_s] + ["+Inf"]
    for name, doc, labels, series in (
            ("triage_http_request", "HTTP requests", ("route", "method", "status", "outcome"), t.http),
            ("triage_guarded_call", "Guarded calls (mon.run, mon.guard, mon.db)", ("tier", "outcome"), t.calls)):
        latency = HistogramMetricFamily(f"{name}_duration_seconds", f"{doc}: latency", labels=list(labels))
        total = _counter(f"{name}s", f"{doc} since start", labels)
        for h in series:
            latency.add_metric(list(h.labels), list(zip(bounds, h.buckets, strict=True)), sum_value=h.sum)
            total.add_metric(list(h.labels), h.count)
        yield latency
        yield total
    moves = _counter("triage_breaker_transitions", "Breaker state changes", ("tier", "from_state", "to_state"))
    for tier, from_state, to_state, n in t.transitions:
        moves.add_metric([tier, from_state, to_state], n)
    yield moves
    queue = _counter("triage_queue_decisions", "Guarded calls admitted or refused by the queue",
                     ("priority", "decision"))
    for priority, decision, n in t.queue:
        queue.add_metric([priority, decision], n)
    yield queue


def _alerts(alerts: list[Any]) -> Iterator[Metric]:
    firing = _gauge("triage_alert_firing", "1 for each alert firing now", ("id", "rule", "severity"))
    for a in alerts:
        if a.state == "firing":
            firing.add_metric([a.id, a.rule, a.severity], 1.0)
    yield firing


def _actors(actors: dict[str, Any]) -> Iterator[Metric]:
    restarts = _counter("triage_actor_restarts", "Supervisor restarts", ("actor",))
    running = _gauge("triage_actor_running", "1 while the actor runs", ("actor",))
    for name, a in actors.items():
        restarts.add_metric([name], a.restarts)
        running.add_metric([name], 1.0 if a.running else 0.0)
    yield restarts
    yield running


def new_registry(collector: TriageCollector) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    registry.register(SinkCollector(collector.mon))  # the alert sinks' counters
    registry.register(FleetCollector(collector.mon))  # [fleet]: mode per policy, Redis round trips
    ProcessCollector(registry=registry)  # process_*: CPU, RSS, open files (empty off Linux)
    return registry
