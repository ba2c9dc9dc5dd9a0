"""`triage serve`: the reference service behind the monitoring kernel, on hypercorn's trio worker.

    triage serve [--host HOST] [--port PORT] [--config FILE.toml]

Configuration comes from the environment (`Config.from_env`, `HttpConfig.from_env`,
`LogConfig.from_env`); `--config` names the kernel's TOML file (as `TRIAGE_CONFIG`
does), `--host` / `--port` override `HOST` / `PORT`. `DATABASE_URL` is checked first (a bad one is
an error naming the variable, never showing its value). Without it an embedded
PostgreSQL is started for the run -- for development and tests only: with
`NODE_ENV=production`, no `DATABASE_URL` is a start-up error.

SIGINT (Ctrl-C) or SIGTERM: stop accepting, give requests in flight
`SHUTDOWN_GRACE_PERIOD` to finish, answer the rest 503, stop. A second signal
stops at once. Exit status: 0 after a clean stop, 2 for bad configuration, 1 for
anything else (logged, redacted).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import traceback
from collections.abc import Sequence

import hypercorn.trio
import trio
from loguru import logger
from msgspec.structs import replace

from actors.http.app import create_app, hypercorn_config
from actors.logs import Redactor, setup_logging, std_logger
from actors.system import open_monitoring
from examples.vet_tracker.service import DemoService
from messages.config import Config
from messages.errors import ConfigError
from messages.http_config import HttpConfig, LogConfig

log = logger.bind(actor="serve")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="triage", description="Triage: resilience and monitoring for "
                                "trio services on PostgreSQL")
    commands = p.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="serve the reference service over HTTP")
    serve.add_argument("--host", help="address to listen on (default: HOST or 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default: PORT or 3000; 0 picks a free one)")
    serve.add_argument("--config", metavar="FILE", help="TOML file for the kernel (as TRIAGE_CONFIG)")
    return p


def load(args: argparse.Namespace, environ: dict[str, str]) -> tuple[Config, HttpConfig, LogConfig]:
    env = dict(environ)
    if args.config:
        env["TRIAGE_CONFIG"] = args.config
    config = Config.from_env(env)
    http, logs = HttpConfig.from_env(env, base=config.http), LogConfig.from_env(env)
    overrides = {k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
    if overrides:
        try:
            http = replace(http, **overrides)
        except ConfigError as exc:
            raise ConfigError(f"--{exc.field}", exc.value, exc.why) from None
    return config, http, logs


async def serve(config: Config, http: HttpConfig, *,
                task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
    """Monitoring, the reference service and the HTTP server until SIGINT/SIGTERM."""
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals, trio.CancelScope() as everything:
        async with open_monitoring(config) as mon, trio.open_nursery() as nursery:
            app = create_app(mon, http, service=DemoService(mon, http))
            stop = trio.Event()
            nursery.start_soon(_on_signals, signals, stop, everything, http.grace_s)
            hc = hypercorn_config(http, errorlog=std_logger("hypercorn.error"))
            await hypercorn.trio.serve(app, hc, shutdown_trigger=app.shutdown_trigger(stop.wait),
                                       task_status=task_status)
            nursery.cancel_scope.cancel()
    log.info("Stopped")


async def _on_signals(signals: trio.abc.ReceiveChannel, stop: trio.Event, everything: trio.CancelScope,
                      grace_s: float) -> None:
    async for signum in signals:
        if not stop.is_set():
            log.info("{signal}: no new connections; draining requests in flight for up to {grace} s",
                     signal=signal.Signals(signum).name, grace=grace_s)
            stop.set()
        else:
            log.warning("{signal} again: stopping now", signal=signal.Signals(signum).name)
            everything.cancel()


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        config, http, logs = load(args, dict(os.environ))
    except ConfigError as exc:
        print(f"triage: configuration error: {exc}", file=sys.stderr)
        return 2
    secrets = (http.health_token, http.admin_token, http.session_secret, config.database_url)
    setup_logging(logs, secrets=secrets)
    log.info("Starting ({environment}; database: {database}; http://{host}:{port})",
             environment=config.environment, host=http.host, port=http.port,
             database="DATABASE_URL" if config.database_url else "embedded PostgreSQL")
    try:
        trio.run(serve, config, http)
    except ConfigError as exc:  # found while starting (e.g. the embedded server in production)
        print(f"triage: configuration error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # no bare traceback: its text could carry a DSN or a token
        redact = Redactor(secrets)
        log.critical("Stopped by an unexpected error: {error}", error=f"{type(exc).__name__}: "
                     f"{redact(str(exc))}", traceback=redact("".join(traceback.format_exception(exc))))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
