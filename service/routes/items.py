"""Items of the index: add (image + code + metadata), read, delete, sample, their pictures."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any

import torch
from anyio import to_thread
from fastapi import APIRouter, Path, Query, Request, Response
from pydantic import ValidationError

from service.deps import ReadAccess, ReadyState, WriteAccess
from service.errors import ERROR_RESPONSES, ApiError, describe_validation_errors
from service.images import FORMATS
from service.inputs import (
    body_kind,
    check_metadata,
    decode_images,
    file_schema,
    form_int,
    form_text,
    parse_metadata_field,
    read_form,
    read_json,
    request_body,
    upload_sources,
    uploads,
)
from service.routes.common import to_item
from service.schemas import MAX_CALLER_ID, MAX_ID, AddItemsRequest, Item, ItemDeleted, ItemMetadata, ItemsAdded, ItemSample
from service.state import ServiceState

router = APIRouter(prefix="/v1/items", tags=["items"], responses=ERROR_RESPONSES)

ItemId = Annotated[int, Path(ge=0, le=MAX_ID, description="item id")]

_MULTIPART = {
    "type": "object",
    "required": ["file"],
    "properties": {
        "file": file_schema(many=True),
        "id": {
            "type": "array",
            "items": {"type": "integer", "minimum": 0, "maximum": MAX_CALLER_ID},
            "description": "optional: one id per file, in the same order",
        },
        "metadata": {
            "type": "array",
            "items": {"type": "string"},
            "description": 'optional: one JSON object per file ({"source": str, "label": int, ...})',
        },
    },
}


def _metadata(value: Any, name: str) -> dict[str, Any]:
    try:
        md = ItemMetadata.model_validate(value)
    except ValidationError as e:
        message, errors = describe_validation_errors(e.errors(include_url=False, include_context=False, include_input=False))
        raise ApiError(422, "invalid_request", f"{name}: {message}", errors=errors) from None
    return check_metadata(md.model_dump(exclude_none=True), name)


def _with_file_names(metadata: list[dict[str, Any]], names: list[str | None]) -> list[dict[str, Any]]:
    """An upload's file name is its source unless the metadata gives one: without it an item added
    from the web page or curl could not be told apart from the others."""
    return [md if md.get("source") is not None or name is None else {**md, "source": name} for md, name in zip(metadata, names)]


async def _parse_new_items(
    request: Request, state: ServiceState
) -> tuple[Sequence[tuple[str, bytes | str]], list[int] | None, list[dict]]:
    s = state.settings
    limit = s.max_images_per_request
    blobs: Sequence[tuple[str, bytes | str]]  # (name for messages, bytes or base64)
    ids: list[int] | None
    if body_kind(request) == "json":
        req = await read_json(request, AddItemsRequest)
        if len(req.items) > limit:
            raise ApiError(422, "invalid_request", f"{len(req.items)} items in one request; the limit is {limit}")
        blobs = [(f"items[{i}].image", it.image) for i, it in enumerate(req.items)]
        given = [it.id for it in req.items if it.id is not None]
        metadata = [
            _metadata(it.metadata.model_dump(exclude_none=True) if it.metadata else {}, f"items[{i}].metadata")
            for i, it in enumerate(req.items)
        ]
        if not given:
            ids = None
        elif len(given) < len(req.items):
            raise ApiError(422, "invalid_request", "give an id for every item or for none")
        else:
            ids = given
    else:
        form = await read_form(request, limit)
        blobs = await uploads(form, limit)
        id_text, md_text = form_text(form, "id"), form_text(form, "metadata")
        for name, values in (("id", id_text), ("metadata", md_text)):
            if values and len(values) != len(blobs):
                raise ApiError(
                    422, "invalid_request", f"{len(values)} '{name}' fields for {len(blobs)} files: give one per file, or none"
                )
        ids = [form_int(v, f"id[{i}]") for i, v in enumerate(id_text)] or None
        if ids and not all(0 <= i <= MAX_CALLER_ID for i in ids):
            raise ApiError(422, "invalid_request", f"ids must be integers from 0 to {MAX_CALLER_ID} (2^53 - 1)")
        metadata = [_metadata(parse_metadata_field(v, f"metadata[{i}]"), f"metadata[{i}]") for i, v in enumerate(md_text)]
        metadata = _with_file_names(metadata or [{} for _ in blobs], upload_sources(form))
    if ids is not None and len(set(ids)) != len(ids):
        dups = sorted({i for i in ids if ids.count(i) > 1})
        raise ApiError(422, "invalid_request", f"duplicate ids in the request: {dups[:10]}")
    return blobs, ids, metadata


@router.post(
    "",
    status_code=201,
    response_model=ItemsAdded,
    dependencies=[WriteAccess],
    summary="Add images to the index (answered once durable)",
    openapi_extra=request_body(
        "AddItemsRequest",
        _MULTIPART,
        "images with optional ids and metadata: multipart (`file`, `id`, `metadata` repeated in the same order) or JSON",
    ),
    responses={403: {"description": "the server is read-only"}, 409: {"description": "an id is already taken"}},
)
async def add_items(request: Request, state: ReadyState) -> ItemsAdded:
    if state.settings.read_only:  # before reading a byte of the upload
        raise ApiError(403, "read_only", "this server is read-only: items cannot be added or deleted")
    blobs, ids, metadata = await _parse_new_items(request, state)
    decoded = await decode_images(state, blobs)
    codes = await state.encode(torch.stack([d.pixels for d in decoded]))
    async with state.writer():
        # Not cancellable: once started, a write completes even if the client has gone.
        new_ids = await to_thread.run_sync(state.add_items, codes, decoded, ids, metadata)
    stored = await to_thread.run_sync(state.items, new_ids)
    return ItemsAdded(ids=new_ids, items=[to_item(md) for md in stored if md is not None])


@router.get("/sample", response_model=ItemSample, dependencies=[ReadAccess], summary="A random sample of items")
async def sample(state: ReadyState, n: Annotated[int, Query(ge=1, description="how many (1..max_sample)")] = 24) -> ItemSample:
    if n > state.settings.max_sample:
        raise ApiError(422, "invalid_request", f"n must be from 1 to {state.settings.max_sample} (max_sample), got {n}")
    items = await to_thread.run_sync(state.sample, n)
    return ItemSample(items=[to_item(md) for md in items])


@router.get("/{item_id}", response_model=Item, dependencies=[ReadAccess], summary="An item's metadata")
async def get_item(item_id: ItemId, state: ReadyState) -> Item:
    (md,) = await to_thread.run_sync(state.items, [item_id])
    if md is None:
        raise ApiError(404, "not_found", f"no item with id {item_id}")
    return to_item(md)


@router.get(
    "/{item_id}/image",
    dependencies=[ReadAccess],
    summary="An item's stored image",
    response_class=Response,
    responses={200: {"content": {mime: {} for mime in FORMATS.values()}, "description": "the bytes that were uploaded"}},
)
async def get_image(item_id: ItemId, state: ReadyState) -> Response:
    found = await to_thread.run_sync(state.image, item_id)
    if found is None:
        raise ApiError(404, "not_found", f"no stored image for item {item_id}")
    data, mime = found
    # Ids are never reused, so an id's picture never changes.
    return Response(data, media_type=mime, headers={"Cache-Control": "private, max-age=3600"})


@router.delete(
    "/{item_id}",
    response_model=ItemDeleted,
    dependencies=[WriteAccess],
    summary="Delete an item",
    responses={403: {"description": "the server is read-only"}},
)
async def delete_item(item_id: ItemId, state: ReadyState) -> ItemDeleted:
    async with state.writer():
        deleted = await to_thread.run_sync(state.delete_item, item_id)
    if not deleted:
        raise ApiError(404, "not_found", f"no item with id {item_id}")
    return ItemDeleted(id=item_id)
