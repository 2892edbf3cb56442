"""KD, PS-KD and LSSKD: rotation/joint labels, auxiliary classifiers, gradients, resume, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from edgekd import names
from edgekd.cli import app
from edgekd.config import LSSKDConfig, build_config
from edgekd.errors import ConfigError, EdgekdError
from edgekd.heads.aux import attach_aux_heads, build_aux_head, resolve_aux_stages
from edgekd.losses.lsskd import joint_labels, rotate_batch
from edgekd.models import ZOO, ModuleStudent, build_model
from edgekd.train.checkpoint import load_checkpoint, rebuild_training_model
from edgekd.train.evaluate import class_scores
from edgekd.train.loop import train
from edgekd.train.model import TrainingModel
from edgekd.train.selfkd import lsskd_forward

SYNTH = "synthetic:n_train=200,n_test=40"


def _cfg(tmp: Path, **kw):
    base = dict(model="tiny", epochs=1, out=str(tmp), data=SYNTH, max_steps_per_epoch=2, batch_size=16,
                eval_batch_size=64, progress=False)
    base.update(kw)
    return build_config(overrides=base)


# ---------------------------------------------------------------- rotations and joint labels

def test_rotate_batch_layout_and_direction():
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).view(1, 1, 2, 2).repeat(2, 1, 1, 1)
    x[1] += 10
    r = rotate_batch(x)
    assert r.shape == (8, 1, 2, 2)
    torch.testing.assert_close(r[0, 0], x[0, 0])
    torch.testing.assert_close(r[1, 0], torch.tensor([[2.0, 4.0], [1.0, 3.0]]))  # 90 degrees counter-clockwise
    torch.testing.assert_close(r[2, 0], torch.tensor([[4.0, 3.0], [2.0, 1.0]]))  # 180
    torch.testing.assert_close(r[3, 0], torch.tensor([[3.0, 1.0], [4.0, 2.0]]))  # 270
    torch.testing.assert_close(r[4:8], rotate_batch(x[1:2]))  # image 1 occupies rows 4..7
    torch.testing.assert_close(r[0::4], x)  # upright rows
    with pytest.raises(EdgekdError, match="square"):
        rotate_batch(torch.zeros(1, 3, 4, 6))


def test_joint_labels_match_rotation_rows_and_evaluation():
    y = torch.tensor([2, 0, 9])
    assert joint_labels(y).tolist() == [8, 9, 10, 11, 0, 1, 2, 3, 36, 37, 38, 39]
    # a head that is certain of joint label 4c + k must score class c in evaluation
    z = torch.nn.functional.one_hot(joint_labels(y), 40).float() * 5
    assert class_scores(z, 10).argmax(1).tolist() == [2, 2, 2, 2, 0, 0, 0, 0, 9, 9, 9, 9]


# ---------------------------------------------------------------- auxiliary classifiers

@pytest.mark.parametrize("name", list(ZOO))
@pytest.mark.parametrize("branch", ["hsakd", "light"])
def test_aux_heads_on_every_zoo_model(name, branch):
    torch.manual_seed(0)
    student = build_model(name, num_classes=5)
    before = set(student.state_dict())
    model = attach_aux_heads(TrainingModel(student), LSSKDConfig(branch=branch), 5).eval()
    stages = resolve_aux_stages(student, ())
    assert sorted(model.aux_heads) == [str(s) for s in stages] and len(stages) == len(student.stage_info) - 1
    assert set(student.state_dict()) == before  # nothing was added to the deployable student
    assert all(k.startswith(("student.", "aux_heads.", "mix_")) for k in model.state_dict())
    with torch.no_grad():
        heads = model.heads(torch.randn(2, 3, 32, 32))
    for s in stages:
        assert heads[f"aux{s}"].shape == (2, 20)


def test_hsakd_branch_is_a_fresh_copy_of_the_later_stages():
    torch.manual_seed(0)
    student = build_model("resnet8", num_classes=10)
    head = build_aux_head(student, 0, 10, "hsakd")
    copied = head.features[0]  # copy of stage 1
    assert type(copied) is type(student.stages[1])
    w_copy = dict(copied.named_parameters())
    w_orig = dict(student.stages[1].named_parameters())
    assert w_copy.keys() == w_orig.keys()
    assert all(p.data_ptr() != w_orig[k].data_ptr() for k, p in w_copy.items())
    assert not torch.equal(w_copy["0.conv1.weight"], w_orig["0.conv1.weight"])  # re-initialised
    light = build_aux_head(student, 0, 10, "light")
    assert sum(p.numel() for p in light.parameters()) < sum(p.numel() for p in head.parameters())


def test_aux_stage_selection_and_errors():
    student = build_model("resnet20")
    assert resolve_aux_stages(student, (2, 0, 0)) == (0, 2)
    with pytest.raises(ConfigError, match="out of range"):
        resolve_aux_stages(student, (3,))
    with pytest.raises(ConfigError, match="branch"):
        build_aux_head(student, 0, 10, "heavy")


class _UserNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
        self.block1 = nn.Sequential(nn.Conv2d(8, 16, 3, 2, 1), nn.BatchNorm2d(16), nn.ReLU())
        self.block2 = nn.Sequential(nn.Conv2d(16, 24, 3, 2, 1), nn.BatchNorm2d(24), nn.ReLU())
        self.fc = nn.Linear(24, 4)

    def forward(self, x):
        x = self.block2(self.block1(self.conv(x)))
        return self.fc(x.mean((2, 3)))


@pytest.mark.parametrize("branch", ["hsakd", "light"])
def test_aux_heads_on_a_user_module_by_stage_index(branch):
    torch.manual_seed(0)
    student = ModuleStudent(_UserNet(), ["block1", "block2"], "fc", input_shape=(3, 16, 16))
    model = attach_aux_heads(TrainingModel(student), LSSKDConfig(branch=branch, stages=(0, 1)), 4)
    x = torch.randn(3, 3, 16, 16)
    out = lsskd_forward(model, x, torch.tensor([0, 1, 3]), LSSKDConfig(branch=branch))
    assert out.main_logits.shape == (3, 4) and torch.isfinite(out.loss)
    out.loss.backward()
    with torch.no_grad():
        model.eval()
        heads = model.heads(x)
        torch.testing.assert_close(heads["main"], student(x))
    assert heads["aux0"].shape == heads["aux1"].shape == (3, 16)
    assert student._captured == []  # the copied stages do not feed the student's capture hooks


def test_aux_losses_reach_the_backbone_but_not_the_main_head():
    torch.manual_seed(0)
    student = build_model("tiny", num_classes=10)
    model = attach_aux_heads(TrainingModel(student), LSSKDConfig(), 10)
    cfg = LSSKDConfig(main_ce_weight=0.0, aux_ce_weight=1.0, layer_kd_weight=0.0, ensemble_kd_weight=0.0)
    out = lsskd_forward(model, torch.randn(4, 3, 32, 32), torch.tensor([1, 2, 3, 4]), cfg)
    out.loss.backward()
    stem_grad = student.stem[0].weight.grad
    stage_grad = student.stages[0][0][0].weight.grad
    assert stem_grad is not None and stem_grad.abs().sum() > 0
    assert stage_grad is not None and stage_grad.abs().sum() > 0
    assert student.head.weight.grad is None or student.head.weight.grad.abs().sum() == 0
    assert all(p.grad is not None for p in model.aux_heads.parameters())


# ---------------------------------------------------------------- training, checkpoints, resume

class _Stop(Exception):
    pass


def _stop_after_first_epoch(line: str) -> None:
    if line.startswith("epoch 1 "):
        raise _Stop


@pytest.mark.parametrize("method,extra", [("lsskd", {"lsskd": {"progressive": True, "branch": "light"}}),
                                          ("pskd", {})])
def test_interrupted_run_resumes_to_the_same_weights(tmp_path, method, extra):
    kw = dict(method=method, epochs=2, schedule="constant", lr=0.05, **extra)
    full = train(_cfg(tmp_path / "full", **kw), log=lambda s: None)
    with pytest.raises(_Stop):
        train(_cfg(tmp_path / "cut", **kw), log=_stop_after_first_epoch)
    assert load_checkpoint(tmp_path / "cut" / names.LAST_CKPT)["epoch"] == 1
    resumed = train(build_config(overrides=dict(resume=str(tmp_path / "cut"), progress=False)), log=lambda s: None)
    assert resumed.epochs_run == 2
    a = load_checkpoint(full.out_dir / names.LAST_CKPT)
    b = load_checkpoint(tmp_path / "cut" / names.LAST_CKPT)
    assert b["epoch"] == 2
    for k, v in a["model_state"].items():
        torch.testing.assert_close(b["model_state"][k], v, rtol=0, atol=1e-6, msg=k)
    buf_a, buf_b = a["method_state"]["buffer"], b["method_state"]["buffer"]
    assert buf_a["pred"].dtype == torch.float16 and buf_a["pred"].shape == (180, 10)
    assert bool(buf_a["seen"].any())
    torch.testing.assert_close(buf_b["pred"], buf_a["pred"], rtol=0, atol=0)
    assert torch.equal(buf_b["seen"], buf_a["seen"])


def test_lsskd_checkpoint_rebuilds_without_data_and_keeps_aux_out_of_student(tmp_path):
    res = train(_cfg(tmp_path / "run", method="lsskd"), log=lambda s: None)
    ck = load_checkpoint(res.out_dir / names.BEST_CKPT)
    assert any(k.startswith("aux_heads.0.") for k in ck["model_state"])
    model = rebuild_training_model(ck)  # edgekd.train.model.lsskd_model from the stored config, no data
    assert list(model.aux_heads) == ["0"]
    assert not any("aux" in k for k in model.student.state_dict())
    assert "test_acc_aux0" in res.summary


# ---------------------------------------------------------------- CLI

runner = CliRunner()


@pytest.fixture(scope="module")
def teacher_ckpt(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("teacher")
    train(_cfg(out / "t", method="ce", model="tiny"), log=lambda s: None)
    return out / "t" / names.BEST_CKPT


def _invoke(args: list[str]):
    return runner.invoke(app, ["train", "--model", "tiny", "--epochs", "1", "--batch-size", "16", "--no-progress",
                               "--set", "max_steps_per_epoch=2", "--set", "eval_batch_size=64", *args])


@pytest.mark.parametrize("method", ["lsskd", "kd", "pskd"])
def test_cli_train_methods(tmp_path, method, teacher_ckpt):
    args = ["--method", method, "--data", SYNTH, "--out", str(tmp_path / "run")]
    if method == "kd":
        args += ["--teacher", str(teacher_ckpt)]
    if method == "lsskd":
        args += ["--set", "lsskd.branch=light"]
    res = _invoke(args)
    assert res.exit_code == 0, res.output
    summary = json.loads((tmp_path / "run" / names.SUMMARY_FILE).read_text())
    assert summary["method"] == method and 0.0 <= summary["test_acc"] <= 100.0
    assert ("test_acc_aux0" in summary) == (method == "lsskd")
    assert (tmp_path / "run" / names.BEST_CKPT).is_file()


def test_cli_kd_refuses_bad_teachers(tmp_path, teacher_ckpt):
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {"w": torch.zeros(2)}}, foreign)
    text = tmp_path / "notes.txt"
    text.write_text("not a checkpoint")
    small = tmp_path / "t16"
    train(_cfg(small, data="synthetic:n_train=100,n_test=20,size=16"), log=lambda s: None)
    cases = [([], "needs --teacher"),
             (["--teacher", str(tmp_path / "missing.pt")], "not found"),
             (["--teacher", str(foreign)], "not an edgekd checkpoint"),
             (["--teacher", str(text)], "not a readable edgekd checkpoint"),
             (["--teacher", str(small / names.BEST_CKPT)], "shape")]
    for i, (extra, msg) in enumerate(cases):
        res = _invoke(["--method", "kd", "--data", SYNTH, "--out", str(tmp_path / f"r{i}"), *extra])
        assert res.exit_code == 1, (extra, res.output)
        err = res.stderr if hasattr(res, "stderr") else res.output
        assert msg in err and "Traceback" not in res.output, (extra, err)
        assert len(err.strip().splitlines()) == 1
        assert not (tmp_path / f"r{i}" / names.LAST_CKPT).exists()


def test_kd_refuses_a_teacher_with_other_classes(tmp_path, teacher_ckpt):
    from imagedata import write_npz

    npz = write_npz(tmp_path / "three.npz", n_train=60, n_test=12, size=32, num_classes=3)
    res = _invoke(["--method", "kd", "--data", f"npz:{npz}", "--teacher", str(teacher_ckpt),
                   "--out", str(tmp_path / "r")])
    assert res.exit_code == 1
    assert "10 classes but the data has 3" in (res.stderr if hasattr(res, "stderr") else res.output)


def test_lsskd_rejects_bad_options(tmp_path):
    res = _invoke(["--method", "lsskd", "--data", SYNTH, "--out", str(tmp_path / "r"), "--set", "lsskd.pairing=ring"])
    assert res.exit_code == 1 and "pairing" in (res.stderr if hasattr(res, "stderr") else res.output)


@pytest.mark.parametrize("channels_last", [False, True])
def test_rotate_batch_is_written_once_in_the_input_layout(channels_last):
    """One preallocated (4N, C, H, W) tensor, bitwise the stacked rotations, channels-last when the input is."""
    x = torch.randn(5, 3, 8, 8)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    out = rotate_batch(x)
    want = torch.stack([torch.rot90(x, k, dims=(2, 3)) for k in range(4)], dim=1).flatten(0, 1)
    assert torch.equal(out, want)
    assert out.is_contiguous(memory_format=torch.channels_last) == channels_last
    assert out.is_contiguous() == (not channels_last)
