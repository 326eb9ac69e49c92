"""The FastAPI app factory. Importing this module loads nothing heavy: the encoder and the index
are loaded by the lifespan of each app (once per worker process)."""

from __future__ import annotations

from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from infomax import __version__
from service.errors import install_error_handlers
from service.limits import BodySizeLimit
from service.metrics import MetricsMiddleware
from service.routes import duplicates, embed, health, items, metrics, search, web
from service.schemas import AddItemsRequest, EmbedRequest, SearchRequest
from service.settings import Settings
from service.state import ServiceState

DESCRIPTION = """Deep INFOMAX image codes and similar-image search.

Images go in as multipart uploads (field `file`) or base64 in JSON. Every error is JSON:
`{"detail": "...", "code": "..."}`. Writes need the API key (`X-API-Key` or
`Authorization: Bearer`) when the server has one."""


class SecurityHeaders:
    """nosniff everywhere: stored images are served with the type detected at upload, and no
    browser may reinterpret them (or a JSON error) as HTML."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [
                    *message.get("headers", []),
                    (b"x-content-type-options", b"nosniff"),
                    (b"referrer-policy", b"no-referrer"),
                ]
            await send(message)

        await self.app(scope, receive, send_with_headers)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings if settings is not None else Settings()
    state = ServiceState(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await state.start()
        try:
            yield
        finally:
            await state.stop()

    app = FastAPI(title="infomax", version=__version__, description=DESCRIPTION, lifespan=lifespan)
    app.state.service = state
    install_error_handlers(app)
    for module in (health, embed, search, items, duplicates, metrics, web):
        app.include_router(module.router)
    app.mount("/static", StaticFiles(directory=web.STATIC_DIR), name="static")
    # Outermost last: metrics see every answer, the 413s of the size limit included.
    app.add_middleware(SecurityHeaders)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_upload_bytes)
    app.add_middleware(MetricsMiddleware, metrics=state.metrics)
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app


def create_app_from_env() -> FastAPI:
    """uvicorn factory (``infomax serve`` and every worker): settings from ``INFOMAX_*``."""
    return create_app(Settings())


def _openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's schema plus the JSON request models, which the routes reference by name (they
    read their bodies themselves to accept JSON and multipart on one path)."""
    if app.openapi_schema is None:
        schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        for model in (EmbedRequest, SearchRequest, AddItemsRequest):
            js = model.model_json_schema(ref_template="#/components/schemas/{model}")
            for name, definition in js.pop("$defs", {}).items():
                components.setdefault(name, definition)
            components[model.__name__] = js
        app.openapi_schema = schema
    return app.openapi_schema
