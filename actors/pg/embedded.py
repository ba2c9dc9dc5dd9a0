"""An embedded PostgreSQL server from the `pgserver` package, for tests and a bare machine.

Theory of operation. `pgserver` ships PostgreSQL binaries inside its wheel;
`pgserver.get_server(pgdata)` runs initdb (trust authentication, superuser
"postgres") if the directory is new, starts the server with `pg_ctl -w`, and
serves it on a Unix-domain socket only (no TCP port, so nothing collides with
a system PostgreSQL on 5432). `Embedded.dsn` is a libpq URL
(`postgresql://postgres:@/postgres?host=<socket dir>`) that psycopg and
`PgConnection` accept as is.

Running as root: PostgreSQL refuses to run as root, so pgserver itself then
creates a system user "pgserver" (with `useradd`, once), runs initdb and
pg_ctl as that user, chowns the data directory to it, and adds o+rx to every
parent directory of the data directory and to its own binaries.

With `data_dir=None` the data lives in a fresh temporary directory that
`stop()` deletes; a given `data_dir` is kept (its parent is created if
needed), so the next start reuses the cluster. Starting takes about a second
(initdb dominates) and blocks: `open_embedded` runs start and stop in a worker
thread, which is fine for something done once per process.

The two database rules live here, each in one function:

* serving and the scripts, `serving_database()`: `DATABASE_URL` if set
  (`messages.config.serving_database_url`, which `Config.from_env` uses too), else
  an embedded server for the block;
* the tests, `testing_database()`: `TEST_DATABASE_URL` if set, else the machine's
  PostgreSQL at postgresql://postgres@127.0.0.1:5432/test if it answers within 2 s,
  else an embedded server for the block.

The embedded server is for development and tests only (its start-up log line says
so); `NODE_ENV=production` refuses to start without `DATABASE_URL`.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import warnings
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

import trio
from loguru import logger

from messages.config import serving_database_url
from messages.errors import ConfigError

log = logger.bind(actor="embedded")

_import_lock = threading.Lock()
_SHM = "/dev/shm"
_SHM_MIN_FREE = 512 * 1024 * 1024  # a fresh cluster is ~40 MB; leave room for PostgreSQL's own shm


def _pgserver() -> ModuleType:
    """Import pgserver without its import-time warning failing a `-W error` run.

    pgserver computes its lock-file directory at import time through platformdirs,
    which warns when XDG_RUNTIME_DIR is unset (and falls back to /tmp/runtime-<uid>).
    """
    with _import_lock, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
        try:
            import pgserver  # the `embedded` extra: only a run that asks for the server needs it
        except ImportError:
            raise ConfigError("TRIAGE_EMBEDDED_DB", None, "the embedded PostgreSQL needs the "
                              "embedded extra: pip install 'trio-triage[embedded]'") from None
    return pgserver


def _scratch_dir() -> str | None:
    """Where a throw-away cluster goes: RAM (/dev/shm) when it has room, unless TMPDIR says otherwise.

    initdb fsyncs every file it writes; on a busy disk that alone took 4.5 s of a
    5 s start here, against 0.5 s on tmpfs, and deleting the cluster took 2 s more.
    """
    if os.environ.get("TMPDIR") or not os.path.isdir(_SHM):
        return None
    try:
        free = shutil.disk_usage(_SHM).free
    except OSError:
        return None
    return _SHM if free >= _SHM_MIN_FREE and os.access(_SHM, os.W_OK) else None


class Embedded:
    """A running embedded server. `stop()` is idempotent."""

    def __init__(self, server: Any, dsn: str, data_dir: Path, temp_root: Path | None) -> None:
        self._server, self.dsn, self.data_dir = server, dsn, data_dir
        self._temp_root = temp_root
        self.stopped = False

    def stop(self) -> None:
        """Stop the server (blocking); delete the data too if it was temporary."""
        if self.stopped:
            return
        self.stopped = True
        self._server.cleanup()
        if self._temp_root is not None:
            shutil.rmtree(self._temp_root, ignore_errors=True)
        log.info("Database embedded server stopped", data_dir=str(self.data_dir))

    def __repr__(self) -> str:
        state = "stopped" if self.stopped else "running"
        return f"<Embedded {state} data_dir={str(self.data_dir)!r}>"


def start_embedded(data_dir: str | None = None) -> Embedded:
    """Start (initialising if new) a server on `data_dir`, or on a temporary one. Blocks."""
    pgserver = _pgserver()
    temp_root = None
    if data_dir is None:
        temp_root = Path(tempfile.mkdtemp(prefix="triage-pg-", dir=_scratch_dir()))
        pgdata = temp_root / "pgdata"
    else:
        pgdata = Path(data_dir).expanduser().resolve()
        pgdata.parent.mkdir(parents=True, exist_ok=True)
    try:
        server = pgserver.get_server(pgdata, cleanup_mode="delete" if temp_root else "stop")
    except BaseException:
        if temp_root is not None:
            shutil.rmtree(temp_root, ignore_errors=True)
        raise
    log.info("Database embedded server started, for development and tests only ({kept})",
             kept="data kept" if temp_root is None else "temporary: data is lost when it stops",
             data_dir=str(pgdata))
    return Embedded(server, server.get_uri(), pgdata, temp_root)


@asynccontextmanager
async def open_embedded(data_dir: str | None = None) -> AsyncIterator[Embedded]:
    """`async with open_embedded() as db:` -- start and stop run in a worker thread."""
    embedded = await trio.to_thread.run_sync(start_embedded, data_dir)
    try:
        yield embedded
    finally:
        with trio.CancelScope(shield=True):  # a cancelled exit must still stop the server
            await trio.to_thread.run_sync(embedded.stop)


@contextmanager
def _embedded_dsn() -> Iterator[str]:
    embedded = start_embedded()
    try:
        yield embedded.dsn
    finally:
        embedded.stop()


@contextmanager
def serving_database(environ: Mapping[str, str] | None = None) -> Iterator[str]:
    """The serving rule, for a script that needs a DSN: DATABASE_URL, else an embedded server."""
    url = serving_database_url(environ)
    if url:
        yield url
    else:
        with _embedded_dsn() as dsn:
            yield dsn


LOCAL_TEST_URL = "postgresql://postgres@127.0.0.1:5432/test"


def _answers(url: str) -> bool:
    import psycopg

    try:
        with psycopg.connect(url, connect_timeout=2):
            return True
    except psycopg.Error:
        return False


@contextmanager
def testing_database(environ: Mapping[str, str] | None = None, *,
                     local: str = LOCAL_TEST_URL) -> Iterator[str]:
    """The test rule: TEST_DATABASE_URL, else `local` if it answers, else an embedded server."""
    env = os.environ if environ is None else environ
    if env.get("TEST_DATABASE_URL"):
        yield env["TEST_DATABASE_URL"]
    elif _answers(local):
        yield local
    else:
        with _embedded_dsn() as dsn:
            yield dsn
