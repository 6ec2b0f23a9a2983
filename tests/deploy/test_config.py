"""The config file (TOML) under the environment: precedence, secrets from files, and clear
errors at start for an unknown key, a wrong type or a bad variable."""

from __future__ import annotations

import secrets
import subprocess
import sys
from pathlib import Path

import openai
import pytest

from distillguard.config import get_settings, load_settings
from distillguard.errors import ConfigError
from distillguard.gateway.process import GatewayProcess


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_file_then_environment_then_arguments(tmp_path: Path, monkeypatch) -> None:
    config = write(
        tmp_path / "dg.toml",
        'port = 9100\ndefault_rpm = 30\nupstream_url = "http://engine:8000/v1"\n'
        'admin_token = "from-file"\nbatch_wait_ms = 3\n',
    )
    settings = load_settings(config)
    assert (settings.port, settings.default_rpm, settings.upstream_url) == (
        9100,
        30,
        "http://engine:8000/v1",
    )
    assert settings.batch_wait_ms == 3.0  # a TOML integer is a fine float
    assert settings.require_admin_token() == "from-file"
    assert settings.default_tpm == 200_000  # not in the file: the default

    monkeypatch.setenv("DISTILLGUARD_PORT", "9200")
    assert load_settings(config).port == 9200  # the environment overrides the file
    assert load_settings(config, port=9300).port == 9300  # arguments override both

    monkeypatch.setenv("DISTILLGUARD_CONFIG", str(config))  # how `serve` hands it to workers
    get_settings.cache_clear()
    assert get_settings().default_rpm == 30


def test_unknown_key_names_key_file_and_closest_name(tmp_path: Path) -> None:
    config = write(tmp_path / "dg.toml", "port = 8000\ndefault_rmp = 5\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(config)
    message = caught.value.message
    assert str(config) in message and "'default_rmp'" in message
    assert "did you mean 'default_rpm'" in message


def test_sections_are_refused_with_the_reason(tmp_path: Path) -> None:
    config = write(tmp_path / "dg.toml", "[serving]\nport = 8000\n")
    with pytest.raises(ConfigError, match=r"unknown key 'serving'.*flat table"):
        load_settings(config)


@pytest.mark.parametrize(
    ("line", "key"),
    [
        ('port = "eighty"', "port"),
        ('default_rpm = "60"', "default_rpm"),  # a quoted number in TOML is a mistake
        ("port = 70000", "port"),  # out of range
        ("online_monitor = 3", "online_monitor"),
        ("home = 12", "home"),
    ],
)
def test_wrong_type_names_key_and_file(tmp_path: Path, line: str, key: str) -> None:
    config = write(tmp_path / "dg.toml", line + "\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(config)
    assert f"key {key!r}" in caught.value.message and str(config) in caught.value.message


def test_a_wrong_secret_value_is_not_printed(tmp_path: Path) -> None:
    config = write(tmp_path / "dg.toml", "admin_token = 123456789\n")
    with pytest.raises(ConfigError, match="key 'admin_token' has a wrong value") as caught:
        load_settings(config)
    assert "123456789" not in caught.value.message


def test_bad_toml_and_missing_file(tmp_path: Path) -> None:
    broken = write(tmp_path / "dg.toml", "port = \n")
    with pytest.raises(ConfigError, match=r"not valid TOML.*line 1"):
        load_settings(broken)
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "absent.toml")


def test_bad_environment_value_names_the_variable(monkeypatch) -> None:
    monkeypatch.setenv("DISTILLGUARD_DEFAULT_TPM", "lots")
    with pytest.raises(ConfigError, match="DISTILLGUARD_DEFAULT_TPM='lots'"):
        load_settings()
    monkeypatch.delenv("DISTILLGUARD_DEFAULT_TPM")
    monkeypatch.setenv("DISTILLGUARD_LOG_LEVEL", "loud")
    with pytest.raises(ConfigError, match="DISTILLGUARD_LOG_LEVEL"):
        load_settings()


def test_secrets_from_files(tmp_path: Path, monkeypatch) -> None:
    token = write(tmp_path / "admin_token", "s3cret-token\n")  # as `echo ... > file` writes it
    monkeypatch.setenv("DISTILLGUARD_ADMIN_TOKEN_FILE", str(token))
    assert load_settings().require_admin_token() == "s3cret-token"
    # the *_FILE variable beats the config file, like the variable itself would
    config = write(tmp_path / "dg.toml", 'admin_token = "from-file"\n')
    assert load_settings(config).require_admin_token() == "s3cret-token"

    # URLs may carry a password: they may come from files too
    url = write(tmp_path / "db_url", "postgresql+psycopg://dg:pw@db:5432/dg\n")
    monkeypatch.setenv("DISTILLGUARD_DATABASE_URL_FILE", str(url))
    assert load_settings().database_url == "postgresql+psycopg://dg:pw@db:5432/dg"

    monkeypatch.setenv("DISTILLGUARD_ADMIN_TOKEN", "also-set")
    with pytest.raises(ConfigError, match="both DISTILLGUARD_ADMIN_TOKEN and"):
        load_settings()
    monkeypatch.delenv("DISTILLGUARD_ADMIN_TOKEN")
    monkeypatch.setenv("DISTILLGUARD_WATERMARK_SECRET_FILE", str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match=r"DISTILLGUARD_WATERMARK_SECRET_FILE=.*cannot read it"):
        load_settings()
    monkeypatch.setenv("DISTILLGUARD_WATERMARK_SECRET_FILE", str(write(tmp_path / "e", "\n")))
    with pytest.raises(ConfigError, match="empty"):
        load_settings()


def test_secrets_have_no_defaults() -> None:
    settings = load_settings()
    with pytest.raises(ConfigError, match="DISTILLGUARD_ADMIN_TOKEN"):
        settings.require_admin_token()
    with pytest.raises(ConfigError, match="DISTILLGUARD_WATERMARK_SECRET"):
        settings.require_watermark_secret()


def test_serve_refuses_a_bad_config_file_at_start(tmp_path: Path) -> None:
    config = write(tmp_path / "dg.toml", 'upstream_url = "http://127.0.0.1:9"\nworkers = 2\n')
    done = subprocess.run(
        [sys.executable, "-m", "distillguard", "serve", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert "unknown key 'workers'" in done.stderr and str(config) in done.stderr
    assert "Traceback" not in done.stderr


def test_served_gateway_takes_its_limits_from_the_file(tmp_path: Path, mock_upstream) -> None:
    config = write(tmp_path / "dg.toml", "default_rpm = 2\nonline_monitor = false\n")
    with GatewayProcess(
        home=tmp_path / "gw",
        admin_token=secrets.token_urlsafe(16),
        upstream=mock_upstream.url,
        env={"DISTILLGUARD_CONFIG": str(config)},
    ) as gw:
        _, _, secret = gw.create_key()
        client = openai.OpenAI(base_url=gw.api_url, api_key=secret, max_retries=0, timeout=20)
        chat = [{"role": "user", "content": "hi"}]
        for _ in range(2):
            client.chat.completions.create(model="mock-model", messages=chat)
        with pytest.raises(openai.RateLimitError):
            client.chat.completions.create(model="mock-model", messages=chat)
