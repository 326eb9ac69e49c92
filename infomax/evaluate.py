"""How good are the codes: k-NN, 1-NN and linear-probe accuracy, beside the raw-pixel baseline.

The protocol (the same for codes and for pixels, so the two are comparable in one report):

* **weighted k-NN** (k=200, T=0.1): cosine similarity; each of the k most similar train items
  votes for its class with weight exp(sim / T) (Wu et al. 2018, as ``infomax.knn``);
* **1-NN**: the class of the single most similar train item (cosine);
* **linear probe**: features standardised with the train mean/std, multinomial logistic
  regression trained full-batch with L-BFGS on the CPU; the L2 penalty is chosen from a small
  sweep on a held-out 10 % of train, then the probe is refit on all of train;
* **raw pixels**: images as float in [0, 1], centred on the train split's mean image, flattened.

The train split is the bank / training set; the test split gives the queries. A folder whose
subfolders are classes is evaluated too: a seeded held-out part of every class gives the queries
(``test_fraction``), or two such folders are the bank and the queries.

Every row also reports the spread of its cosine scores (nearest and k-th neighbour, random pairs):
codes that collapsed (every image mapped to nearly one direction) score ~1 everywhere, which
accuracy alone does not make plain.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from infomax.errors import SettingError
from infomax.knn import knn_predict_with_nearest
from infomax.validate import positive_int

DEFAULT_WEIGHT_DECAYS: tuple[float, ...] = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1)


def _as_float(x: Any, what: str) -> torch.Tensor:
    t = torch.as_tensor(x)
    if t.dim() != 2:
        raise ValueError(f"{what} must have shape (n, d), got {tuple(t.shape)}")
    return t.float()


def _as_labels(y: Any, n: int, what: str) -> torch.Tensor:
    t = torch.as_tensor(y).long().reshape(-1)
    if len(t) != n:
        raise ValueError(f"{what}: {len(t)} labels for {n} vectors")
    if len(t) and int(t.min()) < 0:
        raise ValueError(f"{what} hold unknown (-1) labels: accuracy needs a labelled data set")
    return t


def knn_eval(
    train_x: Any,
    train_y: Any,
    test_x: Any,
    test_y: Any,
    *,
    k: int = 200,
    temperature: float = 0.1,
    num_classes: int | None = None,
    chunk: int = 512,
) -> dict:
    """Weighted k-NN and 1-NN top-1 of ``test_x`` (m, d) against the bank ``train_x`` (n, d).

    One pass: the cosine similarities of a chunk of queries to the whole bank (chunk x n floats)
    give the top-k vote, the nearest neighbour and the ten nearest. Returns ``{"knn_top1",
    "nn1_top1", "p10"}``: ``p10`` is the precision of the ten nearest (the share of them with the
    query's label, over all queries): what a search shows, where the weighted vote is a classifier
    that also moves with how spread the cosine scores are (docs/BENCHMARKS.md, "What a search shows").
    """
    bank = _as_float(train_x, "train features")
    queries = _as_float(test_x, "test features")
    if bank.shape[1] != queries.shape[1]:
        raise ValueError(f"train features have dimension {bank.shape[1]}, test features {queries.shape[1]}")
    positive_int("k", k)
    if not temperature > 0:
        raise SettingError(f"temperature={temperature!r}: must be > 0", setting="temperature")
    bank_y = _as_labels(train_y, len(bank), "train labels")
    query_y = _as_labels(test_y, len(queries), "test labels")
    if len(bank) == 0 or len(queries) == 0:
        raise ValueError(f"need at least one train and one test item, got {len(bank)} and {len(queries)}")
    if num_classes is None:
        num_classes = int(max(bank_y.max(), query_y.max())) + 1
    knn, nn1, ten = knn_predict_with_nearest(
        queries, bank, bank_y, num_classes, k=k, temperature=temperature, chunk=chunk, keep=10
    )
    n = len(queries)
    return {
        "knn_top1": int((knn == query_y).sum()) / n,
        "nn1_top1": int((nn1 == query_y).sum()) / n,
        "p10": float((ten == query_y[:, None]).float().mean()),
    }


def pixel_features(train_images: torch.Tensor, test_images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The raw-pixel baseline's features: uint8 (N, C, H, W) -> float32 (N, C*H*W) in [0, 1],
    centred on the mean image of the train split (so cosine compares deviations from it)."""
    if train_images.shape[1:] != test_images.shape[1:]:
        raise ValueError(
            f"train images {tuple(train_images.shape[1:])} and test images {tuple(test_images.shape[1:])} differ in shape"
        )
    train = train_images.reshape(len(train_images), -1).float().div_(255.0)
    test = test_images.reshape(len(test_images), -1).float().div_(255.0)
    mean = train.mean(0, dtype=torch.float64).float()
    return train.sub_(mean), test.sub_(mean)


def _standardise(train: torch.Tensor, *others: torch.Tensor) -> list[torch.Tensor]:
    mean = train.mean(0, dtype=torch.float64).float()
    std = train.std(0).clamp_min(1e-6)  # a constant feature (e.g. a border pixel) stays 0
    return [(x - mean) / std for x in (train, *others)]


def _objective(
    x: torch.Tensor, y: torch.Tensor, w: torch.Tensor, b: torch.Tensor, weight_decay: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mean cross-entropy + weight_decay/2 * |W|^2 of the probe, and its gradients (dW, db).

    Gradients are written out by hand: autograd would compute dW as ``x.T @ G``, a product with a
    transposed (d, n) operand that some CPU BLAS builds run ~30x slower than ``(G.T @ x).T``.
    """
    logits = x @ w + b
    logp = logits.log_softmax(1)
    loss = -logp.gather(1, y[:, None]).mean() + 0.5 * weight_decay * (w * w).sum()
    g = logp.exp_()
    g[torch.arange(len(y)), y] -= 1.0
    g /= len(y)
    grad_w = (g.T.contiguous() @ x).T.contiguous() + weight_decay * w
    return loss, grad_w, g.sum(0)


def _fit_softmax(
    x: torch.Tensor,
    y: torch.Tensor,
    num_classes: int,
    weight_decay: float,
    init: tuple[torch.Tensor, torch.Tensor] | None = None,
    max_iter: int = 100,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Multinomial logistic regression: minimises :func:`_objective` with full-batch L-BFGS
    (strong Wolfe line search). Returns W (d, C), b (C,)."""
    d = x.shape[1]
    w = init[0].clone() if init else torch.zeros(d, num_classes)
    b = init[1].clone() if init else torch.zeros(num_classes)
    opt = torch.optim.LBFGS(
        [w, b],
        lr=1.0,
        max_iter=max_iter,
        history_size=20,
        line_search_fn="strong_wolfe",
        tolerance_grad=1e-6,
        tolerance_change=1e-10,
    )

    def closure() -> torch.Tensor:
        loss, w.grad, b.grad = _objective(x, y, w, b, weight_decay)
        return loss

    with torch.no_grad():
        opt.step(closure)
    return w, b


def probe_objective_grad(x: torch.Tensor, y: torch.Tensor, w: torch.Tensor, b: torch.Tensor, weight_decay: float) -> float:
    """Norm of the gradient of the probe's objective at (w, b), by autograd (independent of the
    hand-written gradient the fit uses): ~0 at the optimum."""
    w = w.clone().requires_grad_(True)
    b = b.clone().requires_grad_(True)
    with torch.enable_grad():
        loss = F.cross_entropy(x @ w + b, y) + 0.5 * weight_decay * (w * w).sum()
        gw, gb = torch.autograd.grad(loss, [w, b])
    return float(torch.cat([gw.reshape(-1), gb]).norm())


def _accuracy(x: torch.Tensor, y: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> float:
    return float(((x @ w + b).argmax(1) == y).float().mean())


def linear_probe(
    train_x: Any,
    train_y: Any,
    test_x: Any,
    test_y: Any,
    *,
    num_classes: int | None = None,
    weight_decays: Sequence[float] = DEFAULT_WEIGHT_DECAYS,
    val_fraction: float = 0.1,
    max_iter: int = 100,
    sweep_iter: int = 40,
    seed: int = 0,
) -> dict:
    """Top-1 of a linear classifier on frozen features (see the module docstring for the protocol).

    Cost is bounded by iterations, not by convergence (on 3072 correlated pixels L-BFGS would take
    thousands): the sweep runs from the strongest penalty to the weakest, ``sweep_iter`` L-BFGS
    iterations each, every fit warm-started from the previous solution (they lie close together);
    the final fit on all of train is warm-started from the chosen one and runs ``max_iter``.
    Returns ``{"probe_top1", "weight_decay", "val_top1": {wd: acc}, "train_top1", "seconds"}``.
    """
    t0 = time.perf_counter()
    train = _as_float(train_x, "train features")
    test = _as_float(test_x, "test features")
    ytr = _as_labels(train_y, len(train), "train labels")
    yte = _as_labels(test_y, len(test), "test labels")
    if not 0.0 < val_fraction < 1.0:
        raise SettingError(f"val_fraction={val_fraction!r}: must be in (0, 1)", setting="val_fraction")
    if not weight_decays or any(not (wd >= 0 and math.isfinite(wd)) for wd in weight_decays):
        raise SettingError(f"weight_decays={list(weight_decays)!r}: give one or more finite values >= 0", setting="weight_decays")
    if num_classes is None:
        num_classes = int(max(ytr.max(), yte.max())) + 1
    train, test = _standardise(train, test)
    perm = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))
    n_val = max(1, int(round(val_fraction * len(train))))
    val_idx, fit_idx = perm[:n_val], perm[n_val:]
    x_fit, y_fit, x_val, y_val = train[fit_idx], ytr[fit_idx], train[val_idx], ytr[val_idx]
    val_top1: dict[float, float] = {}
    solutions: dict[float, tuple[torch.Tensor, torch.Tensor]] = {}
    init = None
    for wd in sorted(weight_decays, reverse=True):
        init = _fit_softmax(x_fit, y_fit, num_classes, wd, init, sweep_iter)
        solutions[wd] = init
        val_top1[wd] = _accuracy(x_val, y_val, *init)
    # Best held-out accuracy; on a tie the stronger penalty (the simpler model).
    best = max(sorted(val_top1, reverse=True), key=lambda wd: val_top1[wd])
    w, b = _fit_softmax(train, ytr, num_classes, best, solutions[best], max_iter)
    return {
        "probe_top1": _accuracy(test, yte, w, b),
        "weight_decay": best,
        "val_top1": {str(k): round(v, 4) for k, v in sorted(val_top1.items())},
        "train_top1": _accuracy(train, ytr, w, b),
        "seconds": round(time.perf_counter() - t0, 2),
    }


COLLAPSED_SCORE = 0.95  # median cosine of random pairs at or above which the codes carry ~nothing


def _quantiles(x: torch.Tensor) -> dict[str, float]:
    q = torch.quantile(x.double(), torch.tensor([0.05, 0.5, 0.95], dtype=torch.float64))
    return {"p05": round(float(q[0]), 4), "median": round(float(q[1]), 4), "p95": round(float(q[2]), 4)}


@torch.no_grad()
def score_spread(bank: Any, queries: Any, *, k: int = 200, max_queries: int = 2000, seed: int = 0) -> dict:
    """The cosine scores a search would show: of each query's nearest and k-th nearest bank item,
    and of random (query, bank item) pairs, as 5 %, median and 95 % points (up to ``max_queries``
    queries). ``collapsed``: random pairs score a median of at least ``COLLAPSED_SCORE``, i.e. the
    codes hardly tell images apart, whatever the accuracy says."""
    bank = F.normalize(_as_float(bank, "train features"), dim=1)
    queries = F.normalize(_as_float(queries, "test features"), dim=1)
    g = torch.Generator().manual_seed(seed)
    queries = queries[torch.randperm(len(queries), generator=g)[:max_queries]]
    k = min(k, len(bank))
    nearest, kth = [], []
    for q in queries.split(512):
        top = (q @ bank.T).topk(k, dim=1).values
        nearest.append(top[:, 0])
        kth.append(top[:, -1])
    partners = bank[torch.randint(len(bank), (len(queries),), generator=g)]
    random_pairs = _quantiles((queries * partners).sum(1))
    return {
        "nearest": _quantiles(torch.cat(nearest)),
        "kth": _quantiles(torch.cat(kth)),
        "k": k,
        "random_pairs": random_pairs,
        "collapsed": random_pairs["median"] >= COLLAPSED_SCORE,
    }


def evaluate_codes(
    train_codes: Any,
    train_labels: Any,
    test_codes: Any,
    test_labels: Any,
    *,
    k: int = 200,
    temperature: float = 0.1,
    probe: bool = True,
    num_classes: int | None = None,
    seed: int = 0,
) -> dict:
    """The whole protocol on one kind of features (codes or pixels): train (n, d) is the bank and
    the probe's training set, test (m, d) the queries. Returns ``{"knn_top1", "nn1_top1", "p10",
    "probe_top1" (None without probe), "probe" (details or None), "k", "temperature", "dim",
    "n_train", "n_test", "seconds": {"knn", "probe"}}``."""
    t0 = time.perf_counter()
    result: dict[str, Any] = knn_eval(
        train_codes, train_labels, test_codes, test_labels, k=k, temperature=temperature, num_classes=num_classes
    )
    t_knn = time.perf_counter() - t0
    details = None
    if probe:
        details = linear_probe(train_codes, train_labels, test_codes, test_labels, num_classes=num_classes, seed=seed)
    result.update(
        probe_top1=details["probe_top1"] if details else None,
        probe=details,
        k=k,
        temperature=temperature,
        scores=score_spread(train_codes, test_codes, k=k, seed=seed),
        dim=int(torch.as_tensor(train_codes).shape[1]),
        n_train=len(train_codes),
        n_test=len(test_codes),
        seconds={"knn": round(t_knn, 2), "probe": details["seconds"] if details else None},
    )
    return result


@dataclass
class EvalImages:
    """The bank (train) and the queries (test) of an evaluation, labelled, and what they are."""

    name: str  # the data set, or the folder(s)
    how: str | None  # how the queries were held out, for people (None: given apart)
    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    classes: list[str]


def _labelled_folder(path: Any, setting: str, size: int, channels: int) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """A folder's images with a class (one subfolder per class, two or more); strays are left out
    (``load_image_folder`` warns about them)."""
    from infomax.data import load_image_folder

    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise SettingError(
            f"{setting} {path}: no folder there; give a folder of images with one subfolder per class", setting=setting
        )
    data = load_image_folder(folder, size, channels)
    if not data.classes:
        raise SettingError(
            f"{setting} {path}: its images are not sorted into class subfolders, and accuracy needs classes; "
            f"put them in one subfolder per class (two or more)",
            setting=setting,
        )
    keep = data.labels >= 0
    return data.images[keep], data.labels[keep], data.classes


def _held_out(labels: torch.Tensor, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(bank, queries) indices: a seeded ``fraction`` of every class with two images or more held
    out as queries (at least one), so that small classes are both searched and found."""
    g = torch.Generator().manual_seed(seed)
    bank, queries = [], []
    for c in labels.unique().tolist():
        idx = (labels == c).nonzero().flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        n_queries = max(1, round(fraction * len(idx))) if len(idx) >= 2 else 0
        queries.append(idx[:n_queries])
        bank.append(idx[n_queries:])
    return torch.cat(bank).sort().values, torch.cat(queries).sort().values


def _bank_and_query_folders(bank: Any, queries: Any, size: int, channels: int) -> EvalImages:
    """Two class folders; classes are matched by subfolder name. Queries of a class the bank lacks
    could never be right: they are left out, with a warning naming the classes."""
    b_img, b_lab, b_cls = _labelled_folder(bank, "bank", size, channels)
    q_img, q_lab, q_cls = _labelled_folder(queries, "queries", size, channels)
    classes = sorted(set(b_cls) | set(q_cls))
    if not set(b_cls) & set(q_cls):
        raise SettingError(
            f"bank {bank} and `queries` {queries} have no class subfolder name in common "
            f"({', '.join(b_cls[:5])} / {', '.join(q_cls[:5])}): name the classes alike in both",
            setting="bank",
        )
    b_lab = torch.tensor([classes.index(b_cls[i]) for i in b_lab.tolist()], dtype=torch.int64)
    q_lab = torch.tensor([classes.index(q_cls[i]) for i in q_lab.tolist()], dtype=torch.int64)
    missing = sorted(set(q_cls) - set(b_cls))
    if missing:
        keep = torch.tensor([classes[i] not in missing for i in q_lab.tolist()])
        warnings.warn(
            f"{int((~keep).sum())} queries of classes the bank lacks ({', '.join(missing[:5])}) are left "
            f"out: they could never be right",
            stacklevel=3,
        )
        q_img, q_lab = q_img[keep], q_lab[keep]
    return EvalImages(f"{bank} (bank) / {queries} (queries)", None, b_img, b_lab, q_img, q_lab, classes)


def _split_folder(data: Any, size: int, channels: int, test_fraction: float, seed: int) -> EvalImages:
    images, labels, classes = _labelled_folder(data, "data", size, channels)
    bank, queries = _held_out(labels, test_fraction, seed)
    if len(bank) == 0 or len(queries) == 0:
        raise SettingError(
            f"data {data}: {len(labels)} images with a class are too few to hold some out as queries; "
            f"give at least two per class",
            setting="data",
        )
    return EvalImages(
        str(data),
        f"{test_fraction:.0%} of every class held out as queries (seed {seed})",
        images[bank],
        labels[bank],
        images[queries],
        labels[queries],
        classes,
    )


def eval_images(
    data: str | None,
    *,
    bank: Any = None,
    queries: Any = None,
    data_dir: Any = None,
    size: int = 32,
    channels: int = 3,
    test_fraction: float = 0.2,
    seed: int = 0,
    fits: Callable[[str], None] = lambda name: None,
) -> EvalImages:
    """The images an evaluation uses: a standard data set (train split = bank, test split =
    queries), a folder whose subfolders are classes (a held-out part of every class = queries), or
    ``bank`` and ``queries`` folders. Folders are decoded at ``size`` and ``channels`` (the
    encoder's); ``fits(name)`` refuses a data set the encoder cannot take."""
    from infomax.data import CLASS_NAMES, canonical_dataset_name, is_dataset_name, load_dataset

    if not 0.0 < test_fraction < 1.0:
        raise SettingError(f"test_fraction {test_fraction!r}: must be between 0 and 1 (e.g. 0.2)", setting="test_fraction")
    if bank is not None or queries is not None:
        if data is not None:
            raise SettingError("`data` and `bank`/`queries` are two ways to name the images: give one of them", setting="data")
        if bank is None or queries is None:
            raise SettingError("`bank` and `queries` go together: the folder searched and the folder of queries", setting="bank")
        return _bank_and_query_folders(bank, queries, size, channels)
    if data is None:
        raise SettingError(
            "give `data` (cifar10, fmnist, mnist or a folder with one subfolder per class), or `bank` and `queries` folders",
            setting="data",
        )
    if is_dataset_name(data):
        name = canonical_dataset_name(data)
        fits(name)
        train_images, train_labels = load_dataset(name, data_dir, "train")
        test_images, test_labels = load_dataset(name, data_dir, "test")
        return EvalImages(name, None, train_images, train_labels, test_images, test_labels, CLASS_NAMES[name])
    if not Path(data).expanduser().is_dir():
        raise SettingError(
            f"unknown dataset {data!r} and no folder there: give cifar10, fmnist or mnist, or a folder "
            f"of images with one subfolder per class",
            setting="data",
        )
    return _split_folder(data, size, channels, test_fraction, seed)


def _load_model(model: Any) -> Any:
    from infomax.artifact import InferenceEncoder, load_encoder

    if isinstance(model, InferenceEncoder):
        return model
    if model is None:
        raise SettingError(
            "model: no artifact folder given; give the folder written by `infomax train` or `infomax export`", setting="model"
        )
    return load_encoder(model, "cuda" if torch.cuda.is_available() else "cpu", setting="model")


def evaluate_encoder(
    model: Any,
    data: str | None = None,
    *,
    data_dir: Any = None,
    limit_train: int | None = None,
    limit_test: int | None = None,
    probe: bool = True,
    pixels: bool = True,
    encoder: bool = True,
    batch_size: int = 256,
    k: int = 200,
    temperature: float = 0.1,
    seed: int = 0,
    local: bool = False,
    bank: Any = None,
    queries: Any = None,
    test_fraction: float = 0.2,
    pooled: bool = False,
) -> dict:
    """``infomax eval``: the protocol on the vectors the artifact ``model`` (a folder or a loaded
    InferenceEncoder) serves (its ``output``: the code mu, or the local map) and on raw pixels, for a
    standard data set (train = bank, test = queries), a folder whose subfolders are classes (a
    held-out ``test_fraction`` of every class = queries) or ``bank`` and ``queries`` folders
    (:func:`eval_images`); ``limit_*`` keep the first N of each side. ``local``: also on the
    encoder's flattened local feature map C(x) (the features the local MI term trains) when the
    artifact serves codes; ``pooled``: also on the vector the code's heads read. Returns the report
    (see :func:`format_report`)."""
    from infomax.artifact import SERVED, InferenceEncoder
    from infomax.data import check_fits

    t0 = time.perf_counter()
    for flag, value in (("--limit-train", limit_train), ("--limit-test", limit_test)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise SettingError(f"{flag} {value!r}: must be a positive number of images")
    if not (encoder or pixels):
        raise SettingError("nothing to evaluate: both the encoder and the pixel baseline are switched off")
    if local and not encoder:
        raise SettingError("--local evaluates the encoder's local feature map: it needs the encoder (drop --no-encoder)")
    if pooled and not encoder:
        raise SettingError("--pooled evaluates the vector the encoder's heads read: it needs the encoder (drop --no-encoder)")
    enc = _load_model(model) if encoder else None
    shape = (enc.in_channels, enc.input_size) if enc is not None else (3, 32)
    shown = None if isinstance(model, InferenceEncoder) else model
    images = eval_images(
        data,
        bank=bank,
        queries=queries,
        data_dir=data_dir,
        size=shape[1],
        channels=shape[0],
        test_fraction=test_fraction,
        seed=seed,
        fits=(lambda name: check_fits(shape, name, shown)) if enc is not None else (lambda name: None),
    )
    train_images, train_labels = images.train_images[:limit_train], images.train_labels[:limit_train]
    test_images, test_labels = images.test_images[:limit_test], images.test_labels[:limit_test]
    num_classes = len(images.classes)
    rows: dict[str, dict] = {}
    timing: dict[str, float] = {}
    if enc is not None:
        # One encoder pass gives the served vectors and, with --pooled / --local, the others: the rows share it.
        kinds = {"encoder": SERVED}
        for asked, kind in ((pooled, "pooled"), (local, "local")):
            # a whitened artifact's own output, unwhitened, is a row of its own
            if asked and (enc.output != kind or enc.whitening is not None):
                kinds[kind] = kind
        t = time.perf_counter()
        train_feats = enc.embed_features(train_images, batch_size, tuple(kinds.values()))
        test_feats = enc.embed_features(test_images, batch_size, tuple(kinds.values()))
        timing["embed"] = round(time.perf_counter() - t, 2)
        for row, kind in kinds.items():
            rows[row] = evaluate_codes(
                train_feats.pop(kind),
                train_labels,
                test_feats.pop(kind),
                test_labels,
                k=k,
                temperature=temperature,
                probe=probe,
                num_classes=num_classes,
                seed=seed,
            )
    if pixels:
        train_px, test_px = pixel_features(train_images, test_images)
        rows["pixels"] = evaluate_codes(
            train_px,
            train_labels,
            test_px,
            test_labels,
            k=k,
            temperature=temperature,
            probe=probe,
            num_classes=num_classes,
            seed=seed,
        )
        del train_px, test_px
    timing["total"] = round(time.perf_counter() - t0, 2)
    return {
        "data": images.name,
        "split": images.how,
        "classes": images.classes,
        "n_train": len(train_images),
        "n_test": len(test_images),
        "k": k,
        "temperature": temperature,
        "artifact": None
        if enc is None
        else {
            "id": enc.id,
            "z_dim": enc.dim,
            "output": enc.output,
            "whitened": enc.whitening is not None,
            "arch": enc.config.get("arch"),
            "dataset": enc.config.get("dataset"),
            "path": None if isinstance(model, InferenceEncoder) else str(model),
        },
        "results": rows,
        "seconds": timing,
        "threads": torch.get_num_threads(),
    }


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.4f}"


def format_report(report: dict) -> str:
    """The report as a markdown table: one row per kind of features."""
    art = report.get("artifact")
    served = {"mu": "mu", "pooled": "pooled", "local": "local map C(x)"}.get((art or {}).get("output", "mu"), "mu")
    if (art or {}).get("whitened"):
        served += ", whitened"
    names = {
        "encoder": f"encoder ({served})",
        "pooled": "pooled vector (the heads' input)",
        "local": "local feature map C(x)",
        "pixels": "raw pixels",
    }
    lines = [
        f"{report['data']}: {report['n_train']} train (bank) / {report['n_test']} test (queries)"
        + (f", {report['split']}" if report.get("split") else "")
        + (f", artifact {art['id'][:12]} ({art['arch']}, z_dim {art['z_dim']})" if art else ""),
        "",
        f"| features | dim | weighted {report['k']}-NN top-1 (T={report['temperature']}) | 1-NN top-1 | linear probe top-1 "
        "| precision@10 |",
        "|---|---|---|---|---|---|",
    ]
    for key, row in report["results"].items():
        probe = row["probe"]
        wd = f" (wd {probe['weight_decay']:g})" if probe else ""
        lines.append(
            f"| {names.get(key, key)} | {row['dim']} | {_fmt(row['knn_top1'])} | {_fmt(row['nn1_top1'])} "
            f"| {_fmt(row['probe_top1'])}{wd} | {_fmt(row.get('p10'))} |"
        )
    lines.append("")
    lines.extend(_spread_lines(report, names))
    lines.append(f"wall time {report['seconds']['total']:.1f} s on {report['threads']} threads")
    return "\n".join(lines)


def _spread_lines(report: dict, names: dict[str, str]) -> list[str]:
    """The cosine scores a search shows, per row, and a plain warning where the codes collapsed."""
    lines = []
    for key, row in report["results"].items():
        sc = row.get("scores")
        if not sc:
            continue
        near, kth, rand = sc["nearest"], sc["kth"], sc["random_pairs"]
        lines.append(
            f"scores of {names.get(key, key)}: nearest neighbour {near['median']:.3f} (median; 5-95 %: "
            f"{near['p05']:.3f} to {near['p95']:.3f}), {sc['k']}th {kth['median']:.3f}, random pairs "
            f"{rand['median']:.3f} ({rand['p05']:.3f} to {rand['p95']:.3f})"
        )
        if sc["collapsed"] and key != "pixels":
            lines.append(
                f"WARNING: the {names.get(key, key)} vectors collapsed: two random images score "
                f"{rand['median']:.3f} (median), so every search shows scores near 1 that mean little "
                f"(a random-init encoder does the same; whatever ranking is left shows in the k-NN "
                f"figures above); train longer, or look at the loss curves of the run"
            )
    if lines:
        lines.append("")
    return lines
