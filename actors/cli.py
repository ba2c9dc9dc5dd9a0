"""`triage serve`: a service behind the monitoring kernel, on hypercorn's trio worker.

    triage serve [--app MODULE:FACTORY] [--host HOST] [--port PORT] [--config FILE.toml]

`--app` names the service: a factory `FACTORY(mon, http) -> ASGI app`, called with the
running `Monitoring` handle and the edge's `HttpConfig`, normally returning
`actors.http.app.create_app(mon, http, service=...)`. The default,
`examples.vet_tracker.app:create`, is the reference service, which runs from a checkout
only (it is not in the wheel); installed from a wheel, pass `--app`.

Configuration comes from the environment (`Config.from_env`, `HttpConfig.from_env`,
`LogConfig.from_env`); `--config` names the kernel's TOML file (as `TRIAGE_CONFIG`
does), `--host` / `--port` override `HOST` / `PORT`. `DATABASE_URL` is checked first (a bad one is
an error naming the variable, never showing its value). Without it an embedded
PostgreSQL is started for the run (serve asks for it, as `TRIAGE_EMBEDDED_DB=1` would) --
for development and tests only: with `NODE_ENV=production`, no `DATABASE_URL` is a
start-up error.

The HTTP edge (the `http` extra: starlette, hypercorn, prometheus_client) is imported when
`serve` runs, so `triage --help` works with the kernel alone.

SIGINT (Ctrl-C) or SIGTERM: stop accepting, give requests in flight
`SHUTDOWN_GRACE_PERIOD` to finish, answer the rest 503, stop. A second signal
stops at once. Exit status: 0 after a clean stop, 2 for bad configuration, 1 for
anything else (logged, redacted).
"""

from __future__ import annotations

import argparse
import gc
import importlib
import os
import signal
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import Any

import trio
from loguru import logger
from msgspec.structs import replace

from actors.logs import Redactor, setup_logging, std_logger
from actors.monitor import secrets_of
from actors.system import open_monitoring
from messages.config import Config
from messages.errors import ConfigError
from messages.http_config import HttpConfig, LogConfig

log = logger.bind(actor="serve")

REFERENCE_APP = "examples.vet_tracker.app:create"
SERVE_GC_THRESHOLD = 5000  # `serve`'s young-generation threshold (Python's default: 700)
AppFactory = Callable[..., Any]  # (mon: Monitoring, http: HttpConfig) -> ASGI app


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="triage", description="Triage: resilience and monitoring for "
                                "trio services on PostgreSQL")
    commands = p.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="serve a service (default: the reference service) "
                                "over HTTP")
    serve.add_argument("--app", metavar="MODULE:FACTORY", default=REFERENCE_APP,
                       help="factory(mon, http) -> ASGI app (default: %(default)s, the reference "
                       "service, from a checkout only)")
    serve.add_argument("--host", help="address to listen on (default: HOST or 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default: PORT or 3000; 0 picks a free one)")
    serve.add_argument("--config", metavar="FILE", help="TOML file for the kernel (as TRIAGE_CONFIG)")
    return p


def load(args: argparse.Namespace, environ: dict[str, str]) -> tuple[Config, HttpConfig, LogConfig]:
    env = dict(environ)
    if args.config:
        env["TRIAGE_CONFIG"] = args.config
    config = Config.from_env(env, embedded=True)  # development: the embedded server by default
    http, logs = HttpConfig.from_env(env, base=config.http), LogConfig.from_env(env)
    overrides = {k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
    if overrides:
        try:
            http = replace(http, **overrides)
        except ConfigError as exc:
            raise ConfigError(f"--{exc.field}", exc.value, exc.why) from None
    return config, http, logs


def app_factory(spec: str) -> AppFactory:
    """`module:factory` imported, from the working directory too (as uvicorn's `--app-dir .`:
    a console script's path holds only its own directory); ConfigError naming `--app`."""
    module, _, name = spec.partition(":")
    if not module or not name:
        raise ConfigError("--app", spec, "expected MODULE:FACTORY")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.append(os.getcwd())
    try:
        factory = getattr(importlib.import_module(module), name)
    except ImportError as exc:
        why = f"cannot import {module!r} ({exc})"
        if spec == REFERENCE_APP and (exc.name or "").split(".")[0] == "examples":
            why = ("the reference service runs from a checkout only (it is not in the wheel); "
                   "pass --app MODULE:FACTORY, a factory(mon, http) returning your ASGI app")
        raise ConfigError("--app", spec, why) from None
    except AttributeError:
        raise ConfigError("--app", spec, f"{module!r} has no attribute {name!r}") from None
    return factory


async def serve(config: Config, http: HttpConfig, factory: AppFactory, *,
                task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
    """Monitoring, the service and the HTTP server until SIGINT/SIGTERM."""
    import hypercorn.trio  # the `http` extra: only `serve` needs it, not `triage --help`

    from actors.http.app import hypercorn_config

    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals, trio.CancelScope() as everything:
        async with open_monitoring(config) as mon, trio.open_nursery() as nursery:
            app = factory(mon, http)
            # What start-up built (modules, the app, the actors) lives for the whole run: keep it
            # out of the collector's full passes, which otherwise stall the loop 50-150 ms.
            gc.freeze()
            # Young collections once 5,000 tracked objects more are alive, not 700: a served
            # request leaves a few dozen alive across a collection (in-flight requests, batches
            # for the actors), so the default ran one every ~16 requests, ~55 µs of CPU a
            # request (README, Performance). Restored when serving ends.
            thresholds = gc.get_threshold()
            gc.set_threshold(SERVE_GC_THRESHOLD, *thresholds[1:])
            try:
                stop = trio.Event()
                nursery.start_soon(_on_signals, signals, stop, everything, http.grace_s)
                if http.ops_port is not None:  # health, live, ready and metrics on a listener of their own
                    from actors.http.ops import serve_ops

                    await nursery.start(serve_ops, app, http)
                hc = hypercorn_config(http, errorlog=std_logger("hypercorn.error"))
                # the edge's app drains its requests in flight itself; a bare ASGI app just stops
                drain = getattr(app, "shutdown_trigger", None)
                await hypercorn.trio.serve(app, hc, shutdown_trigger=drain(stop.wait) if drain else stop.wait,
                                           task_status=task_status)
                nursery.cancel_scope.cancel()
            finally:
                gc.set_threshold(*thresholds)
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
        factory = app_factory(args.app)
    except ConfigError as exc:
        print(f"triage: configuration error: {exc}", file=sys.stderr)
        return 2
    dsns = (config.database_url, config.faults.database_url, *config.database.priority_dsn.values())
    secrets = (http.health_token, http.admin_token, http.session_secret,
               *(s for dsn in dsns if dsn for s in secrets_of(dsn)))
    setup_logging(logs, secrets=secrets)
    log.info("Starting ({environment}; database: {database}; http://{host}:{port})",
             environment=config.environment, host=http.host, port=http.port,
             database="DATABASE_URL" if config.database_url else "embedded PostgreSQL")
    try:
        trio.run(serve, config, http, factory)
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
