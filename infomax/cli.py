"""The ``infomax`` command: one entry point, one module per subcommand, each beside the code it
drives (``infomax.commands.*`` for the library's, ``training.*`` for train / export / up,
``service.serve``), imported on demand by name, so ``infomax --help`` answers at once, a
subcommand loads only what it uses, and the library itself imports neither training nor service."""

from __future__ import annotations

import importlib
import sys

# name -> (module with a `main(argv) -> int`, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("training.train", "train an encoder (LightningCLI: --config, --trainer.*, --model.*, --data.*)"),
    "export": ("training.export", "write the serving artifact of a training checkpoint (or another artifact)"),
    "embed": ("infomax.commands.embed", "encode a data set or an image folder into vectors, ids and sources"),
    "index": ("infomax.commands.index", "build a FAISS index folder from embeddings (`infomax index build`)"),
    "eval": ("infomax.commands.evaluate", "k-NN, 1-NN and linear-probe accuracy of an encoder, beside raw pixels"),
    "knn-grid": ("infomax.commands.knn_grid", "a PNG of query images beside their nearest neighbours"),
    "duplicates": ("infomax.commands.duplicates", "groups of near-identical images in an index folder (CSV or JSON)"),
    "search": ("infomax.commands.search", "the nearest items of an image or an item in an index folder, optionally filtered"),
    "serve": ("service.serve", "serve encoding and similar-image search over HTTP (uvicorn)"),
    "up": ("training.up", "from a folder of images to a running search: train, embed, index, serve (incremental)"),
}

USAGE = (
    "usage: infomax COMMAND [ARGS...]\n\ncommands:\n"
    + "\n".join(f"  {name:<10} {help_}" for name, (_, help_) in COMMANDS.items())
    + "\n\n`infomax COMMAND --help` describes a command's arguments."
)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    if argv[0] in ("-V", "--version"):
        from infomax import __version__

        print(f"infomax {__version__}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"infomax: unknown command {name!r}\n\n{USAGE}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    try:
        return int(module.main(rest) or 0)
    except KeyboardInterrupt:
        print(f"infomax {name}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - a user's error becomes one line below
        from infomax.errors import is_user_error

        # A bad setting, a missing or damaged file, bad data: one line (the command has spelled
        # the settings it names as its flags). Anything else is a bug and keeps its traceback.
        if not is_user_error(e):
            raise
        print(f"infomax {name}: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
