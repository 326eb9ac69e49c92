"""Schemathesis hooks of the fuzz runs (loaded through ``SCHEMATHESIS_HOOKS=stress.st_hooks``).

Schemathesis fills a ``format: binary`` or base64 image field with random bytes, which the
service rightly refuses (400 not_an_image): every generated body would test the refusal path only.
This hook lets Hypothesis swap, in about half of the bodies, every image field for a real small
PNG (a random picture, its size drawn too), so that the success answers of embed, search and add
(200/201 with their full response bodies) are checked against the schema as well. Everything else
in the body (ids, k, metadata, extra fields) stays as generated.

Search filters: a body of ``POST /v1/search`` that got a real image also loses its other queries
(vector, id), so that its generated ``filter`` reaches the filtered FAISS search rather than the
"exactly one query" refusal; a multipart body's ``filter`` field (free text as generated) becomes,
half the time, the JSON text of a filter drawn from :data:`FILTERS`: valid ones and bad ones
(unknown keys, wrong types, null, NaN, huge integers, unknown operators, bad meta keys). Such a
search body also asks for ``explain`` half the time, and a quarter of the search bodies become a
clean search by a real picture with ``explain`` (:func:`_explained`), so that answers with heat maps
are checked against the schema too.
"""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import schemathesis
from hypothesis import strategies as st


def _png(seed: int, width: int, height: int) -> bytes:
    from PIL import Image

    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


_png_bytes = st.builds(_png, st.integers(0, 2**31), st.integers(1, 64), st.integers(1, 64))

_SCALARS = st.one_of(st.text(max_size=12), st.integers(-(2**70), 2**70), st.integers(0, 9), st.floats(), st.booleans(), st.none())
_KEYS = st.one_of(
    st.sampled_from(
        [
            "label",
            "source",
            "meta.camera",
            "meta.exif.model",
            "meta",
            "meta.",
            "colour",
            'meta.a"b',
            "meta.a\\b",
            "meta.a..b",
            "id",
        ]
    ),
    st.text(max_size=10).map(lambda t: "meta." + t),
)
_CONDITIONS = st.one_of(
    _SCALARS,
    st.fixed_dictionaries({"in": st.lists(_SCALARS, max_size=6)}),
    st.fixed_dictionaries({"prefix": st.one_of(st.text(max_size=8), _SCALARS)}),
    st.dictionaries(st.sampled_from(["in", "prefix", "gt", "eq", ""]), _SCALARS, max_size=2),
)
FILTERS = st.dictionaries(_KEYS, _CONDITIONS, max_size=4)


def _swap(body, draw):
    if not isinstance(body, dict):
        return body
    out = dict(body)
    f = out.get("file")
    if isinstance(f, (bytes, bytearray)):
        out["file"] = draw(_png_bytes)
    elif isinstance(f, list) and f and all(isinstance(x, (bytes, bytearray)) for x in f):
        out["file"] = [draw(_png_bytes) for _ in f]
    if isinstance(out.get("images"), list) and out["images"]:
        out["images"] = [base64.b64encode(draw(_png_bytes)).decode() for _ in out["images"]]
    if isinstance(out.get("image"), str):
        out["image"] = base64.b64encode(draw(_png_bytes)).decode()
        if "vector" in out or "id" in out or "filter" in out or "explain" in out:  # a search body
            out.pop("vector", None)
            out.pop("id", None)
            if not isinstance(out.get("filter"), dict) or draw(st.booleans()):
                out["filter"] = draw(FILTERS)
            if draw(st.booleans()):
                out["explain"] = True  # heat maps in the answer, checked against the schema too
    if isinstance(out.get("filter"), str) and draw(st.booleans()):
        out["filter"] = json.dumps(draw(FILTERS))  # the multipart field: JSON text (NaN included)
    if isinstance(out.get("items"), list):
        out["items"] = [
            {**it, "image": base64.b64encode(draw(_png_bytes)).decode()}
            if isinstance(it, dict) and isinstance(it.get("image"), str)
            else it
            for it in out["items"]
        ]
    return out


@schemathesis.hook
def flatmap_body(context, body):
    if context.operation is None or context.operation.path not in ("/v1/embed", "/v1/search", "/v1/items"):
        return st.just(body)

    search = context.operation.path == "/v1/search"

    @st.composite
    def maybe_real(draw):
        if search and isinstance(body, dict) and draw(st.integers(0, 3)) == 0:
            return _explained(body, draw)
        return _swap(body, draw) if draw(st.booleans()) else body

    return maybe_real()


def _explained(body: dict, draw) -> dict:
    """A search by a real picture asking for heat maps, nothing else in the way (a quarter of the
    search bodies): the 200 answers with ``explain`` per neighbour are checked against the schema."""
    png = draw(_png_bytes)
    if "file" in body:  # multipart: fields are text
        return {"file": png, "explain": "true", "k": str(draw(st.integers(1, 20)))}
    return {"image": base64.b64encode(png).decode(), "explain": True, "k": draw(st.integers(1, 20))}
