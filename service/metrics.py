"""Prometheus metrics of one app, in a registry of its own (several apps in one process, as in
the tests, never share or clash), and the ASGI middleware that times every request."""

from __future__ import annotations

import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import ERROR_CODE_KEY

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter(
            "infomax_http_requests_total", "HTTP requests by route template and status", ["method", "route", "status"], registry=r
        )
        self.latency = Histogram(
            "infomax_http_request_duration_seconds",
            "HTTP request latency by route template",
            ["method", "route"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.errors = Counter(
            "infomax_http_errors_total", "error responses by route and error code", ["route", "code"], registry=r
        )
        self.batch_images = Histogram(
            "infomax_encode_batch_images", "images per encoder forward pass", buckets=_BATCH_BUCKETS, registry=r
        )
        self.batch_requests = Histogram(
            "infomax_encode_batch_requests", "requests served by one forward pass", buckets=_BATCH_BUCKETS, registry=r
        )
        self.batch_seconds = Histogram(
            "infomax_encode_batch_seconds", "time of one batch (encode + search)", buckets=_LATENCY_BUCKETS, registry=r
        )
        self.index_items = Gauge("infomax_index_items", "items in the index", registry=r)
        self.ready = Gauge("infomax_ready", "1 once model and index are loaded", registry=r)

    def observe_batch(self, images: int, jobs: int, seconds: float) -> None:
        self.batch_images.observe(images)
        self.batch_requests.observe(jobs)
        self.batch_seconds.observe(seconds)

    def track_index_size(self, size: Callable[[], int]) -> None:
        self.index_items.set_function(size)


class MetricsMiddleware:
    """Counts and times requests under their route template (``/v1/items/{item_id}``, never the
    raw path, so label cardinality stays bounded)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        status = 500

        async def tracking_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", None) or ("/static" if scope["path"].startswith("/static/") else "unmatched")
            method = scope["method"]
            m = self.metrics
            m.requests.labels(method, path, str(status)).inc()
            m.latency.labels(method, path).observe(time.perf_counter() - t0)
            if status >= 400:
                m.errors.labels(path, scope.get(ERROR_CODE_KEY, "internal_error" if status >= 500 else "error")).inc()
