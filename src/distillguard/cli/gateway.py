"""CLI for the gateway: ``distillguard serve``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from distillguard.errors import ConfigError

WATERMARKS = ("kgw", "gumbel", "synthid", "off")


def gateway_serve(
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
        typer.Option(
            "--watermark", help="watermark scheme for local models: kgw|gumbel|synthid|off"
        ),
    ] = None,
    workers: Annotated[int, typer.Option("--workers", min=1, help="worker processes")] = 1,
    log_level: Annotated[
        str, typer.Option("--log-level", help="debug|info|warning|error")
    ] = "info",
) -> None:
    """Serve OpenAI's API (chat, completions, models) with keys, limits and a full log."""
    import uvicorn
    from rich.console import Console

    from distillguard.config import get_settings

    if model is not None and upstream is not None:
        raise ConfigError("give --model or --upstream, not both")
    if watermark is not None and watermark not in WATERMARKS:
        raise ConfigError(f"--watermark must be one of {', '.join(WATERMARKS)}")
    # Settings travel to uvicorn's workers through the environment.
    chosen = {
        "DISTILLGUARD_UPSTREAM_URL": upstream,
        "DISTILLGUARD_DATABASE_URL": db,
        "DISTILLGUARD_HOST": host,
        "DISTILLGUARD_PORT": str(port) if port is not None else None,
        "DISTILLGUARD_WATERMARK_SCHEME": watermark,
        "DISTILLGUARD_MODEL_DIR": str(model.resolve()) if model is not None else None,
        "DISTILLGUARD_LOG_LEVEL": log_level,
    }
    for name, value in chosen.items():
        if value is not None:
            os.environ[name] = value
    get_settings.cache_clear()
    settings = get_settings()
    console = Console(stderr=True)
    if settings.upstream_url is None and settings.model_dir is None:
        from distillguard.models.teacher import default_teacher_dir

        console.print("no --model or --upstream: serving the default teacher")
        os.environ["DISTILLGUARD_MODEL_DIR"] = str(default_teacher_dir(settings))
        get_settings.cache_clear()
        settings = get_settings()
    if settings.upstream_url is None and settings.watermark_scheme != "off":
        settings.require_watermark_secret()  # fail here, not in every worker
    if workers > 1 and not settings.redis_url:
        console.print(
            "[yellow]several workers without DISTILLGUARD_REDIS_URL: each enforces its own "
            "rate limits[/yellow]"
        )
    what = settings.upstream_url or settings.model_dir
    console.print(f"distillguard gateway on http://{settings.host}:{settings.port} serving {what}")
    uvicorn.run(
        "distillguard.gateway.app:app_factory",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=workers,
        loop="uvloop",
        http="httptools",
        access_log=False,  # the gateway writes its own JSON access log
        log_config=None,
        log_level=log_level,
        timeout_graceful_shutdown=10,
    )


def register(root: typer.Typer) -> None:
    """Attach this capability's commands to the root app."""
    root.command("serve")(gateway_serve)
