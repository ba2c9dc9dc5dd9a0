"""`triage serve` configuration: the TOML file's [http] table under the environment."""

from __future__ import annotations

import pytest

from actors.cli import load, parser
from messages.errors import ConfigError


def test_cli_http_table_in_config_file_then_environment_then_flags(tmp_path):
    cfg = tmp_path / "triage.toml"
    cfg.write_text('[http]\nport = 8081\nhost = "0.0.0.0"\ntrusted_proxies = ["127.0.0.1/32"]\n'
                   '[tiers.database]\nfailure_threshold = 2\n')
    args = parser().parse_args(["serve", "--config", str(cfg)])
    config, http, _ = load(args, {"PORT": "9000"})
    assert (http.host, http.port, http.trusted_proxies) == ("0.0.0.0", 9000, ("127.0.0.1/32",))
    assert config.tiers["database"].failure_threshold == 2
    args = parser().parse_args(["serve", "--config", str(cfg), "--port", "7000"])
    assert load(args, {})[1].port == 7000


def test_cli_bad_http_table_names_the_field(tmp_path):
    cfg = tmp_path / "triage.toml"
    cfg.write_text('[http]\nport = "eighty"\n')
    with pytest.raises(ConfigError, match="http.port"):
        load(parser().parse_args(["serve", "--config", str(cfg)]), {})
    cfg.write_text('[http]\nhealth_token = "short-secret"\n')
    with pytest.raises(ConfigError) as info:
        load(parser().parse_args(["serve", "--config", str(cfg)]), {})
    assert "short-secret" not in str(info.value)


# --- start-up failures: production rule, DATABASE_URL validation, no secret in any output -------

import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

from messages.config import Config  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
CANARY = "canaryPw7Qz"
BAD_URLS = {
    "malformed %-escape": f"postgresql://u:{CANARY}%zz@127.0.0.1/db",
    "port not a number": f"postgresql://u:{CANARY}@127.0.0.1:abc/db",
    "port out of range": f"postgresql://u:{CANARY}@127.0.0.1:99999/db",
    "unknown scheme": f"mysql://u:{CANARY}@127.0.0.1/db",
    "unclosed IPv6 bracket": f"postgresql://u:{CANARY}@[::1/db",
    "key=value with bad port": f"host=127.0.0.1 password={CANARY} port=zz",
}


def serve_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("DATABASE_URL", "NODE_ENV", "TRIAGE_FAULTS", "TRIAGE_CONFIG")}
    return {**env, "PYTHONPATH": str(ROOT), "PORT": "0", **extra}


def run_serve(env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "actors.cli", "serve"], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=20)


@pytest.mark.parametrize("faults", ["1", "0"])
@pytest.mark.parametrize("mode", list(BAD_URLS))
def test_cli_bad_database_url_fails_naming_the_variable_never_the_password(mode, faults):
    done = run_serve(serve_env(DATABASE_URL=BAD_URLS[mode], TRIAGE_FAULTS=faults))
    out = done.stdout + done.stderr
    assert CANARY not in out
    assert done.returncode == 2, out
    assert "DATABASE_URL" in done.stderr and "Traceback" not in out


@pytest.mark.parametrize("mode", list(BAD_URLS))
def test_config_from_env_bad_database_url_is_a_config_error_without_the_value(mode):
    with pytest.raises(ConfigError) as info:
        Config.from_env({"DATABASE_URL": BAD_URLS[mode], "TRIAGE_FAULTS": "1"})
    assert info.value.field == "DATABASE_URL" and info.value.value is None
    assert CANARY not in str(info.value) and CANARY not in repr(info.value.args)


def test_cli_database_url_checked_before_other_variables():
    with pytest.raises(ConfigError) as info:
        Config.from_env({"DATABASE_URL": BAD_URLS["unknown scheme"], "HEALTH_CHECK_INTERVAL": "soon"})
    assert info.value.field == "DATABASE_URL"


def test_cli_other_bad_variable_with_a_password_in_database_url_never_shows_it():
    done = run_serve(serve_env(DATABASE_URL=f"postgresql://u:{CANARY}@127.0.0.1:1/db",
                               TRIAGE_FAULTS="1", HEALTH_CHECK_INTERVAL="soon"))
    assert done.returncode == 2 and "HEALTH_CHECK_INTERVAL" in done.stderr
    assert CANARY not in done.stdout + done.stderr


def test_cli_production_without_database_url_is_a_startup_error_naming_it():
    done = run_serve(serve_env(NODE_ENV="production"))
    assert done.returncode == 2, done.stdout + done.stderr
    assert "DATABASE_URL" in done.stderr and "production" in done.stderr
    assert "embedded server started" not in (done.stdout + done.stderr).lower()
    for env in ({"NODE_ENV": "production"}, {"NODE_ENV": "production", "TRIAGE_EMBEDDED_DB": "1"}):
        with pytest.raises(ConfigError) as info:
            Config.from_env(env)
        assert info.value.field == "DATABASE_URL"


async def test_system_refuses_embedded_server_in_production():
    from actors import open_monitoring
    from messages.config import DatabaseConfig

    cfg = Config(environment="production", database=DatabaseConfig(embedded=True))
    with pytest.raises(ConfigError, match="DATABASE_URL"):
        async with open_monitoring(cfg):
            pass


@pytest.mark.parametrize("where", ["127.0.0.1:1", "no-such-host.invalid:5432"])
def test_cli_unreachable_database_at_startup_never_shows_the_password(where):
    """A well-formed URL to a closed port or an unknown host: the service starts degraded and
    says so, no secret."""
    env = serve_env(DATABASE_URL=f"postgresql://u:{CANARY}@{where}/db", TRIAGE_FAULTS="1",
                    HEALTH_CHECK_INTERVAL="200")
    proc = subprocess.Popen([sys.executable, "-m", "actors.cli", "serve"], env=env, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if "Running on" in line or len(lines) > 200:
                break
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
    text = "".join(lines) + out
    assert "Starting" in text
    assert CANARY not in text


# --- the test run itself: tests that need a missing tool are skipped by name, and CI forbids it ---

CHROMIUM_TESTS = ("test_dashboard_shows_breaker_open_and_recovery_live",
                  "test_dashboard_reconnects_after_server_restart")


def run_dashboard_tests(**extra: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "TRIAGE_NO_SKIP"}
    env.update(PYTHONPATH=str(ROOT), TRIAGE_CHROMIUM="/nonexistent/chromium", **extra)
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "tests/http/test_dashboard.py", "-k", " or ".join(CHROMIUM_TESTS)],
                          env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_suite_without_chromium_skips_its_tests_and_names_them_at_the_end():
    done = run_dashboard_tests()
    assert done.returncode == 0, done.stdout + done.stderr
    tail = done.stdout[done.stdout.index("Skipped tests, and why"):]
    for name in CHROMIUM_TESTS:
        assert name in tail
    assert "chromium" in tail and "apt-get install chromium" in tail


def test_suite_under_ci_fails_when_a_test_was_skipped():
    done = run_dashboard_tests(TRIAGE_NO_SKIP="1")
    assert done.returncode != 0, done.stdout
    assert "TRIAGE_NO_SKIP" in done.stdout and "chromium" in done.stdout


def test_cli_bad_database_url_in_the_config_file_never_shows_the_password(tmp_path):
    cfg = tmp_path / "triage.toml"
    cfg.write_text(f'database_url = "{BAD_URLS["malformed %-escape"]}"\n')
    done = subprocess.run([sys.executable, "-m", "actors.cli", "serve", "--config", str(cfg)],
                          env=serve_env(TRIAGE_FAULTS="1"), cwd=ROOT, capture_output=True,
                          text=True, timeout=20)
    assert done.returncode == 2 and "database_url" in done.stderr
    assert CANARY not in done.stdout + done.stderr


def test_config_production_accepts_a_database_url_from_the_environment_or_the_file(tmp_path):
    cfg = tmp_path / "triage.toml"
    cfg.write_text('database_url = "postgresql://app@db.internal/app"\n')
    from_file = Config.from_env({"NODE_ENV": "production", "TRIAGE_CONFIG": str(cfg)})
    from_env = Config.from_env({"NODE_ENV": "production", "DATABASE_URL": "postgresql://app@db/app"})
    assert from_file.database_url and not from_file.database.embedded
    assert from_env.database_url == "postgresql://app@db/app" and not from_env.database.embedded


# --- library defaults: a host's Config.from_env needs a database; serve asks for the embedded one --


def test_config_from_env_in_a_host_without_database_url_is_an_error_naming_it():
    with pytest.raises(ConfigError) as info:
        Config.from_env({})
    assert info.value.field == "DATABASE_URL"
    assert "TRIAGE_EMBEDDED_DB=1" in str(info.value)
    with pytest.raises(ConfigError, match="DATABASE_URL"):
        Config.from_env({"TRIAGE_EMBEDDED_DB": "0"}, embedded=True)  # said no: no default


def test_config_from_env_embedded_only_when_asked_for(tmp_path):
    assert Config.from_env({"TRIAGE_EMBEDDED_DB": "1"}).database.embedded is True
    assert Config.from_env({}, embedded=True).database.embedded is True
    cfg = tmp_path / "triage.toml"
    cfg.write_text("[database]\nembedded = true\n")
    assert Config.from_env({"TRIAGE_CONFIG": str(cfg)}).database.embedded is True
    with_url = Config.from_env({"DATABASE_URL": "postgresql://app@db/app"}, embedded=True)
    assert (with_url.database_url, with_url.database.embedded) == ("postgresql://app@db/app", False)


def test_cli_serve_asks_for_the_embedded_server_in_development():
    config, _, _ = load(parser().parse_args(["serve"]), {})
    assert (config.database_url, config.database.embedded) == (None, True)


@pytest.mark.parametrize("spec, why", [
    ("no_colon", "expected MODULE:FACTORY"),
    ("no_such_module_xyz:create", "cannot import 'no_such_module_xyz'"),
    ("actors.cli:no_such_factory", "has no attribute 'no_such_factory'"),
])
def test_cli_app_factory_bad_spec_is_a_config_error_naming_the_flag(spec, why):
    from actors.cli import app_factory

    with pytest.raises(ConfigError) as info:
        app_factory(spec)
    assert info.value.field == "--app" and why in str(info.value)


def test_cli_app_factory_default_is_the_reference_service_from_a_checkout():
    from actors.cli import REFERENCE_APP, app_factory
    from examples.vet_tracker.app import create

    assert app_factory(REFERENCE_APP) is create


# --- [database] priority_dsn (DATABASE_URL_<PRIORITY>) and faults.database_url ------------------

def test_config_priority_dsn_from_toml_and_env_never_shown(tmp_path):
    cfg = tmp_path / "triage.toml"
    cfg.write_text('database_url = "postgresql://batch@127.0.0.1:6432/app"\n'
                   f'[database]\npriority_dsn = {{ CRITICAL = "postgresql://urgent:{CANARY}@127.0.0.1:6432/app" }}\n')
    env = {"TRIAGE_CONFIG": str(cfg), "DATABASE_URL_HIGH": f"postgresql://urgent:{CANARY}@127.0.0.1:6432/app",
           "TRIAGE_FAULTS_DATABASE_URL": f"postgresql://postgres:{CANARY}@127.0.0.1:5432/app"}
    config = Config.from_env(env)
    assert config.database_url == "postgresql://batch@127.0.0.1:6432/app"
    assert set(config.database.priority_dsn) == {"CRITICAL", "HIGH"}
    assert config.database.named_dsns() == {0: config.database.priority_dsn["CRITICAL"],
                                            1: config.database.priority_dsn["HIGH"]}
    assert config.faults.database_url.endswith("127.0.0.1:5432/app")
    for shown in (repr(config), repr(config.database), repr(config.faults)):
        assert CANARY not in shown


@pytest.mark.parametrize("env, field", [
    ({"DATABASE_URL_CRITICAL": f"mysql://u:{CANARY}@h/db"}, "DATABASE_URL_CRITICAL"),
    ({"DATABASE_URL_HIGH": f"postgresql://u:{CANARY}@h:99999/db"}, "DATABASE_URL_HIGH"),
    ({"TRIAGE_FAULTS_DATABASE_URL": f"postgresql://u:{CANARY}%zz@h/db"}, "TRIAGE_FAULTS_DATABASE_URL"),
])
def test_config_bad_priority_or_faults_url_names_the_variable_never_the_password(env, field):
    with pytest.raises(ConfigError) as info:
        Config.from_env({"DATABASE_URL": "postgresql://u@127.0.0.1/db", **env})
    assert info.value.field == field and info.value.value is None
    assert CANARY not in str(info.value)


def test_config_priority_dsn_unknown_priority_or_no_default_is_a_config_error():
    with pytest.raises(ConfigError) as info:
        Config.from_toml('database_url = "postgresql://u@h/db"\n'
                         '[database]\npriority_dsn = { URGENT = "postgresql://u@h/db" }\n')
    assert info.value.field == "database.priority_dsn.URGENT" and "CRITICAL" in str(info.value)
    with pytest.raises(ConfigError) as info:
        Config.from_toml('[database]\npriority_dsn = { CRITICAL = "postgresql://u@h/db" }\n')
    assert info.value.field == "database.priority_dsn"


async def test_serve_raises_the_young_collection_threshold_while_serving_and_restores_it(database_url):
    """`triage serve` runs young collections every SERVE_GC_THRESHOLD tracked objects instead
    of Python's 700 (a served request leaves a few dozen alive across a collection), and puts
    the thresholds back when serving ends."""
    import gc
    from functools import partial

    import trio

    from actors import cli
    from actors.http.app import create_app
    from messages.http_config import HttpConfig

    before = gc.get_threshold()
    assert before[0] != cli.SERVE_GC_THRESHOLD
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(partial(cli.serve, Config(database_url=database_url), HttpConfig(port=0),
                                        lambda mon, http: create_app(mon, http)))
            assert gc.get_threshold() == (cli.SERVE_GC_THRESHOLD, *before[1:])
            nursery.cancel_scope.cancel()
        assert gc.get_threshold() == before
    finally:
        gc.set_threshold(*before)
        gc.unfreeze()  # serve froze this test process's objects: give them back to the collector
