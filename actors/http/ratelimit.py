"""The rate-limiting edge: a plain ASGI middleware in front of any trio ASGI app.

Theory of operation. For each HTTP request the middleware picks a policy from
the route (or none: the app is called untouched), builds the key, asks the
limiter once (`Monitoring.check_rate_nowait`: a lent key decided in place, no
checkpoint, since the request goes on to its handler; else `check_rate`), and
then either calls the app with a
`send` that adds the rate-limit header fields to `http.response.start`, or
answers 429 itself with an RFC 9457 problem body, without calling the app.

Keys are built in the form the configuration uses (`Config.limiter.exempt_keys`
and `Config.limiter.overrides` are applied by the limiter, by key):

- ``user:<id>`` when `user_key(scope)` names an authenticated user;
- ``ip:<addr>`` otherwise: the address in canonical `ipaddress` form
  (``ip:203.0.113.7``, ``ip:2001:db8::1``; an IPv4-mapped IPv6 peer is its
  IPv4 address), ``ip:unknown`` when the server gives no client address.

`X-Forwarded-For` is read only when the direct peer is inside
`trusted_proxies`. The client is then the rightmost entry that is not itself
a trusted proxy: every entry to the right of it was written by a proxy we
trust, everything to its left by the client, who can write anything. An entry
that is not an address is never a key, and the walk stops there (whatever is
to its left was written by a hop nobody vouches for): the client is then the
nearest trusted hop. Without trusted proxies the header is ignored, so
inventing one does not buy a fresh quota.

Header fields. The spec's ``X-RateLimit-Limit``, ``-Remaining``, ``-Reset``
(epoch seconds, rounded up) on every limited response, plus
``X-RateLimit-Retry-After`` and ``Retry-After`` (seconds, rounded up, >= 1) on
a refusal; and the IETF fields of draft-ietf-httpapi-ratelimit-headers (field
syntax unchanged since -08): ``RateLimit-Policy: "auth";q=5;w=900`` and
``RateLimit: "auth";r=3;t=…``. ``t`` follows -10 (issue #149 of the draft,
"reset parameter clarity"): the seconds "until additional quota ... is made
available", not until the quota is full, because "when implementing sliding
window algorithms, more quota may become available before the full window
period expires". So ``t`` is `RateDecision.more_at`: under a sliding window the
instant the oldest counted request leaves the window, under GCRA the instant the
next unit comes back (every window/limit); ``t=0`` with the whole quota left.
``X-RateLimit-Reset`` keeps the spec's meaning, the instant the quota is full.
On a refusal of cost 1 ``t`` equals ``Retry-After``. A 429 carries the draft's
problem type ``https://iana.org/assignments/http-problem-types#quota-exceeded``
with ``violated-policies``. A header field the app set itself is left alone,
not duplicated.
"""

from __future__ import annotations

import functools
import ipaddress
import math
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, Generic, TypeVar

import msgspec
import trio
from loguru import logger

from actors.limiter_core import RateDecision
from messages.errors import ActorCrashed, ConfigError, ShuttingDown
from messages.outcome import Outcome

__all__ = ["QUOTA_EXCEEDED", "RateLimitMiddleware", "RefusalSummary", "client_key", "rate_headers"]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Scope = dict[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[dict]], Callable[[dict], Awaitable[None]]], Awaitable[None]]
Headers = list[tuple[bytes, bytes]]
V = TypeVar("V")

PEER_KEYS = 4096    # peer addresses whose key is remembered (cleared when full)
POLICY_MEMO = 4096  # (method, path) pairs whose policy is remembered (cleared when full)
_UNKNOWN = object()
LOG_EVERY_S = 10.0  # at most one refusal summary line per policy per this many seconds
_MAPPED = ipaddress.ip_network("::ffff:0:0/96")

log = logger.bind(actor="ratelimit_asgi")


# -- keys -------------------------------------------------------------------------------------

def client_key(scope: Scope, trusted_proxies: Iterable[str | IPNetwork] = ()) -> str:
    """``ip:<addr>`` of the client that sent the request (see the module doc)."""
    return _client_key(scope, _networks(trusted_proxies))


def _client_key(scope: Scope, nets: tuple[IPNetwork, ...]) -> str:
    client = scope.get("client")
    if not client:
        return "ip:unknown"
    peer = _ip(str(client[0]))
    if peer is None:
        return f"ip:{client[0]}"
    if nets and _trusted(peer, nets):
        peer = _walk_forwarded(peer, _forwarded_for(scope), nets)
    return f"ip:{peer}"


def _walk_forwarded(peer: IPAddress, entries: list[str], nets: tuple[IPNetwork, ...]) -> IPAddress:
    """From the right: the first untrusted hop; else the nearest trusted one."""
    client = peer
    for entry in reversed(entries):
        if not entry.strip():
            continue  # empty list elements are legal in HTTP lists
        hop = _ip(entry)
        if hop is None:
            break
        client = hop
        if not _trusted(hop, nets):
            break
    return client


def _forwarded_for(scope: Scope) -> list[str]:
    values = [v.decode("latin-1") for k, v in scope.get("headers", ()) if k == b"x-forwarded-for"]
    return ",".join(values).split(",") if values else []


def _ip(text: str) -> IPAddress | None:
    """An address from ``a.b.c.d``, ``a.b.c.d:port``, ``v6``, ``[v6]`` or ``[v6]:port``."""
    host = text.strip()
    if host.startswith("["):
        host, sep, rest = host[1:].partition("]")
        if not sep or (rest and not (rest[0] == ":" and rest[1:].isdigit())):
            return None
    elif host.count(":") == 1:
        host, _, port = host.partition(":")
        if not port.isdigit():
            return None
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        return None
    if addr.version == 6 and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def _trusted(addr: IPAddress, nets: tuple[IPNetwork, ...]) -> bool:
    return any(addr in net for net in nets)


def _networks(specs: Iterable[str | IPNetwork]) -> tuple[IPNetwork, ...]:
    nets = []
    for spec in specs:
        try:
            net = spec if not isinstance(spec, str) else ipaddress.ip_network(spec.strip(), strict=False)
        except ValueError:
            raise ConfigError("trusted_proxies", spec, "not an IP network (e.g. 10.0.0.0/8)") from None
        if net.version == 6 and net.subnet_of(_MAPPED) and net.prefixlen >= 96:
            net = ipaddress.ip_network(f"{net.network_address.ipv4_mapped}/{net.prefixlen - 96}")
        nets.append(net)
    return tuple(nets)


# -- routes -----------------------------------------------------------------------------------

class _Routes(Generic[V]):
    """``"METHOD /path"`` or ``"/path"``; a path ending in ``*`` is a prefix.

    Precedence: an exact path before a prefix, a longer prefix before a shorter
    one, and at each step a pattern naming the method before one that does not.
    """

    def __init__(self, patterns: Mapping[str, V], field: str) -> None:
        self._exact: dict[tuple[str | None, str], V] = {}
        prefixes: list[tuple[str, str | None, V]] = []
        for pattern, value in patterns.items():
            method, path = _parse_pattern(pattern, field)
            if path.endswith("*"):
                prefixes.append((path[:-1], method, value))
            else:
                self._exact[(method, path)] = value
        prefixes.sort(key=lambda p: (-len(p[0]), p[1] is None))
        self._prefixes = prefixes

    def match(self, method: str, path: str) -> V | None:
        exact = self._exact
        if exact:
            hit = exact.get((method, path), exact.get((None, path)))
            if hit is not None:
                return hit
        for prefix, m, value in self._prefixes:
            if (m is None or m == method) and path.startswith(prefix):
                return value
        return None


def _parse_pattern(pattern: str, field: str) -> tuple[str | None, str]:
    method, _, path = pattern.strip().rpartition(" ")
    path = path.strip()
    if not path.startswith("/") or "*" in path[:-1] or (method and not method.strip().isalpha()):
        raise ConfigError(field, pattern, 'expected "/path", "/prefix*" or "METHOD /path"')
    return (method.strip().upper() or None), path


# -- header fields and bodies (pure) ----------------------------------------------------------

QUOTA_EXCEEDED = "https://iana.org/assignments/http-problem-types#quota-exceeded"


def rate_headers(d: RateDecision, window_s: float, reset_after_s: float, wall_now: float,
                 more_after_s: float) -> Headers:
    """The header fields for decision `d`; `reset_after_s` (quota full) and `more_after_s`
    (more quota: the draft's ``t``) count from the response instant."""
    name, limit_field, policy_field = _policy_fields(d.policy, d.limit, window_s)
    reset = wall_now + reset_after_s if reset_after_s > 0.0 else wall_now
    more = math.ceil(more_after_s) if more_after_s > 0.0 else 0
    out = [
        limit_field,
        (b"x-ratelimit-remaining", b"%d" % d.remaining),
        (b"x-ratelimit-reset", b"%d" % math.ceil(reset)),
        policy_field,
        (b"ratelimit", b"%s;r=%d;t=%d" % (name, d.remaining, more)),
    ]
    if not d.allowed:
        retry = retry_after(d)
        if retry is not None:  # a cost above the limit: retrying never helps, so no hint
            out += [(b"x-ratelimit-retry-after", b"%d" % retry), (b"retry-after", b"%d" % retry)]
    return out


@functools.lru_cache(maxsize=256)
def _policy_fields(policy: str, limit: int, window_s: float) -> tuple[bytes, tuple[bytes, bytes],
                                                                     tuple[bytes, bytes]]:
    """What a policy's fields share on every response: its sf-string name, the limit field and
    the `RateLimit-Policy` field (a few distinct (policy, limit, window) triples per process)."""
    name = _sf_string(policy)
    window = max(1, math.ceil(window_s))
    return (name, (b"x-ratelimit-limit", b"%d" % limit),
            (b"ratelimit-policy", b"%s;q=%d;w=%d" % (name, limit, window)))


def retry_after(d: RateDecision) -> int | None:
    """Whole seconds to wait; None when waiting never helps (the cost exceeds the limit)."""
    return max(1, math.ceil(d.retry_after_s)) if math.isfinite(d.retry_after_s) else None


def _sf_string(text: str) -> bytes:
    """An RFC 8941 sf-string (printable ASCII only; checked at construction)."""
    return b'"' + text.replace("\\", "\\\\").replace('"', '\\"').encode("ascii") + b'"'


def _problem(status: int, title: str, detail: str, type_: str = "about:blank",
             **extra: Any) -> tuple[Headers, bytes]:
    body = msgspec.json.encode({"type": type_, "title": title, "status": status,
                                "detail": detail, **extra})
    headers = [(b"content-type", b"application/problem+json"),
               (b"content-length", b"%d" % len(body)),
               (b"cache-control", b"no-store")]
    return headers, body


_OURS = frozenset({b"x-ratelimit-limit", b"x-ratelimit-remaining", b"x-ratelimit-reset",
                   b"ratelimit-policy", b"ratelimit", b"x-ratelimit-retry-after", b"retry-after"})


def _merge_headers(own: Iterable[tuple[bytes, bytes]], extra: Headers) -> Headers:
    own = list(own)
    taken = [k for k, _ in own if k.lower() in _OURS]  # usually none: a plain concatenation
    if not taken:
        return own + extra
    names = {k.lower() for k in taken}
    return own + [(k, v) for k, v in extra if k not in names]


# -- refusal log ------------------------------------------------------------------------------

class RefusalSummary:
    """Which refusals to report: at most one line per policy per `every_s`.

    `note` counts one refusal and returns the count to report (every refusal
    since the last line, this one included), or None while the policy's last
    line is younger than `every_s`. The first refusal of a policy is reported
    at once. A count still pending when refusals stop goes out with the next
    refusal of that policy; the limiter's own counters hold the totals.
    """

    def __init__(self, every_s: float = LOG_EVERY_S) -> None:
        self.every_s = every_s
        self._pending: dict[str, int] = {}
        self._last_at: dict[str, float] = {}

    def note(self, policy: str, now: float) -> int | None:
        count = self._pending.get(policy, 0) + 1
        last = self._last_at.get(policy)
        if last is not None and now - last < self.every_s:
            self._pending[policy] = count
            return None
        self._pending[policy] = 0
        self._last_at[policy] = now
        return count


# -- the middleware ---------------------------------------------------------------------------

class RateLimitMiddleware:
    """Rate limiting for a trio ASGI app, by route policy and client or user key.

    `route_policies` maps ``"METHOD /path"`` or ``"/path"`` (exact, or a prefix
    ending in ``*``) to a policy name; routes it does not name use
    `default_policy` (None: not limited). `exempt_paths` (same syntax) are never
    limited. `trusted_proxies` are CIDR networks whose `X-Forwarded-For` is
    believed. `user_key(scope)` returns the authenticated user's id or None;
    `cost(scope)` the units a request consumes (default 1); `on_refusal(policy,
    key, decision)` is called for every refusal. Non-HTTP scopes pass through.
    If the monitoring system is shutting down, requests it would limit get 503.
    """

    def __init__(self, app: ASGIApp, mon: Any, *,
                 route_policies: Mapping[str, str] | None = None,
                 default_policy: str | None = "general",
                 exempt_paths: Iterable[str] = ("/api/health", "/metrics"),
                 trusted_proxies: Iterable[str] = (),
                 user_key: Callable[[Scope], str | None] | None = None,
                 cost: Callable[[Scope], int] | None = None,
                 on_refusal: Callable[[str, str, RateDecision], None] | None = None) -> None:
        self.app, self.mon = app, mon
        self.default_policy = default_policy
        self._routes = _Routes(dict(route_policies or {}), "route_policies")
        self._exempt = _Routes(dict.fromkeys(exempt_paths, True), "exempt_paths")
        self._nets = _networks(trusted_proxies)
        self._user_key, self._cost, self._on_refusal = user_key, cost, on_refusal
        self._summary = RefusalSummary()
        self._peer_keys: dict[Any, str] = {}  # peer address -> its key ("" for a trusted proxy)
        self._policies: dict[tuple[str, str], str | None] = {}  # (method, path) -> policy_for's answer
        self._windows, self._override_windows = _windows(mon.config)
        for policy in (route_policies or {}).values():
            _check_policy(policy, self._windows, "route_policies")
        if default_policy is not None:
            _check_policy(default_policy, self._windows, "default_policy")

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        policy = self.policy_for(scope)
        if policy is None:
            return await self.app(scope, receive, send)
        try:
            key = self.key_for(scope)
            cost = self._cost(scope) if self._cost else 1
            try:  # a lent key: decided here, no checkpoint (the request reaches one soon enough)
                decision = self.mon.check_rate_nowait(policy, key, cost)
            except trio.WouldBlock:
                decision = await self.mon.check_rate(policy, key, cost)
        except (ShuttingDown, ActorCrashed):
            return await _answer(send, 503, *_problem(
                503, "Service Unavailable", "Rate limiting is unavailable; retry shortly"))
        except Exception:
            log.exception("rate limit check failed", policy=policy)
            return await _answer(send, 500, *_problem(500, "Internal Server Error", "Internal error"))
        window_s = self._window(policy, key)
        if not decision.allowed:
            return await self._refuse(scope, send, policy, key, decision, window_s)
        await self.app(scope, receive, _RateHeaderSend(send, decision, window_s))

    def policy_for(self, scope: Scope) -> str | None:
        """The policy limiting this request, or None."""
        method, path = scope.get("method", "GET"), scope.get("path", "")
        memo = self._policies
        policy = memo.get((method, path), _UNKNOWN)
        if policy is _UNKNOWN:  # first time for this (method, path): remembered (a bounded memo)
            policy = self._policy_for(method.upper(), path)
            if len(memo) >= POLICY_MEMO:
                memo.clear()
            memo[(method, path)] = policy
        return policy

    def _policy_for(self, method: str, path: str) -> str | None:
        if self._exempt.match(method, path):
            return None
        policy = self._routes.match(method, path)
        return self.default_policy if policy is None else policy

    def key_for(self, scope: Scope) -> str:
        """``user:<id>`` for an authenticated user, else ``ip:<addr>``."""
        user = self._user_key(scope) if self._user_key is not None else None
        if user:
            return f"user:{user}"
        client = scope.get("client")
        if not client:
            return "ip:unknown"
        # The peer's own key, parsed once per address (a bounded memo: cleared when full). A
        # trusted proxy's requests are keyed by their X-Forwarded-For, which is read each time.
        key = self._peer_keys.get(client[0])
        if key is None:
            key = _client_key({"client": client}, self._nets)
            trusted = bool(self._nets) and (peer := _ip(str(client[0]))) is not None and _trusted(peer, self._nets)
            key = "" if trusted else key
            if len(self._peer_keys) >= PEER_KEYS:
                self._peer_keys.clear()
            self._peer_keys[client[0]] = key
        return key or _client_key(scope, self._nets)

    async def _refuse(self, scope: Scope, send: Any, policy: str, key: str, d: RateDecision, window_s: float) -> None:
        retry = retry_after(d)
        detail = (f"Rate limit exceeded for policy {policy!r}; retry after {retry} s" if retry is not None
                  else f"Request cost exceeds the limit of policy {policy!r}: it can never be allowed")
        headers, body = _problem(429, "Too Many Requests", detail, QUOTA_EXCEEDED, policy=policy,
                                 retry_after=retry, outcome=Outcome.RATE_LIMITED,
                                 **{"violated-policies": [policy]})
        state = scope.get("triage")  # the edge's RequestState
        if state is not None:  # mounted behind Triage's edge: the request's outcome, for the metrics
            state.outcome = Outcome.RATE_LIMITED
        now = trio.current_time()
        refusals = self._summary.note(policy, now)
        if refusals is not None:
            log.warning("Rate limit exceeded for policy {policy}: {refusals} request(s) refused "
                        "since the last report", policy=policy, refusals=refusals)
        if self._on_refusal is not None:
            try:
                self._on_refusal(policy, key, d)
            except Exception:
                log.exception("on_refusal hook failed", policy=policy)
        extra = rate_headers(d, window_s, d.reset_at - now, time.time(), d.more_at - now)
        await _answer(send, 429, headers + extra, body)

    def _window(self, policy: str, key: str) -> float:
        per_key = self._override_windows.get(policy)
        if per_key is not None and key in per_key:
            return per_key[key]
        return self._windows[policy]


class _RateHeaderSend:
    """`send`, adding the decision's header fields to ``http.response.start`` (once; the body
    messages after it pass straight through)."""

    __slots__ = ("_send", "_decision", "_window_s", "_started")

    def __init__(self, send: Any, decision: RateDecision, window_s: float) -> None:
        self._send, self._decision, self._window_s, self._started = send, decision, window_s, False

    async def __call__(self, message: dict) -> None:
        if self._started or message["type"] != "http.response.start":
            return await self._send(message)
        self._started = True
        d, now = self._decision, trio.current_time()
        extra = rate_headers(d, self._window_s, d.reset_at - now, time.time(), d.more_at - now)
        await self._send({**message, "headers": _merge_headers(message.get("headers", ()), extra)})


async def _answer(send: Any, status: int, headers: Headers, body: bytes) -> None:
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _windows(config: Any) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    windows = {name: p.window_s for name, p in config.policies.items()}
    overrides = {pol: {k: p.window_s for k, p in keys.items()}
                 for pol, keys in config.limiter.overrides.items()}
    return windows, overrides


def _check_policy(policy: str, windows: Mapping[str, float], field: str) -> None:
    if policy not in windows:
        raise ConfigError(field, policy, f"unknown policy; known: {', '.join(windows)}")
    if not (policy.isascii() and policy.isprintable()):
        raise ConfigError(field, policy, "a policy name in a header must be printable ASCII")
