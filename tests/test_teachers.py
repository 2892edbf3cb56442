"""The one teacher loader: an edgekd-exported ONNX teacher keeps its own statistics; KD takes every teacher kind."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from edgekd import names
from edgekd.cli import app
from edgekd.config import TrainConfig, build_config
from edgekd.data import load_dataset
from edgekd.data.loader import BatchLoader
from edgekd.export.pipeline import ExportOptions, run_export
from edgekd.models import build_model
from edgekd.train.checkpoint import build_payload, save_checkpoint
from edgekd.train.kd import KDMethod
from edgekd.train.loop import train
from edgekd.train.model import TrainingModel
from edgekd.train.teachers import load_teacher

SPEC = "synthetic:n_train=200,n_test=60"
# statistics far from the synthetic data's (about 0.45 / 0.25): a teacher fed the student's would differ clearly
TEACHER_MEAN = (0.2, 0.6, 0.35)
TEACHER_STD = (0.5, 0.15, 0.3)


@pytest.fixture(scope="module")
def data():
    return load_dataset(SPEC, 0.2, 0)


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEKD_CACHE", str(tmp_path / "cache"))


def x01_of(data, n: int = 16) -> torch.Tensor:
    """The first `n` training images as (n, C, H, W) floats in [0, 1]."""
    return torch.from_numpy(data.x_train[:n]).permute(0, 3, 1, 2).float() / 255


def normalized(x01: torch.Tensor, mean, std) -> torch.Tensor:
    return (x01 - torch.tensor(mean).view(1, -1, 1, 1)) / torch.tensor(std).view(1, -1, 1, 1)


@pytest.fixture(scope="module")
def teacher_files(tmp_path_factory, data):
    """One teacher model (trained with its own mean/std) as a checkpoint, an edgekd ONNX export,
    a TorchScript file and a logits file."""
    root = tmp_path_factory.mktemp("teachers")
    tm = TrainingModel(build_model("tiny", num_classes=data.num_classes)).eval()
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():  # weights of O(1) logits (a fresh head's are ~0.01: any input would look alike)
        for name, t in tm.state_dict().items():
            if t.is_floating_point() and t.ndim > 0:
                t.copy_(torch.rand(t.shape, generator=g) + 0.5 if name.endswith("running_var")
                        else torch.randn(t.shape, generator=g) * 0.3)
    facts = SimpleNamespace(spec=data.spec, class_names=data.class_names, input_shape=data.input_shape,
                            mean=TEACHER_MEAN, std=TEACHER_STD)
    ckpt = root / "teacher.pt"
    save_checkpoint(ckpt, build_payload(TrainConfig(model="tiny", data=SPEC), tm, facts))
    run_export(ExportOptions(ckpt=str(ckpt), out=str(root / "export")), log=lambda s: None, data=data)
    onnx = root / "export" / names.MODEL_ONNX  # with manifest.json beside it
    lone = root / "lone" / "teacher.onnx"  # the model file alone: its manifest is only in its metadata
    lone.parent.mkdir()
    shutil.copy(onnx, lone)
    module = tm.student.eval()
    ts = root / "teacher.ts"
    torch.jit.save(torch.jit.trace(module, torch.randn(2, *data.input_shape)), str(ts))
    n_raw = len(data.train_ids) + len(data.val_ids)
    logits = root / "teacher.npy"
    np.save(logits, np.random.default_rng(0).normal(size=(n_raw, data.num_classes)).astype(np.float32))
    return SimpleNamespace(ckpt=ckpt, onnx=onnx, lone=lone, ts=ts, logits=logits, module=module)


def test_exported_onnx_teacher_uses_its_own_normalisation(teacher_files, data):
    x01 = x01_of(data)
    with torch.no_grad():
        own = teacher_files.module(normalized(x01, TEACHER_MEAN, TEACHER_STD))
        students = teacher_files.module(normalized(x01, data.mean, data.std))
    assert (own - students).abs().max() > 0.1 * own.abs().max()  # the two statistics really give other logits
    for path in (teacher_files.onnx, teacher_files.lone):
        t = load_teacher(path, data)
        assert t.kind == "onnx"
        assert t.mean == pytest.approx(TEACHER_MEAN) and t.std == pytest.approx(TEACHER_STD), path
        assert torch.allclose(t.run(x01), own, atol=1e-4), path
    # the checkpoint it was exported from agrees
    assert torch.allclose(load_teacher(teacher_files.ckpt, data).run(x01), own, atol=1e-4)


def _kd_cfg(out: Path, teacher: Path, **kw):
    opts = dict(model="tiny", method="kd", teacher=str(teacher), epochs=1, batch_size=32, out=str(out), data=SPEC,
                val_fraction=0.2, max_steps_per_epoch=2, progress=False)
    opts.update(kw)
    return build_config(overrides=opts)


@pytest.mark.parametrize("kind", ["ckpt", "onnx", "ts", "logits"])
def test_kd_method_takes_every_teacher_kind(teacher_files, data, tmp_path, kind):
    path = getattr(teacher_files, kind)
    method = KDMethod(_kd_cfg(tmp_path / "unused", path), data, torch.device("cpu"))
    loader = BatchLoader(data.x_train, data.y_train, 16, data.mean, data.std, train=True, seed=0)
    batch = next(iter(loader))
    got = method.teacher_logits(batch)
    if kind == "logits":  # the file's row of each image, by the reader's train ids
        table = np.load(path)
        want = torch.from_numpy(table[data.train_ids[batch.index.numpy()]])
        assert torch.allclose(got, want, atol=1e-2)
    else:  # the teacher on the student's augmented images, with the teacher's own statistics (or the data's)
        mean, std = (data.mean, data.std) if kind == "ts" else (TEACHER_MEAN, TEACHER_STD)
        x01 = batch.x * torch.tensor(data.std).view(1, -1, 1, 1) + torch.tensor(data.mean).view(1, -1, 1, 1)
        with torch.no_grad():
            want = teacher_files.module(normalized(x01, mean, std))
        assert torch.allclose(got, want, atol=1e-4), kind
    res = train(_kd_cfg(tmp_path / "run", path), data, log=lambda s: None)
    assert res.summary["method"] == "kd" and 0.0 <= res.test_acc <= 100.0
    assert (tmp_path / "run" / names.BEST_CKPT).is_file()


@pytest.mark.parametrize("kind", ["onnx", "ts", "logits"])
def test_cli_train_kd_with_a_non_checkpoint_teacher(teacher_files, tmp_path, kind):
    res = CliRunner().invoke(app, ["train", "--method", "kd", "--teacher", str(getattr(teacher_files, kind)),
                                   "--model", "tiny", "--data", SPEC, "--epochs", "1", "--batch-size", "32",
                                   "--out", str(tmp_path / "run"), "--no-progress",
                                   "--set", "max_steps_per_epoch=2", "--set", "val_fraction=0.2"])
    assert res.exit_code == 0, res.output
    summary = json.loads((tmp_path / "run" / names.SUMMARY_FILE).read_text())
    assert summary["method"] == "kd"
