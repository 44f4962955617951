"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from redis.exceptions import RedisError

from tnllm.api.deps import MetricsAccess, ServicesDep
from tnllm.api.metrics import CONTENT_TYPE, render
from tnllm.api.schemas import HealthStatus

router = APIRouter(tags=["health"])
log = logging.getLogger(__name__)


@router.get("/healthz", response_model=HealthStatus, summary="Liveness")
async def healthz() -> HealthStatus:
    """The process answers (no dependency is checked)."""
    return HealthStatus(status="ok")


@router.get(
    "/readyz",
    response_model=HealthStatus,
    summary="Readiness",
    responses={503: {"model": HealthStatus, "description": "Not ready (`problems` says why)"}},
)
async def readyz(services: ServicesDep) -> JSONResponse:
    """Ready when Redis answers and at least one worker has its model loaded. Reports (without
    failing) a Redis that runs without append-only persistence: jobs would not survive its restart."""
    store = services.store
    status = HealthStatus(status="ok", redis=False, workers_ready=0)
    try:
        await store.client.ping()
        status.redis = True
        workers = await store.workers()
        status.workers_ready = sum(1 for w in workers if w.model_loaded)
        aof = await store.aof_enabled()
        status.persistence = "aof" if aof else "none"
        if not aof:
            status.warnings.append("Redis runs without append-only persistence (appendonly no)")
    except (RedisError, OSError) as exc:
        log.info("readyz: Redis unreachable: %s", exc)
        status.problems.append(f"Redis unreachable: {exc}")
    if status.redis and not status.workers_ready:
        status.problems.append("no worker has its model loaded yet")
    if status.problems:
        status.status = "unavailable"
    code = 503 if status.problems else 200
    headers = {"Retry-After": "5"} if code == 503 else {}
    return JSONResponse(status.model_dump(mode="json"), status_code=code, headers=headers)


@router.get("/metrics", summary="Prometheus metrics", response_class=Response, dependencies=[MetricsAccess])
async def metrics(services: ServicesDep) -> Response:
    """Prometheus text: this process's metrics plus the cluster-wide job counters and queue depths
    (behind a bearer token when TNLLM_METRICS_TOKEN is set)."""
    page = await render(services.metrics, services.store.client)
    return Response(page, media_type=CONTENT_TYPE)
