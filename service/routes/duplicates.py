"""Near-duplicates of one item: ``GET /v1/items/{item_id}/duplicates`` (reads only: served by
read-only servers too). The group is the item's component of the near-duplicate relation
(cosine similarity of the stored codes >= threshold, chained), as ``infomax duplicates`` finds
it for the whole index (infomax.duplicates)."""

from __future__ import annotations

import math
from typing import Annotated

from anyio import to_thread
from fastapi import APIRouter, Path, Query
from pydantic import BaseModel, Field

from infomax.duplicates import DEFAULT_THRESHOLD, default_threshold, duplicates_of
from service.deps import ReadAccess, ReadyState
from service.errors import ERROR_RESPONSES, ApiError
from service.routes.common import image_url, json_response
from service.schemas import MAX_ID, Item

router = APIRouter(prefix="/v1/items", tags=["items"], responses=ERROR_RESPONSES)

MAX_MEMBERS = 1000


class Duplicate(Item):
    similarity: float = Field(description="cosine similarity of its code to the item's, at most 1")


class DuplicatePair(BaseModel):
    a: int
    b: int
    similarity: float = Field(description="cosine similarity, at least the threshold")


class DuplicatesResponse(BaseModel):
    id: int = Field(description="the item asked about")
    threshold: float = Field(description="cosine similarity at or above which two items are near-duplicates")
    size: int = Field(description="members of the group, the item included (1: it has no near-duplicates)")
    truncated: bool = Field(description="the group has more members than `limit`; the first `limit` found are given")
    duplicates: list[Duplicate] = Field(description="the other members, most similar to the item first")
    pairs: list[DuplicatePair] = Field(description="the near-duplicate pairs (a < b) that join the group")


def _find(state, item_id: int, threshold: float, limit: int):
    index = state.index  # one index for the whole request, should a reader's refresh swap it meanwhile
    for _ in range(3):
        try:
            return duplicates_of(index, item_id, threshold, max_members=limit)
        except KeyError:
            if item_id not in index:
                return None
            # a member was deleted between the search and the read of its vector: look again
    return duplicates_of(index, item_id, threshold, max_members=limit)


@router.get(
    "/{item_id}/duplicates",
    response_model=DuplicatesResponse,
    dependencies=[ReadAccess],
    summary="An item's near-duplicates (resized, re-encoded, cropped, flipped, brightened copies)",
)
async def get_duplicates(
    state: ReadyState,
    item_id: Annotated[int, Path(ge=0, le=MAX_ID, description="item id")],
    threshold: Annotated[
        float | None,
        Query(
            gt=-1.0,
            le=1.0,
            allow_inf_nan=False,
            description="cosine similarity, (-1, 1] (default: the threshold measured for the index's encoder and "
            f"recorded in its artifact, else {DEFAULT_THRESHOLD}, chosen on planted copies: docs/BENCHMARKS.md)",
        ),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_MEMBERS, description=f"most members returned, 1..{MAX_MEMBERS}")] = 100,
):
    if threshold is None:
        threshold = default_threshold(state.index)
    if not math.isfinite(threshold):  # belt and braces: NaN passes comparisons
        raise ApiError(422, "invalid_request", f"threshold must be a number in (-1, 1], got {threshold}")
    found = await to_thread.run_sync(_find, state, item_id, threshold, limit)
    if found is None:
        raise ApiError(404, "not_found", f"no item with id {item_id}")
    group, truncated = found
    dups = [
        Duplicate.model_construct(
            id=m.id, source=m.source, label=m.label, meta=m.meta, image_url=image_url(m.id), similarity=m.similarity
        )
        for m in group.members
        if m.id != item_id
    ]
    return json_response(
        DuplicatesResponse.model_construct(
            id=item_id,
            threshold=threshold,
            size=group.size,
            truncated=truncated,
            duplicates=dups,
            pairs=[DuplicatePair.model_construct(a=a, b=b, similarity=s) for a, b, s in group.pairs],
        )
    )
