"""``infomax index build``: a FAISS index folder from the shards of ``infomax embed``.

    infomax index build --embeddings emb/ --out index/ [--factory HNSW32] [--memory-budget 4GB]
                        [--recall-target 0.95] [--overwrite]

Reads every shard (checked against embeddings.json), then ``EmbeddingIndex.build`` chooses the
FAISS index for the count, dimension and memory budget (unless --factory), tunes its search
parameter to the recall target and writes the folder atomically. Each item keeps its id, source
and label; the build record names the encoder artifact (its weights' sha256), which the search
service checks against the encoder it loads.
"""

from __future__ import annotations

import argparse
import sys

from infomax.commands.flags import argparse_flags, flag_names
from infomax.errors import DataError, SettingError


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="infomax index", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="action", metavar="ACTION")
    b = sub.add_parser(
        "build",
        help="build an index folder from an embeddings folder",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    b.add_argument("--embeddings", required=True, help="folder written by `infomax embed`")
    b.add_argument("--out", required=True, help="index folder to write (must be empty or absent)")
    b.add_argument(
        "--factory",
        default=None,
        help="FAISS factory string (Flat, HNSW32, IVF1024,Flat, IVF1024,PQ64x8...); default: chosen "
        "from the count, dimension and memory budget",
    )
    b.add_argument("--memory-budget", default="4GB", help="memory the index may use (default: 4GB)")
    b.add_argument("--recall-target", type=float, default=0.95, help="recall@10 the search parameter is tuned to (default: 0.95)")
    b.add_argument("--overwrite", action="store_true", help="replace an index already in --out")
    b.add_argument(
        "--images",
        action="store_true",
        help="also store each item's picture in the folder (images.sqlite), for the service's "
        "/v1/items/{id}/image and its web page: data-set images as PNG, files as they are "
        "or as a 256 px JPEG thumbnail",
    )
    b.add_argument("--data-dir", default=None, help="with --images: folder holding the data sets (default: $INFOMAX_DATA_DIR)")
    return p


def build(args: argparse.Namespace) -> dict:
    """Builds the index and returns its build record."""
    from pathlib import Path

    from infomax.embed import read_embeddings
    from infomax.index import EmbeddingIndex

    emb = read_embeddings(args.embeddings)
    if len(emb) == 0:
        raise DataError(f"{args.embeddings} holds no vectors (every image was skipped): nothing to index")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise SettingError(f"--out {out} is a file: give a folder for the index")
    if out.is_dir() and any(out.iterdir()) and not args.overwrite:
        raise SettingError(f"--out {out} is not empty: pass --overwrite to replace the index there, or choose another folder")
    if out.is_dir():
        # A server writing that folder would lose what it acknowledges after the swap: refused
        # now rather than after the build (the build checks again, holding the lock, at the swap).
        from infomax.index.locks import REPLACE_FIX, WriterLock

        WriterLock.probe(out, doing="replace it", fix=REPLACE_FIX)
    m = emb.manifest
    artifact = {
        "id": m["artifact"]["id"],
        "z_dim": int(m["z_dim"]),
        "path": m["artifact"].get("path"),
        "dataset": m["artifact"].get("dataset"),  # what the encoder was trained on
        # the near-duplicate threshold measured for these vectors (infomax duplicates' default)
        **(
            {"duplicates_threshold": m["artifact"]["duplicates_threshold"]}
            if m["artifact"].get("duplicates_threshold") is not None
            else {}
        ),
        "data": m["data"],  # what was embedded
        "split": m["split"],
        "classes": m.get("classes"),
        "embeddings": str(Path(args.embeddings).expanduser().absolute()),
    }
    classes = m.get("classes") or []
    # the class name beside the label, for people (the web page shows it under each picture)
    metadata = [
        {"source": s, "label": lab} | ({"class": classes[lab]} if lab is not None and 0 <= lab < len(classes) else {})
        for s, lab in zip(emb.sources, emb.labels)
    ]
    pictures: list[int] = []

    def prepare(tmp: Path) -> None:
        # The pictures go into the folder before it appears at --out: a server never opens the
        # index without them, and a failure leaves the previous folder as it was.
        pictures.append(store_pictures(tmp, emb, args.data_dir))

    try:
        index = EmbeddingIndex.build(
            emb.vectors,
            ids=emb.ids,
            metadata=metadata,
            factory=args.factory,
            memory_budget=args.memory_budget,
            recall_target=args.recall_target,
            artifact=artifact,
            path=out,
            overwrite=args.overwrite,
            prepare=prepare if getattr(args, "images", False) else None,
        )
    except FileExistsError as e:  # an OSError, not one of the errors the CLI prints as one line
        raise SettingError(str(e).replace("overwrite=True", "--overwrite")) from None
    except RuntimeError as e:  # FAISS refuses a factory string it cannot parse
        raise SettingError(f"--factory {args.factory!r}: FAISS cannot build it ({str(e).strip().splitlines()[-1]})") from None
    try:
        record = index.info
    finally:
        index.close()
    if pictures:
        record = dict(record, pictures=pictures[0])
    return record


def store_pictures(out, emb, data_dir: str | None) -> int:
    """Writes the items' pictures into the index folder's image store; returns how many."""
    from infomax.index.collection import store_pictures_in
    from infomax.pictures import item_pictures

    return store_pictures_in(out, item_pictures(emb.manifest, emb.ids.tolist(), emb.sources, data_dir=data_dir))


def summary(record: dict, out: str) -> str:
    """A few lines a person reads after a build: what was chosen and what it measured."""
    params = ", ".join(f"{k}={v}" for k, v in (record.get("search_params") or {}).items()) or "none (exact)"
    recall = record.get("recall_at_10")
    met = record.get("recall_target_met")
    build = record.get("build") or {}
    lines = [
        f"index written to {out}",
        f"  factory          {record['factory']} (inner product on L2-normalised vectors)",
        f"  count            {record['count']} vectors of dimension {record['dim']}",
        f"  search params    {params}",
        f"  recall@10        {recall if recall is not None else 'n/a'}"
        + (f" (target {record.get('recall_target')}{'' if met in (None, True) else ', NOT met'})" if recall is not None else ""),
        f"  latency          {record.get('latency_ms_per_query')} ms/query single, "
        f"{record.get('batch_ms_per_query')} ms/query batched",
        f"  build            {build.get('build_seconds')} s (train {build.get('train_seconds')} s, add "
        f"{build.get('add_seconds')} s, tune {build.get('tune_seconds')} s)",
        f"  artifact         {record['artifact']['id'][:16]}... ({record['artifact'].get('path')})",
    ]
    if "pictures" in record:
        lines.append(f"  pictures         {record['pictures']} stored in images.sqlite")
    return "\n".join(lines)


@flag_names(argparse_flags(parser))
def main(argv: list[str]) -> int:
    p = parser()
    args = p.parse_args(argv)
    if args.action is None:
        p.print_help(sys.stderr)
        return 2
    if not 0.0 < args.recall_target <= 1.0:
        raise SettingError(f"--recall-target {args.recall_target}: must be in (0, 1]")
    record = build(args)
    print(summary(record, args.out))
    return 0
