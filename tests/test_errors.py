"""The error model (issue 16): one root, ``UserError`` for what a user can fix; the command line
prints a user's error as one line and lets anything else (a bug) keep its traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from infomax import cli
from infomax.errors import DataError, InfomaxError, MissingFileError, SettingError, UserError, is_user_error

INFOMAX = str(Path(sys.executable).parent / "infomax")


def _run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run(args, capture_output=True, text=True, timeout=300, env=env)


class OwnUserError(UserError):
    """A user's error of a module of its own."""


def test_every_user_error_keeps_its_builtin_base():
    """``except ValueError`` (tests, the service) still catches what it caught before the root."""
    from infomax.artifact import ArtifactError
    from infomax.data import DataNotFoundError
    from infomax.index import IndexLoadError, IndexMismatchError
    from infomax.index.locks import IndexLockedError
    from infomax.module import NonFiniteLossError

    for cls, base in (
        (ArtifactError, ValueError),
        (DataNotFoundError, FileNotFoundError),
        (IndexLoadError, Exception),
        (IndexMismatchError, ValueError),
        (IndexLockedError, PermissionError),
        (NonFiniteLossError, FloatingPointError),
        (SettingError, ValueError),
        (DataError, ValueError),
        (MissingFileError, FileNotFoundError),
    ):
        assert issubclass(cls, UserError) and issubclass(cls, InfomaxError) and issubclass(cls, base), cls
        assert is_user_error(cls)
    assert not is_user_error(ValueError("a bug")) and not is_user_error(FloatingPointError)
    assert not is_user_error(RuntimeError) and not is_user_error(KeyError("x"))
    assert is_user_error(FileNotFoundError(2, "No such file or directory", "/x"))  # the system's word on a path


@pytest.mark.parametrize(
    "raised,one_line",
    [
        (SettingError("threshold 2.0: must be a cosine similarity in (-1, 1]"), True),
        (DataError("/e/embeddings.json is not valid JSON"), True),
        (ValueError("a bug's ValueError"), False),
        (FloatingPointError("a bug's overflow"), False),
    ],
)
def test_the_command_line_prints_user_errors_only(monkeypatch, capsys, raised, one_line):
    import infomax.commands.duplicates

    def main(argv):
        raise raised

    monkeypatch.setattr(infomax.commands.duplicates, "main", main)
    if one_line:
        assert cli.main(["duplicates"]) == 1
        assert capsys.readouterr().err == f"infomax duplicates: error: {raised}\n"
    else:
        with pytest.raises(type(raised)):
            cli.main(["duplicates"])


def test_a_user_error_is_one_line_from_the_real_command(tmp_path):
    r = _run(INFOMAX, "duplicates", "--index", str(tmp_path / "nowhere"))
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.startswith("infomax duplicates: error: --index: ") and r.stderr.count("\n") == 1, r.stderr


def test_a_bug_keeps_its_traceback_from_the_real_command(tmp_path):
    """A ValueError that is not a UserError is a bug: the command line shows where it came from."""
    code = (
        "import sys, infomax.commands.duplicates as d\n"
        "def bug(argv):\n"
        "    raise ValueError('internal: a bug, not the user')\n"
        "d.main = bug\n"
        "from infomax.cli import main\n"
        "sys.exit(main(['duplicates', '--index', 'x']))\n"
    )
    r = _run(sys.executable, "-c", code)
    assert r.returncode == 1, r.stderr
    assert "Traceback (most recent call last)" in r.stderr and "line 3, in bug" in r.stderr, r.stderr
    assert r.stderr.rstrip().endswith("ValueError: internal: a bug, not the user")
    assert "infomax duplicates: error:" not in r.stderr


def test_startup_tracebacks_are_dropped_by_the_same_definition():
    """The serve command's log filter asks ``is_user_error`` of the class the traceback names."""
    import logging
    import traceback

    from service.serve import OneLineStartupErrors

    def record(exc: Exception) -> logging.LogRecord:
        try:
            raise exc
        except Exception:
            text = traceback.format_exc()
        return logging.LogRecord("uvicorn.error", logging.ERROR, __file__, 1, text, None, None)

    quiet = OneLineStartupErrors()
    assert not quiet.filter(record(OwnUserError("bad file")))  # a class no list names: found by its module
    assert not quiet.filter(record(MissingFileError("/a/index.faiss is missing")))
    assert quiet.filter(record(FloatingPointError("a bug")))
    assert quiet.filter(record(json.JSONDecodeError("a bug's parse", "{", 0)))  # a ValueError, not a user's


# -- settings and flags: the library names a setting, the command line spells it as its flag -----


def test_a_user_error_spells_its_settings_as_asked():
    flags = {"batch_size": "--batch-size", "bank": "--bank", "queries": "--queries"}.get
    e = SettingError("batch_size 0: must be a positive integer", setting="batch_size")
    e.spell_settings(flags)
    assert str(e) == "--batch-size 0: must be a positive integer" and e.setting == "batch_size"
    e = SettingError("`bank` and `queries` go together; `seed` and batch_sizes stay", setting="bank")
    e.spell_settings(flags)
    assert str(e) == "--bank and --queries go together; `seed` and batch_sizes stay"  # unknown names stay
    e = SettingError("batch_sizes 0", setting="batch_size")  # not the setting's name: left alone
    e.spell_settings(flags)
    assert str(e) == "batch_sizes 0"


def test_each_command_knows_its_flags():
    from infomax.commands import embed
    from infomax.commands import index as index_cmd
    from infomax.commands.flags import argparse_flags, lightning_flags
    from training.train import FLAG_GROUPS

    spell = argparse_flags(embed.parser)
    assert (spell("batch_size"), spell("num_nodes"), spell("data"), spell("memory_budget")) == (
        "--batch-size",
        "--num-nodes",
        "--data",
        None,
    )
    assert argparse_flags(index_cmd.parser)("memory_budget") == "--memory-budget"  # a subcommand's flag
    assert argparse_flags(embed.parser, artifact="--model")("artifact") == "--model"
    spell = lightning_flags(FLAG_GROUPS)
    assert (spell("lr"), spell("val_size"), spell("bank_size"), spell("model.beta")) == (
        "--model.lr",
        "--data.val_size",
        "--knn.bank_size",
        "--model.beta",
    )
    assert spell("batch_size") is None  # the data module's and the k-NN monitor's: left as it is


def test_the_library_names_the_setting_and_the_command_its_flag(tmp_path, tiny_artifact):
    from infomax.grid import make_knn_grid

    with pytest.raises(SettingError, match=r"^bank_limit 0: must be a positive number of images$") as e:
        make_knn_grid(str(tiny_artifact), "cifar10", str(tmp_path / "g.png"), bank_limit=0)
    assert e.value.setting == "bank_limit" and "--" not in str(e.value)
    r = _run(
        INFOMAX,
        "knn-grid",
        "--model",
        str(tiny_artifact),
        "--data",
        "cifar10",
        "--out",
        str(tmp_path / "g.png"),
        "--bank-limit",
        "0",
    )
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr == "infomax knn-grid: error: --bank-limit 0: must be a positive number of images\n"


def test_train_spells_a_model_setting_as_its_dotted_flag(tmp_path, data_dir, monkeypatch):
    from training import train

    monkeypatch.setenv("INFOMAX_DATA_DIR", str(data_dir))
    config = str(Path(__file__).parents[1] / "training" / "configs" / "cifar10.yaml")
    with pytest.raises(SettingError, match=r"^--model\.lr=0\.0: the learning rate must be > 0$"):
        train.main(["--config", config, "--model.lr", "0", "--trainer.default_root_dir", str(tmp_path)])


# -- one way to open an artifact ----------------------------------------------------------------


def test_a_missing_artifact_folder_is_one_error_named_by_the_caller(tmp_path):
    from infomax.artifact import ArtifactError, ArtifactNotFoundError, load_encoder

    with pytest.raises(
        ArtifactNotFoundError, match=r"^model .*nowhere: no artifact folder there; give the folder written by"
    ) as e:
        load_encoder(tmp_path / "nowhere", setting="model")
    assert isinstance(e.value, FileNotFoundError) and isinstance(e.value, ArtifactError) and e.value.setting == "model"
    with pytest.raises(ArtifactNotFoundError, match=r"^/.*nowhere: no artifact folder there"):
        load_encoder(tmp_path / "nowhere")  # no setting named: the path alone
    # embed, eval and knn-grid open it the same way, and say which of their arguments was wrong
    from infomax.embed import embed
    from infomax.evaluate import evaluate_encoder
    from infomax.grid import make_knn_grid

    for call in (
        lambda: embed(tmp_path / "nowhere", "cifar10", tmp_path / "out"),
        lambda: evaluate_encoder(tmp_path / "nowhere", "cifar10"),
        lambda: make_knn_grid(str(tmp_path / "nowhere"), "cifar10", str(tmp_path / "g.png")),
    ):
        with pytest.raises(ArtifactNotFoundError, match=r"^model .*nowhere: no artifact folder there"):
            call()


def test_export_names_its_own_flag_for_a_missing_artifact(tmp_path):
    r = _run(INFOMAX, "export", "--artifact", str(tmp_path / "none"), "--out", str(tmp_path / "y"))
    assert r.returncode == 1 and r.stderr.count("\n") == 1, r.stderr
    assert r.stderr.startswith(f"infomax export: error: --artifact {tmp_path / 'none'}: no artifact folder there; ")
