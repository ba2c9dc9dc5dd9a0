"""Shared fixtures: which real PostgreSQL the tests use.

`database_url` is, in order: `TEST_DATABASE_URL` if set; the machine's
PostgreSQL at postgresql://postgres@127.0.0.1:5432/test if it answers within
2 s; else an embedded server (pgserver) started once for the session.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import psycopg
import pytest

from actors.embedded import start_embedded

LOCAL_URL = "postgresql://postgres@127.0.0.1:5432/test"


def _answers(url: str) -> bool:
    try:
        with psycopg.connect(url, connect_timeout=2):
            return True
    except psycopg.Error:
        return False


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    if os.environ.get("TEST_DATABASE_URL"):
        yield os.environ["TEST_DATABASE_URL"]
    elif _answers(LOCAL_URL):
        yield LOCAL_URL
    else:
        embedded = start_embedded()
        try:
            yield embedded.dsn
        finally:
            embedded.stop()
