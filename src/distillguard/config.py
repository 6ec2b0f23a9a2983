"""All settings in one place: environment variables with the prefix ``DISTILLGUARD_``.

Secrets (admin token, watermark master secret, upstream key) have no defaults: a feature that
needs one raises ``ConfigError`` naming the variable when it is missing.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from distillguard.errors import ConfigError


def _default_home() -> Path:
    return Path.home() / ".distillguard"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DISTILLGUARD_", extra="ignore")

    # --- where state lives --------------------------------------------------------------
    home: Path = Field(default_factory=_default_home)  # database, cached teacher, run outputs
    # Read-only real data sets (prompts, outputs, corpora): no default, because nothing about
    # where the package is installed says where they are; ``require_data_dir`` names the
    # variable when a command needs them.
    data_dir: Path | None = None
    database_url: str | None = None  # None -> SQLite (WAL) at {home}/distillguard.db
    redis_url: str | None = None  # set -> rate limits and online signals shared via Redis

    # --- serving ------------------------------------------------------------------------
    host: str = "127.0.0.1"
    port: int = 8000
    model_dir: Path | None = None  # a Hugging Face model directory to serve
    model_name: str | None = None  # name exposed in /v1/models (default: the directory's name)
    upstream_url: str | None = None  # proxy to this OpenAI-compatible server instead
    upstream_api_key: SecretStr | None = None
    max_body_bytes: int = 1_000_000  # larger request bodies get 413 before parsing
    max_batch_size: int = 8  # local generation: requests decoded together
    batch_wait_ms: float = 2.0  # local generation: how long to gather a batch
    request_timeout_s: float = 30.0  # a body that never finishes is cut off after this
    default_rpm: int = 600  # per-key requests per minute unless the key says otherwise
    default_tpm: int = 200_000  # per-key tokens per minute unless the key says otherwise
    policy_file: Path | None = None  # YAML policy for online enforcement (None: built-in)
    online_monitor: bool = True  # gateway asks monitor.online before serving (False: no policy)
    log_level: str = "info"  # the gateway's JSON log: debug | info | warning | error

    # --- secrets (no defaults) ----------------------------------------------------------
    admin_token: SecretStr | None = None
    watermark_secret: SecretStr | None = None

    # --- watermark ----------------------------------------------------------------------
    watermark_scheme: str = "kgw"  # kgw | gumbel | synthid | off
    watermark_key_id: int = 1  # current key version; older versions stay detectable

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        self.home.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{self.home / 'distillguard.db'}"

    def require_data_dir(self) -> Path:
        if self.data_dir is None:
            raise ConfigError(
                "DISTILLGUARD_DATA_DIR is not set: point it at the shared data sets (the folder "
                "with prompts/, outputs/ and corpora/, e.g. ../shared/data beside a checkout)"
            )
        return self.data_dir  # a missing file under it is reported by whoever reads it

    def require_admin_token(self) -> str:
        if self.admin_token is None or not self.admin_token.get_secret_value():
            raise ConfigError("DISTILLGUARD_ADMIN_TOKEN is not set; the admin API is disabled")
        return self.admin_token.get_secret_value()

    def require_watermark_secret(self) -> bytes:
        if self.watermark_secret is None or not self.watermark_secret.get_secret_value():
            raise ConfigError(
                "DISTILLGUARD_WATERMARK_SECRET is not set; watermarking needs the provider's "
                "master secret (or run with --watermark off)"
            )
        return self.watermark_secret.get_secret_value().encode()


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Settings read once per process; tests call ``get_settings.cache_clear()``."""
    return Settings()
