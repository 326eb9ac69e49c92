"""Request and response bodies of the /v1 API (pydantic models: validated, and in the OpenAPI)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, WithJsonSchema, model_validator

from service.filters import DESCRIPTION as FILTER_DESCRIPTION
from service.filters import FILTER_SCHEMA

MAX_ID = 2**63 - 1  # FAISS and SQLite ids are int64
# Caller-chosen ids stop at 2^53 - 1: the largest integer JavaScript (the web page, most JSON clients)
# holds exactly, and far enough below MAX_ID that automatic ids ("one past the largest ever used")
# can never run out because a caller picked a huge id.
MAX_CALLER_ID = 2**53 - 1
MIN_LABEL, MAX_LABEL = -(2**63), 2**63 - 1  # stored as SQLite INTEGER (int64)
EXPLAIN_DESCRIPTION = (
    "true: each neighbour also gets `explain`, a heat map of where it agrees with the query: the model's local "
    "critic scoring the query's code (mu of the query image, of the item's stored picture for an id, or the "
    "vector itself, which must then be the model's code) against every position of the neighbour's local "
    "feature map, computed from its stored picture. 409 explain_unavailable when the model carries no local "
    "critic (trained with beta 0); GET /v1/info says whether it does"
)
B64_DESCRIPTION = "image file bytes in standard base64 (PNG, JPEG, GIF, WebP or BMP); a data: URL prefix is accepted"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a misspelt field is an error, not silently ignored


# ----------------------------------------------------------------------------- requests


class EmbedRequest(_Strict):
    images: list[str] = Field(min_length=1, description=B64_DESCRIPTION)


class SearchRequest(_Strict):
    """Exactly one of ``image``, ``vector``, ``id``."""

    image: str | None = Field(None, description=B64_DESCRIPTION)
    vector: list[float] | None = Field(None, description="a code of the index's dimension (need not be normalised)")
    id: StrictInt | None = Field(
        None, ge=0, le=MAX_ID, description="search from the stored code of this item (left out of the results)"
    )
    k: StrictInt | None = Field(None, description="number of neighbours, 1..max_k (default: default_k)")
    # checked by the library (service/filters.py: 422 invalid_filter naming the key), not here
    filter: Annotated[Any, WithJsonSchema({"anyOf": [FILTER_SCHEMA, {"type": "null"}]})] = Field(
        None, description=FILTER_DESCRIPTION
    )
    explain: StrictBool = Field(False, description=EXPLAIN_DESCRIPTION)

    @model_validator(mode="after")
    def _one_query(self) -> SearchRequest:
        given = [name for name in ("image", "vector", "id") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of image, vector, id (got {', '.join(given) or 'none'})")
        return self


class ItemMetadata(BaseModel):
    model_config = ConfigDict(extra="allow")  # any other JSON-serialisable keys go into "meta"

    source: str | None = Field(None, max_length=4096, description="where the image came from")
    label: StrictInt | None = Field(None, ge=MIN_LABEL, le=MAX_LABEL, description="an integer class label (int64)")


class NewItem(_Strict):
    image: str = Field(description=B64_DESCRIPTION)
    id: StrictInt | None = Field(
        None, ge=0, le=MAX_CALLER_ID, description="caller-chosen id, 0..2^53-1 (default: one past the largest id ever used)"
    )
    metadata: ItemMetadata | None = None


class AddItemsRequest(_Strict):
    items: list[NewItem] = Field(min_length=1)


# ----------------------------------------------------------------------------- responses


class Item(BaseModel):
    id: int
    source: str | None = None
    label: int | None = None
    meta: dict[str, Any] = Field(default_factory=dict, description="the other metadata keys given when it was added")
    image_url: str = Field(description="the stored image (404 if the item has none)")


class Explanation(BaseModel):
    """Why a neighbour matches: the local critic's scores of the query's code at each position of
    the neighbour's local feature map."""

    h: int = Field(description="rows of the neighbour's local feature map (4 for the reference conv encoder at 32 px)")
    w: int = Field(description="columns of the map")
    scores: list[list[float]] = Field(
        description="h rows of w raw critic scores, top row first, left to right: row i, column j is that region "
        "of the picture as the model sees it (its shorter side resized to the input size, the centre "
        "square cut out). Higher: that part agrees more with the "
        "query. The scale is the critic's: cosine critic, cos / temperature (within +-1/temperature); "
        "dot, the dot product of the encoded pair / sqrt(dim); concat, the output of its MLP. Compare "
        "the positions of one map, or the maps of one answer; not across models"
    )
    min: float = Field(description="the lowest score of the map")
    max: float = Field(description="the highest score of the map")


class Neighbor(Item):
    score: float = Field(description="cosine similarity to the query, at most 1")
    explain: Explanation | None = Field(
        None,
        description="only when the search asked for explain (absent otherwise): the heat map of where this "
        "neighbour agrees with the query; null when the item has no stored picture (or it "
        "cannot be decoded)",
    )


class SearchResponse(BaseModel):
    model: str = Field(description="id of the encoder artifact that made the vectors (its weights_sha256 when it serves mu)")
    k: int
    query: Literal["image", "vector", "id"]
    filter: dict[str, Any] | None = Field(None, description="the filter applied, as understood (keys sorted); null: none")
    neighbors: list[Neighbor] = Field(description="best first; fewer than k only when fewer items (match the filter)")


class EmbedResponse(BaseModel):
    model: str
    dim: int
    codes: list[list[float]] = Field(
        description="one vector per image, in upload order: the encoder's mu, or its "
        "flattened local feature map when the artifact's output is local"
    )


class ItemsAdded(BaseModel):
    ids: list[int]
    items: list[Item]


class ItemDeleted(BaseModel):
    id: int
    deleted: bool = True


class ItemSample(BaseModel):
    items: list[Item]


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class Readiness(BaseModel):
    status: Literal["ready"] = "ready"
    model: str
    items: int
    read_only: bool


class FilterInfo(BaseModel):
    keys: list[str] = Field(description="what a search filter can name (meta.<key>: any key of the items' meta)")
    labels: list[int] = Field(description="the labels the items carry, ascending (at most max_in_values)")
    max_in_values: int = Field(description='most values in one {"in": [...]} list')
    max_keys: int = Field(description="most keys in one filter")


class ServiceInfo(BaseModel):
    model: str
    z_dim: int = Field(description="length of the vectors the model serves and the index holds")
    output: Literal["mu", "pooled", "local"] = Field(
        description="what the vectors are: mu, the code; pooled, the vector the code's heads read; or local, "
        "the flattened local feature map C(x)"
    )
    whitened: bool = Field(
        False, description="the output PCA-whitened on the collection the artifact was fitted on (`infomax export --whiten`)"
    )
    input_size: int
    in_channels: int
    optimized: bool
    index_factory: str
    items: int
    read_only: bool
    batching: bool
    default_k: int
    max_k: int
    max_upload_bytes: int
    max_image_pixels: int
    max_images_per_request: int
    max_sample: int
    key_required_for_writes: bool
    key_required_for_reads: bool
    classes: list[str] | None = Field(
        None, description="names of the labels, in label order, where the index records them or the data set it holds"
    )
    filters: FilterInfo = Field(description="what the filter of POST /v1/search can select")
    explain: bool = Field(
        False, description="whether POST /v1/search can explain matches (explain: true): the model carries its local critic"
    )
    explain_critic: Literal["concat", "dot", "cosine", "unknown"] | None = Field(
        None, description="the kind of that critic, which sets the scale of the heat maps' scores; null without one"
    )
    explain_unavailable: str | None = Field(
        None, description="why the model cannot explain matches (null when it can), and what to do"
    )
