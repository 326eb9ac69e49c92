"""``infomax export --checkpoint CKPT --out DIR``: the serving artifact of any training checkpoint.

``infomax export --artifact DIR --out DIR2 --output local``: the same weights serving other vectors
(``mu``, the code, or ``local``, the flattened local feature map C(x)); the training command, the
training figures and the provenance are kept, an eval report of the other output is not.
"""

from __future__ import annotations

import argparse
import shlex
import sys

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
        default="mu",
        help="vectors the artifact serves: mu (the code, default), pooled (the vector the code's "
        "heads read) or local (the flattened local feature map C(x), c*h*w values)",
    )
    p.add_argument("--dataset", default=None, help="name of the training data, recorded in encoder.json")
    return p


@flag_names(argparse_flags(parser))
def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)

    from pathlib import Path

    command = shlex.join(["infomax", "export", *argv])
    if args.artifact:
        from infomax.artifact import DERIVED_KEYS, RENAMED_KEYS, load_encoder, save_artifact

        if Path(args.out).resolve() == Path(args.artifact).resolve():
            raise SettingError(f"--out {args.out} is the --artifact folder: write the new artifact to another folder")
        enc = load_encoder(args.artifact, setting="artifact")
        # not what save_artifact derives again, nor the eval report (it measured the other output)
        kept = {k: v for k, v in enc.config.items() if k not in DERIVED_KEYS | RENAMED_KEYS and k != "eval"}
        kept["dataset"] = args.dataset or kept.get("dataset")
        kept["exported_by"] = command  # `command` stays the one that trained the weights
        path = save_artifact(
            enc.encoder,
            args.out,
            arch=enc.config["arch"],
            arch_kwargs=enc.config["arch_kwargs"],
            normalization=enc.config["normalization"],
            output=args.output,
            **kept,
        )
        from infomax.explain import carry_local_critic

        carry_local_critic(args.artifact, args.out, enc.config["weights_sha256"])  # same weights: same critic
        print(f"infomax: serving artifact ({args.output}) written to {path}", file=sys.stderr)
        return 0

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
    )
    print(f"infomax: serving artifact ({args.output}) written to {path}", file=sys.stderr)
    return 0
