"""Shared fixtures and hooks: which real PostgreSQL the tests use; skips are loud.

`database_url` follows the test rule (`actors.pg.embedded.testing_database`):
`TEST_DATABASE_URL` if set; the machine's PostgreSQL at
postgresql://postgres@127.0.0.1:5432/test if it answers within 2 s; else an
embedded server (pgserver) started once for the session.

A test that needs a real tool the machine lacks is skipped, not failed, and the
end of the run names each such test and why (`@pytest.mark.chromium`: Debian's
headless Chromium, `chromium` on PATH, else /usr/bin/chromium; `TRIAGE_CHROMIUM`
names another path to check, e.g. a missing one to see the skip). With `TRIAGE_NO_SKIP=1` (.ci/run sets it) every skip is a
failure instead: CI installs every tool, so a skip there is a defect.

`TRIAGE_ONLY_DATABASE_TESTS=1` keeps only the tests that use a database (the `database_url`
fixture, directly or through another fixture): `.ci/run` runs them a second time through
PgBouncer in transaction mode (`scripts/with_pgbouncer`). `direct_database_url` is straight to
PostgreSQL even then, for server-side set-up and checks.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import pytest

from actors.pg.embedded import testing_database

INSTALL_CHROMIUM = ("Debian's chromium is not installed (scripts/test installs it when run as root "
                    "with apt-get; otherwise: sudo apt-get install chromium)")


def chromium_path() -> str | None:
    given = os.environ.get("TRIAGE_CHROMIUM")
    if given:
        return given if os.access(given, os.X_OK) else None
    found = shutil.which("chromium") or "/usr/bin/chromium"
    return found if os.access(found, os.X_OK) else None


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes")


def _no_skips() -> bool:
    return _flag("TRIAGE_NO_SKIP")


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    with testing_database() as url:
        yield url


@pytest.fixture(scope="session")
def direct_database_url(database_url: str) -> str:
    """Straight to PostgreSQL, never through a pooler: `TRIAGE_FAULTS_DATABASE_URL` when the
    test database URL goes through PgBouncer (`scripts/with_pgbouncer` sets both), else the
    test database. For tests that assert PostgreSQL's own view of their connections (backend
    pids, pg_stat_activity counts of a pool's backends, terminating them, holding every
    connection slot) or start their own PgBouncer in front of it: behind PgBouncer that view
    is PgBouncer's."""
    return os.environ.get("TRIAGE_FAULTS_DATABASE_URL") or database_url


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "chromium: drives Debian's headless Chromium")
    config.addinivalue_line("markers", "direct_postgres: checks PostgreSQL's backends of its own "
                            "connections by pid, or sets session state a pooler would leave on a "
                            "shared server connection, so it connects straight to PostgreSQL "
                            "(see direct_database_url)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if _flag("TRIAGE_ONLY_DATABASE_TESTS"):  # .ci/run's PgBouncer step: the tests using a database
        keep = [i for i in items if "database_url" in getattr(i, "fixturenames", ())]
        config.hook.pytest_deselected(items=[i for i in items if i not in keep])
        items[:] = keep
    if chromium_path() is not None:
        return
    for item in items:
        if "chromium" in item.keywords:
            item.add_marker(pytest.mark.skip(reason=INSTALL_CHROMIUM))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        reason = reason.removeprefix("Skipped: ")
        item.config.stash.setdefault(_SKIPPED, []).append((item.nodeid, reason))
        if _no_skips():
            report.outcome = "failed"
            report.longrepr = f"skipped, and TRIAGE_NO_SKIP=1 (.ci/run) allows no skip: {reason}"


_SKIPPED = pytest.StashKey[list]()


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    skipped = config.stash.get(_SKIPPED, [])
    if skipped:
        terminalreporter.section("Skipped tests, and why" if not _no_skips()
                                 else "Skips refused (TRIAGE_NO_SKIP=1), and why", yellow=True)
        for nodeid, reason in skipped:
            terminalreporter.line(f"SKIPPED {nodeid}: {reason}")
