"""``infomax serve --model ARTIFACT --index INDEX_DIR``: the HTTP service (service.app) under uvicorn.

Every setting can also come from an ``INFOMAX_*`` environment variable (see service/settings.py);
a flag given here overrides it. Prefer ``INFOMAX_API_KEY`` to ``--api-key``: a command line is
visible to every user of the machine (``ps``).

``--workers N`` starts N processes, each loading its own encoder and index (memory: see
docs/SERVICE.md). Only one process may write an index, so N > 1 requires ``--read-only``; run the
writer as a separate single-worker ``infomax serve`` on the same folder, and the readers pick up
its items every ``--refresh-s`` seconds.
"""

from __future__ import annotations

import argparse
import copy
import logging
import os
import re
import sys
from pathlib import Path

from infomax.errors import MissingFileError, SettingError

# flag dest -> settings field, for flags whose name differs from the field
_FIELD = {"model": "artifact"}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="infomax serve", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    # default=None everywhere: only flags actually given override the environment
    p.add_argument("--model", metavar="ARTIFACT", help="serving artifact folder (env INFOMAX_ARTIFACT)")
    p.add_argument("--index", metavar="INDEX_DIR", help="index folder (env INFOMAX_INDEX)")
    p.add_argument(
        "--create-index",
        action="store_true",
        default=None,
        help="start an empty index bound to the model if INDEX_DIR does not exist",
    )
    p.add_argument("--read-only", action="store_true", default=None, help="refuse writes; open everything read-only")
    p.add_argument("--refresh-s", type=float, help="read-only: pick up the writer's new items this often (default 2)")
    p.add_argument("--host", help="interface to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="TCP port (default 8000)")
    p.add_argument("--workers", type=int, help="worker processes (default 1; more need --read-only)")
    p.add_argument("--api-key", help="key required for writes (prefer env INFOMAX_API_KEY)")
    p.add_argument("--api-key-for-reads", action="store_true", default=None, help="require the key for reads too")
    p.add_argument("--max-k", type=int, help="largest k of a search (default 100)")
    p.add_argument("--max-upload-bytes", type=int, help="largest request body (default 24 MiB)")
    p.add_argument("--max-image-pixels", type=int, help="largest width*height of an upload (default 24M)")
    p.add_argument("--max-images-per-request", type=int, help="default 64")
    p.add_argument(
        "--batching",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="gather concurrent requests into encoder batches (default on)",
    )
    p.add_argument("--max-batch-size", type=int, help="images per encoder batch (default 64)")
    p.add_argument("--max-wait-ms", type=float, help="how long a batch may wait for requests still decoding (default 5)")
    p.add_argument("--torch-threads", type=int, help="encoder and batched-search threads (default 0: half the CPUs, 1 to 4)")
    p.add_argument(
        "--background-load",
        action="store_true",
        default=None,
        help="accept connections at once and load meanwhile (/readyz answers 503 until loaded)",
    )
    p.add_argument("--log-level", choices=["critical", "error", "warning", "info", "debug"])
    p.add_argument("--no-access-log", action="store_true", help="do not log every request")
    return p


def _env_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    overrides = {_FIELD.get(k, k): v for k, v in vars(args).items() if v is not None and k != "no_access_log"}

    from pydantic import ValidationError

    from service.settings import Settings

    try:
        settings = Settings(**overrides)
    except ValidationError as e:
        # Only the messages: pydantic's own text quotes the input, which may hold the API key.
        problems = "; ".join(
            f"{'.'.join(map(str, err['loc'])) or 'settings'}: {err['msg']}" for err in e.errors(include_input=False)
        )
        raise SettingError(f"invalid settings: {problems}") from None
    _preflight(settings)
    # Workers are separate processes that build their app from the environment: hand the
    # flags down that way (the environment of a process is private to its user).
    for name, value in overrides.items():
        os.environ[f"INFOMAX_{name.upper()}"] = _env_value(value)

    import uvicorn
    from uvicorn.config import LOGGING_CONFIG

    log_config = copy.deepcopy(LOGGING_CONFIG)
    for logger in ("service", "infomax"):
        log_config["loggers"][logger] = {"handlers": ["default"], "level": settings.log_level.upper(), "propagate": False}
    # A client that wrongly puts the key (or any token) in the URL must not get it written to the
    # access log: both handlers mask credential-like query values and the configured key.
    log_config.setdefault("filters", {})["redact"] = {"()": "service.serve.RedactSecrets"}
    for handler in log_config["handlers"].values():
        handler.setdefault("filters", []).append("redact")
    # A damaged file found while the app loads is a user's error, not a bug: the app's one line, without
    # Starlette's traceback (which uvicorn prints as the startup failure). --log-level debug keeps it.
    log_config["filters"]["startup"] = {
        "()": "service.serve.OneLineStartupErrors",
        "keep_tracebacks": settings.log_level == "debug",
    }
    log_config["handlers"]["default"]["filters"].insert(0, "startup")
    uvicorn.run(
        "service.app:create_app_from_env",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        log_level=settings.log_level,
        log_config=log_config,
        access_log=not args.no_access_log,
        proxy_headers=False,  # nothing here trusts X-Forwarded-*; put a proxy in front if needed
        server_header=False,
    )
    return 0


def _preflight(settings) -> None:
    """The usual mistakes as one-line errors, before uvicorn starts (and logs tracebacks). Kept
    free of torch, so that a wrong path is reported at once; the app checks the rest on load."""
    if settings.artifact is None:
        raise SettingError("no model: give --model ARTIFACT (or set INFOMAX_ARTIFACT)")
    if settings.index is None:
        raise SettingError("no index: give --index INDEX_DIR (or set INFOMAX_INDEX)")
    index = Path(settings.index)
    if not index.exists() and not settings.create_index:
        raise MissingFileError(
            f"no index at {index}: build one (`infomax index build`) or pass --create-index to start an empty one"
        )
    if not index.exists() and settings.read_only:
        raise SettingError(f"no index at {index}: --create-index cannot create one in --read-only mode")
    if index.exists() and not index.is_dir():
        raise SettingError(f"{index} is a file, not an index folder")
    if index.is_dir() and not settings.read_only:
        # The app takes the lock when it opens the index; asking here refuses a second writer
        # in one line before uvicorn and the model load.
        from infomax.index.locks import WriterLock

        WriterLock.probe(index, doing="serve it for writing")
    artifact = Path(settings.artifact)
    for name in ("encoder.json", "encoder.safetensors"):
        if not (artifact / name).is_file():
            raise MissingFileError(
                f"{artifact / name} is missing: --model must be a serving artifact folder (`infomax export` writes one)"
            )
    _check_pairing(artifact, index)


def _check_pairing(artifact: Path, index: Path) -> None:
    """An index built with another encoder, or holding vectors of another length, refused in one
    line from the two JSON files. Unreadable files are left to the app, whose errors name them."""
    import json

    from infomax.identity import artifact_id, served_dim

    try:
        config = json.loads((artifact / "encoder.json").read_text())
        record = json.loads((index / "index.json").read_text())
        built_with = (record.get("artifact") or {}).get("id")
        ours, dim, their_dim = artifact_id(config), served_dim(config), int(record["dim"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return
    if built_with is not None and built_with != ours:
        raise SettingError(
            f"artifact mismatch: the index at {index} was built with encoder artifact {str(built_with)[:12]}, "
            f"not with {artifact} ({ours[:12]}, output {config.get('output', 'mu')}{', whitened' if config.get('whitening') else ''}); serve it with "
            f"the artifact that built it, or build a new index (`infomax embed` + `infomax index build`)"
        )
    if dim != their_dim:
        raise SettingError(
            f"dimension mismatch: {artifact} makes {dim}-dimensional vectors but the index at {index} "
            f"holds {their_dim}-dimensional ones; build a new index with this artifact"
        )


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))


_SECRET_PARAM = re.compile(r"([?&;][^=&;#\s]*(?:key|token|secret|passw|auth|sig)[^=&;#\s]*=)[^&;#\s\"]*", re.IGNORECASE)


def redact(text: str, secret: str | None = None) -> str:
    """``text`` with the values of credential-like query parameters and every copy of ``secret``
    replaced by ``***``."""
    text = _SECRET_PARAM.sub(r"\1***", text)
    if secret:
        text = text.replace(secret, "***")
    return text


class RedactSecrets(logging.Filter):
    """Logging filter (uvicorn's access and default handlers): masks secrets in each record. The
    key is read from ``INFOMAX_API_KEY``, which ``main`` sets for the workers anyway."""

    def __init__(self) -> None:
        super().__init__()
        self.secret = os.environ.get("INFOMAX_API_KEY") or None

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = redact(message, self.secret)
        if masked != message:
            if record.name == "uvicorn.access" and isinstance(record.args, tuple) and len(record.args) == 5:
                # keep uvicorn's (client, method, path, version, status) so its formatter still works
                args = list(record.args)
                args[2] = redact(str(args[2]), self.secret)
                record.args = tuple(args)
            else:
                record.msg, record.args = masked, None
        return True


# The exception's own line of a formatted traceback: its class, qualified by module unless builtin.
_EXCEPTION_LINE = re.compile(r"^((?:[A-Za-z_]\w*\.)*[A-Za-z_]\w*): ")


def _logged_in_one_line(name: str) -> bool:
    """Whether a startup failure of the exception class ``name`` is a user's error
    (``infomax.errors.is_user_error``: the app's one line names the file and the fix), or a bare
    ValueError, which a failed startup has always shown as that one line too."""
    from infomax.errors import error_class, is_user_error

    kind = error_class(name)
    return kind is not None and (is_user_error(kind) or kind is ValueError)


class OneLineStartupErrors(logging.Filter):
    """Logging filter (uvicorn's default handler): uvicorn logs a failed app startup as the
    formatted traceback Starlette hands it. When the exception is a user's error the
    record is dropped: the app has already logged it in one line (``cannot load model and index:``,
    service/state.py) and the traceback would only bury that line. Any other exception (a bug)
    keeps its traceback, as does everything with ``keep_tracebacks``."""

    def __init__(self, keep_tracebacks: bool = False) -> None:
        super().__init__()
        self.keep_tracebacks = keep_tracebacks

    def filter(self, record: logging.LogRecord) -> bool:
        if self.keep_tracebacks or not isinstance(record.msg, str) or record.args:
            return True
        if not record.msg.startswith("Traceback (most recent call last):"):
            return True
        # The exception's own line is the last one at column 0 (frames and source lines are indented).
        lines = record.msg.rstrip().splitlines()
        for i in range(len(lines) - 1, 0, -1):
            match = _EXCEPTION_LINE.match(lines[i])
            if match:
                return not _logged_in_one_line(match.group(1))
        return True
