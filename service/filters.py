"""The ``filter`` of ``POST /v1/search``: its OpenAPI schema, and a request's filter checked by the
library (``infomax.index.filters``) into a 422 ``invalid_filter`` naming the problem."""

from __future__ import annotations

from typing import Any

from infomax.index.filters import MAX_CONDITIONS, MAX_IN_VALUES, MAX_STRING, Filter, as_filter
from service.errors import ApiError

_INT64 = {"type": "integer", "minimum": -(2**63), "maximum": 2**63 - 1}
_TEXT = {"type": "string", "maxLength": MAX_STRING}
_SCALAR = {"anyOf": [_TEXT, {"type": "number"}, {"type": "boolean"}]}


def _in(items: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["in"],
        "additionalProperties": False,
        "properties": {"in": {"type": "array", "items": items, "maxItems": MAX_IN_VALUES}},
    }


_PREFIX = {"type": "object", "required": ["prefix"], "additionalProperties": False, "properties": {"prefix": _TEXT}}

META_KEY_PATTERN = r'^meta\.[^".\\\x00-\x1f\x7f]{1,128}(\.[^".\\\x00-\x1f\x7f]{1,128}){0,7}$'

DESCRIPTION = (
    "only items whose metadata matches, all conditions together: "
    '"label": 3 or {"in": [3, 5]}; "source": "a.png", {"in": [...]} or {"prefix": "photos/2023/"}; '
    '"meta.<key>" (nested by dots: "meta.exif.model"): a string, number or boolean, {"in": [...]} or '
    '{"prefix": "..."}. Values match their JSON type ("3" is not 3, true is not 1); an empty "in" list '
    f"matches nothing. At most {MAX_CONDITIONS} keys and {MAX_IN_VALUES} values per list; a bad "
    "filter gets 422 invalid_filter naming the key. k results come back whenever k items match."
)

# The filter object as JSON Schema (OpenAPI 3.1): what the web page, clients and the fuzz run read.
FILTER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": DESCRIPTION,
    "maxProperties": MAX_CONDITIONS,
    "properties": {
        "label": {"anyOf": [_INT64, _in(_INT64)]},
        "source": {"anyOf": [_TEXT, _in(_TEXT), _PREFIX]},
    },
    "patternProperties": {META_KEY_PATTERN: {"anyOf": [_SCALAR, _in(_SCALAR), _PREFIX]}},
    "additionalProperties": False,
    "examples": [{"label": {"in": [3, 5]}, "meta.camera": "x100"}, {"source": {"prefix": "holidays/"}}],
}

# the multipart form's field: the same object as JSON text
FILTER_FIELD_SCHEMA: dict[str, Any] = {
    "type": "string",
    "description": 'the filter as JSON text, e.g. {"label": 3} (see SearchRequest.filter)',
}


def request_filter(value: Any) -> Filter | None:
    """The ``filter`` of a JSON body (an object; null or absent: none) -> Filter, None for none or
    ``{}``; ApiError 422 ``invalid_filter`` with the library's message otherwise."""
    if value is None:
        return None
    if not isinstance(value, dict):
        kind = {str: "a string", list: "a list", bool: "a boolean"}.get(type(value), type(value).__name__)
        raise ApiError(422, "invalid_filter", f'filter must be a JSON object such as {{"label": 3}}, got {kind}')
    return _checked(value)


def form_filter(text: str) -> Filter | None:
    """The multipart field ``filter``: the same object as JSON text."""
    return _checked(text)


def _checked(value: dict | str) -> Filter | None:
    try:
        return as_filter(value)
    except ValueError as e:
        raise ApiError(422, "invalid_filter", str(e)) from None
