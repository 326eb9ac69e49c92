"""``infomax export --checkpoint CKPT --out DIR``: the serving artifact of any training checkpoint.

``infomax export --artifact DIR --out DIR2 --output local``: the same weights serving other vectors
(``mu``, the code, or ``local``, the flattened local feature map C(x)); the training command, the
training figures and the provenance are kept, an eval report of the other output is not.

``--whiten``: the artifact serves its output PCA-whitened (:mod:`infomax.whitening`), fitted on the
images it is meant to index, unlabelled: ``--whiten-data`` (a data set's train split or an image
folder; default the data set the encoder was trained on), ``--whiten-eps`` (the ridge, relative to
the largest variance) and ``--whiten-dim`` (keep the leading directions only: shorter vectors).
Whitened vectors score far lower than raw ones: ``--duplicates-threshold`` records the near-duplicate
threshold measured for what the artifact serves (``bench/duplicates.py --model``), which ``infomax
duplicates`` and the service use by default for an index of its vectors; a re-export drops it.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from infomax.commands.flags import argparse_flags, flag_names
from infomax.errors import DataError, MissingFileError, SettingError


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="infomax export", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="a Lightning checkpoint written by `infomax train`")
    src.add_argument("--artifact", help="an artifact folder whose weights to export again (with another --output)")
    p.add_argument("--out", required=True, help="artifact folder to write (encoder.safetensors + encoder.json)")
    p.add_argument(
        "--output",
        choices=("mu", "pooled", "local"),
        default=None,
        help="vectors the artifact serves: mu (the code), pooled (the vector the code's heads read) or "
        "local (the flattened local feature map C(x), c*h*w values); default: what the --artifact "
        "serves (so that re-whitening one keeps its vectors), mu for a --checkpoint",
    )
    p.add_argument("--dataset", default=None, help="name of the training data, recorded in encoder.json")
    w = p.add_argument_group("whitening (what is served: issue 14)")
    w.add_argument("--whiten", action="store_true", help="serve the output PCA-whitened, fitted on --whiten-data")
    w.add_argument(
        "--whiten-data",
        default=None,
        help="images to fit the whitening on: a data set name (its train split) or an image folder "
        "(default: the data set recorded in the artifact)",
    )
    w.add_argument("--whiten-eps", type=float, default=None, help="ridge relative to the largest variance (default 0.01)")
    w.add_argument("--whiten-dim", type=int, default=None, help="keep this many leading directions (default: all)")
    w.add_argument("--whiten-limit", type=int, default=None, help="fit on at most this many images (the first N)")
    w.add_argument("--data-dir", default=None, help="folder holding the data sets (default: $INFOMAX_DATA_DIR)")
    p.add_argument(
        "--duplicates-threshold",
        type=float,
        default=None,
        help="the near-duplicate cosine threshold measured for the vectors this artifact serves "
        "(bench/duplicates.py), recorded in encoder.json: `infomax duplicates` and the service default to it",
    )
    return p


def check_whiten_args(args: argparse.Namespace) -> None:
    """Refuses whitening settings without --whiten and bad ones with it, before anything is loaded."""
    from infomax.validate import optional_positive_int
    from infomax.whitening import DEFAULT_EPS, check_settings

    given = [
        f
        for f, v in (
            ("--whiten-data", args.whiten_data),
            ("--whiten-eps", args.whiten_eps),
            ("--whiten-dim", args.whiten_dim),
            ("--whiten-limit", args.whiten_limit),
        )
        if v is not None
    ]
    if given and not args.whiten:
        raise SettingError(f"{', '.join(given)} set without --whiten: add --whiten to whiten what the artifact serves")
    if args.whiten:
        check_settings(DEFAULT_EPS if args.whiten_eps is None else args.whiten_eps, args.whiten_dim)
        optional_positive_int("whiten_limit", args.whiten_limit, what="a positive number of images", sep=" ")


def fit_on_images(enc, kind: str, args: argparse.Namespace, dataset: str | None):
    """Fits the whitening of ``enc``'s vectors of ``kind`` (unwhitened) on the images --whiten-data names;
    returns it and the record kept in encoder.json (what it was fitted on, its settings)."""
    import torch

    from infomax.artifact import output_dim
    from infomax.data import resolve_source
    from infomax.whitening import DEFAULT_EPS, fit_whitening

    raw_dim = output_dim(enc.encoder, kind, enc.config["arch_kwargs"]["z_dim"])
    if args.whiten_dim is not None and args.whiten_dim > raw_dim:  # before any image is read
        raise SettingError(
            f"whiten_dim={args.whiten_dim}: the vectors have only {raw_dim} values; keep at most {raw_dim}", setting="whiten_dim"
        )
    data = args.whiten_data or dataset
    if not data:
        raise SettingError(
            "the artifact records no data set to fit the whitening on: give --whiten-data (a data set name or an image folder)",
            setting="whiten_data",
        )
    source = resolve_source(
        data, "train", channels=enc.in_channels, size=enc.input_size, data_dir=args.data_dir, limit=args.whiten_limit
    )
    if source.images is not None:
        vectors = enc.embed_features(source.images, features=(kind,))[kind]
    else:  # a folder, decoded a batch at a time; unreadable files are left out
        loader = torch.utils.data.DataLoader(source.dataset(), batch_size=256)
        parts = []
        for images, _ids, errors in loader:
            good = torch.tensor([not e for e in errors])
            if good.any():
                parts.append(enc.embed_features(images[good], features=(kind,))[kind])
        vectors = torch.cat(parts) if parts else torch.empty(0, 0)
    if len(vectors) < 2:
        raise SettingError(
            f"--whiten-data {data}: {len(vectors)} readable image(s); the whitening needs at least 2", setting="whiten_data"
        )
    eps = DEFAULT_EPS if args.whiten_eps is None else args.whiten_eps
    whitening = fit_whitening(vectors, eps=eps, dim=args.whiten_dim)
    if len(vectors) <= raw_dim:  # the covariance has rank < d: the directions past it are the ridge's
        print(
            f"infomax export: note: the whitening is fitted on {len(vectors)} images for {raw_dim} values; with fewer "
            f"images than values, --whiten-dim {min(raw_dim, max(1, len(vectors) // 4))} or more images fit it better",
            file=sys.stderr,
        )
    # no path of this machine: a data set's name, or the folder's own name
    name = source.name if source.kind == "dataset" else Path(data).expanduser().resolve().name
    info = {
        "data": name,
        "split": source.split if source.kind == "dataset" else None,
        "images": len(vectors),
        "eps": eps,
        "dim": whitening.out_dim,
    }
    return whitening, info


def save_again(enc, out, output: str, kept: dict, whitening, info: dict | None) -> Path:
    """Writes the weights of the loaded artifact ``enc`` to ``out``, serving ``output`` (whitened
    when ``whitening`` is given), with the recorded keys ``kept``."""
    from infomax.artifact import save_artifact

    return save_artifact(
        enc.encoder,
        out,
        arch=enc.config["arch"],
        arch_kwargs=enc.config["arch_kwargs"],
        normalization=enc.config["normalization"],
        output=output,
        whitening=whitening,
        whitening_info=info,
        **kept,
    )


@flag_names(argparse_flags(parser))
def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    check_whiten_args(args)
    if args.duplicates_threshold is not None:
        from infomax.duplicates import check_threshold

        check_threshold(args.duplicates_threshold)

    command = shlex.join(["infomax", "export", *argv])
    if args.artifact:
        from infomax.artifact import DERIVED_KEYS, RENAMED_KEYS, load_encoder

        if Path(args.out).resolve() == Path(args.artifact).resolve():
            raise SettingError(f"--out {args.out} is the --artifact folder: write the new artifact to another folder")
        enc = load_encoder(args.artifact, setting="artifact")
        if args.output is None:  # the same vectors, e.g. whitened again to another length
            args.output = enc.output
        # not what save_artifact derives again, nor the eval report (it measured other vectors), nor a
        # duplicates threshold (measured for other vectors)
        kept = {k: v for k, v in enc.config.items() if k not in DERIVED_KEYS | RENAMED_KEYS | {"eval", "duplicates_threshold"}}
        if args.duplicates_threshold is not None:
            kept["duplicates_threshold"] = args.duplicates_threshold
        kept["dataset"] = args.dataset or kept.get("dataset")
        kept["exported_by"] = command  # `command` stays the one that trained the weights
        whitening, info = fit_on_images(enc, args.output, args, kept.get("dataset")) if args.whiten else (None, None)
        path = save_again(enc, args.out, args.output, kept, whitening, info)
        from infomax.explain import carry_local_critic

        carry_local_critic(args.artifact, args.out, enc.config["weights_sha256"])  # same weights: same critic
        print(f"infomax: serving artifact ({args.output}) written to {path}", file=sys.stderr)
        return 0

    if args.output is None:
        args.output = "mu"
    if args.whiten and not (args.whiten_data or args.dataset):  # before anything is written to --out
        raise SettingError(
            "--whiten with --checkpoint: a checkpoint records no data set to fit the whitening on; give --whiten-data "
            "(a data set name or an image folder) or --dataset",
            setting="whiten_data",
        )
    import torch

    from infomax.module import DeepInfoMax

    ckpt = Path(args.checkpoint)
    if not ckpt.is_file():
        raise MissingFileError(f"no checkpoint at {ckpt}")
    try:
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
        module = DeepInfoMax.from_checkpoint_state(state)
    except (KeyError, RuntimeError, EOFError) as e:
        raise DataError(f"{ckpt} is not a readable infomax training checkpoint ({e})") from None
    from infomax.callbacks import checkpoint_progress, run_relative

    path = module.export(
        args.out,
        dataset=args.dataset,
        checkpoint=run_relative(ckpt),
        command=command,
        output=args.output,
        **checkpoint_progress(state),
        **({"duplicates_threshold": args.duplicates_threshold} if args.duplicates_threshold is not None else {}),
    )
    if args.whiten:  # the artifact just written, whitened in place (the whitening is fitted on its vectors)
        from infomax.artifact import DERIVED_KEYS, RENAMED_KEYS, load_encoder

        enc = load_encoder(path)
        whitening, info = fit_on_images(enc, args.output, args, args.dataset)
        kept = {k: v for k, v in enc.config.items() if k not in DERIVED_KEYS | RENAMED_KEYS}
        path = save_again(enc, path, args.output, kept, whitening, info)
    print(f"infomax: serving artifact ({args.output}) written to {path}", file=sys.stderr)
    return 0
