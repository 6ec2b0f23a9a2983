"""The gateway application: ``create_app(settings)`` wires every part together.

``GatewayApp`` is a FastAPI app with one twist: the two completion endpoints (and
``/v1/models``) are answered by a raw ASGI handler (``routes_openai``) before FastAPI's router
and middleware see the request. That path runs on every API call and must add well under a
millisecond; admin, health and metrics routes are ordinary FastAPI routes.

The lifespan opens, in order: the database (migrated to the newest schema), the exchange log
(group-commit writer), the key checker, the rate limiter (memory, or Redis when
``DISTILLGUARD_REDIS_URL`` is set), the backend (upstream proxy or local model with its
watermark sampler) and the online monitor when its module is installed. It closes them in
reverse order.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI

from distillguard.config import Settings, get_settings
from distillguard.errors import ConfigError, DistillGuardError
from distillguard.gateway.auth import KeyAuthenticator, _require_admin
from distillguard.gateway.backend import Backend
from distillguard.gateway.clientip import ClientResolver
from distillguard.gateway.errors import install_handlers
from distillguard.gateway.limits import UnauthenticatedBudget, make_limiter
from distillguard.gateway.metrics import GatewayMetrics
from distillguard.gateway.routes_openai import OPENAI_PATHS, handle_models, handle_openai
from distillguard.gateway.runtime import GatewayState
from distillguard.gateway.state import AdminLoginGuard, EnforcementConfig, EnforcementState

log = logging.getLogger("distillguard.gateway")


class GatewayApp(FastAPI):
    """FastAPI, with the OpenAI API paths short-circuited to the raw ASGI handler."""

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http":
            path = scope["path"]
            if path in OPENAI_PATHS:
                await handle_openai(self.state.gateway, scope, receive, send)
                return
            if path == "/v1/models":
                await handle_models(self.state.gateway, scope, receive, send)
                return
        await super().__call__(scope, receive, send)


def _make_backend(settings: Settings) -> Backend:
    if settings.upstream_url:
        from distillguard.gateway.engine_marking import upstream_marking
        from distillguard.gateway.upstream import UpstreamBackend

        api_key = (
            settings.upstream_api_key.get_secret_value() if settings.upstream_api_key else None
        )
        marking = upstream_marking(
            upstream_url=settings.upstream_url,
            engine=settings.upstream_engine,
            scheme=settings.watermark_scheme,
            key_id=settings.watermark_key_id,
        )
        return UpstreamBackend(settings.upstream_url, api_key=api_key, marking=marking)
    from distillguard.gateway.local import LocalBackend

    return LocalBackend.from_settings(settings)


def _make_monitor(settings: Settings) -> Any | None:
    """The online monitor, or None when switched off. A monitor that is installed but cannot
    start stops the gateway (ConfigError): enforcement never goes silently missing."""
    if not settings.online_monitor:
        return None
    try:
        from distillguard.monitor.online import OnlineMonitor
    except ImportError:
        log.warning("distillguard.monitor.online is not installed: online enforcement is off")
        return None
    try:
        return OnlineMonitor.from_settings(settings)
    except DistillGuardError as exc:
        raise ConfigError(
            f"the online monitor cannot start: {exc.message} "
            "(fix it, or set DISTILLGUARD_ONLINE_MONITOR=false to serve without enforcement)"
        ) from exc


def create_app(settings: Settings | None = None, *, backend: Backend | None = None) -> FastAPI:
    """The gateway for ``settings`` (default: the environment's). ``backend`` overrides the
    one the settings name (tests, embedding)."""
    settings = settings or get_settings()
    if settings.upstream_url and settings.model_dir:
        raise ConfigError("give either a model directory or an upstream URL, not both")
    client_resolver = ClientResolver(settings.trusted_proxies)  # ConfigError before serving

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        from distillguard.store.db import make_engine, migrate
        from distillguard.store.exchanges import ExchangeLog

        engine = make_engine(settings.resolved_database_url)
        await asyncio.to_thread(migrate, engine=engine)
        exchange_log = ExchangeLog(engine)
        limiter = make_limiter(settings.redis_url)
        chosen = backend or _make_backend(settings)
        await chosen.start()
        monitor = _make_monitor(settings)
        metrics = GatewayMetrics(chosen.model_ids)
        enforcement = EnforcementState(
            engine,
            monitor=monitor,
            redis_url=settings.redis_url,
            config=EnforcementConfig(
                refresh_s=settings.enforcement_refresh_s,
                throttle_rpm=monitor.policy.throttle_rpm if monitor is not None else 2,
            ),
            count_error=lambda component: metrics.state_errors.labels(component).inc(),
        )
        await enforcement.start()  # the actions in force, before the first request
        admin = settings.admin_token.get_secret_value() if settings.admin_token else None
        state = GatewayState(
            settings=settings,
            engine=engine,
            exchange_log=exchange_log,
            auth=KeyAuthenticator(engine),
            limiter=limiter,
            backend=chosen,
            metrics=metrics,
            monitor=monitor,
            admin_token=admin or None,
            enforcement=enforcement,
            login_guard=AdminLoginGuard(
                max_failures=settings.admin_login_max_failures,
                window_s=settings.admin_login_window_s,
                redis_url=settings.redis_url,
                count_error=lambda component: metrics.state_errors.labels(component).inc(),
            ),
            client_resolver=client_resolver,
            unauth_budget=UnauthenticatedBudget(settings.unauth_log_per_minute),
            started_at=time.time(),
        )
        app.state.gateway = state
        log.info(
            "gateway ready",
            extra={
                "fields": {
                    "backend": type(chosen).__name__,
                    "models": chosen.model_ids(),
                    "limits": type(limiter).__name__,
                    "monitor": monitor is not None,
                    "watermark": chosen.watermark_scheme,
                }
            },
        )
        try:
            yield
        finally:
            await enforcement.close()
            await state.login_guard.close()
            if monitor is not None:
                monitor.close()
            await chosen.close()
            await limiter.close()
            state.auth.close()
            await asyncio.to_thread(exchange_log.close)
            engine.dispose()

    app = GatewayApp(
        title="distillguard gateway",
        version="0.1.0",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,  # served below, behind the admin token
    )
    install_handlers(app)

    @app.get("/admin/openapi.json", include_in_schema=False, dependencies=[Depends(_require_admin)])
    async def openapi_document() -> dict[str, Any]:
        """The admin and ops API's OpenAPI document, with the OpenAI routes merged in."""
        from distillguard.wire.openapi import with_openai_paths

        return with_openai_paths(app.openapi())

    from distillguard.gateway.routes_admin import router as admin_router
    from distillguard.gateway.routes_ops import router as ops_router

    app.include_router(ops_router)
    app.include_router(admin_router)
    from distillguard.gateway.console import mount_console

    mount_console(app)  # /console: the operator's pages, behind its own session
    return app


def app_factory() -> FastAPI:
    """uvicorn's ``--factory`` entry point (each worker builds its app from the environment)."""
    from distillguard.gateway.metrics import configure_json_logging

    settings = get_settings()
    configure_json_logging(settings.log_level)
    return create_app(settings)
