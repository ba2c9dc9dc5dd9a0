"""Who may see what at the HTTP edge: bearer tokens, allow-listed networks, login sessions.

Every secret comparison goes through `same_secret`, which compares SHA-256
digests with `hmac.compare_digest`: constant time whatever the lengths, so a
timing side channel tells an attacker neither the token nor its length.

Sessions: ``v2.<user id>.<expiry, epoch s>.<nonce>.<HMAC-SHA256>``, signed
with `SESSION_SECRET` (a random key per process when unset, so a restart
logs everyone out). The nonce (`secrets.token_urlsafe`) makes every login's
token its own, so one can be revoked (logout) without the others. Verifying
is a few microseconds with no I/O (the rate limiter keys on the user before
the app runs): revoked nonces live in the database and are read into
`Sessions.revoked`, an in-process cache the service refreshes every second;
when that cache is older than `REVOCATIONS_MAX_AGE_S`, a write looks its
own session up in its transaction instead. The dashboard's cookie is a ``view.0.…`` token of
the same form, never the health token itself.

Passwords: scrypt (n=2^14, r=8, p=1, 16 MiB) with a 16-byte random salt,
stored as ``scrypt$n$r$p$<salt b64>$<hash b64>``. Hashing takes tens of
milliseconds, so callers run it in a worker thread (`hash_password_async`,
`verify_password_async`); an unknown user is checked against a dummy hash so
the answer takes as long as for a known one.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import ipaddress
import secrets
import time
from typing import Any, NamedTuple

import trio

from actors.http.ratelimit import _networks, client_key
from messages.http_config import HttpConfig

SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
USER, VIEWER = "v2", "view"     # token kinds: a login session, a dashboard viewer (cookie)
REVOCATIONS_MAX_AGE_S = 5.0     # a logout reaches every instance within this


def bearer(scope: dict[str, Any]) -> bytes | None:
    """The token of an ``Authorization: Bearer <token>`` header, or None."""
    for name, value in scope.get("headers", ()):
        if name == b"authorization":
            scheme, _, token = value.partition(b" ")
            if scheme.lower() == b"bearer" and token.strip():
                return token.strip()
            return None
    return None


def same_secret(given: bytes, expected: bytes) -> bool:
    return hmac.compare_digest(hashlib.sha256(given).digest(), hashlib.sha256(expected).digest())


class Access:
    """The edge's access rules, from `HttpConfig` and the environment."""

    def __init__(self, http: HttpConfig, production: bool) -> None:
        self.production = production
        self._health = [t.encode() for t in (http.health_token, http.admin_token) if t]
        admin = http.effective_admin_token
        self._admin = admin.encode() if admin else None
        self._allow = _networks(http.allow_networks)
        self._proxies = _networks(http.trusted_proxies)

    @property
    def admin_enabled(self) -> bool:
        return self._admin is not None

    def sees_details(self, scope: dict[str, Any]) -> bool:
        """Full health, metrics and alerts: anyone outside production; in production a
        health/admin bearer token or a client in an allow-listed network."""
        if not self.production:
            return True
        token = bearer(scope)
        if token is not None and any(same_secret(token, t) for t in self._health):
            return True
        return bool(self._allow) and self._allowed_network(scope)

    def token_sees_details(self, token: bytes) -> bool:
        """A health/admin token given some other way (the dashboard's cookie)."""
        return any(same_secret(token, t) for t in self._health)

    def https(self, scope: dict[str, Any]) -> bool:
        """The client reached us over HTTPS: directly, or per a trusted proxy's X-Forwarded-Proto."""
        if scope.get("scheme") == "https":
            return True
        proto = next((v for k, v in scope.get("headers", ()) if k == b"x-forwarded-proto"), None)
        if proto is None or proto.split(b",")[0].strip().lower() != b"https" or not self._proxies:
            return False
        peer = (scope.get("client") or ("",))[0]
        try:
            return any(ipaddress.ip_address(peer) in net for net in self._proxies)
        except ValueError:
            return False

    def _allowed_network(self, scope: dict[str, Any]) -> bool:
        key = client_key(scope, self._proxies)
        try:
            addr = ipaddress.ip_address(key.removeprefix("ip:"))
        except ValueError:
            return False
        return any(addr in net for net in self._allow)

    def admin(self, scope: dict[str, Any]) -> int | None:
        """None if the request may use admin routes, else the HTTP status to refuse with."""
        if self._admin is None:
            return 403
        token = bearer(scope)
        if token is None:
            return 401
        return None if same_secret(token, self._admin) else 403


class Claims(NamedTuple):
    kind: str
    user: int
    expires: int
    nonce: str


class Sessions:
    """Signed, expiring, revocable login sessions (see the module doc)."""

    def __init__(self, secret: str | None, ttl_s: float) -> None:
        self._key = secret.encode() if secret else secrets.token_bytes(32)
        self.ttl_s = ttl_s
        self.revoked: set[str] = set()         # nonces; the service refreshes it from the database
        self.revocations_read_at: float | None = None  # trio time of the last refresh; None: never

    def issue(self, user_id: int, now: float | None = None) -> str:
        return self._issue(USER, int(user_id), now)

    def issue_viewer(self, now: float | None = None) -> str:
        """The dashboard cookie: a signed viewer session, never the health token itself."""
        return self._issue(VIEWER, 0, now)

    def _issue(self, kind: str, subject: int, now: float | None) -> str:
        expires = int((time.time() if now is None else now) + self.ttl_s)
        body = f"{kind}.{subject}.{expires}.{secrets.token_urlsafe(16)}"
        return f"{body}.{self._sign(body)}"

    def claims(self, token: bytes | str | None, now: float | None = None, kind: str = USER) -> Claims | None:
        """What a valid, unexpired token of `kind` says (revoked or not); None otherwise."""
        if not token:
            return None
        text = token.decode("latin-1") if isinstance(token, bytes) else token
        parts = text.split(".")
        if len(parts) != 5 or parts[0] != kind or not parts[1].isdigit() or not parts[2].isdigit():
            return None
        body = ".".join(parts[:4])
        if not hmac.compare_digest(self._sign(body).encode(), parts[4].encode("latin-1")):
            return None
        if int(parts[2]) <= (time.time() if now is None else now):
            return None
        return Claims(kind, int(parts[1]), int(parts[2]), parts[3])

    def user(self, token: bytes | str | None, now: float | None = None) -> int | None:
        """The user id a valid, unexpired, unrevoked token names; None otherwise."""
        c = self.claims(token, now)
        return None if c is None or c.nonce in self.revoked else c.user

    def viewer(self, token: bytes | str | None) -> bool:
        return self.claims(token, kind=VIEWER) is not None

    def revocations_fresh(self, now: float) -> bool:
        """True when the revocation cache was read from the database at most `REVOCATIONS_MAX_AGE_S` ago."""
        read = self.revocations_read_at
        return read is not None and now - read <= REVOCATIONS_MAX_AGE_S

    def user_key(self, scope: dict[str, Any]) -> str | None:
        """For `RateLimitMiddleware(user_key=...)`: the session's user id, or None."""
        user = self.user(bearer(scope))
        return None if user is None else str(user)

    def _sign(self, body: str) -> str:
        mac = hmac.new(self._key, body.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac).rstrip(b"=").decode()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def hash_password(password: str, salt: bytes | None = None) -> str:
    salt = secrets.token_bytes(16) if salt is None else salt
    digest = hashlib.scrypt(password.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, dklen=32)
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${_b64(salt)}${_b64(digest)}"


def verify_password(password: str, stored: str) -> bool:
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        expected = base64.b64decode(digest)
        got = hashlib.scrypt(password.encode(), salt=base64.b64decode(salt), n=int(n), r=int(r),
                             p=int(p), dklen=len(expected))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, expected)


@functools.cache
def _dummy() -> str:
    """Checked when the user does not exist, so the answer takes as long as for one that does."""
    return hash_password("no such user", salt=b"\0" * 16)


async def hash_password_async(password: str) -> str:
    return await trio.to_thread.run_sync(hash_password, password)


async def verify_password_async(password: str, stored: str | None) -> bool:
    ok = await trio.to_thread.run_sync(lambda: verify_password(password, stored or _dummy()))
    return ok and stored is not None
