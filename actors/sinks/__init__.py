"""Alert sinks: where alerts go besides the event bus (the log, Alertmanager, Slack, webhooks).
The system starts them (`start_sinks`), so they live beside the kernel, not under `http/`."""

from actors.sinks.alertmanager import AlertmanagerSink
from actors.sinks.delivery import Delivery, SinkStatistics
from actors.sinks.formats import Context, signature, verify
from actors.sinks.webhook import (
           HttpSink,
           Sinks,
           build_sinks,
           log_alerts,
           slack_sink,
           start_sinks,
           webhook_sink,
)

__all__ = ["AlertmanagerSink", "Context", "Delivery", "HttpSink", "SinkStatistics", "Sinks", "build_sinks",
           "log_alerts", "signature", "slack_sink", "start_sinks", "verify", "webhook_sink"]
