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

from examples.vet_tracker.bodies import AdministrationIn, LoginIn, LotIn
from messages.config import Priority

ROUTE_SPEC = "vet_tracker.route"   # the scope key an endpoint stores its row under


class RouteSpec(msgspec.Struct, frozen=True):
    method: str
    path: str
    policy: str
    priority: Priority
    tier: str
    handler: str            # the name of the method that answers it
    summary: str = ""       # the OpenAPI document's one line
    body: Any = None        # the request body's msgspec type, None without a body
    status: int = 200       # the success answer's status
    fallback: bool = False  # answers from cache when its breaker is open: the edge must not shed it


ROUTES = (
    RouteSpec("POST", "/api/auth/login", "auth", Priority.HIGH, "critical", "login",
              "Log in: a session token", LoginIn),
    RouteSpec("POST", "/api/auth/logout", "general", Priority.HIGH, "critical", "logout",
              "Log out: revoke the session", status=204),
    RouteSpec("GET", "/api/animals", "general", Priority.NORMAL, "database", "animals",
              "The animals, with their owners (stale when the database is out)", fallback=True),
    RouteSpec("GET", "/api/trpc/animals.list", "general", Priority.NORMAL, "database", "trpc_animals",
              "The animals, tRPC style", fallback=True),
    RouteSpec("POST", "/api/administrations", "recording", Priority.CRITICAL, "critical", "administer",
              "Record a dose given (login, Idempotency-Key)", AdministrationIn, 201),
    RouteSpec("GET", "/api/reports/adherence", "heavy", Priority.LOW, "analytics", "adherence",
              "Doses expected vs given per animal and medication"),
    RouteSpec("POST", "/api/inventory/import", "upload", Priority.BATCH, "batch", "import_inventory",
              "Import lots of medication (login, Idempotency-Key)", list[LotIn], 201),
)


def placed(request: Request) -> dict[str, Any]:
    """The guarded call's priority and tier, from the request's row of the route table."""
    spec: RouteSpec = request.scope[ROUTE_SPEC]
    return {"priority": spec.priority, "tier": spec.tier}
