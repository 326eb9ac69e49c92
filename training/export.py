"""``infomax export --checkpoint CKPT --out DIR``: the serving artifact of any training checkpoint."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="infomax export", description=__doc__)
    p.add_argument("--checkpoint", required=True, help="a Lightning checkpoint written by `infomax train`")
    p.add_argument("--out", required=True, help="artifact folder to write (encoder.safetensors + encoder.json)")
    p.add_argument("--dataset", default=None, help="name of the training data, recorded in encoder.json")
    args = p.parse_args(argv)

    from pathlib import Path

    import torch

    from infomax.module import DeepInfoMax

    ckpt = Path(args.checkpoint)
    if not ckpt.is_file():
        raise FileNotFoundError(f"no checkpoint at {ckpt}")
    try:
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
        module = DeepInfoMax.from_checkpoint_state(state)
    except (KeyError, RuntimeError, EOFError) as e:
        raise ValueError(f"{ckpt} is not a readable infomax training checkpoint ({e})") from None
    path = module.export(args.out, dataset=args.dataset, checkpoint=str(ckpt), epochs=state.get("epoch"),
                         steps=state.get("global_step"), command="infomax export " + " ".join(argv))
    print(f"infomax: serving artifact written to {path}", file=sys.stderr)
    return 0
