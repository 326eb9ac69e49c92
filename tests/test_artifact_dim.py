"""``dim`` in ``encoder.json``: the length of the served vectors (issue 16), beside ``arch_kwargs.z_dim``,
the code's dimension. Artifacts written before the name changed record it as ``z_dim`` and still load,
with the same identity, so the indexes built with them still pair."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from infomax.artifact import ArtifactError, load_encoder
from infomax.identity import served_dim

INFOMAX = str(Path(sys.executable).parent / "infomax")


def _as_older_infomax_wrote_it(art: Path, out: Path) -> Path:
    """A copy of ``art`` whose encoder.json records the served length as ``z_dim``, in its place."""
    shutil.copytree(art, out)
    config = json.loads((out / "encoder.json").read_text())
    config = {("z_dim" if k == "dim" else k): v for k, v in config.items()}
    (out / "encoder.json").write_text(json.dumps(config, indent=2))
    return out


@pytest.fixture(scope="module")
def local_art(tiny_artifact, tmp_path_factory):
    """tiny_artifact's weights serving the flattened local map: a served length (4096) that is not
    arch_kwargs.z_dim (32)."""
    out = tmp_path_factory.mktemp("local") / "art"
    r = subprocess.run(
        [INFOMAX, "export", "--artifact", str(tiny_artifact), "--out", str(out), "--output", "local"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    return out


def test_a_new_artifact_records_dim_and_not_z_dim(tiny_artifact, local_art):
    for art, length in ((tiny_artifact, 32), (local_art, 4096)):
        config = json.loads((art / "encoder.json").read_text())
        assert config["dim"] == length and "z_dim" not in config and config["arch_kwargs"]["z_dim"] == 32
        enc = load_encoder(art)
        assert enc.dim == enc.z_dim == length == served_dim(config)


def test_an_artifact_that_records_z_dim_still_loads_as_it_did(tiny_artifact, local_art, tmp_path):
    x = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
    for art in (tiny_artifact, local_art):
        old = _as_older_infomax_wrote_it(art, tmp_path / art.name / "old")
        assert "dim" not in json.loads((old / "encoder.json").read_text())
        new_enc, old_enc = load_encoder(art), load_encoder(old)
        assert (old_enc.dim, old_enc.z_dim, old_enc.id) == (new_enc.dim, new_enc.dim, new_enc.id)
        torch.testing.assert_close(old_enc.embed(x), new_enc.embed(x))
        # a recorded length that is not the encoder's is still refused, under the old name too
        config = json.loads((old / "encoder.json").read_text())
        (old / "encoder.json").write_text(json.dumps({**config, "z_dim": 31}))
        with pytest.raises(ArtifactError, match="says z_dim 31"):
            load_encoder(old)


def test_exporting_an_old_artifact_again_writes_dim(local_art, tmp_path):
    old = _as_older_infomax_wrote_it(local_art, tmp_path / "old")
    r = subprocess.run(
        [INFOMAX, "export", "--artifact", str(old), "--out", str(tmp_path / "again"), "--output", "mu"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    config = json.loads((tmp_path / "again" / "encoder.json").read_text())
    assert config["dim"] == 32 and "z_dim" not in config and load_encoder(tmp_path / "again").dim == 32


def test_serve_checks_the_length_of_an_old_artifact_against_the_index(local_art, tmp_path):
    """The serve command's torch-free pre-flight reads the served length under either name."""
    from service.serve import _check_pairing

    old = _as_older_infomax_wrote_it(local_art, tmp_path / "old")
    index = tmp_path / "index"
    index.mkdir()
    (index / "index.json").write_text(json.dumps({"dim": 32, "artifact": None}))
    for art in (local_art, old):
        with pytest.raises(ValueError, match="makes 4096-dimensional vectors but the index"):
            _check_pairing(art, index)
