"""Embedded PostgreSQL (pgserver): starts, answers through PgConnection, stops and cleans up."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from actors.pg.connection import PgConnection
from actors.pg.embedded import open_embedded


async def test_embedded_temporary_server_answers_then_is_removed():
    with trio.fail_after(60):
        async with open_embedded() as db:
            data_dir = db.data_dir
            assert (data_dir / "PG_VERSION").exists()
            assert "password" not in db.dsn
            async with await PgConnection.connect(db.dsn) as conn:
                result = await conn.execute("SELECT 1 AS one, current_setting('server_version_num')::int")
            assert result.rows[0][0] == 1 and result.rows[0][1] >= 150000
        assert db.stopped
        assert not Path(data_dir).exists() and not Path(data_dir).parent.exists()


@pytest.fixture
def scratch() -> Iterator[Path]:
    """A directory in RAM where there is one: initdb's fsyncs are slow on a busy disk."""
    root = Path(tempfile.mkdtemp(prefix="triage-test-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None))
    yield root
    shutil.rmtree(root, ignore_errors=True)


async def test_embedded_given_data_dir_is_kept_and_reused(scratch):
    data_dir = scratch / "cluster" / "pgdata"
    with trio.fail_after(60):
        async with open_embedded(str(data_dir)) as db:
            async with await PgConnection.connect(db.dsn) as conn:
                await conn.execute("CREATE TABLE kept (n int); INSERT INTO kept VALUES (42)")
        assert (data_dir / "PG_VERSION").exists()
        async with open_embedded(str(data_dir)) as db:
            async with await PgConnection.connect(db.dsn) as conn:
                result = await conn.execute("SELECT n FROM kept")
        assert result.rows == [(42,)]


async def test_embedded_start_log_line_says_development_and_tests_only():
    from loguru import logger

    lines: list[str] = []
    logger.enable("actors")
    sink = logger.add(lambda m: lines.append(str(m)), level="INFO", format="{message}")
    try:
        with trio.fail_after(60):
            async with open_embedded():
                pass
    finally:
        logger.remove(sink)
        logger.disable("actors")
    started = [line for line in lines if "embedded server started" in line]
    assert started and "for development and tests only" in started[0]
    assert "data is lost" in started[0]


# --- the two database rules: serving (and scripts), testing ------------------------------------


def test_serving_rule_is_database_url_else_embedded():
    from actors.pg.embedded import serving_database
    from messages.config import Config, serving_database_url

    assert serving_database_url({}) is None
    assert serving_database_url({"DATABASE_URL": "postgresql://h/db"}) == "postgresql://h/db"
    cfg = Config.from_env({}, embedded=True)  # triage serve, scripts/serve
    assert cfg.database_url is None and cfg.database.embedded
    with serving_database({"DATABASE_URL": "postgresql://h/db"}) as url:  # nothing probed
        assert url == "postgresql://h/db"


def test_serving_rule_without_database_url_starts_the_embedded_server():
    from actors.pg.embedded import serving_database

    with serving_database({}) as url:
        assert "host=/" in url
        with psycopg_connect(url) as conn:
            assert conn.execute("select 1").fetchone() == (1,)


def psycopg_connect(url: str):
    import psycopg

    return psycopg.connect(url, connect_timeout=5)


def test_testing_rule_order(database_url):
    from actors.pg.embedded import testing_database

    with testing_database({"TEST_DATABASE_URL": "postgresql://given/db"}) as url:
        assert url == "postgresql://given/db"
    with testing_database({}, local=database_url) as url:  # the local server answers
        assert url == database_url
    with testing_database({}, local="postgresql://postgres@127.0.0.1:1/test") as url:
        assert "host=/" in url  # nothing answers: an embedded server for the block


def test_scripts_do_not_carry_their_own_database_rule():
    root = Path(__file__).resolve().parents[2]
    for path in sorted((root / "scripts").rglob("*.py")):
        text = path.read_text()
        assert "127.0.0.1:5432" not in text, path
        assert "TEST_DATABASE_URL" not in text, path
