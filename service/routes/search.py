"""POST /v1/search: the k nearest items of an image, a code, or an indexed item, optionally among
those a metadata filter matches (service/filters.py)."""

from __future__ import annotations

from anyio import to_thread
from fastapi import APIRouter, Request, Response

from service.deps import ReadAccess, ReadyState
from service.errors import ERROR_RESPONSES, ApiError
from service.filters import FILTER_FIELD_SCHEMA, form_filter, request_filter
from service.inputs import (
    body_kind,
    check_k,
    decode_images,
    file_schema,
    form_int,
    form_text,
    read_form,
    read_json,
    request_body,
    uploads,
)
from service.routes.common import json_response, to_neighbors
from service.schemas import SearchRequest, SearchResponse

router = APIRouter(prefix="/v1", tags=["search"], dependencies=[ReadAccess], responses=ERROR_RESPONSES)

_MULTIPART = {
    "type": "object",
    "required": ["file"],
    "properties": {"file": file_schema(many=False), "k": {"type": "integer", "minimum": 1},
                   "filter": FILTER_FIELD_SCHEMA},
}


@router.post(
    "/search",
    response_model=SearchResponse,
    summary="Find the k nearest items",
    openapi_extra=request_body("SearchRequest", _MULTIPART,
                               "an uploaded image (multipart `file`, optional `k` and `filter`), or JSON with "
                               "one of image (base64), vector, id, and optional `k` and `filter`"),
)
async def search(request: Request, state: ReadyState) -> Response:
    image = vector = item_id = None
    if body_kind(request) == "json":
        req = await read_json(request, SearchRequest)
        k = check_k(req.k, state)
        flt = request_filter(req.filter)
        image, vector, item_id = (("image", req.image) if req.image is not None else None), req.vector, req.id
    else:
        form = await read_form(request, max_files=1)
        ks = form_text(form, "k")
        k = check_k(form_int(ks[-1], "k") if ks else None, state)
        fs = form_text(form, "filter")
        if len(fs) > 1:
            raise ApiError(422, "invalid_filter", f"{len(fs)} filter fields: give one (conditions go in one object)")
        flt = form_filter(fs[0]) if fs else None
        image = (await uploads(form, max_files=1))[0]

    if image is not None:
        kind = "image"
        with state.coming():
            decoded = await decode_images(state, [image])
        hits = await state.encode(decoded[0].pixels[None], k=k, filter=flt)  # encoded, searched, looked up in the batch
        scores, ids, metadata = hits.scores[0], hits.ids[0], hits.metadata[0]
    elif vector is not None:
        kind = "vector"
        v = state.check_vector(vector)
        scores, ids, metadata = await to_thread.run_sync(state.search_vector, v, k, flt)
    else:
        kind = "id"
        scores, ids, metadata = await to_thread.run_sync(state.search_id, item_id, k, flt)
    return json_response(SearchResponse.model_construct(
        model=state.model.id, k=k, query=kind, filter=flt.to_dict() if flt is not None else None,
        neighbors=to_neighbors(scores, ids, metadata)))
