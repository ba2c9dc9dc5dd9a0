"""The alert sinks' counters for `/metrics`: a second collector on Triage's registry.

It reads `mon.sinks.statistics()` (synchronous, the sinks' own counts), so a scrape
needs no round trip for it. Label values: the sink names and drop reasons, both fixed.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric


class SinkCollector:
    def __init__(self, mon: Any) -> None:
        self.mon = mon

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        sinks = getattr(self.mon, "sinks", None)
        stats = sinks.statistics() if sinks is not None else ()
        delivered = CounterMetricFamily("triage_alert_sink_deliveries", "Alerts a receiver accepted (2xx)",
                                        labels=["sink"])
        retries = CounterMetricFamily("triage_alert_sink_retries", "Retried POSTs (5xx, 429, network error)",
                                      labels=["sink"])
        dropped = CounterMetricFamily("triage_alert_sink_dropped", "Alerts never delivered, by reason",
                                      labels=["sink", "reason"])
        outbox = GaugeMetricFamily("triage_alert_sink_outbox", "Bodies waiting for delivery", labels=["sink"])
        for s in stats:
            delivered.add_metric([s.sink], s.delivered)
            retries.add_metric([s.sink], s.retries)
            for reason, n in sorted(s.dropped.items()):
                dropped.add_metric([s.sink, reason], n)
            outbox.add_metric([s.sink], s.outbox)
        yield from (delivered, retries, dropped, outbox)
