"""Helpers shared by the HTTP tests."""

from __future__ import annotations

import json

import httpx


def problem(r: httpx.Response) -> dict:
    """The RFC 9457 problem body of an error response, checked for its required fields."""
    assert r.headers["content-type"] == "application/problem+json"
    body = json.loads(r.content)
    assert body["status"] == r.status_code and body["detail"]
    return body
