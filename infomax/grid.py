"""The k-NN grid: random query images, each followed by its k nearest neighbours in the bank.

One row per query: the query tile, then its neighbours in order, each captioned with its class
name (where known) and its score, cosine similarity (``cos``: higher is closer) or Euclidean
distance between codes (``l2``: lower is closer). Neighbours of the query's class get a green
border, others a red one (grey when a label is unknown); the query's border is blue.

Images are drawn from their uint8 pixels as stored (the encoder's normalisation is never applied
to what is shown), enlarged ``scale`` times by pixel repetition (nearest neighbour), so a tile
shows exactly the pixels the encoder saw; grey images stay grey.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont

from infomax.errors import SettingError
from infomax.validate import optional_positive_int, positive_int

METRICS = ("cos", "l2")
QUERY_BORDER = (40, 90, 220)
MATCH_BORDER = (30, 170, 60)
MISS_BORDER = (220, 40, 40)
UNKNOWN_BORDER = (150, 150, 150)
BACKGROUND = (255, 255, 255)
TEXT = (0, 0, 0)


def check_grid_args(k: int, metric: str, scale: int, queries: int = 1) -> None:
    """ValueError naming the bad argument (k, queries, scale >= 1; metric cos or l2)."""
    for setting, value in (("k", k), ("queries", queries), ("scale", scale)):
        positive_int(setting, value)
    if metric not in METRICS:
        raise SettingError(f"metric={metric!r}: use 'cos' (cosine similarity) or 'l2' (Euclidean distance)", setting="metric")


def nearest(
    queries: torch.Tensor, bank: torch.Tensor, k: int, metric: str = "cos", exclude: Sequence[int] | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The k nearest bank rows (n, d) of each query (q, d), closest first.

    Returns (scores float32 (q, k), indices int64 (q, k)): cosine similarities (descending) or
    Euclidean distances (ascending). ``exclude[i]`` (a bank index, or -1 for none) is left out
    of query i's neighbours: the query itself when queries are drawn from the bank.
    """
    check_grid_args(k, metric, 1)
    q, b = queries.float(), bank.float()
    available = len(b) - (1 if exclude is not None else 0)
    if k > available:
        raise SettingError(f"k={k}: the bank has only {available} other images", setting="k")
    if metric == "cos":
        scores = F.normalize(q, dim=1) @ F.normalize(b, dim=1).T
        worst = -float("inf")
    else:
        scores = torch.cdist(q, b)
        worst = float("inf")
    if exclude is not None:
        for row, idx in enumerate(exclude):
            if idx >= 0:
                scores[row, int(idx)] = worst
    values, indices = scores.topk(k, dim=1, largest=metric == "cos")
    return values, indices


@dataclass(frozen=True)
class GridLayout:
    """Pixel geometry of the grid: ``rows`` x ``cols`` tiles, each an image of
    ``image_size * scale`` pixels inside a ``border``, with a caption of ``caption`` pixels below,
    tiles ``gap`` pixels apart (and from the edges)."""

    rows: int
    cols: int
    image_size: int
    scale: int
    border: int = 3
    gap: int = 6
    caption: int = 26
    min_width: int = 72  # room for a caption such as "automobile" under a small image

    @property
    def inner(self) -> int:
        """Width of a tile's content area (the image, centred when the caption needs more room)."""
        return max(self.image_size * self.scale, self.min_width)

    @property
    def tile_size(self) -> tuple[int, int]:
        return (self.inner + 2 * self.border, self.image_size * self.scale + 2 * self.border + self.caption)

    @property
    def size(self) -> tuple[int, int]:
        w, h = self.tile_size
        return self.cols * (w + self.gap) + self.gap, self.rows * (h + self.gap) + self.gap

    def tile_box(self, row: int, col: int) -> tuple[int, int, int, int]:
        """(left, top, right, bottom) of a tile, border included, caption excluded."""
        w, h = self.tile_size
        left = self.gap + col * (w + self.gap)
        top = self.gap + row * (h + self.gap)
        return left, top, left + w, top + self.image_size * self.scale + 2 * self.border

    def image_box(self, row: int, col: int) -> tuple[int, int, int, int]:
        """(left, top, right, bottom) of the enlarged image inside a tile."""
        left, top, _, _ = self.tile_box(row, col)
        side = self.image_size * self.scale
        left += self.border + (self.inner - side) // 2
        top += self.border
        return left, top, left + side, top + side


def to_pil(image: torch.Tensor, scale: int) -> Image.Image:
    """uint8 (C, H, W) -> RGB PIL image enlarged ``scale`` times by pixel repetition."""
    if image.dtype != torch.uint8 or image.dim() != 3 or image.shape[0] not in (1, 3):
        raise ValueError(f"expected a uint8 image (1 or 3, H, W), got {image.dtype} {tuple(image.shape)}")
    array = image.permute(1, 2, 0).numpy()
    if array.shape[2] == 1:
        array = np.repeat(array, 3, axis=2)  # grey stays grey: R = G = B
    array = np.repeat(np.repeat(array, scale, axis=0), scale, axis=1)
    return Image.fromarray(np.ascontiguousarray(array), mode="RGB")


def _fit(draw: ImageDraw.ImageDraw, text: str, font, width: int) -> str:
    """``text`` shortened with "…" until it fits in ``width`` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "…", font=font) > width:
        text = text[:-1]
    return text + "…"


def render_grid(
    query_images: torch.Tensor,
    neighbour_images: torch.Tensor,
    scores: torch.Tensor,
    *,
    query_labels: Sequence[int] | None = None,
    neighbour_labels: Sequence[Sequence[int]] | None = None,
    class_names: Sequence[str] | None = None,
    metric: str = "cos",
    scale: int = 3,
) -> Image.Image:
    """Draws the grid. ``query_images`` uint8 (q, C, S, S), ``neighbour_images`` uint8
    (q, k, C, S, S), ``scores`` (q, k); labels are class indices, -1 (or None) where unknown."""
    q, k = neighbour_images.shape[:2]
    check_grid_args(k, metric, scale, q)
    size = query_images.shape[-1]
    layout = GridLayout(rows=q, cols=k + 1, image_size=size, scale=scale)
    canvas = Image.new("RGB", layout.size, BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()

    def name(label: int | None) -> str:
        if label is None or label < 0:
            return "?"
        return class_names[label] if class_names is not None and label < len(class_names) else f"class {label}"

    def tile(row: int, col: int, image: torch.Tensor, colour: tuple, line1: str, line2: str) -> None:
        left, top, right, bottom = layout.tile_box(row, col)
        draw.rectangle((left, top, right - 1, bottom - 1), fill=colour)
        il, it, _, _ = layout.image_box(row, col)
        canvas.paste(to_pil(image, scale), (il, it))
        width = right - left
        draw.text((left + 1, bottom + 1), _fit(draw, line1, font, width - 2), fill=TEXT, font=font)
        draw.text((left + 1, bottom + 13), _fit(draw, line2, font, width - 2), fill=TEXT, font=font)

    for row in range(q):
        ql = None if query_labels is None else int(query_labels[row])
        tile(row, 0, query_images[row], QUERY_BORDER, name(ql), "query")
        for j in range(k):
            nl = None if neighbour_labels is None else int(neighbour_labels[row][j])
            if ql is None or nl is None or ql < 0 or nl < 0:
                colour = UNKNOWN_BORDER
            else:
                colour = MATCH_BORDER if nl == ql else MISS_BORDER
            score = float(scores[row, j])
            tile(
                row,
                j + 1,
                neighbour_images[row, j],
                colour,
                name(nl),
                f"cos {score:.4f}" if metric == "cos" else f"d {score:.3g}",
            )
    return canvas


def knn_grid(
    encoder,
    query_images: torch.Tensor,
    bank_images: torch.Tensor,
    *,
    query_labels: torch.Tensor | None = None,
    bank_labels: torch.Tensor | None = None,
    class_names: Sequence[str] | None = None,
    queries: int = 10,
    k: int = 10,
    metric: str = "cos",
    seed: int = 0,
    scale: int = 3,
    same_set: bool = False,
    batch_size: int = 256,
) -> tuple[Image.Image, dict]:
    """Picks ``queries`` random query images (seeded), encodes them and the bank with ``encoder``
    (an InferenceEncoder), finds the k nearest and draws the grid.

    ``same_set``: the queries are drawn from the bank itself (a folder, or the train split), so
    each query is excluded from its own neighbours. Returns the image and ``{"queries": indices
    into query_images, "neighbours": (q, k) indices into bank_images, "scores": (q, k)}``.
    """
    check_grid_args(k, metric, scale, queries)
    if queries > len(query_images):
        raise SettingError(f"queries={queries}: only {len(query_images)} query images", setting="queries")
    generator = torch.Generator().manual_seed(seed)
    picked = torch.randperm(len(query_images), generator=generator)[:queries].sort().values
    q_codes = encoder.embed(query_images[picked], batch_size)
    bank_codes = encoder.embed(bank_images, batch_size)
    scores, idx = nearest(q_codes, bank_codes, k, metric, exclude=picked.tolist() if same_set else None)
    image = render_grid(
        query_images[picked],
        bank_images[idx],
        scores,
        query_labels=None if query_labels is None else query_labels[picked].tolist(),
        neighbour_labels=None if bank_labels is None else bank_labels[idx].tolist(),
        class_names=class_names,
        metric=metric,
        scale=scale,
    )
    return image, {"queries": picked.tolist(), "neighbours": idx.tolist(), "scores": scores.tolist()}


def make_knn_grid(
    model: str,
    data: str,
    out: str,
    *,
    split: str = "test",
    queries: int = 10,
    k: int = 10,
    metric: str = "cos",
    seed: int = 0,
    scale: int = 3,
    bank_limit: int | None = None,
    batch_size: int = 256,
    data_dir: str | None = None,
) -> dict:
    """``infomax knn-grid``: loads the artifact and the data, draws the grid and writes the PNG
    (atomically). Data sets: queries from ``split``, bank = train split (its first ``bank_limit``
    images). Folders: queries and bank are the folder's images. Every argument is checked before
    the encoder runs. Returns the :func:`knn_grid` info plus ``size`` and ``matches`` (share of
    neighbours of the query's class, None without labels)."""
    from pathlib import Path

    from infomax.artifact import load_encoder
    from infomax.atomic import atomic_path
    from infomax.data import (
        CLASS_NAMES,
        canonical_dataset_name,
        check_fits,
        check_split,
        is_dataset_name,
        load_dataset,
        load_image_folder,
    )

    check_grid_args(k, metric, scale, queries)
    optional_positive_int("bank_limit", bank_limit, what="a positive number of images", sep=" ")
    target = Path(out).expanduser()
    if target.is_dir():
        raise SettingError(f"out {out} is a folder: give the path of the PNG file to write", setting="out")
    if target.suffix.lower() != ".png":
        raise SettingError(f"out {out}: the grid is a PNG; give a file name ending in .png", setting="out")
    encoder = load_encoder(model, "cuda" if torch.cuda.is_available() else "cpu", setting="model")
    if is_dataset_name(data):
        name = canonical_dataset_name(data)
        check_split(split)
        check_fits((encoder.in_channels, encoder.input_size), name, model)
        bank_images, bank_labels = load_dataset(name, data_dir, "train")
        bank_images, bank_labels = bank_images[:bank_limit], bank_labels[:bank_limit]
        same_set = split == "train"
        if same_set:
            query_images, query_labels = bank_images, bank_labels
        else:
            query_images, query_labels = load_dataset(name, data_dir, split)
        class_names = CLASS_NAMES.get(name)
    else:
        folder = Path(data).expanduser()
        if not folder.is_dir():
            raise SettingError(
                f"data {data!r} is neither a data set name ({', '.join(sorted(CLASS_NAMES))}) "
                f"nor an existing folder: give one of those names or the path of a folder of images",
                setting="data",
            )
        loaded = load_image_folder(folder, encoder.input_size, encoder.in_channels)
        bank_images, bank_labels = loaded.images[:bank_limit], loaded.labels[:bank_limit]
        query_images, query_labels, same_set = bank_images, bank_labels, True
        class_names = loaded.classes or None
    image, info = knn_grid(
        encoder,
        query_images,
        bank_images,
        query_labels=query_labels,
        bank_labels=bank_labels,
        class_names=class_names,
        queries=queries,
        k=k,
        metric=metric,
        seed=seed,
        scale=scale,
        same_set=same_set,
        batch_size=batch_size,
    )
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(target) as tmp:
        image.save(tmp, format="PNG")
    q_labels = query_labels[info["queries"]]
    n_labels = bank_labels[torch.tensor(info["neighbours"])]
    known = bool((q_labels >= 0).all() and (n_labels >= 0).all())
    info["size"] = image.size
    info["matches"] = float((n_labels == q_labels[:, None]).float().mean()) if known else None
    return info
