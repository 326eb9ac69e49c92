"""Shapes shared by the routers: stored metadata -> response items."""

from __future__ import annotations

import numpy as np
from fastapi import Response
from pydantic import BaseModel

from service.schemas import Item, Neighbor


def image_url(item_id: int) -> str:
    return f"/v1/items/{item_id}/image"


def to_item(md: dict) -> Item:
    return Item(
        id=md["id"], source=md.get("source"), label=md.get("label"), meta=md.get("meta") or {}, image_url=image_url(md["id"])
    )


def to_neighbors(scores: np.ndarray, ids: np.ndarray, metadata: list[dict | None]) -> list[Neighbor]:
    """FAISS rows (-1 padded) + their metadata -> neighbours; ids deleted meanwhile are skipped.
    Built without validation (model_construct): the values come from the index, not the caller."""
    out = []
    for score, item_id, md in zip(scores.tolist(), ids.tolist(), metadata):
        if item_id < 0 or md is None:
            continue
        out.append(
            Neighbor.model_construct(
                id=item_id,
                source=md.get("source"),
                label=md.get("label"),
                meta=md.get("meta") or {},
                image_url=image_url(item_id),
                score=score,
            )
        )
    return out


def json_response(model: BaseModel, status_code: int = 200) -> Response:
    """Serialise once. (Returning the model would make FastAPI validate it against the
    response_model again, which costs as much as the rest of a search; the declared
    response_model still documents the shape.)"""
    return Response(model.model_dump_json(), status_code=status_code, media_type="application/json")
