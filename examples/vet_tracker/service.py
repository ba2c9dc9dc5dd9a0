"""The reference service: a small veterinary medication tracker on real tables.

It exists to exercise every rate-limit policy, breaker tier and admission
priority the way a real service would:

    route                              policy     priority  tier
    POST /api/auth/login               auth       HIGH      critical
    POST /api/auth/logout              general    HIGH      critical
    GET  /api/animals                  general    NORMAL    database
    GET  /api/trpc/animals.list        general    NORMAL    database
    POST /api/administrations          recording  CRITICAL  critical
    GET  /api/reports/adherence        heavy      LOW       analytics
    POST /api/inventory/import         upload     BATCH     batch

Failures map to HTTP in `actors.http.edge` (429, 503 + Retry-After, 500
without SQL text). The animal list has a fallback: when its breaker is open
or the database cannot be reached it serves its last good result, marked
``stale: true`` and ``X-Triage-Stale: true``.

Writes (administrations, inventory import) need a login session (401) and a
JSON body (415, so a cross-site form cannot post one), and accept an
``Idempotency-Key`` (`examples.vet_tracker.idempotency`). Demo logins are seeded only in
development or with DEMO_USERS=1 (refused with NODE_ENV=production).

Only database trouble may count against a breaker: a handler never raises
its own refusals (409, 422) inside a guarded call, it returns a verdict and
raises once the call is over.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

import msgspec
import psycopg
import trio
from loguru import logger
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from actors.http.admin import json_response, read_json
from actors.http.auth import Sessions, hash_password_async
from actors.http.problems import WebError, exchange
from actors.pg.database import DatabaseUnavailable, QueryTimeout
from examples.vet_tracker.bodies import AdministrationIn, Id, LotIn
from examples.vet_tracker.idempotency import write_once
from examples.vet_tracker.routes import ROUTE_SPEC, ROUTES, RouteSpec, placed
from examples.vet_tracker.schema import DEMO_USERS, Queries, setup
from examples.vet_tracker.sessions import Logins
from messages.config import Priority
from messages.errors import CircuitOpen, ConfigError
from messages.http_config import DEMO_IN_PRODUCTION, HttpConfig
from messages.outcome import Outcome

log = logger.bind(actor="service")

STALE_CACHE_KEYS = 64
MAX_IMPORT_ITEMS = 1000
SETUP_BACKOFF_MAX_S = 30.0

class ServiceRoute(msgspec.Struct, frozen=True):
    method: str
    path: str
    policy: str
    priority: Priority
    tier: str
    route: Any
    summary: str = ""
    body: Any = None        # the request body's msgspec type (the OpenAPI document shows it)
    status: int = 200       # the success answer's status (ditto)
    fallback: bool = False  # serves cached data when its breaker is open (the edge never sheds it then)


class AnimalsQuery(msgspec.Struct, forbid_unknown_fields=True):
    limit: Annotated[int, msgspec.Meta(ge=1, le=100)] = 50
    offset: Annotated[int, msgspec.Meta(ge=0, le=1_000_000)] = 0
    owner: Id | None = None


DEFAULT_ANIMALS = AnimalsQuery()  # no query string at all: no parsing, no conversion


class Owner(msgspec.Struct, frozen=True):
    id: int
    name: str


class Animal(msgspec.Struct, frozen=True, rename={"born_on": "bornOn"}):
    """One animal as the list shows it (msgspec encodes a Struct faster than a dict)."""

    id: int
    name: str
    species: str
    born_on: Any
    owner: Owner


class DemoService:
    """`create_app(mon, http, service=DemoService(mon, http))`."""

    def __init__(self, mon: Any, http: HttpConfig | None = None) -> None:
        http = http or HttpConfig()
        production = mon.config.environment == "production"
        if production and http.demo_users:
            raise ConfigError("DEMO_USERS", True, DEMO_IN_PRODUCTION)
        self.demo_users = http.demo_users if http.demo_users is not None else \
            mon.config.environment == "development"
        self.idempotency_ttl_s = http.idempotency_ttl_s
        self.mon, self.q = mon, Queries(http.demo_schema)
        self.sessions = Sessions(http.session_secret, http.session_ttl_s)
        self.logins = Logins(mon, self.q, self.sessions, demo_users=self.demo_users)
        self.ready = trio.Event()
        self._stale: OrderedDict[tuple, Any] = OrderedDict()

    routes: tuple[RouteSpec, ...] = ROUTES

    def table(self) -> list[ServiceRoute]:
        return [ServiceRoute(r.method, r.path, r.policy, r.priority, r.tier,
                             Route(r.path, self._ready_first(r), methods=[r.method]), r.summary, r.body,
                             r.status, r.fallback)
                for r in self.routes]

    def _handler(self, name: str) -> Any:
        return getattr(self.logins if name in ("login", "logout") else self, name)

    # -- start-up ---------------------------------------------------------------------------

    @asynccontextmanager
    async def lifespan(self, app: Any) -> AsyncIterator[None]:
        """Tables first (one attempt before serving), then retries in the background."""
        async with trio.open_nursery() as nursery:
            await nursery.start(self._keep_ready)
            nursery.start_soon(self.logins.housekeeping, self.ready, self.idempotency_ttl_s)
            yield
            nursery.cancel_scope.cancel()

    async def _keep_ready(self, *, task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
        delay = 1.0
        while True:
            try:
                seeded = await setup(self.mon.db, self.q, self._hashes, demo_users=self.demo_users)
                await self.logins.read_revocations()
            except Exception as exc:
                if not self.mon.db.configured:
                    log.error("Database not configured: the reference service stays unavailable")
                    task_status.started()
                    return
                log.warning("Database setup of schema {schema} failed ({error}); retrying in {delay:.0f} s",
                            schema=self.q.schema, error=type(exc).__name__, delay=delay)
                task_status.started()
                task_status = trio.TASK_STATUS_IGNORED
                await trio.sleep(delay)
                delay = min(delay * 2, SETUP_BACKOFF_MAX_S)
                continue
            log.info("Service schema {schema} ready{seeded}", schema=self.q.schema,
                     seeded=" (seeded demo data)" if seeded else "")
            self.ready.set()
            task_status.started()
            return

    @staticmethod
    async def _hashes() -> list[str]:
        return [await hash_password_async(password) for _, _, password in DEMO_USERS]

    def _ready_first(self, spec: RouteSpec) -> Any:
        """The endpoint: refuses until the schema is ready; puts the route's row in the scope."""
        handler = self._handler(spec.handler)

        async def endpoint(request: Request) -> Response:
            if not self.ready.is_set():
                raise WebError("The service is starting: its database schema is not ready", 503,
                               retry_after_s=5)
            request.scope[ROUTE_SPEC] = spec
            return await handler(request)
        endpoint.__name__ = spec.handler
        return endpoint

    # -- routes -----------------------------------------------------------------------------

    async def animals(self, request: Request) -> Response:
        params = dict(request.query_params) if request.scope["query_string"] else None
        animals, stale = await self._animals(request, params)
        return json_response({"animals": animals, "stale": stale}, headers=_stale_header(stale))

    async def trpc_animals(self, request: Request) -> Response:
        raw = request.query_params.get("input")
        try:
            params = msgspec.json.decode(raw) if raw else {}
        except msgspec.DecodeError:
            raise WebError("input is not valid JSON", 400) from None
        animals, stale = await self._animals(request, params if isinstance(params, dict) else {"input": params})
        return json_response({"result": {"data": animals}, "stale": stale}, headers=_stale_header(stale))

    async def _animals(self, request: Request, params: dict[str, Any] | None) -> tuple[list[Animal], bool]:
        query = _query(params, AnimalsQuery) if params else DEFAULT_ANIMALS
        key = (query.limit, query.offset, query.owner)
        try:
            rows = await self.mon.db.fetch(self.q.animals, {"limit": query.limit, "offset": query.offset,
                                                           "owner": query.owner}, **placed(request))
        except (CircuitOpen, DatabaseUnavailable, QueryTimeout, psycopg.OperationalError):
            if key not in self._stale:
                raise
            ex = exchange(request)
            ex.outcome, ex.stale = Outcome.OK, True  # degraded, but answered: counted as stale
            return self._stale[key], True
        animals = [Animal(r[0], r[1], r[2], r[3], Owner(r[4], r[5])) for r in rows]
        self._stale[key] = animals
        self._stale.move_to_end(key)
        while len(self._stale) > STALE_CACHE_KEYS:
            self._stale.popitem(last=False)
        return animals, False

    async def administer(self, request: Request) -> Response:
        writer = self.logins.writer(request)
        given = await read_json(request, AdministrationIn)
        try:
            return await write_once(self.mon.db, self.q, request, writer, given,
                                    lambda tx: self._record(tx, given, writer[0]), ttl_s=self.idempotency_ttl_s,
                                    **placed(request))
        except psycopg.errors.ForeignKeyViolation:
            raise WebError(f"Unknown animalId {given.animal_id}", 422) from None

    async def _record(self, tx: Any, given: AdministrationIn, user: int) -> dict | WebError:
        lot = await tx.fetchval(self.q.pick_lot, (given.medication_id, given.dose))
        if lot is None:
            if not await tx.fetchval(self.q.medication_exists, (given.medication_id,)):
                return WebError(f"Unknown medicationId {given.medication_id}", 422)
            return WebError(f"Not enough unexpired inventory of medication {given.medication_id} "
                            f"for a dose of {given.dose}", 409)
        remaining = await tx.fetchval(self.q.take, (given.dose, lot))
        row = await tx.fetchrow(self.q.record, (given.animal_id, given.medication_id, lot, given.dose,
                                                given.given_at, user, given.notes))
        return {"id": row[0], "givenAt": row[1], "inventoryId": lot, "remaining": remaining,
                "recordedBy": user}

    async def adherence(self, request: Request) -> Response:
        days = _query(dict(request.query_params), _DaysQuery).days
        rows = await self.mon.db.fetch(self.q.adherence, {"days": days}, **placed(request))
        report = [{"animal": {"id": r[0], "name": r[1]}, "medication": {"id": r[2], "name": r[3]},
                   "expected": r[4], "given": r[5], "units": r[6], "adherencePct": r[7]} for r in rows]
        return json_response({"days": days, "rows": report})

    async def import_inventory(self, request: Request) -> Response:
        writer = self.logins.writer(request)
        lots = await read_json(request, list[LotIn])
        if not lots:
            raise WebError("Expected a non-empty JSON array of lots", 422)
        if len(lots) > MAX_IMPORT_ITEMS:
            raise WebError(f"At most {MAX_IMPORT_ITEMS} lots per import", 413, limit=MAX_IMPORT_ITEMS)
        if len({(lot.medication_id, lot.lot) for lot in lots}) != len(lots):
            raise WebError("The same (medicationId, lot) appears twice", 422)
        columns = ([x.medication_id for x in lots], [x.lot for x in lots], [x.quantity for x in lots],
                   [x.expires_on for x in lots])
        try:
            return await write_once(self.mon.db, self.q, request, writer, lots, lambda tx: self._import(tx, columns),
                                    ttl_s=self.idempotency_ttl_s, **placed(request))
        except psycopg.errors.ForeignKeyViolation:
            raise WebError("A lot names an unknown medicationId", 422) from None
        except psycopg.errors.NumericValueOutOfRange:  # a race past the check below
            raise WebError(f"A lot's quantity would pass {2**31 - 1}", 422) from None

    async def _import(self, tx: Any, columns: tuple[list, ...]) -> dict | WebError:
        over = await tx.fetchval(self.q.overflowing_lot, columns[:3])  # locks those lots
        if over is not None:
            return WebError(f"Lot {over!r}: the quantity in stock would pass {2**31 - 1}", 422, lot=over)
        inserted = [r[0] for r in await tx.fetch(self.q.import_lots, columns)]
        return {"imported": len(inserted), "created": sum(inserted), "updated": len(inserted) - sum(inserted)}


class _DaysQuery(msgspec.Struct, forbid_unknown_fields=True):
    days: Annotated[int, msgspec.Meta(ge=1, le=90)] = 7


def _query(params: dict[str, Any], kind: Any) -> Any:
    """Query parameters (strings) as `kind`: 422 naming the parameter that does not fit."""
    try:
        return msgspec.convert(params, kind, strict=False)
    except msgspec.ValidationError as exc:
        raise WebError(f"Invalid query: {exc}", 422) from None


def _stale_header(stale: bool) -> dict[str, str] | None:
    return {"x-triage-stale": "true"} if stale else None
