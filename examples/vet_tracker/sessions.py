"""The reference service's logins: login, logout (revocation) and the revocation cache.

Tokens are `actors.http.auth.Sessions` tokens, one per login. A logout stores
the token's nonce in ``revoked_sessions``; every instance reads the table into
`Sessions.revoked` each `REVOCATIONS_POLL_S`, and a write whose instance has
not read it for `web_auth.REVOCATIONS_MAX_AGE_S` checks its own session in its
transaction (`writer` tells it which nonce). The same loop purges expired
idempotency keys and revocations.
"""

from __future__ import annotations

from typing import Any

import trio
from loguru import logger
from starlette.requests import Request
from starlette.responses import Response

from actors.http.admin import json_response, read_json
from actors.http.auth import Sessions, bearer, verify_password_async
from actors.http.problems import WebError
from examples.vet_tracker.bodies import LoginIn
from examples.vet_tracker.idempotency import login_first
from examples.vet_tracker.routes import placed
from examples.vet_tracker.schema import DEMO_USERS
from messages.config import Priority

log = logger.bind(actor="service")

REVOCATIONS_POLL_S = 1.0     # well inside web_auth.REVOCATIONS_MAX_AGE_S
PURGE_EVERY_S = 300.0        # expired idempotency keys and revocations
_PUBLISHED = {(name, password) for name, _, password in DEMO_USERS}


class Logins:
    def __init__(self, mon: Any, q: Any, sessions: Sessions, *, demo_users: bool) -> None:
        self.mon, self.q, self.sessions, self.demo_users = mon, q, sessions, demo_users
        self._mine: set[str] = set()  # nonces revoked here since the last read of the table

    async def housekeeping(self, ready: trio.Event, idempotency_ttl_s: float) -> None:
        """Keep the revocation cache fresh; purge expired idempotency keys and revocations."""
        await ready.wait()
        last_purge = -PURGE_EVERY_S
        while True:
            await trio.sleep(REVOCATIONS_POLL_S)
            try:
                await self.read_revocations()
                if trio.current_time() - last_purge >= PURGE_EVERY_S:
                    await self.mon.db.execute(self.q.idem_purge, (idempotency_ttl_s,), priority=Priority.LOW)
                    await self.mon.db.execute(self.q.revoked_purge, priority=Priority.LOW)
                    last_purge = trio.current_time()
            except Exception as exc:  # the cache goes stale: writes look their session up themselves
                log.warning("Session revocations not read ({error})", error=type(exc).__name__)

    async def read_revocations(self) -> None:
        read_at = trio.current_time()
        rows = await self.mon.db.fetch(self.q.revoked, priority=Priority.LOW, tier="database")
        self.sessions.revoked = {r[0] for r in rows} | self._mine  # + logouts here during the read
        self._mine = set()
        self.sessions.revocations_read_at = read_at

    async def login(self, request: Request) -> Response:
        creds = await read_json(request, LoginIn)
        row = await self.mon.db.fetchrow(self.q.user, (creds.username,), **placed(request))
        published = not self.demo_users and (creds.username, creds.password) in _PUBLISHED
        if not await verify_password_async(creds.password, row[3] if row else None) or published:
            log.info("Login failed", username_known=row is not None)
            raise WebError("Unknown user or wrong password", 401)
        token = self.sessions.issue(row[0])
        return json_response({"token": token, "tokenType": "Bearer", "expiresIn": int(self.sessions.ttl_s),
                              "user": {"id": row[0], "username": row[1], "displayName": row[2]}})

    async def logout(self, request: Request) -> Response:
        """Revoke this session (only this one): 204; 401 if it is not a valid session."""
        claims = self.sessions.claims(bearer(request.scope))
        if claims is None or claims.nonce in self.sessions.revoked:
            raise login_first()
        await self.mon.db.execute(self.q.revoke, (claims.nonce, claims.user, claims.expires),
                                  **placed(request))
        self._mine.add(claims.nonce)
        self.sessions.revoked.add(claims.nonce)
        log.info("Logged out", user=claims.user)
        return Response(status_code=204, headers={"cache-control": "no-store"})

    def writer(self, request: Request) -> tuple[int, str | None]:
        """The user of a write: 401 without a live session, 415 unless the body is JSON. With the
        nonce to look up in the write's own transaction when the revocation cache is stale."""
        claims = self.sessions.claims(bearer(request.scope))
        if claims is None or claims.nonce in self.sessions.revoked:
            raise login_first()
        media = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if media != "application/json":
            raise WebError("Content-Type must be application/json", 415)
        fresh = self.sessions.revocations_fresh(trio.current_time())
        return claims.user, None if fresh else claims.nonce
