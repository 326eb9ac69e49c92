"""Tuning: the smallest nprobe / efSearch whose recall@10 against exact search reaches the
target, and the latency measured with it."""

from __future__ import annotations

import time
import warnings
from typing import Any

import faiss
import numpy as np

from infomax.index.state import IndexState


class Tuning(IndexState):
    """EmbeddingIndex's search-parameter tuning, part of build (a mixin: the state it uses is set by
    ``EmbeddingIndex.__init__``)."""

    def _tune(self, x: np.ndarray, ids: np.ndarray, q: np.ndarray, qids: np.ndarray, target: float, k: int) -> dict:
        """Chooses the search parameter on the queries ``q`` (ids ``qids``) against exact search over
        ``x`` (ids ``ids``): what the index holds now. A query found among the results is dropped
        from them (self-queries of tiny builds)."""
        n = len(x)
        out: dict[str, Any] = {"recall_target": target, "tuning_queries": int(len(q))}
        kk = min(k, n - 1)
        if len(q) == 0 or kk < 1:
            out.update(recall_at_10=1.0 if self._kind == "flat" else None, recall_target_met=None, search_params={})
            return out
        order = np.argsort(ids)
        sorted_ids = ids[order]

        def drop_self(D: np.ndarray, I: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            own = I == qids[:, None]
            none = ~own.any(axis=1)
            own[none, -1] = True
            keep = ~own
            return D[keep].reshape(len(I), -1)[:, :kk], I[keep].reshape(len(I), -1)[:, :kk]

        gD, _ = faiss.knn(q, x, kk + 1, metric=faiss.METRIC_INNER_PRODUCT)
        gI = ids[_]
        gD, gI = drop_self(gD, gI)
        kth = gD[:, -1]

        def recall(I: np.ndarray) -> float:
            valid = I >= 0
            pos = order[np.clip(np.searchsorted(sorted_ids, np.where(valid, I, 0)), 0, n - 1)]
            exact = np.einsum("qd,qkd->qk", q, x[pos])
            hit = valid & (exact >= kth[:, None] - 1e-5)
            return float(hit.sum() / (len(I) * kk))

        if self._kind == "flat":
            chosen, best = None, 1.0
            out["search_params"] = {}
        else:
            if self._kind == "ivf":
                nlist = faiss.extract_index_ivf(self._index).nlist
                cands = sorted({min(nlist, 2**i) for i in range(0, 20) if 2 ** (i - 1) < nlist})
                name = "nprobe"
            else:
                cands = [16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 2048]
                name = "efSearch"
            chosen, best, best_val = None, -1.0, None
            for c in cands:
                with self._rw.read():
                    D, I = self._search_locked(q, kk + 1, c)
                r = recall(drop_self(D, I)[1])
                if r > best + 1e-9:
                    best, best_val = r, c
                if r >= target:
                    chosen, best = c, r
                    break
            if chosen is None:
                chosen = best_val
                warnings.warn(
                    f"{self.factory}: recall@10 target {target} not reached (best {best:.4f} at {name}={chosen})",
                    RuntimeWarning,
                    stacklevel=4,
                )
            assert chosen is not None  # cands is never empty and any recall beats -1: best_val is set
            out["search_params"] = {name: int(chosen)}
        self._info["search_params"] = out["search_params"]
        self._params_cache.clear()
        out["recall_at_10"] = round(best, 4)
        out["recall_target_met"] = bool(best >= target)
        # latency: single queries through the public API (up to 200 or ~2 s), then one batch
        t0 = time.perf_counter()
        nq = 0
        while nq < min(200, len(q)) and (nq < 5 or time.perf_counter() - t0 < 2.0):
            self.search(q[nq : nq + 1], k)
            nq += 1
        out["latency_ms_per_query"] = round((time.perf_counter() - t0) * 1000 / nq, 4)
        t0 = time.perf_counter()
        self.search(q, k)
        out["batch_ms_per_query"] = round((time.perf_counter() - t0) * 1000 / len(q), 4)
        return out
