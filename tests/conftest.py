"""Shared fixtures and hooks: which real PostgreSQL the tests use; skips made loud.

`database_url` follows the test rule (`actors.embedded.testing_database`):
`TEST_DATABASE_URL` if set; the machine's PostgreSQL at
postgresql://postgres@127.0.0.1:5432/test if it answers within 2 s; else an
embedded server (pgserver) started once for the session.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from actors.embedded import testing_database


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    with testing_database() as url:
        yield url
