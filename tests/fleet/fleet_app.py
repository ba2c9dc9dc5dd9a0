"""A minimal service for the multi-process fleet tests: three routes under three policies, no SQL.

    triage serve --app tests.fleet.fleet_app:create
"""

from __future__ import annotations

from typing import Any

from starlette.responses import Response
from starlette.routing import Route

from actors.http.app import create_app
from examples.vet_tracker.service import ServiceRoute
from messages.config import Priority


async def _ok(request: Any) -> Response:
    return Response(b'{"ok":true}', media_type="application/json")


class FleetProbe:
    lifespan = None

    def table(self) -> list[ServiceRoute]:
        return [ServiceRoute("GET", "/g", "general", Priority.NORMAL, "database", Route("/g", _ok)),
                ServiceRoute("GET", "/a", "auth", Priority.HIGH, "critical", Route("/a", _ok)),
                ServiceRoute("GET", "/r", "recording", Priority.CRITICAL, "critical", Route("/r", _ok))]


def create(mon: Any, http: Any) -> Any:
    return create_app(mon, http, service=FleetProbe())
