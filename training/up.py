"""``infomax up FOLDER``: from a folder of images to a running similar-image search, in one command.

    infomax up ~/photos                          # train 10 min, embed, index with pictures, serve :8000
    infomax up ~/photos --minutes 30             # a longer training budget
    infomax up ~/photos --model models/cifar10   # no training: an artifact you have
    infomax up ~/photos --no-serve               # stop once the index is ready (scripts, cron)

The steps, each skipped when its output is already there and up to date (WORK is FOLDER/.infomax,
or --work DIR):

  1. train   WORK/model: an encoder trained on the folder with training/configs/folder.yaml within
             --minutes (a progress bar shows the time left); kept for the next runs (--retrain trains
             again). Skipped with --model.
  2. embed   the files that are new or changed since the last run (by size and modified time), with
             `infomax embed`'s code, into WORK/embeddings.
  3. index   WORK/index (`infomax index build --images`'s folder): the new files' pictures, then
             their vectors, under their stable ids (a hash of the relative path); the items of
             deleted or changed files are removed. Each item holds its path (source), its folder
             (meta.class, shown under the picture), size and modified time.
  4. serve   `infomax serve` on that index: the web page and the API at the URL printed.

WORK/state.json records the artifact and the (relative path, size, modified time) of every file
embedded, so a second run after adding files embeds only those. A new --model (another artifact)
embeds everything again. Unreadable files are listed once each, with the reason, in
WORK/skipped.txt (and retried only when they change).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import logging
import shlex
import sys
from pathlib import Path, PurePosixPath

from infomax.commands.flags import argparse_flags, flag_names
from infomax.errors import DataError, MissingFileError, SettingError
from infomax.validate import positive_int

STATE, SKIPPED, STATE_FORMAT = "state.json", "skipped.txt", "infomax-up"
CONFIG = Path(__file__).parent / "configs" / "folder.yaml"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="infomax up", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folder", metavar="FOLDER", help="folder of images (searched recursively)")
    p.add_argument(
        "--minutes", type=float, default=None, help="training budget in minutes (default: the recipe's, 10); ignored with --model"
    )
    p.add_argument("--model", metavar="ART", default=None, help="serving artifact to use instead of training one")
    p.add_argument("--retrain", action="store_true", help="train again even though WORK/model is there")
    p.add_argument(
        "--work", metavar="DIR", default=None, help="where the model, embeddings, index and state go (default: FOLDER/.infomax)"
    )
    p.add_argument("--no-serve", action="store_true", help="stop once the index is ready")
    p.add_argument("--host", default="127.0.0.1", help="interface to serve on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="TCP port to serve on (default 8000)")
    p.add_argument("--batch-size", type=int, default=256, help="images per forward pass when embedding (default 256)")
    p.add_argument("--num-workers", type=int, default=None, help="processes decoding files when embedding (default: up to 8)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def _say(message: str) -> None:
    print(f"infomax up: {message}", file=sys.stderr, flush=True)


# -- the folder and the state --------------------------------------------------------------------


def scan(folder: Path) -> tuple[dict[str, tuple[int, int]], dict[str, str]]:
    """Every image file of ``folder`` (as ``infomax embed`` lists them): relative POSIX path ->
    (size, modified time in ns) of what it points to; and the files that cannot even be stat'ed
    (a broken symlink, a symlink loop) -> reason."""
    from infomax.data.folder import error_reason, list_images

    files, failed = {}, {}
    for path in list_images(folder):
        rel = path.relative_to(folder).as_posix()
        try:
            st = path.stat()
        except OSError as e:
            failed[rel] = f"{type(e).__name__}: {error_reason(e, path)}"
            continue
        files[rel] = (int(st.st_size), int(st.st_mtime_ns))
    return files, failed


def read_state(work: Path) -> dict:
    try:
        state = json.loads((work / STATE).read_text())
    except (OSError, ValueError):
        return {}
    return state if isinstance(state, dict) and state.get("format") == STATE_FORMAT else {}


def item_metadata(rel: str, size: int, mtime_ns: int) -> dict:
    """What an item of a folder's file holds: its path, its folder (as the class the page shows),
    size in bytes and modified time (UTC, ISO 8601)."""
    parent = str(PurePosixPath(rel).parent)
    meta = {
        "source": rel,
        "label": None,
        "folder": "" if parent == "." else parent,
        "size": size,
        "modified": _dt.datetime.fromtimestamp(mtime_ns / 1e9, _dt.timezone.utc).isoformat(timespec="seconds"),
    }
    if parent != ".":
        meta["class"] = parent
    return meta


# -- 1. train ------------------------------------------------------------------------------------


def max_time(minutes: float) -> str:
    if not minutes > 0:
        raise SettingError(f"--minutes {minutes}: must be a positive number of minutes")
    s = max(1, round(minutes * 60))
    return f"{s // 86400:02d}:{s // 3600 % 24:02d}:{s // 60 % 60:02d}:{s % 60:02d}"


def train(folder: Path, work: Path, minutes: float | None, progress: bool) -> Path | None:
    """Trains with the folder recipe into WORK/model; None when interrupted."""
    from training import train as train_cmd

    model = work / "model"
    argv = [
        "--config",
        str(CONFIG),
        "--data.path",
        str(folder),
        "--trainer.default_root_dir",
        str(work / "runs"),
        "--export.dirpath",
        str(model),
        "--overwrite",
    ]
    if minutes is not None:
        argv += ["--trainer.max_time", max_time(minutes)]
    argv += ["--trainer.callbacks+=training.timeleft.TimeLeftBar"] if progress else ["--trainer.enable_progress_bar", "false"]
    budget = f"{minutes:g} minute(s)" if minutes is not None else "the recipe's 10 minutes"
    _say(f"[1/4] training an encoder on {folder} for {budget}: infomax train {shlex.join(argv)}")
    if train_cmd.main(argv) != 0:
        return None
    if not (model / "encoder.json").is_file():
        raise RuntimeError(f"training finished without writing an artifact to {model}")
    return model


# -- 2 and 3. embed and index --------------------------------------------------------------------


def update(
    folder: Path,
    work: Path,
    artifact: Path,
    *,
    batch_size: int = 256,
    num_workers: int | None = None,
    progress: bool = True,
    command: str | None = None,
) -> dict:
    """Brings WORK/index up to date with ``folder`` for ``artifact``; returns what was done."""
    import torch

    from infomax.artifact import load_encoder
    from infomax.data.folder import folder_ids, path_id
    from infomax.data.sources import ImageSource
    from infomax.embed import embed_source, prepare_output, read_embeddings
    from infomax.index import EmbeddingIndex, IndexLoadError, IndexMismatchError

    encoder = load_encoder(artifact, "cpu")
    files, failed = scan(folder)
    folder_ids(sorted(files), folder)  # two names with one id are refused before any work
    index_dir, state = work / "index", read_state(work)
    index = None
    if state.get("artifact") == encoder.id and state.get("folder") == str(folder) and (index_dir / "index.json").is_file():
        try:
            index = EmbeddingIndex.load(index_dir, expected_artifact_id=encoder.id, expected_dim=encoder.dim)
        except (IndexLoadError, IndexMismatchError) as e:  # IndexLockedError (being served) propagates
            _say(f"building the index again: {e}")
    try:
        old_files = state.get("files", {}) if index is not None else {}
        old_skipped = state.get("skipped", {}) if index is not None else {}
        present = set(index.ids().tolist()) if index is not None else set()
        unchanged = {rel for rel, st in files.items() if old_files.get(rel) == list(st) and path_id(rel) in present}
        skipped = {
            rel: s["reason"]
            for rel, s in old_skipped.items()
            if rel in files and [s.get("size"), s.get("mtime_ns")] == list(files[rel])
        }
        todo = sorted(rel for rel in files if rel not in unchanged and rel not in skipped)
        removed = sorted(present - {path_id(rel) for rel in unchanged})
        _say(
            f"[2/4] embedding {len(todo)} new or changed file(s) of {len(files) + len(failed)} "
            f"({len(unchanged)} up to date, {len(skipped)} unreadable as before)"
        )
        emb = None
        if todo:
            source = ImageSource(
                name=str(folder),
                kind="folder",
                split=None,
                ids=folder_ids(todo, folder),
                labels=torch.full((len(todo),), -1, dtype=torch.int64),
                sources=todo,
                classes=None,
                paths=[folder / rel for rel in todo],
                size=encoder.input_size,
                channels=encoder.in_channels,
            )
            out = prepare_output(work / "embeddings", overwrite=True)
            manifest = embed_source(
                encoder,
                source,
                out,
                batch_size=batch_size,
                num_workers=num_workers,
                progress=progress,
                model_path=artifact,
                command=command,
            )
            assert manifest is not None  # one process, rank 0: embed_source returns the manifest
            skipped.update({s["source"]: s["reason"] for s in manifest["skipped"]})
            emb = read_embeddings(out)
        skipped.update(failed)
        metadata = [item_metadata(rel, *files[rel]) for rel in (emb.sources if emb is not None else [])]
        _say(f"[3/4] index {index_dir}: +{0 if emb is None else len(emb)} item(s), -{len(removed)}")
        if index is None:
            index = _build(index_dir, emb, metadata, encoder, artifact, folder)
        else:
            _apply(index, index_dir, emb, metadata, removed)
        count = len(index)
    finally:
        if index is not None:
            index.close()
    embedded = set(emb.sources) if emb is not None else set()
    _write_state(
        work,
        {
            "format": STATE_FORMAT,
            "version": 1,
            "folder": str(folder),
            "artifact": encoder.id,
            "model": str(artifact),
            "files": {rel: list(files[rel]) for rel in sorted(unchanged | embedded)},
            "skipped": {
                rel: {"size": files.get(rel, (None, None))[0], "mtime_ns": files.get(rel, (None, None))[1], "reason": reason}
                for rel, reason in sorted(skipped.items())
            },
            "updated_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        },
    )
    return {
        "count": count,
        "embedded": len(embedded),
        "removed": len(removed),
        "unchanged": len(unchanged),
        "skipped": dict(sorted(skipped.items())),
        "index": index_dir,
    }


def _build(index_dir: Path, emb, metadata: list[dict], encoder, artifact: Path, folder: Path):
    from infomax.commands.index import store_pictures
    from infomax.index import EmbeddingIndex

    if emb is None or len(emb) == 0:
        raise DataError(
            f"no readable image in {folder}: nothing to index (the unreadable files are listed in {index_dir.parent / SKIPPED})"
        )
    record = {
        "id": encoder.id,
        "z_dim": int(encoder.dim),
        "path": str(artifact),
        "dataset": encoder.config.get("dataset"),
        "data": str(folder),
        "split": None,
        "classes": None,
        "embeddings": str(index_dir.parent / "embeddings"),
    }
    return EmbeddingIndex.build(
        emb.vectors,
        ids=emb.ids,
        metadata=metadata,
        artifact=record,
        path=index_dir,
        overwrite=True,
        prepare=lambda tmp: store_pictures(tmp, emb, None),
    )


def _apply(index, index_dir: Path, emb, metadata: list[dict], removed: list[int]) -> None:
    """Removed items go first (vector, then picture); new ones picture first, then vector, as the
    service writes them: an item is never without its picture."""
    from infomax.imagestore import ImageStore
    from infomax.index.collection import Collection
    from infomax.pictures import item_pictures

    store = ImageStore(index_dir)
    try:
        items = Collection(index, store)
        if removed:
            items.remove(removed)
        if emb is not None and len(emb):
            items.add(
                emb.vectors, emb.ids.tolist(), metadata, item_pictures(emb.manifest, emb.ids.tolist(), emb.sources, data_dir=None)
            )
    finally:
        store.close()


def _write_state(work: Path, state: dict) -> None:
    from infomax.atomic import atomic_write_json, atomic_write_text

    atomic_write_text(work / SKIPPED, "".join(f"{rel}\t{s['reason']}\n" for rel, s in state["skipped"].items()))
    atomic_write_json(work / STATE, state)


# -- the command ---------------------------------------------------------------------------------


@flag_names(argparse_flags(parser))
def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    folder = Path(args.folder).expanduser()
    if not folder.is_dir():
        raise MissingFileError(f"{args.folder}: no such folder; give the folder that holds your images")
    folder = folder.absolute()
    work = Path(args.work).expanduser().absolute() if args.work else folder / ".infomax"
    work.mkdir(parents=True, exist_ok=True)
    positive_int("batch_size", args.batch_size, sep=" ")
    progress = not args.no_progress and sys.stderr.isatty()
    import pytorch_lightning  # noqa: F401 - configures its logger on import; quietened after

    # Lightning's start-up notices (accelerator, tips) would drown the lines of each step.
    logging.getLogger("pytorch_lightning").setLevel(logging.WARNING)

    artifact: Path | None  # None: training was interrupted
    if args.model is not None:
        artifact = Path(args.model).expanduser().absolute()
        from infomax.artifact import read_config

        read_config(artifact, setting="model")  # refused now, in one line, if it is not an artifact
        _say(f"[1/4] training skipped: --model {artifact}")
    elif (work / "model" / "encoder.json").is_file() and not args.retrain:
        artifact = work / "model"
        _say(f"[1/4] training skipped: {artifact} is there (--retrain trains again)")
    else:
        if args.minutes is not None:
            max_time(args.minutes)  # a bad value refused before the data is read
        artifact = train(folder, work, args.minutes, not args.no_progress)
        if artifact is None:
            return 130

    done = update(
        folder,
        work,
        artifact,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        progress=progress,
        command="infomax up " + shlex.join(argv),
    )
    _say(
        f"index ready: {done['count']} item(s) in {done['index']} ({done['embedded']} embedded, "
        f"{done['removed']} removed, {done['unchanged']} unchanged)"
    )
    if done["skipped"]:
        _say(f"{len(done['skipped'])} unreadable file(s), each listed with its reason in {work / SKIPPED}:")
        for rel, reason in list(done["skipped"].items())[:20]:
            print(f"  {rel}: {reason}", file=sys.stderr)
        if len(done["skipped"]) > 20:
            print(f"  ... and {len(done['skipped']) - 20} more", file=sys.stderr)
    if args.no_serve:
        return 0
    from service import serve

    _say(f"[4/4] serving http://{args.host}:{args.port}/ (Ctrl-C stops)")
    return serve.main(["--model", str(artifact), "--index", str(done["index"]), "--host", args.host, "--port", str(args.port)])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
