"""Artifacts that serve the local feature map C(x) (``output: local``) or the vector the code's heads
read (``output: pooled``) instead of the code mu: derived with ``infomax export --artifact``, refused
where they would mix with codes, served over HTTP."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import sys

import httpx
import numpy as np
import pytest
import torch
from stress.harness import infomax_in_process
from test_service import REPO, build_index, serve
from test_service_http import serve_cli

from infomax.artifact import ArtifactError, load_encoder, record_eval
from infomax.data import load_cifar10
from infomax.evaluate import evaluate_encoder
from infomax.index import EmbeddingIndex


def export_cli(*args: str) -> subprocess.CompletedProcess:
    """`infomax export ARGS` in a new process, as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "infomax.cli", "export", *args], cwd=REPO, capture_output=True, text=True, timeout=120
    )


def export_here(*args: str) -> subprocess.CompletedProcess:
    """`infomax export ARGS` in this process (exit code and output as the command gives them)."""
    return infomax_in_process(["export", *args])


@pytest.fixture(scope="module")
def local_artifact(tiny_artifact, tmp_path_factory):
    """tiny_artifact's weights, exported again to serve the local map."""
    src = tmp_path_factory.mktemp("src") / "art"
    shutil.copytree(tiny_artifact, src)
    config = json.loads((src / "encoder.json").read_text())
    config["eval"] = {"cifar10": {"results": {"encoder": {"knn_top1": 0.5}}}}  # measured on mu: must not follow
    (src / "encoder.json").write_text(json.dumps(config))
    out = tmp_path_factory.mktemp("local") / "art"
    r = export_here("--artifact", str(src), "--out", str(out), "--output", "local")
    assert r.returncode == 0, r.stderr
    return out


def test_exporting_an_artifact_again_keeps_its_vectors_unless_told_otherwise(local_artifact, tmp_path, data_dir):
    """`infomax export --artifact models/cifar10 --out DIR --whiten --whiten-dim 256` whitens the
    artifact's local map again to another length (docs); without --output it used to fall back to
    the code mu, a different kind of vector from what the user re-exported."""
    out = tmp_path / "again"
    r = export_here(
        "--artifact", str(local_artifact), "--out", str(out), "--whiten", "--whiten-dim", "8",
        "--whiten-data", "cifar10", "--whiten-limit", "200", "--data-dir", str(data_dir),
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    again, local = load_encoder(out), load_encoder(local_artifact)
    assert again.output == "local" and again.z_dim == 8
    assert json.loads((out / "encoder.json").read_text())["whitening"]["input_dim"] == local.z_dim
    assert "(local)" in r.stderr
    r = export_here("--artifact", str(local_artifact), "--out", str(tmp_path / "mu"), "--output", "mu")
    assert r.returncode == 0, r.stderr
    assert load_encoder(tmp_path / "mu").output == "mu"


def test_a_local_artifact_serves_the_flattened_local_map(tiny_artifact, local_artifact, data_dir):
    mu_enc, loc_enc = load_encoder(tiny_artifact), load_encoder(local_artifact)
    before, after = (json.loads((p / "encoder.json").read_text()) for p in (tiny_artifact, local_artifact))
    assert (after["output"], after["format_version"]) == ("local", 2) and before.get("output", "mu") == "mu"
    assert (local_artifact / "encoder.safetensors").read_bytes() == (tiny_artifact / "encoder.safetensors").read_bytes()
    assert after["weights_sha256"] == before["weights_sha256"] and after["command"] == before["command"]
    assert after["exported_by"].startswith("infomax export --artifact") and "eval" not in after
    # Same weights, other vectors: another identity, so an index of codes never takes these vectors.
    assert loc_enc.id != mu_enc.id == before["weights_sha256"]
    images, _ = load_cifar10(data_dir, "test")
    x = images[:8]
    with torch.no_grad():
        expected = mu_enc.encoder.local_net(mu_enc.normalize(x)).flatten(1)
    assert loc_enc.z_dim == after["dim"] == expected.shape[1] == 256 * 4 * 4
    torch.testing.assert_close(loc_enc.embed(x), expected)
    torch.testing.assert_close(loc_enc(x), expected)
    torch.testing.assert_close(loc_enc.embed(x, features="mu"), mu_enc.embed(x))  # both still reachable


def test_embed_and_index_build_carry_the_local_vectors_and_their_id(local_artifact, tmp_path, data_dir):
    from infomax.commands import index as index_cmd
    from infomax.embed import embed, read_embeddings

    manifest = embed(
        local_artifact, "cifar10", tmp_path / "emb", split="test", limit=24, batch_size=8, data_dir=data_dir, progress=False
    )
    enc = load_encoder(local_artifact)
    art = manifest["artifact"]
    assert (art["id"], art["output"], art["z_dim"]) == (enc.id, "local", 4096)
    assert art["weights_sha256"] == enc.config["weights_sha256"] != enc.id
    images, _ = load_cifar10(data_dir, "test")
    np.testing.assert_allclose(read_embeddings(tmp_path / "emb").vectors, enc.embed(images[:24]).numpy(), rtol=1e-5, atol=1e-5)
    assert index_cmd.main(["build", "--embeddings", str(tmp_path / "emb"), "--out", str(tmp_path / "idx")]) == 0
    with EmbeddingIndex.load(tmp_path / "idx", expected_artifact_id=enc.id, read_only=True) as index:
        assert index.dim == 4096 and len(index) == 24


@pytest.fixture(scope="module")
def pooled_artifact(tiny_artifact, tmp_path_factory):
    """tiny_artifact's weights, exported again to serve the pooled vector."""
    out = tmp_path_factory.mktemp("pooled") / "art"
    r = export_here("--artifact", str(tiny_artifact), "--out", str(out), "--output", "pooled")
    assert r.returncode == 0, r.stderr
    return out


def test_a_pooled_artifact_serves_what_the_heads_read(tiny_artifact, pooled_artifact, data_dir):
    mu_enc, pool_enc = load_encoder(tiny_artifact), load_encoder(pooled_artifact)
    config = json.loads((pooled_artifact / "encoder.json").read_text())
    assert (config["output"], config["format_version"]) == ("pooled", 2) and pool_enc.id != mu_enc.id
    x = load_cifar10(data_dir, "test")[0][:8]
    with torch.no_grad():  # the reference recipe's encoder: global max pool of the last map
        expected = mu_enc.encoder.global_net(mu_enc.encoder.local_net(mu_enc.normalize(x))).amax(dim=(2, 3))
        heads_mu = mu_enc.encoder.mu(expected)
    assert pool_enc.z_dim == config["dim"] == expected.shape[1] == 256
    torch.testing.assert_close(pool_enc.embed(x), expected)
    torch.testing.assert_close(mu_enc.embed(x), heads_mu)  # mu is the head applied to exactly these vectors
    # eval --pooled measures the same vectors as the pooled artifact serves.
    kw = dict(data_dir=data_dir, limit_train=300, limit_test=100, probe=False, pixels=False)
    both = evaluate_encoder(tiny_artifact, "cifar10", pooled=True, **kw)
    served = evaluate_encoder(pooled_artifact, "cifar10", pooled=True, **kw)  # --pooled adds nothing here
    assert list(both["results"]) == ["encoder", "pooled"] and list(served["results"]) == ["encoder"]
    got, want = served["results"]["encoder"], both["results"]["pooled"]
    assert (got["knn_top1"], got["nn1_top1"], got["dim"]) == (want["knn_top1"], want["nn1_top1"], 256)


def test_eval_of_a_local_artifact_measures_what_it_serves(tiny_artifact, local_artifact, data_dir):
    kw = dict(data_dir=data_dir, limit_train=300, limit_test=100, probe=False, pixels=False)
    mu_report = evaluate_encoder(tiny_artifact, "cifar10", local=True, **kw)
    loc_report = evaluate_encoder(local_artifact, "cifar10", local=True, **kw)  # --local adds nothing here
    assert list(loc_report["results"]) == ["encoder"] and loc_report["artifact"]["output"] == "local"
    got, want = loc_report["results"]["encoder"], mu_report["results"]["local"]
    assert (got["knn_top1"], got["nn1_top1"], got["dim"]) == (want["knn_top1"], want["nn1_top1"], want["dim"])
    # The report records on the local artifact, and is refused by the mu one (same weights).
    art = local_artifact.parent / "recorded"
    shutil.copytree(local_artifact, art)
    record_eval(art, loc_report)
    assert json.loads((art / "encoder.json").read_text())["eval"]["cifar10"]["results"]["encoder"]["dim"] == 4096
    with pytest.raises(ArtifactError, match="not of"):
        record_eval(tiny_artifact, loc_report)


def test_bad_output_settings_are_refused_with_the_reason(tiny_artifact, local_artifact, tmp_path):
    r = export_here("--artifact", str(tiny_artifact), "--out", str(tmp_path / "x"), "--output", "logvar")
    assert r.returncode == 2 and "invalid choice: 'logvar'" in r.stderr
    r = export_here("--artifact", str(tiny_artifact), "--out", str(tiny_artifact), "--output", "local")
    assert r.returncode == 1 and "is the --artifact folder" in r.stderr and "Traceback" not in r.stderr
    r = export_here("--artifact", str(tmp_path / "none"), "--out", str(tmp_path / "y"))
    assert r.returncode == 1 and "no artifact folder" in r.stderr
    # A hand-edited encoder.json: an unknown output, or a length that is not the output's.
    for key, value, match in (("output", "logvar", "has output 'logvar'"), ("z_dim", 32, "says z_dim 32")):
        art = tmp_path / f"edited-{key}"
        shutil.copytree(local_artifact, art)
        config = json.loads((art / "encoder.json").read_text())
        config[key] = value
        (art / "encoder.json").write_text(json.dumps(config))
        with pytest.raises(ArtifactError, match=match):
            load_encoder(art)
    from infomax.callbacks import ExportArtifact

    with pytest.raises(ValueError, match="output='logvar'"):
        ExportArtifact(output="logvar")


def test_the_service_serves_local_vectors_and_refuses_an_index_of_codes(local_artifact, tiny_artifact, data_dir, tmp_path):
    folder = tmp_path / "index"
    template = build_index(folder, local_artifact, data_dir, n=40)
    with EmbeddingIndex.load(folder, read_only=True) as index:
        assert index.dim == 4096
    enc = load_encoder(local_artifact)
    with serve(["--model", str(local_artifact), "--index", str(folder), "--no-access-log"], tmp_path / "s.log") as srv:
        info = httpx.get(srv.url + "/v1/info").json()
        assert (info["output"], info["z_dim"], info["model"]) == ("local", 4096, enc.id)
        png = template["pngs"][7]
        hits = httpx.post(srv.url + "/v1/search", files={"file": ("q.png", png, "image/png")}, data={"k": "3"}).json()
        assert hits["neighbors"][0]["id"] == 7 and hits["model"] == enc.id
        codes = httpx.post(srv.url + "/v1/embed", json={"images": [base64.b64encode(png).decode()]}).json()
        assert codes["dim"] == 4096
        np.testing.assert_allclose(codes["codes"][0], enc.embed(template["pixels"][7:8])[0].numpy(), rtol=1e-4, atol=1e-4)
    # The same weights serving codes cannot take this index: the ids differ (and the lengths).
    r = serve_cli("--model", str(tiny_artifact), "--index", str(folder))
    assert r.returncode == 1 and "Traceback" not in r.stderr and r.stderr.count("\n") == 1, r.stderr
    assert "artifact mismatch" in r.stderr and str(folder) in r.stderr and "output mu" in r.stderr


@pytest.mark.parametrize(
    "arch,kwargs",
    [
        ("conv", dict(in_channels=1, input_size=28, base_width=16)),
        ("conv", dict(in_channels=3, input_size=64)),
        ("resnet18", dict(in_channels=3, input_size=32, local_stage="layer2")),
    ],
)
def test_the_recorded_length_of_local_vectors_is_the_maps(arch, kwargs, tmp_path):
    from infomax.artifact import save_artifact
    from infomax.encoders import build_encoder

    enc = build_encoder(arch, z_dim=8, **kwargs).eval()
    save_artifact(
        enc,
        tmp_path / "a",
        arch=arch,
        arch_kwargs=dict(z_dim=8, **kwargs),
        normalization={"mean": [0.5] * kwargs["in_channels"], "std": [0.25] * kwargs["in_channels"]},
        output="local",
    )
    loaded = load_encoder(tmp_path / "a")  # checks the recorded z_dim against the rebuilt encoder
    x = torch.zeros(2, kwargs["in_channels"], kwargs["input_size"], kwargs["input_size"], dtype=torch.uint8)
    with torch.no_grad():
        assert loaded.embed(x).shape == (2, loaded.z_dim) == (2, enc(x.float()).local[0].numel())


@pytest.mark.parametrize(
    "arch,kwargs,length",
    [("conv", dict(in_channels=1, input_size=28, global_width=48), 48), ("resnet18", dict(in_channels=3, input_size=32), 512)],
)
def test_the_recorded_length_of_pooled_vectors_is_the_heads_input(arch, kwargs, length, tmp_path):
    from infomax.artifact import save_artifact
    from infomax.encoders import build_encoder

    enc = build_encoder(arch, z_dim=8, **kwargs).eval()
    save_artifact(
        enc,
        tmp_path / "a",
        arch=arch,
        arch_kwargs=dict(z_dim=8, **kwargs),
        normalization={"mean": [0.5] * kwargs["in_channels"], "std": [0.25] * kwargs["in_channels"]},
        output="pooled",
    )
    loaded = load_encoder(tmp_path / "a")
    x = torch.zeros(2, kwargs["in_channels"], kwargs["input_size"], kwargs["input_size"], dtype=torch.uint8)
    assert loaded.embed(x).shape == (2, loaded.z_dim) == (2, length)


def test_save_artifact_derives_its_keys_and_refuses_them_as_extras(tmp_path):
    """DERIVED_KEYS (what `infomax export --artifact` drops from the source config) is exactly what
    save_artifact computes itself; an extra key of that set would silently override it, so it is refused."""
    from infomax.artifact import DERIVED_KEYS, save_artifact
    from infomax.encoders import build_encoder

    kwargs = dict(z_dim=8, in_channels=1, input_size=28, base_width=16)
    enc = build_encoder("conv", **kwargs).eval()
    norm = {"mean": [0.5], "std": [0.25]}
    save_artifact(enc, tmp_path / "a", arch="conv", arch_kwargs=kwargs, normalization=norm, note="kept")
    config = json.loads((tmp_path / "a" / "encoder.json").read_text())
    # ``whitening`` is derived too, and written only when the artifact whitens (tests/test_whitening.py).
    assert set(config) - {"dataset", "metrics", "command", "note"} == DERIVED_KEYS - {"whitening"} and config["note"] == "kept"
    with pytest.raises(ValueError, match=r"\['z_dim'\]"):
        save_artifact(enc, tmp_path / "b", arch="conv", arch_kwargs=kwargs, normalization=norm, z_dim=99)
    assert not (tmp_path / "b").exists()


def test_training_picks_its_best_checkpoint_by_the_vectors_it_will_serve(tmp_path, data_dir, monkeypatch):
    import pytorch_lightning as pl

    from infomax.callbacks import ExportArtifact, KNNMonitor
    from infomax.module import DeepInfoMax
    from training.train import build_cli

    monkeypatch.setenv("INFOMAX_DATA_DIR", str(data_dir))
    for output in ("local", "pooled", "mu"):
        cli = build_cli(
            [
                "--config",
                str(REPO / "training/configs/fmnist-cpu10.yaml"),
                "--export.output",
                output,
                "--trainer.default_root_dir",
                str(tmp_path),
                "--trainer.logger",
                "false",
            ]
        )
        monitor = next(cb for cb in cli.trainer.callbacks if isinstance(cb, KNNMonitor))
        export = next(cb for cb in cli.trainer.callbacks if isinstance(cb, ExportArtifact))
        assert monitor.features == export.output == output
    # What the monitor encodes for "local": the flattened local map of the normalised images.
    torch.manual_seed(0)
    module = DeepInfoMax(z_dim=16).eval()
    images, _ = load_cifar10(data_dir, "test")
    x = images[:10]
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False)
    got = KNNMonitor(features="local", batch_size=4)._encode(trainer, module, x)
    with torch.no_grad():
        expected = module.encoder(module.normalize(x)).local.flatten(1)
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(KNNMonitor(batch_size=4)._encode(trainer, module, x), module(x).detach())
    with torch.no_grad():  # "pooled": the global max pool of the last map, what the heads read
        pooled = module.encoder.global_net(module.encoder.local_net(module.normalize(x))).amax(dim=(2, 3))
    torch.testing.assert_close(KNNMonitor(features="pooled", batch_size=4)._encode(trainer, module, x), pooled)
    with pytest.raises(ValueError, match="features='logvar'"):
        KNNMonitor(features="logvar")
