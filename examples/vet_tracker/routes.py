"""The reference service's route table: the only place a route's policy, priority and tier live.

`DemoService.table()` builds the Starlette routes from it; the app derives the
rate limiter's policy map and the edge's tier map from the same rows; and each
endpoint puts its own row in the request's scope, so a handler's guarded call
takes its priority and tier from there (`placed(request)`) — never a second
copy of the constant.
"""

from __future__ import annotations

from typing import Any

import msgspec
from starlette.requests import Request

from messages.config import Priority

ROUTE_SPEC = "vet_tracker.route"   # the scope key an endpoint stores its row under


class RouteSpec(msgspec.Struct, frozen=True):
    method: str
    path: str
    policy: str
    priority: Priority
    tier: str
    handler: str            # the name of the method that answers it


ROUTES = (
    RouteSpec("POST", "/api/auth/login", "auth", Priority.HIGH, "critical", "login"),
    RouteSpec("POST", "/api/auth/logout", "general", Priority.HIGH, "critical", "logout"),
    RouteSpec("GET", "/api/animals", "general", Priority.NORMAL, "database", "animals"),
    RouteSpec("GET", "/api/trpc/animals.list", "general", Priority.NORMAL, "database", "trpc_animals"),
    RouteSpec("POST", "/api/administrations", "recording", Priority.CRITICAL, "critical", "administer"),
    RouteSpec("GET", "/api/reports/adherence", "heavy", Priority.LOW, "analytics", "adherence"),
    RouteSpec("POST", "/api/inventory/import", "upload", Priority.BATCH, "batch", "import_inventory"),
)


def placed(request: Request) -> dict[str, Any]:
    """The guarded call's priority and tier, from the request's row of the route table."""
    spec: RouteSpec = request.scope[ROUTE_SPEC]
    return {"priority": spec.priority, "tier": spec.tier}
