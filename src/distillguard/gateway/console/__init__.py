"""The operator console at ``/console``: server-rendered pages for the analyst who decides.

``mount_console(app)`` adds its routes and per-app state (the login guard) to the gateway.
"""

from __future__ import annotations

from fastapi import FastAPI

from distillguard.gateway.console.routes import ConsoleConfig, router
from distillguard.gateway.console.session import LoginGuard


def mount_console(app: FastAPI, config: ConsoleConfig | None = None) -> None:
    config = config or ConsoleConfig()
    app.state.console_config = config
    app.state.console_login_guard = LoginGuard(config.login)
    app.include_router(router)


__all__ = ["ConsoleConfig", "mount_console"]
