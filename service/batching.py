"""Dynamic batching: concurrent requests' encode work gathered into one forward pass.

One worker thread owns the encoder. Requests put jobs on a queue and await a future, so the
event loop never runs model code. The worker takes the first job, then everything already
queued (up to ``max_batch_size`` images), then, if more jobs are known to be on their way
(``pending()``: requests still decoding their images), waits at most ``max_wait_ms`` for them,
and runs one batch. Under load the queue fills while a batch runs, so batches grow with
concurrency and throughput rises; a lone request never waits. With batching off every job still
runs on the worker thread, one job per pass (the baseline the benchmark compares against).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

log = logging.getLogger("service.batching")

P = TypeVar("P")
R = TypeVar("R")


@dataclass
class _Job(Generic[P]):
    payload: P
    size: int  # images in the job; batches are bounded by the sum of sizes
    future: concurrent.futures.Future


_STOP = object()


class BatcherClosed(RuntimeError):
    pass


class Batcher(Generic[P, R]):
    """Runs ``fn(payloads) -> results`` (one result per payload, same order) on one thread."""

    def __init__(
        self,
        fn: Callable[[Sequence[P]], Sequence[R]],
        *,
        max_batch_size: int = 64,
        max_wait_ms: float = 1.0,
        enabled: bool = True,
        name: str = "batcher",
        on_batch: Callable[[int, int, float], None] | None = None,
        initializer: Callable[[], None] | None = None,
        pending: Callable[[], int] | None = None,
    ) -> None:
        self._fn = fn
        self._pending = pending  # jobs about to be submitted; None: always wait max_wait_ms
        self._initializer = initializer  # run once on the worker thread (per-thread settings)
        self.max_batch_size = max(1, int(max_batch_size))
        self.max_wait_s = max(0.0, float(max_wait_ms)) / 1000.0
        self.enabled = enabled
        self._on_batch = on_batch  # (images, jobs, seconds) after each batch, for metrics
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    async def submit(self, payload: P, size: int = 1) -> R:
        """Queue one job and wait for its result (exceptions of ``fn`` are re-raised here)."""
        if self._closed:
            raise BatcherClosed("the service is shutting down")
        future: concurrent.futures.Future = concurrent.futures.Future()
        self._queue.put(_Job(payload, max(1, int(size)), future))
        # A cancelled await (client gone) cancels the future; the worker then skips the job.
        return await asyncio.wrap_future(future)

    def close(self, timeout: float = 10.0) -> None:
        """Finish queued jobs, stop the thread."""
        if self._closed:
            return
        self._closed = True
        self._queue.put(_STOP)
        self._thread.join(timeout)

    # ----------------------------------------------------------------- worker thread

    def _gather(self, first: _Job) -> tuple[list[_Job], Any]:
        """``first`` plus whatever can join it; returns (batch, job held over for the next one)."""
        batch, total = [first], first.size
        if not self.enabled:
            return batch, None
        deadline = None
        while total < self.max_batch_size:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                if self.max_wait_s <= 0 or (self._pending is not None and self._pending() <= 0):
                    break
                now = time.monotonic()
                if deadline is None:
                    deadline = now + self.max_wait_s
                if now >= deadline:
                    break
                try:
                    job = self._queue.get(timeout=deadline - now)
                except queue.Empty:
                    break
            if job is _STOP or total + job.size > self.max_batch_size:
                return batch, job
            batch.append(job)
            total += job.size
        return batch, None

    def _run(self) -> None:
        if self._initializer is not None:
            self._initializer()
        held = None
        while True:
            job = held if held is not None else self._queue.get()
            held = None
            if job is _STOP:
                break
            batch, held = self._gather(job)
            self._execute(batch)
        # Anything queued after close(): refuse rather than leave a request hanging.
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            if job is not _STOP and job.future.set_running_or_notify_cancel():
                job.future.set_exception(BatcherClosed("the service is shutting down"))

    def _execute(self, batch: list[_Job]) -> None:
        live = [j for j in batch if j.future.set_running_or_notify_cancel()]
        if not live:
            return
        t0 = time.perf_counter()
        try:
            results = self._fn([j.payload for j in live])
            if len(results) != len(live):  # pragma: no cover - a bug in fn
                raise RuntimeError(f"batch function returned {len(results)} results for {len(live)} jobs")
        except BaseException as e:  # noqa: BLE001 - handed to every waiting request
            for j in live:
                j.future.set_exception(e)
        else:
            for j, r in zip(live, results):
                j.future.set_result(r)
        if self._on_batch is not None:
            try:
                self._on_batch(sum(j.size for j in live), len(live), time.perf_counter() - t0)
            except Exception:  # pragma: no cover - metrics never break serving
                log.exception("batch metrics callback failed")
