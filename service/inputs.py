"""Reading request bodies: JSON into a pydantic model, multipart into uploads and fields, images
into pixels (off the event loop). Every failure is an :class:`ApiError` naming the problem.

The routes read the body themselves (rather than through FastAPI parameters) because one path
accepts both ``application/json`` and ``multipart/form-data``; the OpenAPI request bodies are
declared on the routes with :func:`request_body`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, Literal, TypeVar

from anyio import to_thread
from fastapi import Request
from pydantic import BaseModel, ValidationError
from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.errors import ApiError, describe_validation_errors
from service.images import DecodedImage, decode_base64, decode_image
from service.state import ServiceState

M = TypeVar("M", bound=BaseModel)
UPLOAD_FIELD = "file"


def body_kind(request: Request) -> Literal["json", "multipart"]:
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "application/json" or (ctype.startswith("application/") and ctype.endswith("+json")):
        return "json"
    if ctype == "multipart/form-data":
        return "multipart"
    raise ApiError(
        415,
        "unsupported_media_type",
        f"Content-Type {ctype or '(none)'} is not accepted: send application/json or multipart/form-data",
    )


_INLINE_JSON_BYTES = 64 << 10  # larger bodies are parsed in the thread pool


async def read_json(request: Request, model: type[M]) -> M:
    raw = await request.body()
    if len(raw) > _INLINE_JSON_BYTES:
        return await to_thread.run_sync(parse_json, raw, model)
    return parse_json(raw, model)


def parse_json(raw: bytes, model: type[M]) -> M:
    if not raw.strip():
        raise ApiError(400, "invalid_json", "the JSON body is empty")
    try:
        data = json.loads(raw)
    except UnicodeDecodeError:
        raise ApiError(400, "invalid_json", "the JSON body is not UTF-8 text") from None
    except json.JSONDecodeError as e:
        raise ApiError(400, "invalid_json", f"malformed JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
    except RecursionError:
        raise ApiError(400, "invalid_json", "malformed JSON: nested too deeply") from None
    if not isinstance(data, dict):
        raise ApiError(422, "invalid_request", f"the JSON body must be an object, got {type(data).__name__}")
    try:
        return model.model_validate(data)
    except ValidationError as e:
        message, errors = describe_validation_errors(e.errors(include_url=False, include_context=False, include_input=False))
        raise ApiError(422, "invalid_request", message, errors=errors) from None


async def read_form(request: Request, max_files: int) -> FormData:
    try:
        return await request.form(max_files=max_files, max_fields=2 * max_files + 8)
    except StarletteHTTPException as e:  # python-multipart's complaints (no boundary, too many files...)
        raise ApiError(400, "invalid_multipart", f"malformed multipart body: {e.detail}") from None


async def uploads(form: FormData, max_files: int) -> list[tuple[str, bytes]]:
    """The files of the ``file`` field(s), in order: [(name for messages, bytes)]."""
    parts = form.getlist(UPLOAD_FIELD)
    if not parts:
        raise ApiError(422, "invalid_request", f"no image: upload it in the multipart field '{UPLOAD_FIELD}'")
    if len(parts) > max_files:
        raise ApiError(422, "invalid_request", f"{len(parts)} images in one request; the limit is {max_files}")
    out = []
    for i, part in enumerate(parts):
        if not isinstance(part, UploadFile):
            raise ApiError(422, "invalid_request", f"field '{UPLOAD_FIELD}' #{i} is text, not a file upload")
        label = f"{UPLOAD_FIELD}[{i}]" + (f" ({part.filename!r})" if part.filename else "")
        out.append((label, await part.read()))
    return out


_NAME_MAX = 255  # a file name's length on every common file system


def source_name(filename: str | None) -> str | None:
    """A client's file name as an item's source: its base name only (a browser may send
    ``C:\\Users\\me\\IMG_1.jpg``; a hostile client ``../../x.png``), without control characters,
    at most 255 characters; None when nothing usable is left."""
    if not filename:
        return None
    base = filename.replace("\\", "/").rsplit("/", 1)[-1]
    base = "".join(ch for ch in base if ch.isprintable()).strip()[:_NAME_MAX]
    return None if base in ("", ".", "..") else base


def upload_sources(form: FormData) -> list[str | None]:
    """The base names of the files of the ``file`` field(s), in order (see :func:`source_name`)."""
    return [source_name(part.filename) if isinstance(part, UploadFile) else None for part in form.getlist(UPLOAD_FIELD)]


def form_text(form: FormData, name: str) -> list[str]:
    values = form.getlist(name)
    if any(not isinstance(v, str) for v in values):
        raise ApiError(422, "invalid_request", f"field '{name}' must be text, not a file")
    return values  # type: ignore[return-value]


def form_int(value: str, name: str) -> int:
    try:
        return int(value.strip())
    except ValueError:
        raise ApiError(422, "invalid_request", f"{name} must be an integer, got {value[:40]!r}") from None


_TRUE, _FALSE = ("true", "1"), ("false", "0")


def form_bool(value: str, name: str) -> bool:
    """A boolean form field: true/false (any case) or 1/0."""
    text = value.strip().lower()
    if text in _TRUE or text in _FALSE:
        return text in _TRUE
    raise ApiError(422, "invalid_request", f"{name} must be true or false, got {value[:40]!r}")


def check_k(k: int | None, state: ServiceState) -> int:
    s = state.settings
    if k is None:
        return s.default_k
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= s.max_k:
        raise ApiError(422, "invalid_k", f"k must be an integer from 1 to {s.max_k} (max_k), got {k!r}")
    return k


def check_metadata(md: dict[str, Any], name: str) -> dict[str, Any]:
    """Metadata must be storable as is: JSON without NaN, no 'id', 'meta' an object."""
    if "id" in md:
        raise ApiError(422, "invalid_request", f"{name} has the key 'id': give the id beside the metadata, not in it")
    if "meta" in md and not isinstance(md["meta"], dict):
        raise ApiError(422, "invalid_request", f"{name}.meta must be an object")
    try:
        json.dumps(md, allow_nan=False)
    except ValueError:
        raise ApiError(422, "invalid_request", f"{name} holds NaN or infinity, which JSON cannot store") from None
    return md


def parse_metadata_field(text: str, name: str) -> dict[str, Any]:
    try:
        md = json.loads(text)
    except json.JSONDecodeError as e:
        raise ApiError(400, "invalid_json", f"{name} is not valid JSON: {e.msg} at column {e.colno}") from None
    if not isinstance(md, dict):
        raise ApiError(422, "invalid_request", f"{name} must be a JSON object, got {type(md).__name__}")
    return md


async def decode_images(state: ServiceState, blobs: Sequence[tuple[str, bytes | str]]) -> list[DecodedImage]:
    """Decode (base64 strings first) in the thread pool: PIL work never runs on the event loop."""
    model, s = state.model, state.settings

    def work() -> list[DecodedImage]:
        return [
            decode_image(
                data if isinstance(data, bytes) else decode_base64(data, name=name),
                name=name,
                size=model.input_size,
                channels=model.in_channels,
                max_pixels=s.max_image_pixels,
            )
            for name, data in blobs
        ]

    return await to_thread.run_sync(work, limiter=state.decode_limiter)


def request_body(json_model: str, multipart_schema: dict[str, Any], description: str) -> dict[str, Any]:
    """``openapi_extra`` declaring the two accepted bodies of a route."""
    return {
        "requestBody": {
            "required": True,
            "description": description,
            "content": {
                "application/json": {"schema": {"$ref": f"#/components/schemas/{json_model}"}},
                "multipart/form-data": {"schema": multipart_schema},
            },
        }
    }


def file_schema(many: bool) -> dict[str, Any]:
    one = {"type": "string", "format": "binary"}
    return {"type": "array", "items": one, "description": "repeat the field for several images"} if many else one
