"""One outcome vocabulary: every error Triage raises maps to exactly one documented outcome,
and the HTTP problem body of a refusal carries that same value."""

import msgspec
import psycopg
import pytest
import trio
from starlette.exceptions import HTTPException

import messages.errors as errors_mod
from actors.http.problems import WebError, error_response
from actors.pg.database import (
    ConnectionLimitReached,
    DatabaseNotConfigured,
    DatabaseUnavailable,
    QueryTimeout,
)
from messages.errors import (
    ActorCrashed,
    CircuitOpen,
    ConfigError,
    InvalidArgument,
    InvalidArgumentType,
    QueueCleared,
    QueueFull,
    QueueTimeout,
    RateLimited,
    Refused,
    ShuttingDown,
    TriageError,
    UnknownTier,
)
from messages.outcome import Outcome, outcome_of

# Every error class Triage raises, with the one outcome it documents.
EXPECTED = [
    (RateLimited("auth", "ip:1", 3.0), Outcome.RATE_LIMITED),
    (CircuitOpen("database", 2.0), Outcome.CIRCUIT_OPEN),
    (QueueFull("NORMAL", 200), Outcome.QUEUE_FULL),
    (QueueCleared("NORMAL"), Outcome.QUEUE_FULL),
    (QueueTimeout("LOW", 30.0), Outcome.QUEUE_TIMEOUT),
    (ShuttingDown(), Outcome.SHUTTING_DOWN),
    (ConnectionLimitReached(1.0), Outcome.QUEUE_TIMEOUT),
    (QueryTimeout(5.0), Outcome.UNKNOWN),
    (DatabaseUnavailable(1.0), Outcome.ERROR),
    (DatabaseNotConfigured(), Outcome.ERROR),
    (ActorCrashed("limiter"), Outcome.ERROR),
    (Refused(), Outcome.ERROR),
    (ConfigError("x", 1, "bad"), Outcome.ERROR),
    (InvalidArgument("bad"), Outcome.ERROR),
    (InvalidArgumentType("bad"), Outcome.ERROR),
    (UnknownTier("nope", ("database",)), Outcome.ERROR),
    (TriageError("bug"), Outcome.ERROR),
]


@pytest.mark.parametrize(("exc", "expected"), EXPECTED, ids=lambda v: type(v).__name__)
def test_outcome_each_triage_error_has_one_documented_outcome(exc, expected):
    assert outcome_of(exc) is expected
    assert type(exc).outcome is expected  # declared on the class, not decided elsewhere


def test_outcome_table_covers_every_error_class_in_messages_errors():
    declared = {cls for cls in vars(errors_mod).values()
                if isinstance(cls, type) and issubclass(cls, TriageError)}
    assert declared <= {type(exc) for exc, _ in EXPECTED}


@pytest.mark.parametrize(("exc", "expected"), [
    (None, Outcome.OK),
    (trio.Cancelled._create(), Outcome.CANCELLED),
    (KeyboardInterrupt(), Outcome.CANCELLED),
    (psycopg.OperationalError("lost after the query was sent"), Outcome.UNKNOWN),
    (psycopg.errors.SyntaxError("syntax error"), Outcome.ERROR),
    (HTTPException(404), Outcome.OK),
    (HTTPException(500), Outcome.ERROR),
    (WebError("bad input", 422), Outcome.OK),
    (ValueError("boom"), Outcome.ERROR),
], ids=repr)
def test_outcome_of_what_triage_does_not_own(exc, expected):
    assert outcome_of(exc) is expected


def test_outcome_values_are_the_documented_vocabulary():
    assert [o.value for o in Outcome] == ["ok", "error", "unknown", "rate_limited", "circuit_open",
                                          "queue_full", "queue_timeout", "shutting_down", "cancelled"]


class _Request:
    def __init__(self) -> None:
        self.scope: dict = {"type": "http", "method": "GET", "path": "/x"}


@pytest.mark.parametrize(("exc", "expected"), EXPECTED, ids=lambda v: type(v).__name__)
def test_outcome_problem_body_carries_the_same_value(exc, expected):
    response = error_response(_Request(), exc)  # type: ignore[arg-type]
    body = msgspec.json.decode(response.body)
    assert body.get("outcome", Outcome.ERROR) == expected  # "ok"/"error" are left out of bodies
    assert response.status_code == body["status"]
