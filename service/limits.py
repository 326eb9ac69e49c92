"""Request body size limit, enforced while the body streams in.

A declared ``Content-Length`` over the limit is answered 413 before any of the body is read;
otherwise (chunked uploads, or a client that lies) bytes are counted as they arrive and the
request fails with 413 the moment the count passes the limit, so an oversized upload is never
held in memory or spooled to disk in full.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import ERROR_CODE_KEY, ApiError, ErrorBody


class BodyTooLarge(ApiError):
    def __init__(self, limit: int, seen: int | None = None) -> None:
        what = f"declares {seen} bytes" if seen is not None else "is larger"
        # Connection: close, or the server would go on reading (and discarding) the rest
        super().__init__(
            413,
            "payload_too_large",
            f"request body {what}: the limit is {limit} bytes (max_upload_bytes)",
            headers={"Connection": "close"},
        )


class BodySizeLimit:
    """Pure ASGI middleware (no buffering): wraps ``receive`` to count body bytes."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_bytes
        declared = None
        for key, value in scope["headers"]:
            if key == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    await _reply(scope, send, 400, "bad_request", "Content-Length is not a number")
                    return
        if declared is not None and declared > limit:
            await _reply(scope, send, 413, "payload_too_large", BodyTooLarge(limit, declared).message)
            return

        received = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    # Raised inside the route while it reads the body: the ApiError handler
                    # answers 413 (or the fallback below, if the app let it escape).
                    raise BodyTooLarge(limit)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except BodyTooLarge as e:
            if started:
                raise
            await _reply(scope, send, 413, e.code, e.message)


async def _reply(scope: Scope, send: Send, status: int, code: str, message: str) -> None:
    scope[ERROR_CODE_KEY] = code
    body = ErrorBody(detail=message, code=code).model_dump_json(exclude_none=True).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
