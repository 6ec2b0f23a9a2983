"""Operations routes: ``/healthz`` (alive), ``/readyz`` (dependencies) and ``/metrics``.

- ``/healthz`` is liveness: 200 while the process serves HTTP at all. It checks nothing and
  says nothing else (no backend, model, scheme or key: it is unauthenticated), so an
  orchestrator restarts the gateway only when the gateway itself is stuck, never because a
  dependency is down (a restart would not bring the database back).
- ``/readyz`` is readiness: the database answers ``SELECT 1``, Redis (when configured) answers
  ``PING``, the upstream (proxy mode) answers ``GET /v1/models``; each within
  ``readiness_timeout_s``, all at once. 200 when all pass, 503 otherwise. An unauthenticated
  caller learns only which kind of dependency failed (``"failed": ["upstream"]``); a caller
  with the admin token also gets each check's detail (error, status, latency).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict, dataclass

import orjson
from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST
from sqlalchemy import text

from distillguard.errors import DistillGuardError
from distillguard.gateway.auth import _require_admin, check_admin_token

router = APIRouter(tags=["ops"])


@dataclass(frozen=True)
class Check:
    """One dependency's answer to a readiness probe."""

    name: str  # database | redis | upstream
    ok: bool
    detail: str  # what failed (admin callers only): an error class, a status
    latency_ms: float


def _json(body: dict, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


@router.get("/healthz")
async def healthz() -> Response:
    return _json({"status": "ok"})


def _select_one(engine) -> None:
    with engine.connect() as connection:
        connection.execute(text("SELECT 1"))


async def _database(state) -> str:
    await asyncio.to_thread(_select_one, state.engine)
    return "SELECT 1 answered"


async def _redis(url: str, timeout_s: float) -> str:
    from redis.asyncio import Redis

    client = Redis.from_url(url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s)
    try:
        await client.ping()
    finally:
        await client.aclose()
    return "PING answered"


async def _upstream(base_url: str, api_key: str | None, timeout_s: float) -> str:
    import httpx

    headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
    async with httpx.AsyncClient(timeout=timeout_s) as client:
        resp = await client.get(f"{base_url}/v1/models", headers=headers)
    # Any answer but a server error or a refused credential means requests can be served.
    if resp.status_code >= 500 or resp.status_code in (401, 403):
        raise RuntimeError(f"GET /v1/models answered {resp.status_code}")
    return f"GET /v1/models answered {resp.status_code}"


async def _run(name: str, probe, timeout_s: float) -> Check:
    started = time.perf_counter()
    try:
        async with asyncio.timeout(timeout_s):
            detail = await probe
        ok = True
    except TimeoutError:
        ok, detail = False, f"no answer within {timeout_s:g} s"
    except Exception as exc:  # any failure is a failed check, named below
        ok, detail = False, f"{type(exc).__name__}: {str(exc)[:200]}"
    return Check(name, ok, detail, round((time.perf_counter() - started) * 1000, 3))


def _is_admin(request: Request, expected: str | None) -> bool:
    try:
        check_admin_token(expected, request.headers.get("authorization"))
    except DistillGuardError:
        return False
    return True


@router.get("/readyz")
async def readyz(request: Request) -> Response:
    state = request.app.state.gateway
    settings = state.settings
    timeout_s = settings.readiness_timeout_s
    probes = {"database": _database(state)}
    if settings.redis_url:
        probes["redis"] = _redis(settings.redis_url, timeout_s)
    upstream_url = getattr(state.backend, "base_url", None)
    if settings.upstream_url and upstream_url:
        key = settings.upstream_api_key
        probes["upstream"] = _upstream(
            upstream_url, key.get_secret_value() if key else None, timeout_s
        )
    checks = await asyncio.gather(*(_run(n, p, timeout_s) for n, p in probes.items()))
    failed = [c.name for c in checks if not c.ok]
    body: dict = {"status": "not ready" if failed else "ready", "failed": failed}
    if _is_admin(request, state.admin_token):
        body["checks"] = [asdict(c) for c in checks]
    return _json(body, 503 if failed else 200)


@router.get("/metrics", dependencies=[Depends(_require_admin)])
async def metrics(request: Request) -> Response:
    """Prometheus metrics, admin token required: they count enforcement actions (silent flags
    included), which no client may see."""
    return Response(request.app.state.gateway.metrics.render(), media_type=CONTENT_TYPE_LATEST)
