"""Who may see what at the HTTP edge: bearer tokens, allow-listed networks, login sessions.

Every secret comparison goes through `same_secret`, which compares SHA-256
digests with `hmac.compare_digest`: constant time whatever the lengths, so a
timing side channel tells an attacker neither the token nor its length.

Sessions are stateless: ``v1.<user id>.<expiry, epoch s>.<HMAC-SHA256>``,
signed with `SESSION_SECRET` (a random key per process when unset, so a
restart logs everyone out). Verifying one is a few microseconds and needs no
I/O, so the rate limiter can key on the user before the app runs.

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
from typing import Any

import trio

from actors.ratelimit_asgi import _networks, client_key
from messages.http_config import HttpConfig

SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1


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


class Sessions:
    """Signed, expiring login sessions (see the module doc)."""

    def __init__(self, secret: str | None, ttl_s: float) -> None:
        self._key = secret.encode() if secret else secrets.token_bytes(32)
        self.ttl_s = ttl_s

    def issue(self, user_id: int, now: float | None = None) -> str:
        expires = int((time.time() if now is None else now) + self.ttl_s)
        body = f"v1.{int(user_id)}.{expires}"
        return f"{body}.{self._sign(body)}"

    def user(self, token: bytes | str | None, now: float | None = None) -> int | None:
        """The user id a valid, unexpired token names; None otherwise."""
        if not token:
            return None
        text = token.decode("latin-1") if isinstance(token, bytes) else token
        parts = text.split(".")
        if len(parts) != 4 or parts[0] != "v1" or not parts[1].isdigit() or not parts[2].isdigit():
            return None
        body = ".".join(parts[:3])
        if not hmac.compare_digest(self._sign(body).encode(), parts[3].encode("latin-1")):
            return None
        if int(parts[2]) <= (time.time() if now is None else now):
            return None
        return int(parts[1])

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
