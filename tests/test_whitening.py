"""PCA whitening of what an artifact serves (infomax.whitening, ``infomax export --whiten``): the
transform against its closed form and a numpy reference, the artifact that carries it, the command
that fits it, and the places that must not mix whitened and unwhitened vectors."""

from __future__ import annotations

import hashlib
import json
import shutil

import httpx
import numpy as np
import pytest
import torch
from PIL import Image
from test_artifact_output import export_cli
from test_service import build_index, serve
from test_service_http import serve_cli

from infomax.artifact import ArtifactError, load_encoder, save_artifact
from infomax.data import load_cifar10
from infomax.errors import UserError
from infomax.evaluate import evaluate_encoder, knn_eval
from infomax.identity import artifact_id
from infomax.whitening import WHITENING, fit_whitening


def correlated(n: int = 400, d: int = 12, seed: int = 0) -> torch.Tensor:
    """Vectors with a mean far from 0 and variances spread over three orders of magnitude."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(d, d, generator=g, dtype=torch.float64) * torch.logspace(0, -3, d, dtype=torch.float64)
    return (torch.randn(n, d, generator=g, dtype=torch.float64) @ mix.T + 5.0).float()


def test_whitening_is_the_inverse_square_root_of_the_ridged_covariance():
    x = correlated()
    eps = 1e-2
    w = fit_whitening(x, eps=eps)
    # Naive reference in numpy: the biased covariance, its eigenvalues, the ridge relative to the largest.
    xc = x.double().numpy() - x.double().numpy().mean(0)
    cov = xc.T @ xc / len(xc)
    lam = np.linalg.eigvalsh(cov)
    ridge = eps * lam.max()
    # Closed form, sign-free: matrix @ matrix.T = (cov + ridge I)^-1 when every direction is kept.
    m = w.matrix.double().numpy()
    np.testing.assert_allclose(m @ m.T, np.linalg.inv(cov + ridge * np.eye(len(cov))), rtol=1e-4, atol=1e-6)
    # Applied to the vectors it was fitted on: centred, uncorrelated, variance lambda / (lambda + ridge) per
    # direction, the largest first.
    y = w(x).double().numpy()
    np.testing.assert_allclose(y.mean(0), 0, atol=1e-4)
    want = np.sort(lam)[::-1] / (np.sort(lam)[::-1] + ridge)
    np.testing.assert_allclose(y.T @ y / len(y), np.diag(want), atol=2e-4)


def test_dim_keeps_the_leading_directions_and_cosine_then_ignores_the_others():
    x = correlated()
    full, top = fit_whitening(x, eps=1e-3), fit_whitening(x, eps=1e-3, dim=4)
    assert (top.in_dim, top.out_dim, full.out_dim) == (12, 4, 12)
    # The kept directions are the full transform's first four columns (up to the sign of each).
    a, b = top(x).double(), full(x).double()[:, :4]
    np.testing.assert_allclose((a * b).sum(0).abs().numpy(), (a * a).sum(0).numpy(), rtol=1e-4)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(eps=0.0), "whiten_eps=0.0"),
        (dict(eps=-1.0), "whiten_eps=-1.0"),
        (dict(eps=float("nan")), "whiten_eps=nan"),
        (dict(eps=True), "whiten_eps=True"),
        (dict(dim=0), "whiten_dim=0"),
        (dict(dim=13), "whiten_dim=13: the vectors have only 12"),
        (dict(dim=2.5), "whiten_dim=2.5"),
    ],
)
def test_bad_settings_are_refused_quoting_the_value(kwargs, match):
    with pytest.raises(ValueError, match=match):
        fit_whitening(correlated(), **kwargs)


def test_too_few_or_broken_vectors_are_refused():
    with pytest.raises(ValueError, match="N >= 2"):
        fit_whitening(torch.zeros(1, 4))
    bad = correlated()
    bad[3, 2] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        fit_whitening(bad)


# ----------------------------------------------------------------------------- the artifact


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory, data_dir):
    """60 CIFAR-10 train images as PNG files (and one unreadable file, which is left out)."""
    folder = tmp_path_factory.mktemp("photos") / "my-photos"
    folder.mkdir()
    images, _ = load_cifar10(data_dir, "train")
    for i in range(60):
        Image.fromarray(images[i].permute(1, 2, 0).numpy()).save(folder / f"{i:03d}.png")
    (folder / "broken.png").write_bytes(b"not a png")
    return folder


@pytest.fixture(scope="module")
def whitened(tiny_artifact, image_folder, tmp_path_factory):
    """tiny_artifact's weights serving their code mu whitened, fitted on the image folder."""
    from training import export

    out = tmp_path_factory.mktemp("whitened") / "art"
    # In process: the command line itself is exercised below (a refusal through `infomax export`).
    rc = export.main(
        [
            "--artifact",
            str(tiny_artifact),
            "--out",
            str(out),
            "--whiten",
            "--whiten-data",
            str(image_folder),
            "--whiten-dim",
            "16",
        ]
    )
    assert rc == 0
    return out


def test_a_whitened_artifact_serves_whitened_codes_fitted_on_the_folder(tiny_artifact, whitened, image_folder, data_dir):
    raw, white = load_encoder(tiny_artifact), load_encoder(whitened)
    config = json.loads((whitened / "encoder.json").read_text())
    record = config["whitening"]
    # What it was fitted on, without a path of this machine; 60 readable images of the 61 files.
    assert record["data"] == "my-photos" and record["images"] == 60 and str(image_folder.parent) not in json.dumps(record)
    assert (record["dim"], record["input_dim"], record["eps"], config["dim"], config["format_version"]) == (16, 32, 0.01, 16, 3)
    assert (whitened / "encoder.safetensors").read_bytes() == (tiny_artifact / "encoder.safetensors").read_bytes()
    # The same weights and output, another identity: an index of raw codes never takes whitened ones.
    assert white.id == artifact_id(config) != raw.id and white.dim == white.z_dim == 16
    # Served: the raw codes through the fitted transform; the encoder's own kinds stay raw.
    fitted = torch.stack(
        [torch.from_numpy(np.array(Image.open(image_folder / f"{i:03d}.png"))).permute(2, 0, 1) for i in range(60)]
    )
    codes = raw.embed(fitted)
    want = fit_whitening(codes, eps=0.01, dim=16)(codes)
    torch.testing.assert_close(white.embed(fitted), want, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(white(fitted), want, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(white.embed(fitted, features="mu"), codes)
    # The eval measures what is served, and --local the raw map beside it.
    kw = dict(data_dir=data_dir, limit_train=300, limit_test=100, probe=False, pixels=False)
    report = evaluate_encoder(whitened, "cifar10", local=True, **kw)
    assert report["artifact"]["whitened"] and list(report["results"]) == ["encoder", "local"]
    train, train_y = load_cifar10(data_dir, "train")
    test, test_y = load_cifar10(data_dir, "test")
    direct = knn_eval(white.embed(train[:300]), train_y[:300], white.embed(test[:100]), test_y[:100])
    assert report["results"]["encoder"]["knn_top1"] == direct["knn_top1"] and report["results"]["encoder"]["dim"] == 16


def test_a_whitened_artifact_whose_files_disagree_is_refused(whitened, tmp_path):
    broken = tmp_path / "tampered"
    shutil.copytree(whitened, broken)
    blob = bytearray((broken / WHITENING).read_bytes())
    blob[-3] ^= 0xFF
    (broken / WHITENING).write_bytes(bytes(blob))
    with pytest.raises(ArtifactError, match="does not match the whitening sha256"):
        load_encoder(broken)
    # Not a whitening at all, though the record's sha256 matches it (an edited encoder.json).
    (broken / WHITENING).write_bytes(b"not a safetensors file")
    cfg = json.loads((broken / "encoder.json").read_text())
    cfg["whitening"]["sha256"] = hashlib.sha256(b"not a safetensors file").hexdigest()
    (broken / "encoder.json").write_text(json.dumps(cfg))
    with pytest.raises(ArtifactError, match=f"{WHITENING} is not a readable whitening"):
        load_encoder(broken)
    (broken / WHITENING).unlink()
    with pytest.raises(ArtifactError, match=f"{WHITENING} is missing"):
        load_encoder(broken)
    # Written again without whitening: the stale file goes, and the artifact serves raw codes.
    shutil.copytree(whitened, tmp_path / "again")
    enc = load_encoder(whitened)
    save_artifact(
        enc.encoder,
        tmp_path / "again",
        arch=enc.config["arch"],
        arch_kwargs=enc.config["arch_kwargs"],
        normalization=enc.config["normalization"],
    )
    assert not (tmp_path / "again" / WHITENING).exists()
    config = json.loads((tmp_path / "again" / "encoder.json").read_text())
    assert "whitening" not in config and config["format_version"] == 1 and load_encoder(tmp_path / "again").dim == 32


def test_whitening_settings_are_refused_in_one_line_naming_the_flag(tiny_artifact, tmp_path):
    cases = [
        (["--whiten-eps", "0.1"], "--whiten-eps set without --whiten"),
        (["--whiten", "--whiten-eps", "0"], "--whiten-eps=0.0"),
        (["--whiten", "--whiten-dim", "33"], "--whiten-dim=33: the vectors have only 32 values"),
        (["--whiten", "--whiten-limit", "0"], "--whiten-limit 0"),
        (["--whiten", "--whiten-data", str(tmp_path / "nowhere")], "neither a data set name"),
        (["--whiten", "--whiten-data", "fmnist"], "fmnist"),  # grey 28 px images for an RGB 32 px encoder
    ]
    from training import export

    # In process (each subprocess would pay for importing torch): the error the command raises,
    # its settings spelled as flags ...
    for flags, match in cases:
        with pytest.raises(UserError) as e:
            export.main(["--artifact", str(tiny_artifact), "--out", str(tmp_path / "out"), *flags])
        assert match in str(e.value), (flags, str(e.value))
    assert not (tmp_path / "out").exists()
    # ... and once through the command line: one line, no traceback.
    r = export_cli("--artifact", str(tiny_artifact), "--out", str(tmp_path / "out"), *cases[2][0])
    assert r.returncode == 1 and cases[2][1] in r.stderr and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, r.stderr


def test_the_service_serves_whitened_vectors_and_refuses_an_index_of_raw_codes(whitened, tiny_artifact, data_dir, tmp_path):
    folder = tmp_path / "index"
    template = build_index(folder, whitened, data_dir, n=40)
    enc = load_encoder(whitened)
    with serve(["--model", str(whitened), "--index", str(folder), "--no-access-log"], tmp_path / "s.log") as srv:
        info = httpx.get(srv.url + "/v1/info").json()
        assert (info["output"], info["whitened"], info["z_dim"], info["model"]) == ("mu", True, 16, enc.id)
        png = template["pngs"][7]
        hits = httpx.post(srv.url + "/v1/search", files={"file": ("q.png", png, "image/png")}, data={"k": "3"}).json()
        assert hits["neighbors"][0]["id"] == 7
    raw_index = tmp_path / "raw-index"
    build_index(raw_index, tiny_artifact, data_dir, n=8)
    r = serve_cli("--model", str(whitened), "--index", str(raw_index))
    assert r.returncode == 1 and "Traceback" not in r.stderr and "artifact mismatch" in r.stderr, r.stderr
    assert "output mu, whitened" in r.stderr


def test_a_recorded_duplicates_threshold_is_the_default_of_the_command_and_the_service(tiny_artifact, data_dir, tmp_path, here):
    """Whitened vectors score far lower than codes: the threshold measured for an artifact's vectors
    travels artifact -> embeddings -> index record, and is what `infomax duplicates` and
    GET /v1/items/{id}/duplicates use unless told otherwise; another export of the weights drops it."""
    from infomax.commands import duplicates as dup_cmd
    from infomax.commands import index as index_cmd
    from infomax.duplicates import DEFAULT_THRESHOLD, find_duplicates
    from infomax.embed import embed
    from infomax.index import EmbeddingIndex

    art = tmp_path / "art"
    r = here(
        "export", "--artifact", str(tiny_artifact), "--out", str(art), "--duplicates-threshold", "0.5",
        "--whiten", "--whiten-data", "cifar10", "--whiten-limit", "500", "--data-dir", str(data_dir),
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert json.loads((art / "encoder.json").read_text())["duplicates_threshold"] == 0.5
    embed(art, "cifar10", tmp_path / "emb", split="test", limit=40, batch_size=20, data_dir=data_dir, progress=False)
    assert index_cmd.main(["build", "--embeddings", str(tmp_path / "emb"), "--out", str(tmp_path / "idx")]) == 0
    assert json.loads((tmp_path / "idx" / "index.json").read_text())["artifact"]["duplicates_threshold"] == 0.5
    with EmbeddingIndex.load(tmp_path / "idx", read_only=True) as index:
        want = [g.to_dict() for g in find_duplicates(index, 0.5)]
        assert want != [g.to_dict() for g in find_duplicates(index, DEFAULT_THRESHOLD)]  # the default would differ
    assert dup_cmd.main(["--index", str(tmp_path / "idx"), "--format", "json", "--out", str(tmp_path / "d.json")]) == 0
    got = json.loads((tmp_path / "d.json").read_text())
    assert got["threshold"] == 0.5 and got["groups"] == want
    with serve(["--model", str(art), "--index", str(tmp_path / "idx"), "--no-access-log"], tmp_path / "s.log") as srv:
        answer = httpx.get(srv.url + "/v1/items/0/duplicates").json()
        assert answer["threshold"] == 0.5
        assert httpx.get(srv.url + "/v1/items/0/duplicates", params={"threshold": 0.97}).json()["threshold"] == 0.97
    from training import export

    assert export.main(["--artifact", str(art), "--out", str(tmp_path / "again"), "--output", "local"]) == 0
    assert "duplicates_threshold" not in json.loads((tmp_path / "again" / "encoder.json").read_text())
    with pytest.raises(UserError, match="1.5"):
        export.main(["--artifact", str(art), "--out", str(tmp_path / "bad"), "--duplicates-threshold", "1.5"])
    assert not (tmp_path / "bad").exists()


def test_a_checkpoint_exports_whitened_only_with_images_to_fit_on(tmp_path, data_dir):
    """`export --checkpoint --whiten`: a checkpoint names no data set, so the images come from
    --whiten-data (or --dataset), refused before anything is written; with them the artifact
    serves its vectors whitened, the checkpoint's weights unchanged."""
    from infomax.module import DeepInfoMax
    from training import export

    torch.manual_seed(0)
    module = DeepInfoMax(z_dim=32)
    ckpt = tmp_path / "run" / "best.ckpt"
    ckpt.parent.mkdir()
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}, ckpt)
    with pytest.raises(UserError, match="--whiten-data"):
        export.main(["--checkpoint", str(ckpt), "--out", str(tmp_path / "a"), "--whiten"])
    assert not (tmp_path / "a").exists()
    flags = ["--whiten", "--whiten-data", "cifar10", "--whiten-limit", "300", "--data-dir", str(data_dir)]
    assert export.main(["--checkpoint", str(ckpt), "--out", str(tmp_path / "a"), *flags]) == 0
    enc = load_encoder(tmp_path / "a")
    assert enc.whitening is not None and enc.config["whitening"]["images"] == 300
    images, _ = load_cifar10(data_dir, "train")
    with torch.no_grad():
        torch.testing.assert_close(enc.embed(images[:8], features="mu"), module.eval()(images[:8]), rtol=1e-4, atol=1e-4)
    codes = enc.embed(images[:300], features="mu")
    torch.testing.assert_close(enc.embed(images[:300]), fit_whitening(codes)(codes), rtol=1e-4, atol=1e-4)
