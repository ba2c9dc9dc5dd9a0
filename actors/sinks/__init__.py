"""Alert sinks: where alerts go besides the event bus (the log, webhooks). The alert actor's
system starts them (`start_sinks`), so they live beside the kernel, not under `http/`."""

from actors.sinks.webhook import WebhookSink, log_alerts, start_sinks

__all__ = ["WebhookSink", "log_alerts", "start_sinks"]
