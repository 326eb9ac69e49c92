"""POST /v1/embed: images -> codes."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from fastapi import APIRouter, Request

from service.deps import ReadAccess, ReadyState
from service.errors import ERROR_RESPONSES, ApiError
from service.inputs import body_kind, decode_images, file_schema, read_form, read_json, request_body, uploads
from service.schemas import EmbedRequest, EmbedResponse

router = APIRouter(prefix="/v1", tags=["embed"], dependencies=[ReadAccess], responses=ERROR_RESPONSES)

_MULTIPART = {"type": "object", "required": ["file"], "properties": {"file": file_schema(many=True)}}


@router.post(
    "/embed",
    response_model=EmbedResponse,
    summary="Encode images into codes",
    openapi_extra=request_body(
        "EmbedRequest", _MULTIPART, "one or several images: multipart field `file` (repeated), or JSON base64"
    ),
)
async def embed(request: Request, state: ReadyState) -> EmbedResponse:
    s, model = state.settings, state.model
    assert model is not None  # ReadyState: the model is loaded
    blobs: Sequence[tuple[str, bytes | str]]  # base64 strings from JSON, bytes from multipart
    if body_kind(request) == "json":
        req = await read_json(request, EmbedRequest)
        if len(req.images) > s.max_images_per_request:
            raise ApiError(
                422, "invalid_request", f"{len(req.images)} images in one request; the limit is {s.max_images_per_request}"
            )
        blobs = [(f"images[{i}]", b64) for i, b64 in enumerate(req.images)]
    else:
        blobs = await uploads(await read_form(request, s.max_images_per_request), s.max_images_per_request)
    with state.coming():
        decoded = await decode_images(state, blobs)
    codes = await state.encode(torch.stack([d.pixels for d in decoded]))
    assert isinstance(codes, np.ndarray)  # without k, encode returns the codes, not hits
    return EmbedResponse(model=model.id, dim=model.z_dim, codes=codes.tolist())
