"""Prepare what the container end-to-end check serves and sends (see scripts/docker-e2e.sh).

    python tests/e2e/prepare.py OUT [--n 48]

Writes, with the documented commands where there is one:
    OUT/data/model/    a serving artifact of a randomly initialised encoder (z_dim 32, CIFAR-10 shape)
    OUT/data/index/    `infomax embed` + `infomax index build` of the first N CIFAR-10 test images,
                       plus their pictures (images.sqlite, what the service shows for a result)
    OUT/queries/       PNGs to upload: <id>.png for a few indexed images, new.png for one not indexed,
                       and manifest.json ({"count", "model", "dim", "queries": {id: file}, "new": file})
OUT/data is what the container mounts at /data. CIFAR-10 is read from $INFOMAX_DATA_DIR.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path


def png(image_hwc) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image_hwc).save(buf, format="PNG")
    return buf.getvalue()


def infomax(*args: str) -> None:
    """Runs the `infomax` command of this interpreter's environment."""
    cmd = [sys.executable, "-m", "infomax.cli", *args]
    print("+ infomax", " ".join(args), flush=True)
    subprocess.run(cmd, check=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", type=Path)
    p.add_argument("--n", type=int, default=48, help="CIFAR-10 test images in the index (default 48)")
    args = p.parse_args()
    n = args.n
    out: Path = args.out.absolute()
    if out.exists():
        shutil.rmtree(out)
    data, queries = out / "data", out / "queries"
    queries.mkdir(parents=True)

    import torch

    from infomax.artifact import load_encoder
    from infomax.data import load_cifar10
    from infomax.imagestore import ImageStore
    from infomax.module import DeepInfoMax

    torch.manual_seed(0)
    DeepInfoMax(z_dim=32).export(data / "model", dataset="cifar10", command="tests/e2e/prepare.py")
    model_id = load_encoder(data / "model", "cpu").id

    # The documented way to an index folder: embed, then build.
    infomax(
        "embed",
        "--model",
        str(data / "model"),
        "--data",
        "cifar10",
        "--split",
        "test",
        "--limit",
        str(n),
        "--out",
        str(out / "embeddings"),
        "--accelerator",
        "cpu",
        "--no-progress",
    )
    infomax("index", "build", "--embeddings", str(out / "embeddings"), "--out", str(data / "index"))
    shutil.rmtree(out / "embeddings")

    images, _labels = load_cifar10(os.environ.get("INFOMAX_DATA_DIR"), "test")  # uint8 (N, 3, 32, 32)
    hwc = images.permute(0, 2, 3, 1).contiguous().numpy()
    store = ImageStore(data / "index")
    store.put_many((i, png(hwc[i]), "image/png") for i in range(n))  # ids of `infomax embed`: positions
    store.close()

    picks = sorted({0, n // 2, n - 1})
    for i in picks:
        (queries / f"{i}.png").write_bytes(png(hwc[i]))
    new = n + 100  # a test image that is not in the index
    (queries / "new.png").write_bytes(png(hwc[new]))
    manifest = {"count": n, "model": model_id, "dim": 32, "queries": {str(i): f"{i}.png" for i in picks}, "new": "new.png"}
    (queries / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    print(f"prepared {out}: artifact {model_id[:12]}, {n} indexed images, {len(picks) + 1} queries")
    return 0


if __name__ == "__main__":
    sys.exit(main())
