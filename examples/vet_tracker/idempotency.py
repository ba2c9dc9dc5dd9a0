"""``Idempotency-Key`` for the reference service's writes (IETF httpapi draft's header field).

A client that lost the answer to a write (a 502/504 "outcome unknown", a
reset connection) retries with the same key and gets the first answer, not a
second write. How, all inside the write's own transaction:

1. ``pg_try_advisory_xact_lock(user, hashtext(key))``: false means another
   transaction (here or on another instance) holds this key now: 409, the
   first request is still running. The lock ends with that transaction, so
   it works behind PgBouncer's transaction mode too.
2. The stored row for (user, key), if younger than the retention: the same
   request fingerprint replays its status and body (``Idempotent-Replayed:
   true``); another fingerprint is 422.
3. Otherwise the write runs and its answer is stored in the same transaction
   (`remember`): committed together, or not at all.

Refusals (4xx verdicts) are not stored: nothing was written, so a retry
re-evaluates. Rows older than the retention are purged by the service.
"""

from __future__ import annotations

import hashlib
from typing import Any, NamedTuple

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from actors.http.problems import WebError

HEADER = "idempotency-key"
MAX_KEY_CHARS = 255


class Stored(NamedTuple):
    status: int
    body: bytes
    replayed: bool


def idempotency_key(request: Request) -> str | None:
    """The header's key (an sf-string, quotes optional), None if absent; 400 if malformed."""
    raw = request.headers.get(HEADER)
    if raw is None:
        return None
    key = raw.strip()
    if len(key) >= 2 and key[0] == key[-1] == '"':
        key = key[1:-1]
    if not 1 <= len(key) <= MAX_KEY_CHARS or not key.isascii() or not key.isprintable() or '"' in key:
        raise WebError(f"Idempotency-Key must be 1-{MAX_KEY_CHARS} printable ASCII characters", 400,
                       field="Idempotency-Key")
    return key


def fingerprint(request: Request, decoded: Any) -> str:
    """The request as the key remembers it: method, route and the decoded body (so spacing and
    field order do not matter)."""
    digest = hashlib.sha256(f"{request.method} {request.url.path}\n".encode())
    digest.update(msgspec.json.encode(decoded))
    return digest.hexdigest()


async def recall(tx: Any, q: Any, user: int, key: str, fp: str, ttl_s: float) -> Stored | WebError | None:
    """Inside the write's transaction: the stored answer, a refusal (409/422), or None (go ahead)."""
    if not await tx.fetchval(q.idem_lock, (user, key)):
        return WebError("A request with this Idempotency-Key is still running; retry after it ends", 409,
                        field="Idempotency-Key")
    row = await tx.fetchrow(q.idem_get, (user, key, ttl_s))
    if row is None:
        return None
    if row[0] != fp:
        return WebError("This Idempotency-Key was used for a different request", 422, field="Idempotency-Key")
    return Stored(row[1], row[2].encode(), True)


async def remember(tx: Any, q: Any, user: int, key: str, fp: str, status: int, body: bytes) -> Stored:
    await tx.execute(q.idem_put, (user, key, fp, status, body.decode()))
    return Stored(status, body, False)


async def write_once(db: Any, q: Any, request: Request, writer: tuple[int, str | None], decoded: Any,
                     work: Any, *, ttl_s: float, priority: int, tier: str) -> Response:
    """`work(tx) -> dict | WebError` in one transaction, with the Idempotency-Key's answer
    recalled or stored in that same transaction. `writer` is (user, nonce to check here or None)."""
    user, unsure = writer
    key = idempotency_key(request)
    fp = fingerprint(request, decoded) if key is not None else ""
    async with db.transaction(priority=priority, tier=tier) as tx:
        verdict = None
        if unsure is not None and await tx.fetchval(q.is_revoked, (unsure,)):
            verdict = login_first()
        elif key is not None:
            verdict = await recall(tx, q, user, key, fp, ttl_s)
        if verdict is None:
            verdict = await work(tx)
            if isinstance(verdict, dict):
                body = msgspec.json.encode(verdict)
                verdict = Stored(201, body, False) if key is None else \
                    await remember(tx, q, user, key, fp, 201, body)
    if isinstance(verdict, WebError):
        raise verdict
    return Response(verdict.body, status_code=verdict.status, media_type="application/json",
                    headers={"cache-control": "no-store",
                             **({"idempotent-replayed": "true"} if verdict.replayed else {})})


def login_first() -> WebError:
    exc = WebError("A login session is required: POST /api/auth/login, then send "
                   "Authorization: Bearer <token>", 401)
    exc.headers = {"www-authenticate": "Bearer"}
    return exc
