"""`triage serve` configuration: the TOML file's [http] table under the environment."""

from __future__ import annotations

import pytest

from actors.cli import load, parser
from actors.errors import ConfigError


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
