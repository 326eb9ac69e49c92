"""GET /metrics: Prometheus text format, from this app's own registry."""

from __future__ import annotations

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from service.deps import ReadAccess, StateDep

router = APIRouter(tags=["metrics"])


@router.get("/metrics", dependencies=[ReadAccess], response_class=Response, summary="Prometheus metrics")
async def metrics(state: StateDep) -> Response:
    return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
