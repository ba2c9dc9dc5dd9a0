"""`[fleet]` on /metrics: a collector on Triage's registry reading `mon.fleet_handle.statistics()`
(synchronous, no round trip). Nothing without `[fleet]`.

    triage_fleet_mode{policy, mode}            1 for the policy's mode (global | share | local), else 0
    triage_fleet_instances                     live instances, from the heartbeats
    triage_fleet_redis_up                      0 while the Redis breaker is open
    triage_fleet_redis_rtt_seconds             Redis round trips (histogram; a pipeline is one)
    triage_fleet_redis_errors_total            failed or timed-out Redis calls
    triage_fleet_leases_total, _fallbacks_total  leases sent; decisions made without Redis
    triage_fleet_fallback_admitted_total{policy}  what those decisions admitted (Redis late or down)
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

MODES = ("global", "share", "local")


class FleetCollector:
    def __init__(self, mon: Any) -> None:
        self.mon = mon

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        fleet = getattr(self.mon, "fleet_handle", None)
        if fleet is None:
            return
        s = fleet.statistics()
        mode = GaugeMetricFamily("triage_fleet_mode", "1 for the policy's fleet mode (global: limits "
                                 "shared through Redis; share: L / N each; local: L each)",
                                 labels=["policy", "mode"])
        for policy, current in sorted(s["modes"].items()):
            for m in MODES:
                mode.add_metric([policy, m], 1.0 if m == current else 0.0)
        yield mode
        yield GaugeMetricFamily("triage_fleet_instances", "Live instances (heartbeats)", value=s["live"])
        yield GaugeMetricFamily("triage_fleet_redis_up", "0 while the Redis breaker is open",
                                value=1.0 if s["redis_up"] else 0.0)
        buckets = [(str(b), float(n)) for b, n in zip(s["rtt_bounds"], s["rtt_buckets"], strict=True)]
        buckets.append(("+Inf", float(s["round_trips"])))
        rtt = HistogramMetricFamily("triage_fleet_redis_rtt_seconds", "Redis round-trip latency")
        rtt.add_metric([], buckets, sum_value=s["rtt_sum"])
        yield rtt
        yield CounterMetricFamily("triage_fleet_redis_errors", "Failed or timed-out Redis calls", value=s["errors"])
        yield CounterMetricFamily("triage_fleet_leases", "Token leases granted by Redis", value=s["leases"])
        yield CounterMetricFamily("triage_fleet_fallbacks", "Rate decisions made without Redis (share "
                                  "or local)", value=s["fallbacks"])
        admitted = CounterMetricFamily("triage_fleet_fallback_admitted", "Requests (cost) the fallback "
                                       "admitted without Redis's word, per policy", labels=("policy",))
        for policy, n in sorted(s["fallback_admitted"].items()):
            admitted.add_metric([policy], n)
        yield admitted

