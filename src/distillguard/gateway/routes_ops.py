"""Operations routes: ``/healthz`` (liveness + database) and ``/metrics`` (Prometheus)."""

from __future__ import annotations

import asyncio

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST
from sqlalchemy import text

router = APIRouter(tags=["ops"])


def _database_ok(engine) -> bool:
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        return True
    except Exception:
        return False


@router.get("/healthz")
async def healthz(request: Request) -> Response:
    state = request.app.state.gateway
    database = await asyncio.to_thread(_database_ok, state.engine)
    body = {
        "status": "ok" if database else "degraded",
        "database": database,
        "backend": type(state.backend).__name__,
        "models": state.backend.model_ids(),
        "watermark": state.backend.watermark_scheme,
        "monitor": state.monitor is not None,
    }
    return Response(
        orjson.dumps(body), status_code=200 if database else 503, media_type="application/json"
    )


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    return Response(request.app.state.gateway.metrics.render(), media_type=CONTENT_TYPE_LATEST)
