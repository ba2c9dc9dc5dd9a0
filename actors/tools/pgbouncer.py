"""Run Debian's PgBouncer (transaction pooling) on a free loopback port in front of a PostgreSQL.

`running_pgbouncer(upstream_dsn, ...)` is a context manager yielding a `Bouncer` (its URL, the
PgBouncer process); the tests use it as a fixture and `scripts/with_pgbouncer` to run a command
(the CI step) with `DATABASE_URL` / `TEST_DATABASE_URL` pointing through it.

The PgBouncer database `bounced` forwards to the upstream's database. Without `users`, every
client logs in as the upstream's user (`auth_type = any`, the user in the database line). With
`users` (name -> its `max_user_connections`, 0 for no cap of its own) clients log in as
themselves (`auth_type = trust`, the names in a generated `auth_file`): the pool-user-per-priority
set-up the README describes. `max_db_connections` caps the server connections of the database.
PgBouncer refuses to run as root: as root it runs as `nobody` (or as the owner of a Unix socket
directory the upstream listens on).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import IO

from psycopg.conninfo import conninfo_to_dict, make_conninfo

from actors.pg.embedded import testing_database
from actors.tools.procs import free_port, stop

BINARY = "/usr/sbin/pgbouncer"
DATABASE = "bounced"


class PgBouncerMissing(RuntimeError):
    pass


@dataclass(frozen=True)
class Bouncer:
    url: str          # postgresql://<user>@127.0.0.1:<port>/bounced
    port: int
    pid: int

    def url_for(self, user: str) -> str:
        return f"postgresql://{user}@127.0.0.1:{self.port}/{DATABASE}"


def binary() -> str | None:
    found = shutil.which("pgbouncer") or BINARY
    return found if os.access(found, os.X_OK) else None


def _run_as(host: str) -> list[str]:
    if os.geteuid() != 0:
        return []
    owner = pwd.getpwuid(os.stat(host).st_uid).pw_name if host.startswith("/") else "nobody"
    return ["-u", owner]


def ini_text(upstream_dsn: str, port: int, *, max_db_connections: int = 0,
             users: Mapping[str, int] | None = None, auth_file: str = "",
             pool_size: int = 20, max_client_conn: int = 200, extra: str = "") -> str:
    up = conninfo_to_dict(upstream_dsn)
    target = {"host": up.get("host") or "127.0.0.1", "port": up.get("port") or "5432",
              "dbname": up.get("dbname") or "postgres"}
    if not users:
        target["user"] = up.get("user") or "postgres"
    if up.get("password"):
        target["password"] = up["password"]
    line = make_conninfo("", **target)
    if max_db_connections:
        line += f" max_db_connections={max_db_connections}"
    text = f"[databases]\n{DATABASE} = {line}\n"
    if users:
        text += "[users]\n" + "".join(f"{u} = max_user_connections={n}\n" for u, n in users.items() if n)
    text += (f"[pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\n"
             f"auth_type = {'trust' if users else 'any'}\n"
             + (f"auth_file = {auth_file}\n" if users else "")
             + f"pool_mode = transaction\nunix_socket_dir =\ndefault_pool_size = {pool_size}\n"
             f"max_client_conn = {max_client_conn}\n"
             "ignore_startup_parameters = extra_float_digits\n" + extra)
    return text


@contextlib.contextmanager
def running_pgbouncer(upstream_dsn: str, *, max_db_connections: int = 0,
                      users: Mapping[str, int] | None = None, pool_size: int = 20,
                      max_client_conn: int = 200, extra: str = "",
                      workdir: str | None = None) -> Iterator[Bouncer]:
    exe = binary()
    if exe is None:
        raise PgBouncerMissing("PgBouncer is not installed (apt-get install pgbouncer)")
    with contextlib.ExitStack() as stack:
        if workdir is None:
            workdir = stack.enter_context(tempfile.TemporaryDirectory(prefix="triage-pgbouncer-"))
        os.chmod(workdir, 0o755)
        port = free_port()
        auth_file = os.path.join(workdir, "userlist.txt")
        with open(auth_file, "w") as f:
            f.writelines(f'"{u}" ""\n' for u in (users or {}))
        os.chmod(auth_file, 0o644)
        ini = os.path.join(workdir, "pgbouncer.ini")
        with open(ini, "w") as f:
            f.write(ini_text(upstream_dsn, port, max_db_connections=max_db_connections, users=users,
                             auth_file=auth_file, pool_size=pool_size,
                             max_client_conn=max_client_conn, extra=extra))
        os.chmod(ini, 0o644)
        host = str(conninfo_to_dict(upstream_dsn).get("host") or "")
        # Its log goes to a file: a pipe nobody reads would fill up and stop PgBouncer.
        log = stack.enter_context(open(os.path.join(workdir, "pgbouncer.log"), "w+b"))
        proc = subprocess.Popen([exe, *_run_as(host), ini], stdout=log, stderr=subprocess.STDOUT)
        try:
            _wait_listening(proc, port, log)
            user = next(iter(users)) if users else conninfo_to_dict(upstream_dsn).get("user") or "postgres"
            yield Bouncer(url=f"postgresql://{user}@127.0.0.1:{port}/{DATABASE}", port=port, pid=proc.pid)
        finally:
            stop(proc)


def _wait_listening(proc: subprocess.Popen, port: int, log: IO[bytes], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            log.seek(0)
            err = log.read().decode(errors="replace")
            raise RuntimeError(f"pgbouncer exited ({proc.returncode}): {err.strip()[-500:]}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"pgbouncer did not listen on 127.0.0.1:{port} within {timeout_s:g}s")


def main(argv: list[str] | None = None) -> int:
    """`python -m actors.tools.pgbouncer CMD...`: run CMD with the database URLs through PgBouncer.

    The upstream: `TEST_DATABASE_URL`, else `DATABASE_URL`, else the test rule's database (the
    machine's PostgreSQL, else an embedded one). CMD sees `DATABASE_URL` and `TEST_DATABASE_URL`
    pointing at PgBouncer, and `TRIAGE_FAULTS_DATABASE_URL` pointing straight at PostgreSQL (the
    server-side faults and the tests' own server-side checks use it).
    """
    args = sys.argv[1:] if argv is None else argv
    if not args:
        print("usage: scripts/with_pgbouncer COMMAND [ARGS...]", file=sys.stderr)
        return 2

    given = os.environ.get("TEST_DATABASE_URL") or os.environ.get("DATABASE_URL")
    with contextlib.ExitStack() as stack:
        upstream = given or stack.enter_context(testing_database())
        # Idle server connections close after a second: the monitors count the server's
        # connections, and one session-long pool of them would read as a busy server.
        bouncer = stack.enter_context(running_pgbouncer(upstream, max_client_conn=1000,
                                                        extra="server_idle_timeout = 1\n"
                                                              "query_wait_timeout = 5\n"))
        env = {**os.environ, "DATABASE_URL": bouncer.url, "TEST_DATABASE_URL": bouncer.url,
               "TRIAGE_FAULTS_DATABASE_URL": upstream}
        print(f"with_pgbouncer: PgBouncer {bouncer.url} (transaction pooling) in front of the "
              "test database", file=sys.stderr, flush=True)
        return subprocess.call(args, env=env)


if __name__ == "__main__":
    raise SystemExit(main())
