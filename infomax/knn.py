"""k-nearest-neighbour classification of codes: the measure of representation quality.

Cosine-weighted k-NN as in Wu et al. 2018 (instance discrimination) and lightly's benchmarks:
each of the k most similar bank items votes for its class with weight exp(similarity / T).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from infomax.errors import SettingError


@torch.no_grad()
def knn_predict_with_nearest(
    queries: torch.Tensor,
    bank: torch.Tensor,
    bank_labels: torch.Tensor,
    num_classes: int,
    k: int = 200,
    temperature: float = 0.1,
    weighted: bool = True,
    chunk: int = 1024,
    keep: int = 10,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(k-NN prediction, 1-NN prediction), both int64 of shape (n,), and the labels of each query's
    ``keep`` nearest bank vectors, nearest first (int64, (n, min(keep, m))): what a search would
    show; for queries (n, d) against a labelled bank (m, d), from one pass over the similarities.

    Vectors are L2-normalised here; ``weighted=False`` gives a plain majority vote (k=1: 1-NN).
    Queries are processed in chunks so memory stays at chunk x m similarities.
    """
    if k < 1:
        raise SettingError(f"k={k}: must be >= 1", setting="k")
    if not temperature > 0:
        raise SettingError(f"temperature={temperature}: must be > 0", setting="temperature")
    if bank.shape[0] != bank_labels.shape[0]:
        raise ValueError(f"bank has {bank.shape[0]} vectors but {bank_labels.shape[0]} labels")
    k = min(k, bank.shape[0])
    keep = min(max(keep, 1), bank.shape[0])
    bank = F.normalize(bank.float(), dim=1)
    bank_labels = bank_labels.to(bank.device)
    preds, nearest, kept = [], [], []
    for q in queries.split(chunk):
        sim = F.normalize(q.float().to(bank.device), dim=1) @ bank.T
        all_sim, all_idx = sim.topk(max(k, keep), dim=1)
        top_sim, top_labels = all_sim[:, :k], bank_labels[all_idx[:, :k]]
        weights = (top_sim / temperature).exp() if weighted else torch.ones_like(top_sim)
        votes = torch.zeros(q.shape[0], num_classes, device=bank.device)
        votes.scatter_add_(1, top_labels, weights)
        preds.append(votes.argmax(1))
        nearest.append(top_labels[:, 0])
        kept.append(bank_labels[all_idx[:, :keep]])
    return torch.cat(preds).cpu(), torch.cat(nearest).cpu(), torch.cat(kept).cpu()


def knn_predict(queries: torch.Tensor, bank: torch.Tensor, bank_labels: torch.Tensor, num_classes: int, **kwargs) -> torch.Tensor:
    """Predicted class (int64, shape (n,)) of each query: the k-NN vote of
    :func:`knn_predict_with_nearest` (same keyword arguments)."""
    return knn_predict_with_nearest(queries, bank, bank_labels, num_classes, **kwargs)[0]


@torch.no_grad()
def knn_accuracy(
    queries: torch.Tensor,
    query_labels: torch.Tensor,
    bank: torch.Tensor,
    bank_labels: torch.Tensor,
    num_classes: int | None = None,
    **kwargs,
) -> float:
    """Top-1 accuracy of :func:`knn_predict` against ``query_labels``."""
    if num_classes is None:
        num_classes = int(max(bank_labels.max(), query_labels.max())) + 1
    pred = knn_predict(queries, bank, bank_labels, num_classes, **kwargs)
    return (pred == query_labels.cpu()).float().mean().item()
