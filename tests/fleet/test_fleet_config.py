"""`[fleet]` and REDIS_URL: the defaults, the per-policy fallback, errors that never show the URL."""

from __future__ import annotations

import pytest

from messages.config import Config
from messages.errors import ConfigError

SECRET = "s3cretPw9"
NEEDS_REDIS = False  # configuration only


def test_fleet_config_absent_is_single_instance_and_on_fleet_down_defaults_by_policy():
    c = Config()
    assert not c.fleet.enabled and c.fleet.key_prefix == "triage:" and c.fleet.credit_ttl_s == 1.0
    assert {n: p.resolved_on_fleet_down(n) for n, p in c.policies.items()} == {
        "general": "local", "auth": "share", "recording": "local", "heavy": "local", "upload": "share"}


def test_fleet_config_from_redis_url_and_toml():
    env = {"DATABASE_URL": "postgresql://u@h/db", "REDIS_URL": f"redis://:{SECRET}@127.0.0.1:6379/0"}
    c = Config.from_env(env)
    assert c.fleet.enabled and c.fleet.redis_url == env["REDIS_URL"]
    assert SECRET not in repr(c) and SECRET not in repr(c.fleet)
    t = Config.from_toml('[fleet]\nredis_url = "redis://r:6379/1"\ninstance_id = "api-1"\n'
                         '[policies.general]\non_fleet_down = "share"\nlimit = 10\nwindow_s = 1.0')
    assert t.fleet.instance_id == "api-1" and t.policies["general"].resolved_on_fleet_down("general") == "share"


@pytest.mark.parametrize("toml, field", [
    (f'[fleet]\nredis_url = "http://:{SECRET}@r:6379"', "fleet.redis_url"),
    ('[fleet]\nredis_timeout_s = 0', "fleet.redis_timeout_s"),
    ('[fleet]\nredis_timeout_s = 1.0\nredis_call_timeout_s = 0.5', "fleet.redis_call_timeout_s"),
    ('[fleet]\nheartbeat_s = 3.0', "fleet.heartbeat_ttl_s"),
    ('[fleet]\ninstance_id = "a b"', "fleet.instance_id"),
    ('[fleet]\nmax_batch = 0', "fleet.max_batch"),
])
def test_fleet_config_bad_value_names_the_field_never_the_url(toml, field):
    with pytest.raises(ConfigError) as err:
        Config.from_toml(toml)
    assert err.value.field == field and SECRET not in str(err.value)


def test_fleet_config_bad_on_fleet_down_is_refused():
    with pytest.raises(ConfigError) as err:
        Config.from_toml('[policies.auth]\non_fleet_down = "deny"')
    assert "on_fleet_down" in str(err.value)
