"""The operator console at ``/console``: server-rendered pages for the analyst who decides.

``mount_console(app)`` adds its routes and per-app state (the cluster cache) to the gateway.
"""

from __future__ import annotations

from fastapi import FastAPI

from distillguard.gateway.console import pages_clusters, pages_evidence  # noqa: F401 (routes)
from distillguard.gateway.console.clusters import ClusterCache
from distillguard.gateway.console.routes import ConsoleConfig, router


def mount_console(app: FastAPI, config: ConsoleConfig | None = None) -> None:
    config = config or ConsoleConfig()
    app.state.console_config = config
    app.state.console_clusters = ClusterCache(config.clusters)
    app.include_router(router)


__all__ = ["ConsoleConfig", "mount_console"]
