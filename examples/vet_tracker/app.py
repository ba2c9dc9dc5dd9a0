"""The reference service as a `triage serve --app` factory: `examples.vet_tracker.app:create`.

A factory takes the running `Monitoring` handle and the edge's `HttpConfig` and returns the
ASGI app to serve, normally `actors.http.app.create_app(mon, http, service=...)`.
"""

from __future__ import annotations

from actors import Monitoring
from actors.http.app import TriageApp, create_app
from examples.vet_tracker.service import DemoService
from messages.http_config import HttpConfig


def create(mon: Monitoring, http: HttpConfig) -> TriageApp:
    return create_app(mon, http, service=DemoService(mon, http))
