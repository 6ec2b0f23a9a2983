"""All settings in one place: a TOML config file, overridden by ``DISTILLGUARD_*`` variables.

Where a setting comes from, highest first (pydantic-settings sources):

1. values passed to ``Settings(...)`` / ``load_settings(**overrides)`` (tests, embedding);
2. environment variables ``DISTILLGUARD_<NAME>`` (``DISTILLGUARD_PORT=9000``);
3. for secrets and the database/Redis URLs only, ``DISTILLGUARD_<NAME>_FILE``: a path whose
   content is the value (Docker and Kubernetes secrets are mounted as files; a trailing newline
   is dropped);
4. the config file named by ``--config FILE`` (``serve``) or ``DISTILLGUARD_CONFIG``: a flat TOML
   table whose keys are the field names below (``port = 8000``);
5. the defaults below.

A config file with an unknown key or a value of the wrong type, a missing file, a TOML syntax
error or a bad environment value stops the program at start with ``ConfigError`` naming the key
and where it came from; nothing is silently ignored. Secrets (admin token, watermark master
secret, upstream key) have no defaults: a feature that needs one raises ``ConfigError`` naming
the variable when it is missing.
"""

from __future__ import annotations

import difflib
import os
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, SecretStr, TypeAdapter, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from distillguard.errors import ConfigError

ENV_PREFIX = "DISTILLGUARD_"
CONFIG_ENV = "DISTILLGUARD_CONFIG"  # path of the TOML config file
LOG_LEVELS = ("debug", "info", "warning", "error")

# The file `load_settings(config_file=...)` reads while it builds a Settings (None: read
# DISTILLGUARD_CONFIG). A context variable, not a global: settings built concurrently in
# other threads or tasks keep their own file.
_config_file: ContextVar[Path | None] = ContextVar("distillguard_config_file", default=None)


def _default_home() -> Path:
    return Path.home() / ".distillguard"


class Settings(BaseSettings):
    # extra="ignore": other DISTILLGUARD_* variables (test URLs, *_FILE) are not settings.
    # The config file is stricter: its unknown keys are errors (see _TomlFileSource).
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore")

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
    port: int = Field(default=8000, ge=1, le=65535)
    model_dir: Path | None = None  # a Hugging Face model directory to serve
    model_name: str | None = None  # name exposed in /v1/models (default: the directory's name)
    upstream_url: str | None = None  # proxy to this OpenAI-compatible server instead
    upstream_api_key: SecretStr | None = None
    # vllm | sglang: the engine behind upstream_url marks answers with distillguard's plugin
    # (gateway/engine_marking.py); none: it does not, and a watermark setting is refused
    upstream_engine: str = "none"
    max_body_bytes: int = Field(default=1_000_000, ge=1)  # larger bodies get 413 before parsing
    max_batch_size: int = Field(default=8, ge=1)  # local generation: requests decoded together
    batch_wait_ms: float = Field(default=2.0, ge=0)  # local generation: how long to gather
    request_timeout_s: float = Field(default=30.0, gt=0)  # a slow body is cut off after this
    header_timeout_s: float = Field(default=10.0, gt=0)  # an unfinished request head: 408
    default_rpm: int = Field(default=600, ge=1)  # per-key requests/minute unless the key says
    default_tpm: int = Field(default=200_000, ge=1)  # per-key tokens/minute unless the key says
    policy_file: Path | None = None  # YAML policy for online enforcement (None: built-in)
    # What the provider knows of its accounts (spec 1b: age, org, verification tier) and its
    # trust tiers (YAML/JSON): the online monitor applies the same grants and org explanations
    # as `monitor score --accounts --trust`. None: every account is an unverified stranger.
    accounts_file: Path | None = None
    trust_file: Path | None = None
    online_monitor: bool = True  # gateway asks monitor.online before serving (False: no policy)
    log_level: str = "info"  # the gateway's JSON log: debug | info | warning | error
    # Networks (CIDR, comma-separated) of the reverse proxies in front of the gateway. Only a
    # peer inside one of them may name the client with X-Forwarded-For; empty (the default):
    # the header is ignored and the TCP peer is the client (a client must never pick its IP).
    trusted_proxies: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # Requests without a valid key, per client IP and minute, that get a log row (with at most
    # unauth_logged_body_bytes of their body); beyond it they are answered 429 and only counted:
    # anyone can send them, so they must cost the server little and never fill its disk.
    unauth_log_per_minute: int = Field(default=60, ge=0)
    unauth_logged_body_bytes: int = Field(default=1024, ge=0, le=65_536)

    # --- operations ---------------------------------------------------------------------
    # /readyz gives each dependency (database, Redis, upstream) this long to answer: a probe
    # must finish well inside the orchestrator's own probe timeout (Kubernetes: 1 s default
    # is too short for a cold PostgreSQL connection; 2 s fits Docker's 5 s default).
    readiness_timeout_s: float = Field(default=2.0, gt=0, le=30)

    # --- spend budgets (USD per million tokens) ------------------------------------------
    # What a key's spend budget is charged: usage x these prices. 0 (the default) means the
    # provider has not priced its model; keys with a spend budget are then refused at creation,
    # because a budget that nothing is charged against would never stop anyone.
    price_prompt_per_mtok: float = Field(default=0.0, ge=0)
    price_completion_per_mtok: float = Field(default=0.0, ge=0)

    # --- secrets (no defaults) ----------------------------------------------------------
    admin_token: SecretStr | None = None
    watermark_secret: SecretStr | None = None
    intel_key: SecretStr | None = None  # community key: keyed hashes in shared STIX indicators
    # ed25519 private key (PEM, from `distillguard prove keygen`) that signs evidence reports;
    # a path, not the key, so the key never sits in an environment dump.
    evidence_signing_key_file: Path | None = None
    # Where evidence reports (`prove report`: HTML + signed JSON) are kept; the console lists
    # and serves them. None: {home}/reports.
    reports_dir: Path | None = None

    # --- enforcement and the admin API ------------------------------------------------------
    # How often each replica re-reads the active enforcement actions from the database: the
    # longest a lift takes to reach a replica without Redis (with Redis: at once).
    enforcement_refresh_s: float = Field(default=2.0, gt=0, le=3600)
    admin_token_name: str = "admin"  # who acted, in the audit log: admin:<name>
    # Failed admin logins allowed per client IP in a window before 429 (brute force).
    admin_login_max_failures: int = Field(default=10, ge=1)
    admin_login_window_s: float = Field(default=60.0, gt=0)

    # --- watermark ----------------------------------------------------------------------
    watermark_scheme: str = "kgw"  # kgw | gumbel | synthid | off
    watermark_key_id: int = 1  # current key version; older versions stay detectable

    # --- prevention (defences served to acted-on accounts: gateway.prevention) --------------
    # The proxy student of antidistillation sampling (a Llama model directory with the served
    # model's tokenizer); None: the served model's first ``antidistill_proxy_layers`` blocks.
    antidistill_proxy_dir: Path | None = None
    antidistill_proxy_layers: int = Field(default=1, ge=1, le=64)
    # Held-out task text whose proxy loss antidistillation raises (JSONL with "text", or one
    # text a line); None: the served model's own samples (a student's imitation target).
    antidistill_heldout_path: Path | None = None
    # Context tokens the proxy reads per sampled token (its per-token cost).
    antidistill_window: int = Field(default=16, ge=1, le=4096)
    # Appended to the last user message when an account's reasoning is replaced by a summary
    # (withhold_reasoning mode=summary): the teacher writes its own "Summary:" line.
    summary_instruction: str = Field(default="Summarize your steps.", min_length=1, max_length=1000)

    @field_validator("log_level")
    @classmethod
    def _known_log_level(cls, value: str) -> str:
        if value.lower() not in LOG_LEVELS:
            raise ValueError(f"must be one of {', '.join(LOG_LEVELS)}")
        return value.lower()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # init > env > *_FILE secrets > config file > defaults (no .env file: explicit is safer)
        return (
            init_settings,
            env_settings,
            _SecretFilesSource(settings_cls),
            _TomlFileSource(settings_cls, config_file_path()),
        )

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _split_networks(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        self.home.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{self.home / 'distillguard.db'}"

    @property
    def resolved_reports_dir(self) -> Path:
        return self.reports_dir or self.home / "reports"

    def require_data_dir(self) -> Path:
        if self.data_dir is None:
            raise ConfigError(
                "DISTILLGUARD_DATA_DIR is not set: point it at the shared data sets (the folder "
                "with prompts/, outputs/ and corpora/, e.g. ../shared/data beside a checkout)"
            )
        return self.data_dir  # a missing file under it is reported by whoever reads it

    @property
    def prices_set(self) -> bool:
        """True when the provider priced its tokens (spend budgets can be charged)."""
        return self.price_prompt_per_mtok > 0 or self.price_completion_per_mtok > 0

    def spend_usd(self, prompt_tokens: int, completion_tokens: int) -> float:
        """What ``prompt_tokens`` + ``completion_tokens`` cost at the configured prices."""
        return (
            prompt_tokens * self.price_prompt_per_mtok
            + completion_tokens * self.price_completion_per_mtok
        ) / 1_000_000

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


# Not secrets by type, but their URLs may carry a password: they may come from files too.
_URL_FIELDS_FROM_FILES = ("database_url", "redis_url")


def file_fields() -> list[str]:
    """Settings that may come from ``DISTILLGUARD_<NAME>_FILE``: the secrets and the URLs."""
    secrets = [
        name
        for name, info in Settings.model_fields.items()
        if SecretStr in (getattr(info.annotation, "__args__", None) or (info.annotation,))
    ]
    return secrets + list(_URL_FIELDS_FROM_FILES)


def config_file_path() -> Path | None:
    """The config file in effect: the one ``load_settings`` was given, else
    ``DISTILLGUARD_CONFIG``, else none."""
    chosen = _config_file.get()
    if chosen is not None:
        return chosen
    from_env = os.environ.get(CONFIG_ENV, "").strip()
    return Path(from_env).expanduser() if from_env else None


class _SecretFilesSource(PydanticBaseSettingsSource):
    """``DISTILLGUARD_<SECRET>_FILE=/run/secrets/x``: the secret is the file's content (for
    the secrets, and for the database and Redis URLs, which may carry a password)."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # unused: __call__ reads everything at once

    def __call__(self) -> dict[str, Any]:
        found: dict[str, Any] = {}
        for name in file_fields():
            variable = f"{ENV_PREFIX}{name.upper()}_FILE"
            path = os.environ.get(variable)
            if not path:
                continue
            if os.environ.get(f"{ENV_PREFIX}{name.upper()}"):
                raise ConfigError(
                    f"both {ENV_PREFIX}{name.upper()} and {variable} are set; give one"
                )
            try:
                value = Path(path).read_text(encoding="utf-8").rstrip("\r\n")
            except OSError as exc:
                raise ConfigError(f"{variable}={path}: cannot read it ({exc.strerror})") from None
            if not value:
                raise ConfigError(f"{variable}={path}: the file is empty")
            found[name] = value
        return found


class _TomlFileSource(PydanticBaseSettingsSource):
    """The config file: a flat TOML table of setting names; strict about keys and types."""

    def __init__(self, settings_cls: type[BaseSettings], path: Path | None) -> None:
        super().__init__(settings_cls)
        self.path = path

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # unused: __call__ reads everything at once

    def __call__(self) -> dict[str, Any]:
        if self.path is None:
            return {}
        return read_config_file(self.path)


def read_config_file(path: Path) -> dict[str, Any]:
    """The settings in a TOML config file, each checked against its field's type.

    ConfigError for a missing or unreadable file, a TOML syntax error, an unknown key (with
    the closest known name) or a value of the wrong type, always naming the file and the key.
    """
    try:
        with path.open("rb") as handle:
            data = tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"config file {path} cannot be read: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    fields = Settings.model_fields
    for key, value in data.items():
        if key not in fields:
            close = difflib.get_close_matches(key, list(fields), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            if isinstance(value, dict):
                hint += "; the file is one flat table, without [sections]"
            raise ConfigError(f"config file {path}: unknown key {key!r}{hint}")
        try:
            field = fields[key]
            # the field's type with its constraints (ge=, le=, ...)
            checked: Any = (
                Annotated[field.annotation, *field.metadata] if field.metadata else field.annotation
            )
            TypeAdapter(checked).validate_python(value, strict=_strict(field.annotation, value))
        except ValidationError as exc:
            problem = exc.errors()[0]["msg"]
            shown = "(hidden)" if key in file_fields() else repr(value)  # never print a secret
            raise ConfigError(
                f"config file {path}: key {key!r} has a wrong value {shown}: {problem}"
            ) from None
    return data


def _strict(annotation: Any, value: Any) -> bool:
    # TOML has real types: "8000" for an int field is a mistake worth naming. Paths are the
    # exception: TOML has no path type, and strict mode would refuse str -> Path.
    kinds = getattr(annotation, "__args__", None) or (annotation,)
    return not (isinstance(value, str) and Path in kinds)


def _explain(exc: ValidationError, path: Path | None) -> str:
    """Which setting is wrong, and where it came from (environment, file or default)."""
    problems = []
    for error in exc.errors():
        name = ".".join(str(p) for p in error["loc"]) or "?"
        variable = f"{ENV_PREFIX}{name.upper()}"
        if variable in os.environ:
            shown = "(hidden)" if name in file_fields() else repr(os.environ[variable])
            where = f"environment variable {variable}={shown}"
        elif path is not None:
            where = f"setting {name!r} (from {path} or its default)"
        else:
            where = f"setting {name!r}"
        problems.append(f"{where}: {error['msg']}")
    return "; ".join(problems)


@contextmanager
def _reading(config_file: Path | None) -> Iterator[None]:
    token = _config_file.set(config_file)
    try:
        yield
    finally:
        _config_file.reset(token)


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Settings from ``config_file`` (default: ``DISTILLGUARD_CONFIG``) and the environment,
    ``overrides`` first. ConfigError naming the setting and its source for any bad value."""
    with _reading(config_file):
        path = config_file_path()
        try:
            return Settings(**overrides)
        except ValidationError as exc:
            raise ConfigError(f"invalid settings: {_explain(exc, path)}") from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Settings read once per process (CLI and app edges only); tests call
    ``get_settings.cache_clear()``."""
    return load_settings()
