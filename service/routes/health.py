"""Liveness, readiness and what is being served."""

from __future__ import annotations

from anyio import to_thread
from fastapi import APIRouter
from fastapi.responses import JSONResponse

from infomax.data.registry import recorded_classes
from infomax.index.filters import MAX_CONDITIONS, MAX_IN_VALUES
from service.deps import ReadAccess, ReadyState, StateDep
from service.errors import ErrorBody
from service.schemas import FilterInfo, Health, Readiness, ServiceInfo

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health, summary="The process is alive")
async def healthz() -> Health:
    return Health()


@router.get(
    "/readyz",
    response_model=Readiness,
    summary="Model and index are loaded (503 until then)",
    responses={503: {"model": ErrorBody}},
)
async def readyz(state: StateDep):
    if not state.ready:
        e = state.not_ready()
        return JSONResponse(
            ErrorBody(detail=e.message, code=e.code).model_dump(exclude_none=True),
            status_code=e.status,
            headers=e.headers,
        )
    return Readiness(model=state.model.id, items=len(state.index), read_only=state.settings.read_only)


@router.get("/v1/info", response_model=ServiceInfo, dependencies=[ReadAccess], summary="Model, index and limits")
async def info(state: ReadyState) -> ServiceInfo:
    s, m = state.settings, state.model
    labels = await to_thread.run_sync(state.index.labels, MAX_IN_VALUES)
    return ServiceInfo(
        model=m.id,
        z_dim=m.z_dim,
        output=m.output,
        whitened=m.whitened,
        input_size=m.input_size,
        in_channels=m.in_channels,
        optimized=m.optimized,
        index_factory=state.index.factory,
        items=len(state.index),
        read_only=s.read_only,
        batching=s.batching,
        default_k=s.default_k,
        max_k=s.max_k,
        max_upload_bytes=s.max_upload_bytes,
        max_image_pixels=s.max_image_pixels,
        max_images_per_request=s.max_images_per_request,
        max_sample=s.max_sample,
        key_required_for_writes=s.api_key is not None,
        key_required_for_reads=s.api_key is not None and s.api_key_for_reads,
        classes=recorded_classes(state.index.info.get("artifact")),
        filters=FilterInfo(
            keys=["label", "source", "meta.<key>"], labels=labels, max_in_values=MAX_IN_VALUES, max_keys=MAX_CONDITIONS
        ),
        explain=state.explainer is not None,
        explain_critic=state.explain_critic,
        explain_unavailable=state.explain_unavailable,
    )
