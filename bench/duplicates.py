"""Near-duplicate detection on planted copies of CIFAR-10 test images: our codes' cosine threshold
beside perceptual hashes (imagededup's PHash/DHash/WHash and imagehash's phash/dhash/whash with
Hamming-distance thresholds), all measured on the same set in the same run.

    python bench/duplicates.py [--model models/cifar10] [--originals 300] [--negatives 2000]
                               [--seed 0] [--json out/duplicates.json]

The set (32 px throughout): ``--originals`` test images, each with 7 copies: resized down to
16 px and back, resized up to 64 px and back, JPEG re-encoded at a quality drawn from 50-90,
cropped by 5-10% (random offset) and resized back, flipped left-right, brightness +15% and -15%.
To them come the true near-duplicates CIFAR-10 holds, found here by pixels (the ciFAIR list of
Barz & Denzler is not available offline): pairs of a test image and a train (or another test)
image whose 8x8 mean-pooled, centred colours correlate >= 0.97 and whose mean absolute pixel
difference is < 12 (of 255); the other image of each pair is added as a copy. Negatives:
``--negatives`` other test images, none closer than that to any image of the set (difference
< 16 excluded).

Scoring is over all pairs of the set: a pair is a true duplicate when both images come from the
same original; a method flags it when cosine >= t (our codes) or Hamming distance <= d (hashes).
Precision = flagged true pairs / flagged pairs, recall = flagged true pairs / true pairs. Recall
by kind counts the (original, copy) pairs of each transformation. At the end the library's own
path (``infomax.duplicates.duplicate_pairs`` over an in-memory ``EmbeddingIndex``) is run at the
chosen threshold and must give the same pairs as the matrix.

The planted set holds many true pairs among few images, which flatters precision. So every method
is also run on the clean collection, all 10,000 test images without planted copies, counting the
pairs it flags there at each threshold: each is one of CIFAR-10's own near-duplicates or a false
pair. ``--pairs-png`` shows the first 10 pairs of each cosine band, to judge which by eye.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageEnhance

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

KINDS = ("down16", "up64", "jpeg", "crop", "flip", "bright+15", "bright-15")
COSINE_SWEEP = [0.80, 0.82, 0.84, 0.85, 0.86, 0.87, 0.88, 0.89, 0.90, 0.91, 0.92, 0.93, 0.94, 0.95, 0.96, 0.97, 0.98, 0.99]
WHITENED_SWEEP = [0.50, 0.55, 0.60, 0.62, 0.64, 0.65, 0.66, 0.68, 0.70, 0.75, 0.80, 0.85, 0.90]
HAMMING_SWEEP = [0, 2, 4, 6, 8, 10, 12, 14, 16, 20]
IMAGEDEDUP_DEFAULT = 10  # imagededup's max_distance_threshold default for its hashing methods


def transform(img: Image.Image, kind: str, rng: np.random.Generator) -> Image.Image:
    w, h = img.size
    if kind == "down16":
        return img.resize((w // 2, h // 2), Image.BILINEAR).resize((w, h), Image.BILINEAR)
    if kind == "up64":
        return img.resize((w * 2, h * 2), Image.BICUBIC).resize((w, h), Image.BICUBIC)
    if kind == "jpeg":
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=int(rng.integers(50, 91)))
        return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    if kind == "crop":
        f = float(rng.uniform(0.05, 0.10))
        cw, ch = round(w * (1 - f)), round(h * (1 - f))
        x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        return img.crop((x, y, x + cw, y + ch)).resize((w, h), Image.BILINEAR)
    if kind == "flip":
        return img.transpose(Image.FLIP_LEFT_RIGHT)
    if kind == "bright+15":
        return ImageEnhance.Brightness(img).enhance(1.15)
    if kind == "bright-15":
        return ImageEnhance.Brightness(img).enhance(0.85)
    raise ValueError(kind)


def pooled(x: torch.Tensor) -> np.ndarray:
    v = torch.nn.functional.avg_pool2d(x.float(), 4).reshape(len(x), -1).numpy()
    v = v - v.mean(1, keepdims=True)
    return (v / (np.linalg.norm(v, axis=1, keepdims=True) + 1e-6)).astype(np.float32)


def cifar_near_duplicates(test: torch.Tensor, train: torch.Tensor) -> tuple[list[tuple[int, str, int, float]], set[int]]:
    """(test index, 'train'|'test', other index, mean abs difference) of the pairs under 12, and
    every test index with any pair under 16 (kept out of the negatives)."""
    a, b = pooled(test), pooled(train)
    tf = test.reshape(len(test), -1).float().numpy()
    found, near = [], set()
    for other_name, other, of in (("train", b, train.reshape(len(train), -1).float().numpy()), ("test", a, tf)):
        for s in range(0, len(a), 1000):
            S = a[s : s + 1000] @ other.T
            if other_name == "test":
                S[np.arange(len(S)), np.arange(s, s + len(S))] = 0
            for i, j in zip(*np.nonzero(S >= 0.97)):
                i = int(i) + s
                if other_name == "test" and j <= i:
                    continue
                d = float(np.abs(tf[i] - of[j]).mean())
                if d < 16:
                    near.add(i)
                    if other_name == "test":
                        near.add(int(j))
                if d < 12:
                    found.append((i, other_name, int(j), d))
    return found, near


def hamming_matrix(bits: np.ndarray) -> np.ndarray:
    h = bits.astype(np.float32)
    return h @ (1 - h).T + (1 - h) @ h.T


def hex_bits(hexes: list[str]) -> np.ndarray:
    return np.array([[int(c) for c in bin(int(x, 16))[2:].zfill(len(x) * 4)] for x in hexes], dtype=np.uint8)


def count_pairs(x: np.ndarray, thresholds: list, *, hamming: bool, block: int = 1000) -> dict:
    """Pairs i < j of the rows of ``x`` flagged at each threshold (cosine >= t of unit codes, or
    Hamming distance <= d of bit rows), block by block (10,000 rows: 50 M pairs)."""
    counts = {t: 0 for t in thresholds}
    x = x.astype(np.float32)
    for s in range(0, len(x), block):
        part = x[s : s + block]
        m = part @ (1 - x).T + (1 - part) @ x.T if hamming else part @ x.T
        upper = np.arange(len(x))[None, :] > np.arange(s, s + len(part))[:, None]
        for t in thresholds:
            counts[t] += int(np.count_nonzero(((m <= t) if hamming else (m >= t)) & upper))
    return counts


def band_picture(test: torch.Tensor, codes: np.ndarray, bands: list, path: Path, per_band: int = 10) -> dict:
    """A PNG of the first ``per_band`` pairs of the clean test set in each cosine band (one row per
    band, each pair one above the other), to judge by eye which flagged pairs are real copies."""
    rows, shown = [], {}
    pad = lambda a, w: np.pad(a, ((0, 0), (0, w - a.shape[1]), (0, 0)), constant_values=255)  # noqa: E731
    for lo, hi in bands:
        found = []
        for s in range(0, len(codes), 1000):
            sim = codes[s : s + 1000] @ codes.T
            for i, j in zip(*np.nonzero((sim >= lo) & (sim < hi))):
                if j > i + s:
                    found.append((int(i) + s, int(j)))
            if len(found) >= per_band:
                break
        found = found[:per_band]
        shown[f"{lo}-{hi}"] = found
        cells = [np.concatenate([test[a].permute(1, 2, 0).numpy(), test[b].permute(1, 2, 0).numpy()], 0) for a, b in found]
        cells = [c for cell in cells for c in (cell, np.full((64, 4, 3), 255, np.uint8))] or [np.full((64, 4, 3), 255, np.uint8)]
        rows.append(np.pad(np.concatenate(cells, 1), ((0, 6), (0, 0), (0, 0)), constant_values=255))
    w = max(r.shape[1] for r in rows)
    img = np.concatenate([pad(r, w) for r in rows], 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).resize((img.shape[1] * 3, img.shape[0] * 3), Image.NEAREST).save(path)
    return shown


def scores(flag: np.ndarray, truth: np.ndarray) -> dict:
    tp = int(np.count_nonzero(flag & truth))
    fp = int(np.count_nonzero(flag & ~truth))
    p = tp / (tp + fp) if tp + fp else 1.0
    r = tp / int(np.count_nonzero(truth))
    return {"precision": p, "recall": r, "f1": 2 * p * r / (p + r) if p + r else 0.0, "flagged": tp + fp, "fp": fp}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(REPO / "models" / "cifar10"))
    ap.add_argument("--originals", type=int, default=300)
    ap.add_argument("--negatives", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--sweep",
        default=None,
        help="cosine thresholds to sweep, comma-separated (default 0.80-0.99; whitened vectors score lower: e.g. 0.4,0.5,...)",
    )
    ap.add_argument("--json", default=None, help="write every figure here")
    ap.add_argument(
        "--pairs-png", default="out/duplicates-pairs.png", help="pairs of the clean test set by cosine band, to judge by eye"
    )
    ap.add_argument(
        "--bands",
        default=None,
        help="edges of the cosine bands drawn in --pairs-png, comma-separated (default 0.88,0.90,0.92,...,0.97,1.01)",
    )
    ap.add_argument(
        "--default",
        type=float,
        default=None,
        help="the threshold to report as chosen (default: the artifact's duplicates_threshold, else the library's)",
    )
    args = ap.parse_args()
    sweep = [float(t) for t in args.sweep.split(",")] if args.sweep else COSINE_SWEEP
    t_start = time.perf_counter()

    import imagehash
    from imagededup.methods import DHash, PHash, WHash

    from infomax.artifact import load_encoder
    from infomax.data import load_cifar10
    from infomax.duplicates import DEFAULT_THRESHOLD, duplicate_pairs
    from infomax.index import EmbeddingIndex

    rng = np.random.default_rng(args.seed)
    test, _ = load_cifar10(None, "test")
    train, _ = load_cifar10(None, "train")
    t0 = time.perf_counter()
    cifar_pairs, near = cifar_near_duplicates(test, train)
    t_cifar = time.perf_counter() - t0

    # ---------------------------------------------------------------- the set
    pil = lambda t: Image.fromarray(t.permute(1, 2, 0).numpy())  # noqa: E731
    images: list[Image.Image] = []
    group: list[int] = []
    kind: list[str] = []

    def put(img: Image.Image, g: int, k: str) -> None:
        images.append(img)
        group.append(g)
        kind.append(k)

    pool = np.array([i for i in rng.permutation(len(test)) if int(i) not in near])
    originals = pool[: args.originals]
    for g, i in enumerate(originals.tolist()):
        img = pil(test[i])
        put(img, g, "original")
        for k in KINDS:
            put(transform(img, k, rng), g, k)
    g = len(originals)
    for i, other, j, _ in cifar_pairs:
        put(pil(test[i]), g, "original")
        put(pil(train[j] if other == "train" else test[j]), g, f"cifar-{other}")
        g += 1
    for i in pool[args.originals : args.originals + args.negatives].tolist():
        put(pil(test[i]), -1 - i, "negative")
    group_a, kind_a = np.array(group), np.array(kind)
    n = len(images)
    iu = np.triu_indices(n, 1)
    truth = group_a[iu[0]] == group_a[iu[1]]
    by_kind = {
        k: (kind_a[iu[0]] == "original") & (kind_a[iu[1]] == k) & truth
        for k in (*KINDS, "cifar-train", "cifar-test")
        if np.any((kind_a[iu[1]] == k) & truth)
    }
    print(
        f"set: {n} images: {len(originals)} originals x {len(KINDS)} copies, {len(cifar_pairs)} CIFAR-10 "
        f"near-duplicate pairs ({t_cifar:.1f} s to find), {args.negatives} negatives; "
        f"{int(truth.sum())} true pairs of {len(truth)}",
        flush=True,
    )

    # ---------------------------------------------------------------- methods
    results: dict[str, dict] = {}
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    enc = load_encoder(args.model)
    # The threshold reported as chosen: --default, else the one the artifact records for its vectors
    # (whitened vectors score far lower than codes), else the library's; always among the swept ones.
    recorded = enc.config.get("duplicates_threshold")
    chosen = args.default if args.default is not None else recorded if recorded is not None else DEFAULT_THRESHOLD
    if not args.sweep and enc.whitening is not None:
        sweep = WHITENED_SWEEP
    if chosen not in sweep:
        sweep = sorted([*sweep, chosen])

    def embed(pixels: torch.Tensor) -> np.ndarray:
        c = torch.cat([enc.embed(pixels[s : s + 512]) for s in range(0, len(pixels), 512)]).numpy().astype(np.float32)
        return c / np.linalg.norm(c, axis=1, keepdims=True)

    codes = embed(torch.from_numpy(np.stack([np.asarray(im) for im in images])).permute(0, 3, 1, 2).contiguous())
    timings["infomax cosine"] = time.perf_counter() - t0
    # The clean collection: all 10,000 test images, no planted copies. What a method flags there is
    # either one of CIFAR-10's own near-duplicates or a false pair (judged by eye: --pairs-png).
    clean: dict[str, dict] = {}
    clean_codes = embed(test)
    clean["infomax cosine"] = count_pairs(clean_codes, sweep, hamming=False)
    bands = [(0.88, 0.90), (0.90, 0.92), (0.92, 0.93), (0.93, 0.94), (0.94, 0.95), (0.95, 0.96), (0.96, 0.97), (0.97, 1.01)]
    if args.bands or enc.whitening is not None:
        edges = [float(e) for e in (args.bands or "0.55,0.6,0.62,0.64,0.66,0.68,0.7,0.75,1.01").split(",")]
        bands = list(zip(edges, edges[1:]))
    shown = band_picture(test, clean_codes, bands, Path(args.pairs_png))
    clean_images = [pil(t) for t in test]
    cos = (codes @ codes.T)[iu]
    results["infomax cosine"] = {
        "kind": "cosine >=",
        "sweep": {t: scores(cos >= t, truth) for t in sweep},
        "per_kind": lambda t: {k: float(np.mean(cos[m] >= t)) for k, m in by_kind.items()},
    }

    hashers = {
        "imagededup PHash": lambda ims: hex_bits([PHash(verbose=False).encode_image(image_array=np.asarray(im)) for im in ims]),
        "imagededup DHash": lambda ims: hex_bits([DHash(verbose=False).encode_image(image_array=np.asarray(im)) for im in ims]),
        "imagededup WHash": lambda ims: hex_bits([WHash(verbose=False).encode_image(image_array=np.asarray(im)) for im in ims]),
        "imagehash phash": lambda ims: np.stack([imagehash.phash(im).hash.ravel() for im in ims]),
        "imagehash dhash": lambda ims: np.stack([imagehash.dhash(im).hash.ravel() for im in ims]),
        "imagehash whash": lambda ims: np.stack([imagehash.whash(im).hash.ravel() for im in ims]),
    }
    for name, make in hashers.items():
        t0 = time.perf_counter()
        bits = make(images)
        timings[name] = time.perf_counter() - t0
        clean[name] = count_pairs(make(clean_images), HAMMING_SWEEP, hamming=True)
        ham = hamming_matrix(bits)[iu]
        results[name] = {
            "kind": "Hamming <=",
            "sweep": {d: scores(ham <= d, truth) for d in HAMMING_SWEEP},
            "per_kind": (lambda h: lambda d: {k: float(np.mean(h[m] <= d)) for k, m in by_kind.items()})(ham),
        }
        print(f"{name}: {bits.shape[1]}-bit hashes in {timings[name]:.1f} s", flush=True)

    # ---------------------------------------------------------------- report
    def best(r: dict) -> tuple:
        return max(r["sweep"].items(), key=lambda kv: (round(kv[1]["f1"], 4), kv[1]["precision"]))

    print("\nsweeps (precision / recall / F1):")
    for name, r in results.items():
        print(f"  {name} ({r['kind']}):")
        for t, s in r["sweep"].items():
            print(f"    {t:>6}: P {s['precision']:.3f}  R {s['recall']:.3f}  F1 {s['f1']:.3f}  flagged {s['flagged']}")
    rows = []
    for name, r in results.items():
        if name == "infomax cosine":
            picks = [("default (chosen)", chosen), ("best F1", best(r)[0])]
        else:
            picks = [("imagededup default", IMAGEDEDUP_DEFAULT), ("best F1", best(r)[0])]
        for why, t in picks:
            s = r["sweep"].get(t) or (scores(cos >= t, truth) if name == "infomax cosine" else None)
            rows.append({"method": name, "threshold": f"{r['kind']} {t}", "why": why, **s, "recall_by_kind": r["per_kind"](t)})
    for row in rows:
        t = float(row["threshold"].split()[-1])
        row["clean_pairs"] = clean[row["method"]][t if row["method"] == "infomax cosine" else int(t)]
    kinds = list(by_kind)
    print(
        "\n| method | threshold | precision | recall | F1 | "
        + " | ".join(f"R {k}" for k in kinds)
        + " | pairs flagged in the clean 10k |"
    )
    print("|---|---|---|---|---|" + "---|" * len(kinds) + "---|")
    for row in rows:
        print(
            f"| {row['method']} | {row['threshold']} ({row['why']}) | {row['precision']:.3f} | {row['recall']:.3f} | "
            f"{row['f1']:.3f} | " + " | ".join(f"{row['recall_by_kind'][k]:.2f}" for k in kinds) + f" | {row['clean_pairs']} |"
        )
    print("\npairs flagged among the 10,000 clean test images, by threshold:")
    for name, counts in clean.items():
        print(f"  {name}: " + ", ".join(f"{t}: {c}" for t, c in counts.items()))
    print(f"pairs by cosine band in {args.pairs_png} (rows: {', '.join(shown)})")

    # ---------------------------------------------------------------- the library's own path at the chosen threshold
    t0 = time.perf_counter()
    index = EmbeddingIndex.create(codes.shape[1])
    index.add(codes, ids=np.arange(n))
    pairs, _ = duplicate_pairs(index, chosen)
    lib_time = time.perf_counter() - t0
    index.close()
    lib = np.zeros(len(truth), dtype=bool)
    if len(pairs):  # position of (a < b) in the row-major upper triangle
        a, b = pairs[:, 0], pairs[:, 1]
        lib[a * n - a * (a + 1) // 2 + (b - a - 1)] = True
    matrix = cos >= chosen
    disagree = int(np.count_nonzero(lib != matrix))
    print(
        f"\nlibrary (duplicate_pairs over a Flat EmbeddingIndex) at {chosen}: {len(pairs)} pairs in {lib_time:.1f} s, "
        f"{disagree} differing from the matrix; {scores(lib, truth)}"
    )
    wall = time.perf_counter() - t_start
    print(f"timings (s): {json.dumps({k: round(v, 1) for k, v in timings.items()})}; wall {wall:.0f} s")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(
            json.dumps(
                {
                    "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                    "command": " ".join(sys.argv),
                    "images": n,
                    "true_pairs": int(truth.sum()),
                    "cifar_pairs": cifar_pairs,
                    "chosen": chosen,
                    "sweeps": {k: {str(t): s for t, s in r["sweep"].items()} for k, r in results.items()},
                    "rows": rows,
                    "timings_s": timings,
                    "clean_pairs": {k: {str(t): c for t, c in v.items()} for k, v in clean.items()},
                    "band_pairs": shown,
                    "library_disagreements": disagree,
                    "wall_s": wall,
                },
                indent=1,
            )
        )
    return 1 if disagree else 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(main())
