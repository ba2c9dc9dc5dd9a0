"""IndexedRouter answers exactly as Starlette's Router: first full match, else 405, else redirect/404."""

from __future__ import annotations

import httpx
import pytest
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Mount, Route

from actors.http.routing import IndexedRouter


def _answer(text):
    async def endpoint(request):
        return PlainTextResponse(text + " " + request.url.path)
    return endpoint


ROUTES = [Route("/a", _answer("a-get"), methods=["GET"]),
          Route("/a", _answer("a-post"), methods=["POST"]),
          Route("/items/{x}", _answer("param"), methods=["GET"]),
          Route("/items/fixed", _answer("fixed"), methods=["GET"]),
          Mount("/m", routes=[Route("/inner", _answer("inner"))]),
          Route("/m/inner", _answer("shadowed")),
          Route("/slash/", _answer("slash"))]


def _apps():
    plain = Starlette(routes=list(ROUTES))
    indexed = Starlette(routes=list(ROUTES))
    indexed.router = IndexedRouter(indexed.router.routes)
    return plain, indexed


@pytest.mark.parametrize(("method", "path"), [
    ("GET", "/a"), ("POST", "/a"), ("PUT", "/a"), ("GET", "/items/fixed"), ("GET", "/items/7"),
    ("POST", "/items/fixed"), ("GET", "/m/inner"), ("GET", "/slash"), ("GET", "/nowhere")])
async def test_same_answer_as_starlette(method, path):
    answers = []
    for app in _apps():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
            r = await client.request(method, path)
            answers.append((r.status_code, r.text, r.headers.get("allow"), r.headers.get("location")))
    assert answers[0] == answers[1]
    assert answers[1][0] in (200, 307, 404, 405)


async def test_routes_added_later_are_found():
    _, app = _apps()
    app.add_route("/late", _answer("late"), methods=["GET"])
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        await client.get("/a")  # the index exists before the route is added
        app.add_route("/later", _answer("later"), methods=["GET"])
        assert (await client.get("/late")).text == "late /late"
        assert (await client.get("/later")).text == "later /later"
