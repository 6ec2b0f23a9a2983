"""CLI for the gateway: ``distillguard serve``."""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer

from distillguard.errors import ConfigError

WATERMARKS = ("kgw", "gumbel", "synthid", "off")
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def _exit_on_signal(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


@contextlib.contextmanager
def multiprocess_directory() -> Iterator[Path]:
    """The directory the serving workers share their metrics through, for a ``with`` block.

    ``PROMETHEUS_MULTIPROC_DIR`` when the operator set it (its stale ``*.db`` files from an
    earlier run are removed first, as prometheus_client requires; the directory stays);
    otherwise a fresh temporary directory, removed with everything in it afterwards. Must run
    before anything in this process imports prometheus_client: it reads the variable
    once, at import (so this helper lives here, not in ``gateway.metrics``).
    """
    given = os.environ.get(MULTIPROC_ENV)
    if given:
        path = Path(given)
        path.mkdir(parents=True, exist_ok=True)
        for stale in path.glob("*.db"):
            stale.unlink(missing_ok=True)
        yield path
        return
    path = Path(tempfile.mkdtemp(prefix="distillguard-metrics-"))
    os.environ[MULTIPROC_ENV] = str(path)
    # uvicorn re-raises the SIGTERM it stopped on once it has shut down; with the default
    # handler that kills the process before `finally` runs. Exit through SystemExit instead.
    previous = signal.signal(signal.SIGTERM, _exit_on_signal)
    try:
        yield path
    finally:
        signal.signal(signal.SIGTERM, previous)
        os.environ.pop(MULTIPROC_ENV, None)
        shutil.rmtree(path, ignore_errors=True)


def gateway_serve(
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            help="TOML config file (default: DISTILLGUARD_CONFIG); "
            "DISTILLGUARD_* variables and these options override it",
            show_default=False,
        ),
    ] = None,
    model: Annotated[
        Path | None,
        typer.Option(
            "--model", help="Hugging Face model directory to serve (default: the teacher)"
        ),
    ] = None,
    upstream: Annotated[
        str | None,
        typer.Option(
            "--upstream", help="proxy to this OpenAI-compatible server instead of a model"
        ),
    ] = None,
    db: Annotated[
        str | None, typer.Option("--db", help="database URL (default: SQLite in DISTILLGUARD_HOME)")
    ] = None,
    host: Annotated[str | None, typer.Option("--host", help="address to listen on")] = None,
    port: Annotated[int | None, typer.Option("--port", help="TCP port")] = None,
    watermark: Annotated[
        str | None,
        typer.Option("--watermark", help="watermark scheme: kgw|gumbel|synthid|off"),
    ] = None,
    upstream_engine: Annotated[
        str | None,
        typer.Option(
            "--upstream-engine",
            help="vllm|sglang|none: the engine behind --upstream marks answers with "
            "distillguard's plugin (required with --upstream unless --watermark off)",
        ),
    ] = None,
    workers: Annotated[int, typer.Option("--workers", min=1, help="worker processes")] = 1,
    log_level: Annotated[
        str | None,
        typer.Option("--log-level", help="debug|info|warning|error (default: settings' log_level)"),
    ] = None,
) -> None:
    """Serve OpenAI's API (chat, completions, models) with keys, limits and a full log."""
    import uvicorn
    from rich.console import Console

    from distillguard.config import CONFIG_ENV, get_settings

    if model is not None and upstream is not None:
        raise ConfigError("give --model or --upstream, not both")
    if watermark is not None and watermark not in WATERMARKS:
        raise ConfigError(f"--watermark must be one of {', '.join(WATERMARKS)}")
    if config is not None and not config.is_file():
        raise ConfigError(f"--config {config}: no such file")
    # Settings travel to uvicorn's workers through the environment (options override the
    # environment, which overrides the config file).
    chosen = {
        CONFIG_ENV: str(config.resolve()) if config is not None else None,
        "DISTILLGUARD_UPSTREAM_URL": upstream,
        "DISTILLGUARD_DATABASE_URL": db,
        "DISTILLGUARD_HOST": host,
        "DISTILLGUARD_PORT": str(port) if port is not None else None,
        "DISTILLGUARD_WATERMARK_SCHEME": watermark,
        "DISTILLGUARD_MODEL_DIR": str(model.resolve()) if model is not None else None,
        "DISTILLGUARD_LOG_LEVEL": log_level,
        "DISTILLGUARD_UPSTREAM_ENGINE": upstream_engine,
    }
    for name, value in chosen.items():
        if value is not None:
            os.environ[name] = value
    get_settings.cache_clear()
    settings = get_settings()  # a bad file or variable stops here, before any worker starts
    console = Console(stderr=True)
    if settings.upstream_url and settings.model_dir:
        raise ConfigError("the settings give both upstream_url and model_dir; choose one")
    if settings.upstream_url is None and settings.model_dir is None:
        from distillguard.models.teacher import default_teacher_dir

        console.print("no --model or --upstream: serving the default teacher")
        os.environ["DISTILLGUARD_MODEL_DIR"] = str(default_teacher_dir(settings))
        get_settings.cache_clear()
        settings = get_settings()
    if settings.upstream_url is None and settings.watermark_scheme != "off":
        settings.require_watermark_secret()  # fail here, not in every worker
    from distillguard.gateway.engine_marking import upstream_marking

    upstream_marking(  # an upstream that would answer unmarked: refused here, before workers
        upstream_url=settings.upstream_url,
        engine=settings.upstream_engine,
        scheme=settings.watermark_scheme,
        key_id=settings.watermark_key_id,
    )
    if workers > 1 and not settings.redis_url:
        console.print(
            "[yellow]several workers without DISTILLGUARD_REDIS_URL: each enforces its own "
            "rate limits[/yellow]"
        )
    from distillguard.gateway.clientip import parse_networks
    from distillguard.gateway.protocol import GuardedHttpToolsProtocol

    parse_networks(settings.trusted_proxies)  # a bad network fails here, not in every worker
    what = settings.upstream_url or settings.model_dir
    console.print(f"distillguard gateway on http://{settings.host}:{settings.port} serving {what}")
    # Several workers share their Prometheus values through a directory (see gateway.metrics);
    # one worker keeps them in memory: multiprocess mode costs ~2x per metric update
    # (benchmarks/metrics_multiprocess.py), for nothing when there is nothing to sum.
    shared = workers > 1 or bool(os.environ.get(MULTIPROC_ENV))
    with multiprocess_directory() if shared else contextlib.nullcontext():
        uvicorn.run(
            "distillguard.gateway.app:app_factory",
            factory=True,
            host=settings.host,
            port=settings.port,
            workers=workers,
            loop="uvloop",
            http=functools.partial(  # type: ignore[arg-type]
                GuardedHttpToolsProtocol, header_timeout_s=settings.header_timeout_s
            ),
            # The gateway decides the client IP itself, from trusted proxies only
            # (clientip.py): uvicorn's handling would believe X-Forwarded-For from loopback.
            proxy_headers=False,
            access_log=False,  # the gateway writes its own JSON access log
            log_config=None,
            log_level=settings.log_level,
            timeout_graceful_shutdown=10,
        )


def register(root: typer.Typer) -> None:
    """Attach this capability's commands to the root app."""
    root.command("serve")(gateway_serve)
