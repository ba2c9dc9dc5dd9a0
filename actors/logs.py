"""Logging for a process that serves: loguru sinks, JSON lines, redaction, std logging folded in.

`setup_logging` replaces every loguru sink with: stderr, and `LOG_FILE` if
set (rotated at `rotation`, `retention` files kept). Every sink has
``diagnose=False`` — a traceback never shows variable values, which could
hold a password, a token or a DSN — in production and everywhere else.

Text lines: ``time | level | actor | message key=value…``. JSON lines
(``LOG_FORMAT=json``): one object per line with ``time``, ``level``,
``message``, ``logger`` and the record's fields (``actor``, ``tier``…), plus
``exception`` (a plain traceback) when there is one.

Redaction runs on every record before any sink sees it: the configured
secrets (tokens, session key), the password of any ``postgresql://user:pw@``
URL or ``password=`` keyword, and any ``Bearer <token>`` become ``***``.
The standard `logging` module (hypercorn's own lines) is routed into loguru,
so it gets the same sinks and the same redaction.
"""

from __future__ import annotations

import logging
import re
import sys
import traceback
from collections.abc import Iterable
from typing import Any

import msgspec
from loguru import logger

from messages.http_config import LogConfig

_URL_PASSWORD = re.compile(r"(postgres(?:ql)?://[^:/@\s]+:)[^@\s]+@")
_KEYWORD_PASSWORD = re.compile(r"(password\s*=\s*)('[^']*'|\S+)", re.IGNORECASE)
_BEARER = re.compile(r"(bearer\s+)[A-Za-z0-9._~+/=-]+", re.IGNORECASE)
_TEXT = ("{time:YYYY-MM-DD HH:mm:ss.SSS} | {level: <8} | {extra[_actor]: <10} | "
         "{message}{extra[_fields]}\n")


class Redactor:
    """Scrubs secrets from text (see the module doc)."""

    def __init__(self, secrets: Iterable[str | None] = ()) -> None:
        self.secrets = sorted({s for s in secrets if s}, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, "***")
        text = _URL_PASSWORD.sub(r"\1***@", text)
        text = _KEYWORD_PASSWORD.sub(r"\1***", text)
        return _BEARER.sub(r"\1***", text)

    def patch(self, record: dict[str, Any]) -> None:
        record["message"] = self(record["message"])
        extra = record["extra"]
        for key, value in extra.items():
            if isinstance(value, str):
                extra[key] = self(value)


def _text_format(redact: Redactor) -> Any:
    def fmt(record: dict[str, Any]) -> str:
        extra = record["extra"]
        extra["_actor"] = extra.get("actor", record["name"] or "-")
        message = record["message"]  # fields the message already shows are not repeated
        fields = " ".join(f"{k}={v}" for k, v in extra.items()
                          if not k.startswith("_") and k != "actor" and str(v) not in message)
        extra["_fields"] = f" [{fields}]" if fields else ""
        if record["exception"] is not None:
            extra["_exc"] = redact(_traceback(record))
            return _TEXT + "{extra[_exc]}"
        return _TEXT
    return fmt


def _json_format(redact: Redactor) -> Any:
    def fmt(record: dict[str, Any]) -> str:
        line = {"time": record["time"].isoformat(), "level": record["level"].name,
                "message": record["message"], "logger": record["name"],
                **{k: v for k, v in record["extra"].items() if not k.startswith("_")}}
        if record["exception"] is not None:
            line["exception"] = redact(_traceback(record))
        record["extra"]["_json"] = msgspec.json.encode(line, enc_hook=str).decode()
        return "{extra[_json]}\n"
    return fmt


def _traceback(record: dict[str, Any]) -> str:
    exc = record["exception"]
    return "".join(traceback.format_exception(exc.type, exc.value, exc.traceback))


class _Intercept(logging.Handler):
    """Standard `logging` records into loguru (hypercorn's own lines)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            level: str | int = logger.level(record.levelname).name
        except ValueError:
            level = record.levelno
        name = record.name
        logger.patch(lambda r: r.update(name=name)).bind(actor=name.split(".")[0]).opt(
            exception=record.exc_info).log(level, record.getMessage())


def std_logger(name: str) -> logging.Logger:
    """A standard logger whose records go to loguru (give it to hypercorn as `errorlog`)."""
    std = logging.getLogger(name)
    std.handlers = [_Intercept()]
    std.propagate = False
    std.setLevel(logging.INFO)
    return std


def setup_logging(cfg: LogConfig, secrets: Iterable[str | None] = (), stream: Any = None,
                  intercept_std: bool = True) -> Redactor:
    """Replace every loguru sink (see the module doc); `intercept_std` routes `logging` in too."""
    redact = Redactor(secrets)
    logger.remove()
    logger.configure(patcher=redact.patch)
    fmt = _json_format(redact) if cfg.format == "json" else _text_format(redact)
    logger.add(stream or sys.stderr, level=cfg.level, format=fmt, diagnose=False, backtrace=False,
               colorize=False)
    if cfg.file:
        logger.add(cfg.file, level=cfg.level, format=fmt, diagnose=False, backtrace=False,
                   rotation=cfg.rotation, retention=cfg.retention, encoding="utf-8")
    logger.enable("actors")
    if intercept_std:
        logging.basicConfig(handlers=[_Intercept()], level=logging.WARNING, force=True)
    return redact
