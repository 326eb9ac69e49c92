"""What one app holds: the encoder, the index, the image store, the batcher, the writer lock.

Loaded once per process by the app's lifespan. All methods that touch the model, FAISS or
SQLite are blocking and meant to run off the event loop (the batch thread or the thread pool);
the routes arrange that.

Writes follow one rule so that an acknowledged item survives ``kill -9``: the image is stored
(fsync'd) first, then ``EmbeddingIndex.add`` commits vector and metadata with its log entry; the
route answers only after both returned. A crash in between leaves an image without an item,
which nothing can reach. Deletes go the other way round (item first, then image).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from anyio import CapacityLimiter, to_thread

from infomax.artifact import load_encoder
from infomax.discriminators import CRITICS
from infomax.errors import MissingFileError, SettingError
from infomax.explain import Explainer, ExplainUnavailable, has_local_critic
from infomax.imagestore import ImageStore
from infomax.index import RECORD_FILE, EmbeddingIndex, Filter, IndexMismatchError
from infomax.index.collection import Collection, IdsTaken
from service.batching import Batcher
from service.errors import ApiError
from service.images import DecodedImage, decode_image
from service.metrics import Metrics
from service.model import ServingModel
from service.settings import Settings

log = logging.getLogger("service")

MAX_ID = 2**63 - 1


@dataclass(frozen=True)
class EncodeJob:
    pixels: torch.Tensor  # uint8 (n, C, S, S)
    k: int | None = None  # None: codes only; k: also search the index for each image
    filter: Filter | None = None  # ... among the items it matches


@dataclass(frozen=True)
class Hits:
    codes: np.ndarray  # (n, z)
    scores: np.ndarray  # (n, k)
    ids: np.ndarray  # (n, k), -1 padded
    metadata: list[list[dict | None]]  # (n, k): each hit's stored metadata (None: padding, or deleted meanwhile)


class ServiceState:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.metrics = Metrics()
        # Set together once loading succeeded; until then (or after stop) the properties below
        # answer 503 not_ready, which is what the routes behind ReadyState never see.
        self._model: ServingModel | None = None
        self._index: EmbeddingIndex | None = None
        self._batcher: Batcher[EncodeJob, np.ndarray | Hits | ApiError] | None = None
        self.images: ImageStore | None = None  # None also when serving read-only without pictures
        # The artifact's local critic (POST /v1/search with explain): None, and why, when it has none.
        self.explainer: Explainer | None = None
        self.explain_critic: str | None = None
        self.explain_unavailable: str | None = None
        self.ready = False
        self.error: str | None = None
        self._write_lock: asyncio.Lock | None = None
        self._coming = 0  # requests decoding images that they will submit to the batcher
        self._decode_limiter: CapacityLimiter | None = None  # made on the event loop by start()
        self._explain_limiter: CapacityLimiter | None = None  # the same, for heat-map work
        self._tasks: list[asyncio.Task] = []

    # ----------------------------------------------------------------- what is served

    def not_ready(self) -> ApiError:
        """503 with why: still loading, or what failed."""
        detail = f"model and index failed to load: {self.error}" if self.error else "model and index are loading"
        return ApiError(503, "not_ready", detail, headers={"Retry-After": "1"})

    @property
    def model(self) -> ServingModel:
        if self._model is None:
            raise self.not_ready()
        return self._model

    @property
    def index(self) -> EmbeddingIndex:
        """The index served now (a read-only server's refresh may swap it for a rebuilt folder's:
        code that makes several calls takes it once)."""
        if self._index is None:
            raise self.not_ready()
        return self._index

    @property
    def batcher(self) -> Batcher[EncodeJob, np.ndarray | Hits | ApiError]:
        if self._batcher is None:
            raise self.not_ready()
        return self._batcher

    @property
    def decode_limiter(self) -> CapacityLimiter:
        """Bounds how many uploads are decoded at once (a decoded image can take max_image_pixels x
        4 bytes before it is resized; the thread pool itself allows 40)."""
        if self._decode_limiter is None:
            raise self.not_ready()
        return self._decode_limiter

    @property
    def explain_limiter(self) -> CapacityLimiter:
        """The same for heat-map work (decoding k pictures and a forward pass)."""
        if self._explain_limiter is None:
            raise self.not_ready()
        return self._explain_limiter

    # ----------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        self._write_lock = asyncio.Lock()
        self._decode_limiter = CapacityLimiter(max(2, self.settings.compute_threads * 2))
        self._explain_limiter = CapacityLimiter(max(1, self.settings.compute_threads))
        if self.settings.background_load:
            self._tasks.append(asyncio.create_task(self._load_and_refresh(raise_errors=False)))
        else:
            await self._load_and_refresh(raise_errors=True)

    async def _load_and_refresh(self, raise_errors: bool) -> None:
        try:
            await to_thread.run_sync(self._load)
        except Exception as e:
            self.error = f"{type(e).__name__}: {e}"
            log.error("cannot load model and index: %s", self.error)
            if raise_errors:
                raise
            return
        if self.settings.read_only and self.settings.refresh_s > 0:
            self._tasks.append(asyncio.create_task(self._refresh_loop()))

    def _paths(self) -> tuple[Path, Path]:
        """The artifact and index folders the settings name."""
        s = self.settings
        if s.artifact is None:
            raise SettingError("no model: give --model ARTIFACT (or set INFOMAX_ARTIFACT)")
        if s.index is None:
            raise SettingError("no index: give --index INDEX_DIR (or set INFOMAX_INDEX)")
        return Path(s.artifact), Path(s.index)

    def _load(self) -> None:
        s = self.settings
        artifact, _ = self._paths()
        torch.set_num_threads(s.compute_threads)
        model = ServingModel(load_encoder(artifact, "cpu"), optimize=s.optimize)
        index = self._open_index(model)
        try:
            images = self._open_images(index)
        except BaseException:
            index.close()
            raise
        self._model, self._index, self.images = model, index, images
        self._load_explainer(model, artifact)
        self._batcher = Batcher(
            self._run_batch,
            max_batch_size=s.max_batch_size,
            max_wait_ms=s.max_wait_ms,
            enabled=s.batching,
            name="infomax-encode",
            on_batch=self.metrics.observe_batch,
            initializer=self._init_batch_thread,
            pending=lambda: self._coming,
        )
        self.metrics.track_index_size(lambda: len(self._index) if self._index is not None else 0)
        # torch, FastAPI and the loaded model leave a million long-lived objects behind; a full
        # cyclic-GC pass over them stalls every request for tens of ms (the p99 tail under load).
        # Freezing them moves them out of the collector's sight; garbage made later is still collected.
        gc.collect()
        gc.freeze()
        self.ready = True
        self.metrics.ready.set(1)
        log.info(
            "serving model %s (z_dim %d%s) with index %s: %d items, %s%s",
            model.id[:12],
            model.z_dim,
            ", optimised" if model.optimized else "",
            index.path,
            len(index),
            index.factory,
            ", read-only" if s.read_only else "",
        )

    def _load_explainer(self, model: ServingModel, path: Path) -> None:
        """The artifact's local critic, when it carries one. None is no error at startup: only a
        search asking for explain is refused (409), with the reason kept here (no server path in it)."""
        try:
            self.explainer = Explainer.from_artifact(model.encoder, path)
        except ExplainUnavailable as e:
            if has_local_critic(path):  # there is one, but damaged or of other weights: say so once
                log.warning("explain is off: %s", e)
            self.explain_unavailable = str(e).replace(str(path), f"the artifact {path.name!r}")
            return
        self.explain_critic = next((k for k, c in CRITICS.items() if type(self.explainer.critic) is c), "unknown")

    def _init_batch_thread(self) -> None:
        import faiss

        # per thread: the batch's FAISS searches use as many threads as the encoder
        faiss.omp_set_num_threads(self.settings.compute_threads)

    def _open_index(self, model: ServingModel) -> EmbeddingIndex:
        s = self.settings
        _, path = self._paths()
        missing = not path.exists() or (path.is_dir() and not any(path.iterdir()))
        if missing and s.create_index:
            if s.read_only:
                raise SettingError(f"{path}: cannot create an index in read-only mode")
            log.info("creating an empty index at %s for model %s", path, model.id[:12])
            artifact = {"id": model.id, "path": str(s.artifact), "z_dim": model.z_dim}
            return EmbeddingIndex.create(model.z_dim, path=path, artifact=artifact, overwrite=path.exists())
        if missing:
            raise MissingFileError(f"no index at {path} (pass --create-index to start an empty one)")
        index = EmbeddingIndex.load(path, expected_dim=model.z_dim, read_only=s.read_only)
        art = index.info.get("artifact")
        found = art.get("id") if isinstance(art, dict) else None
        if found is None:
            log.warning("index %s records no encoder artifact: serving it with %s on trust", path, model.id[:12])
        elif found != model.id:
            index.close()
            raise IndexMismatchError(
                f"artifact mismatch: the index at {path} was built with encoder artifact {found!r} but the "
                f"encoder in use is {model.id!r} (see {path / RECORD_FILE})"
            )
        return index

    def _open_images(self, index: EmbeddingIndex) -> ImageStore | None:
        folder = index.path
        if folder is None:  # _open_index always gives a folder's index
            raise SettingError("the served index is not bound to a folder")
        if not self.settings.read_only:
            return ImageStore(folder)
        try:
            return ImageStore(folder, read_only=True)
        except FileNotFoundError:
            return None  # an index built without pictures: /image answers 404

    async def _refresh_loop(self) -> None:
        """Read-only instances: apply the items the writer process logged since the last look, and
        follow a rebuild (a new folder renamed into place) by opening the new folder."""
        failed: str | None = None
        while True:
            await asyncio.sleep(self.settings.refresh_s)
            try:
                if await to_thread.run_sync(self.index.folder_replaced):
                    await to_thread.run_sync(self._reopen)
                    failed = None
                    continue
                n = await to_thread.run_sync(self.index.refresh)
                if n:
                    log.info("index refreshed: %d ids re-synchronised", n)
            except Exception as e:  # noqa: BLE001 - keep serving the last good state
                message = f"{type(e).__name__}: {e}"
                if message != failed:  # once per distinct failure, not every refresh_s
                    log.error("index refresh failed, still serving the previous state: %s", message)
                failed = message

    def _reopen(self) -> None:
        """Read-only: the index folder was replaced by a rebuild; serve the new one. The old
        index and image store are dropped, not closed: a request may still be reading them, and
        they close when the last reference goes."""
        index = self._open_index(self.model)
        try:
            images = self._open_images(index)
        except BaseException:
            index.close()
            raise
        self._index, self.images = index, images
        log.info("index folder %s was replaced: now serving the new one (%d items)", index.path, len(index))

    async def stop(self) -> None:
        self.ready = False
        self.metrics.ready.set(0)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._batcher is not None:
            await to_thread.run_sync(self._batcher.close)
        if self._index is not None:
            self._index.close()
        if self.images is not None:
            self.images.close()

    # ----------------------------------------------------------------- reads (thread pool / batch thread)

    def _run_batch(self, jobs: Sequence[EncodeJob]) -> list[np.ndarray | Hits | ApiError]:
        """On the batch thread: one forward pass for every job, one FAISS search for those
        that asked for neighbours."""
        index = self.index  # one index for the whole batch, should a reader's refresh swap it meanwhile
        x = jobs[0].pixels if len(jobs) == 1 else torch.cat([j.pixels for j in jobs])
        codes = self.model.encode(x)
        bounds = np.cumsum([0] + [len(j.pixels) for j in jobs])
        results: list = [codes[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
        want = [(i, j.k) for i, j in enumerate(jobs) if j.k is not None]  # (job, its k)
        if want:
            # A code FAISS cannot compare (all zeros, NaN) fails its own request only.
            rows = np.concatenate([results[i] for i, _ in want])
            norms = np.linalg.norm(rows, axis=1)
            usable = np.isfinite(norms) & (norms > 0)
            kmax = max(k for _, k in want)
            scores = np.full((len(rows), kmax), -np.inf, np.float32)
            ids = np.full((len(rows), kmax), -1, np.int64)
            # one FAISS search per distinct filter (most batches: one, unfiltered)
            filters = {f.key: f for f in (jobs[i].filter for i, _ in want) if f is not None}
            keys = [f.key if (f := jobs[i].filter) is not None else "" for i, _ in want]
            row_filter = np.array([key for (i, _), key in zip(want, keys) for _ in range(len(results[i]))])
            for key in ["", *filters]:
                rows_of = usable & (row_filter == key)
                if rows_of.any():
                    scores[rows_of], ids[rows_of] = index.search(rows[rows_of], kmax, filter=filters.get(key))
            # one metadata query for the whole batch rather than one per request
            found = {m["id"]: m for m in index.get_many(np.unique(ids[ids >= 0])) if m is not None}
            r = 0
            for i, k in want:
                n = len(results[i])
                if not usable[r : r + n].all():
                    results[i] = ApiError(
                        422,
                        "unusable_code",
                        "the encoder's code of this image is zero or not finite: it cannot be compared by cosine similarity",
                    )
                else:
                    hit_ids = ids[r : r + n, :k]
                    metadata = [[found.get(j) for j in row] for row in hit_ids.tolist()]
                    results[i] = Hits(results[i], scores[r : r + n, :k], hit_ids, metadata)
                r += n
        return results

    @contextlib.contextmanager
    def coming(self):
        """Marks a request preparing encode work, so that a forming batch waits for it
        (an int changed on the event loop only; the batch thread just reads it)."""
        self._coming += 1
        try:
            yield
        finally:
            self._coming -= 1

    async def _submit(self, job: EncodeJob) -> np.ndarray | Hits:
        result = await self.batcher.submit(job, size=len(job.pixels))
        if isinstance(result, ApiError):
            raise result
        return result

    async def encode(self, pixels: torch.Tensor) -> np.ndarray:
        """The codes of ``pixels`` (n, C, S, S), encoded in the next batch."""
        codes = await self._submit(EncodeJob(pixels))
        assert isinstance(codes, np.ndarray)  # a job without k gets its codes only
        return codes

    async def encode_search(self, pixels: torch.Tensor, k: int, filter: Filter | None = None) -> Hits:  # noqa: A002
        """The codes of ``pixels``, their ``k`` nearest items (among those ``filter`` matches) and the
        items' metadata, all in the next batch."""
        hits = await self._submit(EncodeJob(pixels, k, filter))
        assert isinstance(hits, Hits)  # a job with k gets its hits
        return hits

    def check_vector(self, vector: Sequence[float]) -> np.ndarray:
        v = np.asarray(vector, dtype=np.float64)
        if v.ndim != 1 or len(v) != self.model.z_dim:
            raise ApiError(422, "invalid_vector", f"vector has dimension {v.size}, the index expects {self.model.z_dim}")
        with np.errstate(over="ignore"):
            v32 = v.astype(np.float32)
        bad = np.flatnonzero(~np.isfinite(v32))
        if len(bad):
            raise ApiError(
                422, "invalid_vector", f"vector holds NaN, inf or values beyond float32 at positions {bad[:10].tolist()}"
            )
        if not np.any(v32):
            raise ApiError(422, "invalid_vector", "vector is all zeros: cosine similarity is undefined")
        return v32

    def search_vector(self, v: np.ndarray, k: int, flt: Filter | None = None) -> tuple[np.ndarray, np.ndarray, list[dict | None]]:
        """(scores, ids, metadata) of one query, all in one trip to the thread pool."""
        index = self.index
        scores, ids = index.search(v[None, :], k, filter=flt)
        return scores[0], ids[0], self.items(ids[0].tolist(), index)

    def search_id(self, item_id: int, k: int, flt: Filter | None = None) -> tuple[np.ndarray, np.ndarray, list[dict | None]]:
        index = self.index
        try:
            scores, ids = index.search_by_id(item_id, k, filter=flt)
        except KeyError:
            raise ApiError(404, "not_found", f"no item with id {item_id}") from None
        return scores[0], ids[0], self.items(ids[0].tolist(), index)

    def items(self, ids: Sequence[int], index: EmbeddingIndex | None = None) -> list[dict | None]:
        index = index if index is not None else self.index  # not `or`: an empty index is falsy (len 0)
        return index.get_many(np.asarray(ids, dtype=np.int64)) if len(ids) else []

    def sample(self, n: int) -> list[dict]:
        return [m for m in self.items(self.index.sample_ids(n).tolist()) if m is not None]

    def image(self, item_id: int) -> tuple[bytes, str] | None:
        # An image whose item is gone (a crash between the two writes) is never shown.
        if self.images is None or item_id not in self.index:
            return None
        return self.images.get(item_id)

    # ----------------------------------------------------------------- why two images match

    def explain_refusal(self) -> ApiError:
        """The answer to a search asking for explain on a model that cannot give one."""
        return ApiError(
            409,
            "explain_unavailable",
            f"this server cannot explain matches: {self.explain_unavailable}. Search without explain, or serve such a model",
        )

    def stored_pixels(self, item_id: int) -> torch.Tensor | None:
        """The item's stored picture decoded as an upload is, uint8 (C, S, S); None when it has none
        or it cannot be decoded (logged)."""
        found = self.image(item_id)
        if found is None:
            return None
        m, s = self.model, self.settings
        try:
            return decode_image(
                found[0],
                name=f"the stored picture of item {item_id}",
                size=m.input_size,
                channels=m.in_channels,
                max_pixels=s.max_image_pixels,
            ).pixels
        except ApiError as e:
            log.warning("cannot explain item %d: %s", item_id, e.message)
            return None

    def explain(
        self,
        ids: Sequence[int],
        *,
        pixels: torch.Tensor | None = None,
        vector: np.ndarray | None = None,
        item_id: int | None = None,
    ) -> list[dict | None]:
        """Thread pool: the query's code (mu of the image ``pixels``, the ``vector`` itself, or mu of
        item ``item_id``'s stored picture) against every position of each neighbour's local map,
        through the artifact's local critic: {h, w, scores (rows top to bottom), min, max} per id,
        None for an id without a usable stored picture."""
        explainer = self.explainer
        if explainer is None:
            raise self.explain_refusal()
        if pixels is not None:
            code = explainer.codes(pixels[None])[0]
        elif vector is not None:
            code = torch.from_numpy(vector)
        elif item_id is not None:
            own = self.stored_pixels(item_id)
            if own is None:
                raise ApiError(
                    409,
                    "no_picture",
                    f"item {item_id} has no stored picture (or it cannot be decoded), so its code "
                    f"cannot be compared with the neighbours' pictures: search by its image instead, "
                    f"or without explain",
                )
            code = explainer.codes(own[None])[0]
        else:
            raise ValueError("explain takes the query as pixels, vector or item_id")
        pictures = [(n, p) for n, i in enumerate(ids) if (p := self.stored_pixels(i)) is not None]
        out: list[dict | None] = [None] * len(ids)
        if pictures:
            maps = explainer.heatmaps(code, torch.stack([p for _, p in pictures])).numpy()
            for (n, _), m in zip(pictures, maps):
                out[n] = {
                    "h": int(m.shape[0]),
                    "w": int(m.shape[1]),
                    "scores": m.tolist(),
                    "min": float(m.min()),
                    "max": float(m.max()),
                }
        return out

    # ----------------------------------------------------------------- writes (one at a time)

    @contextlib.asynccontextmanager
    async def writer(self):
        """The one writer lock: held while a write runs in the thread pool."""
        if self.settings.read_only:
            raise ApiError(403, "read_only", "this server is read-only: items cannot be added or deleted")
        async with self._write_lock:
            yield

    def add_items(
        self, codes: np.ndarray, images: Sequence[DecodedImage], ids: Sequence[int] | None, metadata: Sequence[dict]
    ) -> list[int]:
        """Caller holds the writer lock. Returns the ids once image, vector and metadata are durable."""
        n = len(images)
        if ids is None:
            start = self.index.next_free_id()  # the index's own rule, read under the writer lock
            ids = list(range(start, start + n))
            if ids and ids[-1] > MAX_ID:
                raise ApiError(409, "ids_exhausted", "no free item ids are left")
        # Picture first, then vector; ids already there are refused before any picture is written, and
        # a refused add takes its pictures back out (infomax.index.collection).
        try:
            return Collection(self.index, self.images).add(
                codes, ids, list(metadata), ((i, im.data, im.mime) for i, im in zip(ids, images))
            )
        except IdsTaken as e:
            raise ApiError(409, "id_exists", f"ids already in the index: {e.ids[:10]}") from None
        except ValueError as e:
            raise ApiError(422, "invalid_item", str(e)) from None

    def delete_item(self, item_id: int) -> bool:
        """Caller holds the writer lock."""
        return Collection(self.index, self.images).remove([item_id]) > 0  # vector, then picture
