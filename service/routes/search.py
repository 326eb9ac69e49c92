"""POST /v1/search: the k nearest items of an image, a code, or an indexed item, optionally among
those a metadata filter matches (service/filters.py), optionally with a heat map per neighbour of
where it agrees with the query (``explain``: the artifact's local critic, infomax.explain)."""

from __future__ import annotations

import functools
from typing import Any, Literal

from anyio import to_thread
from fastapi import APIRouter, Request, Response

from service.deps import ReadAccess, ReadyState
from service.errors import ERROR_RESPONSES, ApiError, ErrorBody
from service.filters import FILTER_FIELD_SCHEMA, form_filter, request_filter
from service.inputs import (
    body_kind,
    check_k,
    decode_images,
    file_schema,
    form_bool,
    form_int,
    form_text,
    read_form,
    read_json,
    request_body,
    uploads,
)
from service.routes.common import to_neighbors
from service.schemas import EXPLAIN_DESCRIPTION, Explanation, SearchRequest, SearchResponse
from service.state import ServiceState

router = APIRouter(prefix="/v1", tags=["search"], dependencies=[ReadAccess], responses=ERROR_RESPONSES)

_MULTIPART = {
    "type": "object",
    "required": ["file"],
    "properties": {
        "file": file_schema(many=False),
        "k": {"type": "integer", "minimum": 1},
        "filter": FILTER_FIELD_SCHEMA,
        "explain": {"type": "boolean", "default": False, "description": EXPLAIN_DESCRIPTION + " (as text: true/false or 1/0)"},
    },
}

_EXPLAIN_RESPONSES: dict[int | str, dict] = {
    409: {
        "model": ErrorBody,
        "description": "explain asked of a model without a local critic "
        "(explain_unavailable), or by the id of an item without a stored "
        "picture (no_picture)",
    },
}


@router.post(
    "/search",
    response_model=SearchResponse,
    summary="Find the k nearest items",
    responses=_EXPLAIN_RESPONSES,
    openapi_extra=request_body(
        "SearchRequest",
        _MULTIPART,
        "an uploaded image (multipart `file`, optional `k`, `filter` and `explain`), or "
        "JSON with one of image (base64), vector, id, and optional `k`, `filter` and "
        "`explain`",
    ),
)
async def search(request: Request, state: ReadyState) -> Response:
    image: tuple[str, bytes | str] | None = None  # (name for messages, bytes or base64)
    vector: list[float] | None = None
    item_id: int | None = None
    if body_kind(request) == "json":
        req = await read_json(request, SearchRequest)
        k = check_k(req.k, state)
        flt = request_filter(req.filter)
        image, vector, item_id = (("image", req.image) if req.image is not None else None), req.vector, req.id
        explain = req.explain
    else:
        form = await read_form(request, max_files=1)
        ks = form_text(form, "k")
        k = check_k(form_int(ks[-1], "k") if ks else None, state)
        fs = form_text(form, "filter")
        if len(fs) > 1:
            raise ApiError(422, "invalid_filter", f"{len(fs)} filter fields: give one (conditions go in one object)")
        flt = form_filter(fs[0]) if fs else None
        es = form_text(form, "explain")
        if len(es) > 1:
            raise ApiError(422, "invalid_request", f"{len(es)} explain fields: give one (true or false)")
        explain = form_bool(es[0], "explain") if es else False
        image = (await uploads(form, max_files=1))[0]
    if explain:
        check_explain(state, "image" if image is not None else "vector" if vector is not None else "id")

    kind: Literal["image", "vector", "id"]
    if image is not None:
        kind = "image"
        with state.coming():
            decoded = await decode_images(state, [image])
        hits = await state.encode_search(decoded[0].pixels[None], k, flt)  # encoded, searched, looked up in the batch
        scores, ids, metadata = hits.scores[0], hits.ids[0], hits.metadata[0]
        query: dict[str, Any] = {"pixels": decoded[0].pixels}
    elif vector is not None:
        kind = "vector"
        v = state.check_vector(vector)
        scores, ids, metadata = await to_thread.run_sync(state.search_vector, v, k, flt)
        query = {"vector": v}
    elif item_id is not None:
        kind = "id"
        scores, ids, metadata = await to_thread.run_sync(state.search_id, item_id, k, flt)
        query = {"item_id": item_id}
    else:  # SearchRequest's validator and read_form's one file leave no other case
        raise ApiError(422, "invalid_request", "give exactly one of image, vector, id")
    neighbors = to_neighbors(scores, ids, metadata)
    if explain:
        maps = await to_thread.run_sync(
            functools.partial(state.explain, [n.id for n in neighbors], **query), limiter=state.explain_limiter
        )
        for n, m in zip(neighbors, maps):
            n.explain = Explanation.model_construct(**m) if m is not None else None
    answer = SearchResponse.model_construct(
        model=state.model.id, k=k, query=kind, filter=flt.to_dict() if flt is not None else None, neighbors=neighbors
    )
    # exclude_unset: a neighbour has the key "explain" only when the search asked for it (the
    # answer without explain stays as it always was). Serialised once: see common.json_response.
    return Response(answer.model_dump_json(exclude_unset=True), media_type="application/json")


def check_explain(state: ServiceState, kind: str) -> None:
    """Refuses before any work an explain the model cannot give: no local critic (409), or a vector
    query when the served vectors are not the code the critic reads (422)."""
    if state.explainer is None:
        raise state.explain_refusal()
    if kind == "vector" and state.model.output != "mu":
        raise ApiError(
            422,
            "invalid_request",
            f"explain with a vector query needs the model's code (mu), but this model serves "
            f"{state.model.output} vectors: search by image or by id to explain the matches",
        )
