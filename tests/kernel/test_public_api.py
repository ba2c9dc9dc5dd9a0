"""`actors` is the whole public API in one import, and its errors read as public names."""

from __future__ import annotations

import pickle
import traceback

import pytest

import actors
from actors import CircuitOpen, ConfigError, ConnectionLost, FaultsDisabled, QueryTimeout


def test_public_api_every_name_in_all_imports_from_actors():
    namespace: dict = {}
    exec("from actors import *", namespace)
    missing = [name for name in actors.__all__ if name not in namespace]
    assert missing == []
    assert {"open_monitoring", "run_monitoring", "Monitoring", "Config", "Priority",
            "HealthReport", "BreakerSnapshot", "Alert", "BreakerTransition"} <= set(actors.__all__)


def test_public_api_every_triage_error_is_exported():
    assert [e for e in actors.ERRORS if e.__name__ not in actors.__all__] == []
    assert {"InvalidArgument", "InvalidArgumentType", "FaultsDisabled", "DatabaseUnavailable",
            "QueryTimeout", "ConnectionLimitReached", "ConnectionLost",
            "DatabaseNotConfigured"} <= set(actors.__all__)


@pytest.mark.parametrize("error", [CircuitOpen("database", 2.5), ConfigError("PORT", "x", "bad"),
                                   QueryTimeout(1.0), FaultsDisabled(), ConnectionLost("gone")])
def test_public_api_errors_read_as_actors_names_in_tracebacks(error):
    name = type(error).__name__
    assert (type(error).__module__, type(error).__qualname__) == ("actors", name)
    assert traceback.format_exception_only(error)[0].startswith(f"actors.{name}: ")
    assert repr(type(error)) == f"<class 'actors.{name}'>"


def test_public_api_public_name_resolves_to_the_class():
    """Whatever reads `__module__`/`__qualname__` (pickle, docs, loggers) finds the class there."""
    assert pickle.loads(pickle.dumps(CircuitOpen)) is CircuitOpen
