"""The fleet tests need a real Redis: without one they are skipped, loudly (and under
TRIAGE_NO_SKIP=1, as in CI, that skip is a failure)."""

from __future__ import annotations

import socket
from urllib.parse import urlparse

import pytest

from tests.fleet.redis_helpers import REDIS_URL

INSTALL_REDIS = ("Redis is not answering at {url} (Debian: apt-get install redis-server; .ci/run "
                 "starts it; TRIAGE_TEST_REDIS_URL names another)")


def _redis_answers() -> bool:
    u = urlparse(REDIS_URL)
    try:
        with socket.create_connection((u.hostname or "127.0.0.1", u.port or 6379), timeout=2) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


_ANSWERS: list[bool] = []


@pytest.fixture(autouse=True)
def _needs_redis(request: pytest.FixtureRequest) -> None:
    if not getattr(request.module, "NEEDS_REDIS", True):
        return
    if not _ANSWERS:
        _ANSWERS.append(_redis_answers())
    if not _ANSWERS[0]:
        pytest.skip(INSTALL_REDIS.format(url=REDIS_URL))
