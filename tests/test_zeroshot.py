"""Zero-shot teachers (`--teacher zeroshot:ENCODER.onnx,TEXT.npz`): a tiny random ONNX encoder against a
numpy reference, the one-line refusals, the teacher cache key, and end to end through kd, dho, dhkd and export."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from edgekd import names
from edgekd.cli import app
from edgekd.config import build_config
from edgekd.data import load_dataset
from edgekd.errors import EdgekdError
from edgekd.runtime.manifest import METADATA_KEY
from edgekd.train.loop import train
from edgekd.train.teachers import cache_dir, load_teacher, teacher_logits

SPEC = "synthetic:n_train=200,n_test=60"
SIZE, DIM = 40, 6  # the encoder's input side (the data's images are 32 x 32: upsampled) and embedding size
MEAN, STD = (0.48, 0.46, 0.41), (0.27, 0.26, 0.28)


@pytest.fixture(scope="module")
def data():
    return load_dataset(SPEC, 0.2, 0)


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEKD_CACHE", str(tmp_path / "cache"))


def write_encoder(path: Path, w: np.ndarray, b: np.ndarray, manifest: dict | None = None) -> Path:
    """An ONNX image encoder f(x) = flatten(x) @ w + b, (N, 3, SIZE, SIZE) -> (N, DIM); optionally with an
    edgekd manifest (flat form) in its metadata."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("Flatten", ["images"], ["flat"], axis=1), helper.make_node("MatMul", ["flat", "w"], ["mm"]),
         helper.make_node("Add", ["mm", "b"], ["embedding"])], "encoder",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["n", 3, SIZE, SIZE])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["n", DIM])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    if manifest is not None:
        helper.set_model_props(model, {METADATA_KEY: json.dumps(manifest)})
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def zs(tmp_path_factory, data):
    root = tmp_path_factory.mktemp("zeroshot")
    rng = np.random.default_rng(0)
    w_enc = (rng.normal(size=(3 * SIZE * SIZE, DIM)) * 0.05).astype(np.float32)
    b_enc = rng.normal(size=DIM).astype(np.float32)
    text_w = rng.normal(size=(data.num_classes, DIM)).astype(np.float32)
    enc = write_encoder(root / "enc.onnx", w_enc, b_enc)  # no metadata: preprocessing from the npz
    manifest = {"class_names": ["embedding"], "input_shape": [3, SIZE, SIZE], "mean": list(MEAN), "std": list(STD)}
    enc_m = write_encoder(root / "enc_manifest.onnx", w_enc, b_enc, manifest)
    classes = np.array(data.class_names)
    text = root / "text.npz"  # preprocessing given, scale 50, bilinear
    np.savez(text, embeddings=text_w, class_names=classes, logit_scale=np.array(50.0), input_size=np.array(SIZE),
             mean=np.array(MEAN), std=np.array(STD), interpolation=np.array("bilinear"))
    plain = root / "plain.npz"  # only what a text tower gives: the manifest supplies the rest, scale 100
    np.savez(plain, embeddings=text_w, class_names=classes, interpolation=np.array("bilinear"))
    keys = rng.normal(size=(7, DIM)).astype(np.float32)
    values = np.eye(data.num_classes, dtype=np.float32)[rng.integers(0, data.num_classes, 7)]
    tip = root / "tip.npz"  # Tip-Adapter-F's cache model on top
    np.savez(tip, embeddings=text_w, class_names=classes, interpolation=np.array("bilinear"), cache_keys=keys,
             cache_values=values, cache_alpha=np.array(2.0), cache_beta=np.array(5.5))
    return SimpleNamespace(root=root, enc=enc, enc_m=enc_m, text=text, plain=plain, tip=tip, w_enc=w_enc,
                           b_enc=b_enc, text_w=text_w, keys=keys, values=values)


def spec(enc: Path, text: Path) -> str:
    return f"zeroshot:{enc},{text}"


def np_bilinear(x: np.ndarray, size: int) -> np.ndarray:
    """Half-pixel bilinear resize of (N, C, h, w) to size x size, edges clamped (upsampling)."""
    def weights(n_in: int) -> np.ndarray:
        src = np.maximum((np.arange(size) + 0.5) * n_in / size - 0.5, 0.0)
        i0 = np.minimum(np.floor(src).astype(int), n_in - 1)
        i1 = np.minimum(i0 + 1, n_in - 1)
        m = np.zeros((size, n_in))
        np.add.at(m, (np.arange(size), i0), 1 - (src - i0))
        np.add.at(m, (np.arange(size), i1), src - i0)
        return m

    return np.einsum("hi,ncij,wj->nchw", weights(x.shape[2]), x, weights(x.shape[3]))


def reference(zs, x01: np.ndarray, scale: float, tip: bool = False) -> np.ndarray:
    x = (np_bilinear(x01.astype(np.float64), SIZE) - np.array(MEAN)[:, None, None]) / np.array(STD)[:, None, None]
    f = x.reshape(len(x), -1) @ zs.w_enc.astype(np.float64) + zs.b_enc
    f /= np.linalg.norm(f, axis=1, keepdims=True)
    w = zs.text_w / np.linalg.norm(zs.text_w, axis=1, keepdims=True)
    logits = scale * f @ w.T
    if tip:
        logits += 2.0 * np.exp(-5.5 * (1 - f @ zs.keys.T)) @ zs.values
    return logits


def x01_of(data, n: int = 8) -> torch.Tensor:
    return torch.from_numpy(data.x_train[:n]).permute(0, 3, 1, 2).float() / 255


@pytest.mark.parametrize("case", ["npz", "manifest", "tip"])
def test_zeroshot_logits_match_a_numpy_reference(zs, data, case):
    enc, text, scale = {"npz": (zs.enc, zs.text, 50.0), "manifest": (zs.enc_m, zs.plain, 100.0),
                        "tip": (zs.enc_m, zs.tip, 100.0)}[case]
    t = load_teacher(spec(enc, text), data)
    assert t.kind == "zeroshot" and t.num_classes == data.num_classes and t.output_kind == "logits"
    assert t.mean == pytest.approx(MEAN) and t.std == pytest.approx(STD) and t.extra["input_size"] == (SIZE, SIZE)
    assert t.describe() == f"{enc.name}+{text.name} (zeroshot)"
    x01 = x01_of(data)
    want = reference(zs, x01.numpy(), scale, tip=case == "tip")
    got = t.run(x01).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-3 * scale / 100)
    assert np.abs(want).max() > 1.0  # real logits, not a degenerate all-zero comparison
    if case == "npz":  # grayscale images reach an RGB encoder as three equal channels
        gray = x01[:, :1]
        np.testing.assert_allclose(t.run(gray).numpy(), reference(zs, gray.repeat(1, 3, 1, 1).numpy(), scale),
                                   rtol=1e-4, atol=1e-3 * scale / 100)


def test_zeroshot_refusals_are_one_line(zs, data, tmp_path):
    def refused(text_kwargs: dict | None = None, enc: Path | None = None, raw: str | None = None) -> str:
        if raw is None:
            path = tmp_path / "t.npz"
            np.savez(path, **text_kwargs)
            raw = spec(enc or zs.enc, path)
        with pytest.raises(EdgekdError) as info:
            load_teacher(raw, data)
        msg = str(info.value)
        assert "\n" not in msg
        return msg

    base = dict(embeddings=zs.text_w, class_names=np.array(data.class_names), input_size=np.array(SIZE),
                mean=np.array(MEAN), std=np.array(STD))
    assert "classes" in refused({**base, "class_names": np.array(list(data.class_names)[::-1])})  # order matters
    msg = refused({**base, "embeddings": np.ones((data.num_classes, 4), np.float32)})
    assert "outputs [1, 6]" in msg and "4-dim embeddings" in msg
    assert "mean and std are not known" in refused({k: v for k, v in base.items() if k not in ("mean", "std")})
    assert "lacks class_names" in refused({"embeddings": zs.text_w})
    assert "cannot read" in refused({**base, "class_names": np.array([object()] * data.num_classes, dtype=object)})
    assert "cache_values" in refused({**base, "cache_keys": zs.keys})
    assert "expected zeroshot:ENCODER.onnx,TEXT.npz" in refused(raw=f"zeroshot:{zs.enc}")
    assert "not found" in refused(raw=spec(zs.enc, tmp_path / "missing.npz"))


def test_zeroshot_cache_key_includes_the_text_file(zs, data, tmp_path):
    t = load_teacher(spec(zs.enc, zs.text), data)
    first = teacher_logits(t, data, "train")
    assert len(list(cache_dir().glob("*.npz"))) == 1
    torch.testing.assert_close(teacher_logits(t, data, "train"), first)  # a hit
    assert len(list(cache_dir().glob("*.npz"))) == 1
    other = tmp_path / "text2.npz"  # the same encoder, other class embeddings scale: another teacher
    with np.load(zs.text) as d:
        np.savez(other, **{k: d[k] for k in d.files if k != "logit_scale"}, logit_scale=np.array(20.0))
    t2 = load_teacher(spec(zs.enc, other), data)
    assert t2.sha256 != t.sha256
    second = teacher_logits(t2, data, "train")
    assert len(list(cache_dir().glob("*.npz"))) == 2
    torch.testing.assert_close(second.float() * 50 / 20, first.float(), rtol=2e-3, atol=2e-2)


BASE = ["--model", "tiny", "--data", SPEC, "--batch-size", "16", "--epochs", "1", "--no-progress",
        "--set", "max_steps_per_epoch=2", "--set", "val_fraction=0.2"]


def test_zeroshot_teacher_end_to_end_dho_kd_dhkd_and_export(zs, data, tmp_path):
    teacher = spec(zs.enc_m, zs.plain)
    out = tmp_path / "dho"
    args = ["train", "--method", "dho", "--teacher", teacher, "--labeled-per-class", "3", "--out", str(out), *BASE,
            "--set", "dho.teacher_cache=views", "--set", "dho.view_rounds=2"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "enc_manifest.onnx+plain.npz (zeroshot)" in res.output and "on view round 1" in res.output
    assert len(list(cache_dir().glob("views-*.npy"))) == 2
    res = CliRunner().invoke(app, [str(tmp_path / "dho2") if a == str(out) else a for a in args])  # cache hits
    assert res.exit_code == 0 and "on view round" not in res.output, res.output
    exp = CliRunner().invoke(app, ["export", str(out / names.BEST_CKPT), "--out", str(tmp_path / "export")])
    assert exp.exit_code == 0, exp.output
    assert (tmp_path / "export" / names.MODEL_ONNX).is_file()
    for method, extra in (("kd", {}), ("dhkd", {}), ("dho", dict(dho=dict(labeled_per_class=3,
                                                                          teacher_cache="clean")))):
        cfg = build_config(overrides=dict(model="tiny", method=method, teacher=teacher, data=SPEC, epochs=1,
                                          batch_size=16, max_steps_per_epoch=2, val_fraction=0.2, progress=False,
                                          out=str(tmp_path / method / "run"), **extra))
        result = train(cfg, data, log=lambda s: None)
        assert result.summary["method"] == method and np.isfinite(result.summary["test_acc"])
    assert len(list(cache_dir().glob("*.npz"))) == 1  # dho's clean cache, keyed with the text file's hash


def test_clip_export_script_is_import_safe_and_writes_what_the_loader_reads(zs, data, tmp_path):
    import importlib.util

    from edgekd.train.zeroshot import read_text_head

    path = Path(__file__).resolve().parents[1] / "deploy" / "clip" / "export_clip.py"
    module_spec = importlib.util.spec_from_file_location("export_clip", path)
    script = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(script)  # importing needs no open_clip
    assert len(script.TEMPLATES) == 18 and all("{}" in t for t in script.TEMPLATES)
    text = tmp_path / "text.npz"
    script.write_text_npz(text, zs.text_w, list(data.class_names), 100.0, SIZE, MEAN, STD, "bilinear")
    head = read_text_head(text)
    assert head.class_names == tuple(data.class_names) and head.input_size == (SIZE, SIZE)
    assert head.logit_scale == 100.0 and head.mean == pytest.approx(MEAN) and head.interpolation == "bilinear"
    t = load_teacher(spec(zs.enc, text), data)  # a teacher as the script's files make one
    np.testing.assert_allclose(t.run(x01_of(data)).numpy(), reference(zs, x01_of(data).numpy(), 100.0),
                               rtol=1e-4, atol=1e-3)
    if importlib.util.find_spec("open_clip") is None:  # here: a clear exit, not a traceback
        with pytest.raises(SystemExit, match="open_clip is not installed"):
            script.main(["--classes", "a,b", "--out", str(tmp_path / "clip")])
