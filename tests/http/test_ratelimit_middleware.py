"""The rate-limiting ASGI edge: a real hypercorn (trio worker) on loopback, a real httpx client.

Real sockets, so real time (no autojump clock); nothing here waits on a clock:
the auth policy (5 per 900 s: a sliding window by default, one more every 180 s
under GCRA) does not move within a test.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import httpx
import hypercorn.config
import hypercorn.trio
import pytest
import trio
from loguru import logger

from actors import open_monitoring
from actors.http.ratelimit import (
    QUOTA_EXCEEDED,
    RateLimitMiddleware,
    RefusalSummary,
    _Routes,
    client_key,
)
from actors.limiter_core import RateDecision
from messages.config import Config, LimiterConfig, RatePolicy
from messages.errors import ConfigError

LOGIN = "/api/auth/login"
AUTH_ROUTES = {f"POST {LOGIN}": "auth"}


async def tiny_app(scope: dict, receive: Any, send: Any) -> None:
    """Answers every request 200 "ok" with a header of its own; speaks the lifespan protocol."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain"), (b"x-app", b"kept")]})
    await send({"type": "http.response.body", "body": b"ok"})


@asynccontextmanager
async def serving(config: Config | None = None, **middleware: Any) -> AsyncIterator[httpx.AsyncClient]:
    """The middleware around `tiny_app` behind hypercorn on 127.0.0.1:<free port>."""
    async with open_monitoring(config or Config()) as mon, trio.open_nursery() as nursery:
        hc = hypercorn.config.Config()
        hc.bind = ["127.0.0.1:0"]
        hc.graceful_timeout = 1.0
        shutdown = trio.Event()
        app = RateLimitMiddleware(tiny_app, mon, **middleware)
        binds = await nursery.start(partial(hypercorn.trio.serve, app, hc, shutdown_trigger=shutdown.wait))
        try:
            async with httpx.AsyncClient(base_url=binds[0]) as client:
                yield client
        finally:
            shutdown.set()


GCRA_AUTH = Config(policies={**Config().policies,
                             "auth": RatePolicy(limit=5, window_s=900.0, algorithm="gcra")})


def sf_ratelimit(response: httpx.Response, field: str = "ratelimit") -> list[tuple[str, dict]]:
    """The RateLimit / RateLimit-Policy field as an RFC 9651 List, read by `http_sfv` (a dev
    dependency; skips the rest of a test where it is not installed)."""
    sfv = pytest.importorskip("http_sfv")
    parsed = sfv.List()
    parsed.parse(response.headers[field].encode("ascii"))
    return [(item.value, dict(item.params)) for item in parsed]


def problem(response: httpx.Response) -> dict:
    assert response.headers["content-type"] == "application/problem+json"
    return json.loads(response.content)


@pytest.fixture
def warnings_logged():
    """WARNING records of the edge's logger, with the library's logging switched on."""
    records: list[dict] = []
    logger.enable("actors")
    sink = logger.add(lambda m: records.append(m.record), level="WARNING",
                      filter=lambda r: r["extra"].get("actor") == "ratelimit_asgi")
    try:
        yield records
    finally:
        logger.remove(sink)
        logger.disable("actors")


# -- over the wire ----------------------------------------------------------------------------

async def test_middleware_auth_policy_five_allowed_then_refused_with_all_header_families():
    async with serving(route_policies=AUTH_ROUTES) as client:
        for i in range(5):
            sent_at = time.time()
            r = await client.post(LOGIN)
            assert r.status_code == 200 and r.text == "ok"
            assert r.headers["x-app"] == "kept"
            assert r.headers["x-ratelimit-limit"] == "5"
            assert r.headers["x-ratelimit-remaining"] == str(4 - i)
            assert abs(int(r.headers["x-ratelimit-reset"]) - (sent_at + 900)) <= 1
            assert r.headers["ratelimit-policy"] == '"auth";q=5;w=900'
            # sliding window: more quota when the oldest counted request leaves, 900 s on
            assert r.headers["ratelimit"] == f'"auth";r={4 - i};t=900'
            assert "retry-after" not in r.headers and "x-ratelimit-retry-after" not in r.headers

        sent_at = time.time()
        r = await client.post(LOGIN)
        assert r.status_code == 429
        assert "x-app" not in r.headers  # the app was not called
        assert r.headers["retry-after"] == "900"
        assert r.headers["x-ratelimit-retry-after"] == "900"
        assert r.headers["x-ratelimit-limit"] == "5"
        assert r.headers["x-ratelimit-remaining"] == "0"
        assert abs(int(r.headers["x-ratelimit-reset"]) - (sent_at + 900)) <= 1
        assert r.headers["ratelimit-policy"] == '"auth";q=5;w=900'
        assert r.headers["ratelimit"] == '"auth";r=0;t=900'
        assert problem(r) == {
            "type": QUOTA_EXCEEDED, "title": "Too Many Requests", "status": 429,
            "detail": "Rate limit exceeded for policy 'auth'; retry after 900 s",
            "policy": "auth", "retry_after": 900, "violated-policies": ["auth"], "outcome": "rate_limited",
        }


async def test_middleware_gcra_auth_t_is_the_next_unit_not_the_full_restore():
    # The measurement: after 2 of 5, GCRA gives a unit back in 180 s (full at 360 s).
    async with serving(GCRA_AUTH, route_policies=AUTH_ROUTES) as client:
        await client.post(LOGIN)
        sent_at = time.time()
        r = await client.post(LOGIN)
        assert r.headers["ratelimit"] == '"auth";r=3;t=180'  # and, parsed as structured fields:
        assert sf_ratelimit(r) == [("auth", {"r": 3, "t": 180})]
        assert sf_ratelimit(r, "ratelimit-policy") == [("auth", {"q": 5, "w": 900})]
        assert abs(int(r.headers["x-ratelimit-reset"]) - (sent_at + 360)) <= 1  # quota full
        for _ in range(3):
            await client.post(LOGIN)
        refused = await client.post(LOGIN)
    assert refused.status_code == 429
    assert refused.headers["retry-after"] == "180"
    assert problem(refused)["type"] == QUOTA_EXCEEDED
    assert sf_ratelimit(refused) == [("auth", {"r": 0, "t": 180})]


async def test_middleware_sliding_window_t_parsed_by_a_structured_field_parser():
    async with serving(route_policies=AUTH_ROUTES) as client:
        first = await client.post(LOGIN)
        second = await client.post(LOGIN)
    assert sf_ratelimit(first) == [("auth", {"r": 4, "t": 900})]
    assert sf_ratelimit(second) == [("auth", {"r": 3, "t": 900})]  # the oldest leaves at +900
    assert sf_ratelimit(second, "ratelimit-policy") == [("auth", {"q": 5, "w": 900})]


async def test_middleware_forwarded_for_without_trusted_proxy_is_ignored():
    async with serving(route_policies=AUTH_ROUTES) as client:
        statuses = [(await client.post(LOGIN, headers={"x-forwarded-for": f"203.0.113.{n}"})).status_code
                    for n in range(6)]
    assert statuses == [200] * 5 + [429]


async def test_middleware_forwarded_for_from_trusted_proxy_keys_by_client():
    async with serving(route_policies=AUTH_ROUTES, trusted_proxies=["127.0.0.1/32"]) as client:
        for n in range(6):
            r = await client.post(LOGIN, headers={"x-forwarded-for": f"203.0.113.{n}"})
            assert (r.status_code, r.headers["x-ratelimit-remaining"]) == (200, "4")
        # One client behind the proxy is still limited, whatever it puts on the left.
        statuses = [(await client.post(LOGIN, headers={"x-forwarded-for": f"198.51.100.{n}, 192.0.2.9"}))
                    .status_code for n in range(6)]
    assert statuses == [200] * 5 + [429]


async def test_middleware_exempt_path_is_never_limited():
    async with serving(route_policies={"/api/*": "auth"}) as client:
        for _ in range(8):
            r = await client.get("/api/health")
            assert r.status_code == 200
            assert not any(h.startswith(("x-ratelimit", "ratelimit")) for h in r.headers)
        r = await client.get("/api/animals")
        assert r.headers["x-ratelimit-remaining"] == "4"


async def test_middleware_user_key_takes_precedence_over_address():
    def user(scope: dict) -> str | None:
        return dict(scope["headers"]).get(b"x-user-id", b"").decode() or None

    async with serving(route_policies=AUTH_ROUTES, user_key=user) as client:
        alice = [(await client.post(LOGIN, headers={"x-user-id": "alice"})).status_code for _ in range(6)]
        bob = await client.post(LOGIN, headers={"x-user-id": "bob"})
        anonymous = await client.post(LOGIN)
    assert alice == [200] * 5 + [429]
    assert (bob.status_code, bob.headers["x-ratelimit-remaining"]) == (200, "4")
    assert (anonymous.status_code, anonymous.headers["x-ratelimit-remaining"]) == (200, "4")


async def test_middleware_config_exempt_key_and_override_use_same_key_form():
    config = Config(limiter=LimiterConfig(
        exempt_keys=("ip:127.0.0.1",),
        overrides={"auth": {"user:vip": RatePolicy(limit=50, window_s=60.0)}}))

    def user(scope: dict) -> str | None:
        return dict(scope["headers"]).get(b"x-user-id", b"").decode() or None

    async with serving(config, route_policies=AUTH_ROUTES, user_key=user) as client:
        anonymous = [(await client.post(LOGIN)).status_code for _ in range(7)]
        vip = await client.post(LOGIN, headers={"x-user-id": "vip"})
    assert anonymous == [200] * 7
    assert vip.headers["x-ratelimit-limit"] == "50"
    assert vip.headers["x-ratelimit-remaining"] == "49"
    assert vip.headers["ratelimit-policy"] == '"auth";q=50;w=60'


async def test_middleware_cost_consumes_several_units():
    async with serving(route_policies=AUTH_ROUTES, cost=lambda scope: 2) as client:
        r = await client.post(LOGIN)
    assert r.headers["x-ratelimit-remaining"] == "3"
    assert r.headers["ratelimit"] == '"auth";r=3;t=900'  # sliding window: both units leave at +900
    async with serving(GCRA_AUTH, route_policies=AUTH_ROUTES, cost=lambda scope: 2) as client:
        r = await client.post(LOGIN)
    assert r.headers["x-ratelimit-remaining"] == "3"
    assert r.headers["ratelimit"] == '"auth";r=3;t=180'  # GCRA: one unit back every 180 s


async def test_middleware_cost_above_limit_is_429_saying_it_never_passes():
    async with serving(route_policies=AUTH_ROUTES, cost=lambda scope: 6) as client:  # auth: 5
        r = await client.post(LOGIN)
        after = await client.post(LOGIN, headers={"x-user-id": "other"})
    assert r.status_code == 429 and "retry-after" not in r.headers
    assert "can never be allowed" in r.json()["detail"] and r.json()["retry_after"] is None
    assert r.headers["x-ratelimit-remaining"] == "5"  # nothing was consumed
    assert after.status_code == 429


async def test_middleware_unrouted_without_default_policy_is_not_limited():
    async with serving(route_policies=AUTH_ROUTES, default_policy=None) as client:
        r = await client.get("/api/animals")
        login = await client.post(LOGIN)
    assert r.status_code == 200 and "x-ratelimit-limit" not in r.headers
    assert login.headers["x-ratelimit-limit"] == "5"


async def test_middleware_refusals_logged_as_one_summary_line(warnings_logged):
    refused: list[tuple[str, str, bool]] = []
    async with serving(route_policies=AUTH_ROUTES,
                       on_refusal=lambda p, k, d: refused.append((p, k, d.allowed))) as client:
        statuses = [(await client.post(LOGIN)).status_code for _ in range(10)]
    assert statuses == [200] * 5 + [429] * 5
    assert refused == [("auth", "ip:127.0.0.1", False)] * 5
    assert len(warnings_logged) == 1
    record = warnings_logged[0]
    assert "Rate limit" in record["message"]
    assert (record["extra"]["policy"], record["extra"]["refusals"]) == ("auth", 1)


# -- straight ASGI calls ----------------------------------------------------------------------

async def call(app: RateLimitMiddleware, scope: dict) -> list[dict]:
    sent: list[dict] = []

    async def receive() -> dict:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return sent


def http_scope(path: str = LOGIN, method: str = "POST") -> dict:
    return {"type": "http", "method": method, "path": path, "headers": [],
            "client": ("127.0.0.1", 50000)}


async def test_middleware_shutting_down_answers_503_problem():
    async with open_monitoring(Config()) as mon:
        app = RateLimitMiddleware(tiny_app, mon, route_policies=AUTH_ROUTES)
    sent = await call(app, http_scope())
    assert sent[0]["status"] == 503
    assert (b"content-type", b"application/problem+json") in sent[0]["headers"]
    body = json.loads(sent[1]["body"])
    assert (body["status"], body["title"]) == (503, "Service Unavailable")


async def test_middleware_non_http_scope_passes_through_untouched():
    seen: list[tuple] = []

    async def app(scope: dict, receive: Any, send: Any) -> None:
        seen.append((scope, receive, send))

    async with open_monitoring(Config()) as mon:
        middleware = RateLimitMiddleware(app, mon)
        scope = {"type": "websocket", "path": "/ws", "headers": [], "client": ("127.0.0.1", 1)}
        receive, send = object(), object()
        await middleware(scope, receive, send)
    assert seen == [(scope, receive, send)] and seen[0][0] is scope


async def test_middleware_unknown_policy_is_config_error():
    async with open_monitoring(Config()) as mon:
        with pytest.raises(ConfigError, match="route_policies"):
            RateLimitMiddleware(tiny_app, mon, route_policies={"/x": "nope"})
        with pytest.raises(ConfigError, match="default_policy"):
            RateLimitMiddleware(tiny_app, mon, default_policy="nope")
        with pytest.raises(ConfigError, match="trusted_proxies"):
            RateLimitMiddleware(tiny_app, mon, trusted_proxies=["not-a-net"])
        with pytest.raises(ConfigError, match="route_policies"):
            RateLimitMiddleware(tiny_app, mon, route_policies={"api/*": "auth"})


# -- pure parts -------------------------------------------------------------------------------

def scope_from(peer: str | None, *xff: str) -> dict:
    return {"type": "http", "client": None if peer is None else (peer, 1234),
            "headers": [(b"x-forwarded-for", v.encode()) for v in xff]}


@pytest.mark.parametrize(("peer", "xff", "trusted", "expected"), [
    # no trusted proxies: the header is ignored
    ("127.0.0.1", ["6.6.6.6"], [], "ip:127.0.0.1"),
    # trusted peer: the rightmost untrusted hop
    ("127.0.0.1", ["6.6.6.6, 203.0.113.7"], ["127.0.0.1/32"], "ip:203.0.113.7"),
    ("10.0.0.2", ["6.6.6.6, 203.0.113.7, 10.0.0.1"], ["10.0.0.0/8"], "ip:203.0.113.7"),
    # several header lines are one list, in order
    ("10.0.0.2", ["6.6.6.6", "203.0.113.7, 10.0.0.1"], ["10.0.0.0/8"], "ip:203.0.113.7"),
    # untrusted peer: its header is ignored even if it names trusted hops
    ("198.51.100.1", ["203.0.113.7, 10.0.0.1"], ["10.0.0.0/8"], "ip:198.51.100.1"),
    # every hop trusted: the leftmost one
    ("10.0.0.2", ["10.0.0.3, 10.0.0.1"], ["10.0.0.0/8"], "ip:10.0.0.3"),
    # no header from a trusted peer: the peer
    ("10.0.0.2", [], ["10.0.0.0/8"], "ip:10.0.0.2"),
    # malformed entries never become keys; the walk does not go past one
    ("10.0.0.2", ["203.0.113.7, garbage"], ["10.0.0.0/8"], "ip:10.0.0.2"),
    ("10.0.0.2", ["6.6.6.6, 10.0.0.9, unknown, 10.0.0.1"], ["10.0.0.0/8"], "ip:10.0.0.1"),
    ("10.0.0.2", ["garbage, 203.0.113.7"], ["10.0.0.0/8"], "ip:203.0.113.7"),
    ("10.0.0.2", ["203.0.113.7,, "], ["10.0.0.0/8"], "ip:203.0.113.7"),
    # ports and brackets
    ("10.0.0.2", ["203.0.113.7:4711"], ["10.0.0.0/8"], "ip:203.0.113.7"),
    ("10.0.0.2", ["[2001:DB8:0::1]:443"], ["10.0.0.0/8"], "ip:2001:db8::1"),
    # IPv6 peers and proxies, canonical form
    ("::1", ["2001:db8::7"], ["::1/128"], "ip:2001:db8::7"),
    ("2001:0db8:0000::0001", [], [], "ip:2001:db8::1"),
    # IPv4-mapped IPv6 is the IPv4 address, for keys and for trust
    ("::ffff:127.0.0.1", ["::ffff:203.0.113.7"], ["127.0.0.1/32"], "ip:203.0.113.7"),
    ("127.0.0.1", ["203.0.113.7"], ["::ffff:127.0.0.0/104"], "ip:203.0.113.7"),
    # no client address
    (None, ["203.0.113.7"], ["10.0.0.0/8"], "ip:unknown"),
])
def test_client_key_forwarded_for_walk_gives_expected_key(peer, xff, trusted, expected):
    assert client_key(scope_from(peer, *xff), trusted) == expected


def test_routes_precedence_exact_then_longest_prefix_then_method():
    routes = _Routes({"/api/*": "general", "POST /api/*": "heavy", "/api/auth/*": "auth",
                      "/api/auth/login": "login", "GET /api/auth/login": "get-login"}, "r")
    assert routes.match("GET", "/api/auth/login") == "get-login"
    assert routes.match("POST", "/api/auth/login") == "login"
    assert routes.match("POST", "/api/auth/logout") == "auth"
    assert routes.match("POST", "/api/animals") == "heavy"
    assert routes.match("GET", "/api/animals") == "general"
    assert routes.match("GET", "/other") is None


def test_refusal_summary_one_line_per_window_with_count_since_last():
    summary = RefusalSummary(every_s=10.0)
    assert summary.note("auth", 0.0) == 1
    assert [summary.note("auth", t) for t in (1.0, 2.0, 9.9)] == [None, None, None]
    assert summary.note("general", 5.0) == 1  # each policy has its own line
    assert summary.note("auth", 10.0) == 4
    assert summary.note("auth", 15.0) is None
    assert summary.note("auth", 25.0) == 2


def test_rate_headers_refusal_retry_after_is_at_least_one_second():
    from actors.http.ratelimit import rate_headers

    d = RateDecision(allowed=False, policy="auth", limit=5, remaining=0, reset_at=0.0,
                     reset_after_s=0.2, more_at=0.2, retry_after_s=0.2)
    headers = dict(rate_headers(d, 900.0, 0.2, 1000.5, 0.2))
    assert headers[b"retry-after"] == b"1"
    assert headers[b"x-ratelimit-reset"] == b"1001"
    assert headers[b"ratelimit"] == b'"auth";r=0;t=1'
    assert math.isfinite(float(headers[b"x-ratelimit-reset"]))
