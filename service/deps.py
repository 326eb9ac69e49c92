"""Dependencies shared by the routers: the app's state, readiness, and the API key checks."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request

from service.errors import ApiError
from service.state import ServiceState


def get_state(request: Request) -> ServiceState:
    return request.app.state.service


StateDep = Annotated[ServiceState, Depends(get_state)]


def ready_state(state: StateDep) -> ServiceState:
    if not state.ready:
        raise state.not_ready()
    return state


ReadyState = Annotated[ServiceState, Depends(ready_state)]


def _presented_key(request: Request) -> bytes | None:
    key = request.headers.get("x-api-key")
    if key is None:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            key = token.strip()
    return key.encode() if key is not None else None


def _check_key(request: Request, state: ServiceState) -> None:
    expected = state.settings.write_key
    if expected is None:
        return
    presented = _presented_key(request)
    # The key is never logged nor echoed; compare_digest takes the same time wherever they differ.
    if presented is None:
        raise ApiError(
            401,
            "unauthorized",
            "API key required: send it as X-API-Key or Authorization: Bearer",
            headers={"WWW-Authenticate": "Bearer"},
        )
    if not hmac.compare_digest(presented, expected):
        raise ApiError(401, "unauthorized", "wrong API key", headers={"WWW-Authenticate": "Bearer"})


def require_write_key(request: Request, state: StateDep) -> None:
    _check_key(request, state)


def require_read_key(request: Request, state: StateDep) -> None:
    if state.settings.api_key_for_reads:
        _check_key(request, state)


ReadAccess = Depends(require_read_key)
WriteAccess = Depends(require_write_key)
