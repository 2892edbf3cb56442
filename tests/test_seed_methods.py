"""The seed methods as their papers' code trains them (issue 17): DHKD through the CLI (both heads, both
losses, gradient alignment, resume, DDP, export with the strip proof), KD's DKD and logit-standardization
variants, DHO's official teacher view and KD weighting, and LSSKD's HSAKD deepest branch and main-head form."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from typer.testing import CliRunner

from edgekd import names
from edgekd.cli import app
from edgekd.config import TrainConfig, build_config
from edgekd.data import load_dataset
from edgekd.data.loader import Batch
from edgekd.errors import ConfigError
from edgekd.losses.dhkd import binary_kl_norm
from edgekd.losses.dkd import dkd_loss, dkd_warmup_factor
from edgekd.losses.kd import kd_loss
from edgekd.models import build_model
from edgekd.surgery import make_deploy_module
from edgekd.train.checkpoint import build_payload, load_checkpoint, rebuild_training_model, save_checkpoint
from edgekd.train.dhkd import DHKDMethod, looks_like_probabilities
from edgekd.train.dho import DHOMethod
from edgekd.train.kd import KDMethod
from edgekd.train.model import TrainingModel, build_training_model

SPEC = "synthetic:n_train=200,n_test=60"
BASE = ["--model", "tiny", "--data", SPEC, "--batch-size", "16", "--no-progress", "--set", "max_steps_per_epoch=2",
        "--set", "val_fraction=0.2"]


@pytest.fixture(scope="module")
def data():
    return load_dataset(SPEC, 0.2, 0)


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEKD_CACHE", str(tmp_path / "cache"))


def write_teacher(path: Path, data, method: str = "ce", seed: int = 3) -> Path:
    """A randomly initialised tiny teacher checkpoint (`method="dho"`: a dual head whose output is probabilities)."""
    torch.manual_seed(seed)
    cfg = TrainConfig(model="tiny", method=method, data=SPEC)
    tm = build_training_model(cfg, build_model("tiny", num_classes=data.num_classes)).eval()
    save_checkpoint(path, build_payload(cfg, tm, data))
    return path


@pytest.fixture(scope="module")
def teacher(tmp_path_factory, data):
    return write_teacher(tmp_path_factory.mktemp("teacher") / "teacher.pt", data)


def train_cli(args: list[str]):
    return CliRunner().invoke(app, ["train", *args])


def first_batch(method, data) -> Batch:
    loader = method.make_train_loader(rank=0, world_size=1, channels_last=False)
    loader.set_epoch(0)
    return next(iter(loader))


# ---------------------------------------------------------------- DHKD through the CLI

@pytest.mark.parametrize("head,loss,align", [("linear", "binary_kl_norm", False), ("mlp", "binary_kl", True)])
def test_cli_train_dhkd_with_both_heads_and_losses(tmp_path, teacher, head, loss, align):
    out = tmp_path / "run"
    res = train_cli(["--method", "dhkd", "--teacher", str(teacher), "--epochs", "1", "--out", str(out), *BASE,
                     "--set", f"dhkd.head={head}", "--set", f"dhkd.loss={loss}", "--set", f"dhkd.grad_align={align}"])
    assert res.exit_code == 0, res.output
    summary = json.loads((out / names.SUMMARY_FILE).read_text())
    assert {"test_acc", "test_acc_main", "test_acc_dhkd"} <= set(summary)
    ck = load_checkpoint(out / names.BEST_CKPT)
    assert ck["output_kind"] == "logits" and ck["config"]["dhkd"]["head"] == head
    model = rebuild_training_model(ck)  # from the stored config alone
    assert isinstance(model.logit_head, nn.Linear if head == "linear" else nn.Sequential)
    assert model.kd_head is None and not model.aux_heads
    x = torch.randn(3, 3, 32, 32)
    assert torch.equal(model(x), model.student(x))  # the aux head never reaches the output


def test_dhkd_loss_is_gamma_ce_plus_alpha_binary_kl_on_the_teachers_augmented_view(tmp_path, teacher, data):
    cfg = build_config(overrides=dict(model="tiny", method="dhkd", teacher=str(teacher), data=SPEC, batch_size=16,
                                      out=str(tmp_path / "r"), dhkd=dict(gamma=0.7, alpha=0.3, temperature=3.0)))
    method = DHKDMethod(cfg, data, torch.device("cpu"), log=None)
    model = build_training_model(cfg, build_model("tiny", num_classes=10)).train()
    batch = first_batch(method, data)
    torch.manual_seed(0)
    loss, logits = method.loss(model, batch, 0)
    # the teacher (trained with the data's normalisation) on the very images the student saw
    with torch.no_grad():
        t = method.teacher.extra["module"](batch.x)
    _, pooled = model.student.forward_features(batch.x)
    want = 0.7 * F.cross_entropy(model.student.head(pooled), batch.y) + 0.3 * binary_kl_norm(
        model.logit_head(pooled), t, 3.0)
    assert loss.item() == pytest.approx(want.item(), rel=1e-5)
    assert torch.allclose(logits, model.student.head(pooled), atol=1e-6)


def test_dhkd_resume_continues_exactly(tmp_path, teacher):
    # a constant schedule: a cosine one depends on the planned epochs, which the cut run planned as 1
    args = ["--method", "dhkd", "--teacher", str(teacher), *BASE, "--set", "dhkd.head=mlp",
            "--set", "schedule=constant"]
    assert train_cli([*args, "--epochs", "2", "--out", str(tmp_path / "straight")]).exit_code == 0
    assert train_cli([*args, "--epochs", "1", "--out", str(tmp_path / "cut")]).exit_code == 0
    res = train_cli(["--resume", str(tmp_path / "cut"), "--epochs", "2", "--no-progress"])
    assert res.exit_code == 0, res.output
    a = load_checkpoint(tmp_path / "straight" / names.LAST_CKPT)
    b = load_checkpoint(tmp_path / "cut" / names.LAST_CKPT)
    assert b["epoch"] == 2 and a["model_state"].keys() == b["model_state"].keys()
    assert any(k.startswith("logit_head.") for k in b["model_state"])
    for k, v in a["model_state"].items():
        assert torch.equal(v, b["model_state"][k]), k


def test_dhkd_export_strips_the_aux_head_with_the_proof(tmp_path, teacher, data):
    out = tmp_path / "run"
    assert train_cli(["--method", "dhkd", "--teacher", str(teacher), "--epochs", "1", "--out", str(out), *BASE,
                      "--set", "dhkd.head=mlp"]).exit_code == 0
    model = rebuild_training_model(load_checkpoint(out / names.BEST_CKPT))
    x = torch.from_numpy(data.x_val[:20]).permute(0, 3, 1, 2).float() / 255
    x = (x - torch.tensor(data.mean).view(1, -1, 1, 1)) / torch.tensor(data.std).view(1, -1, 1, 1)
    deploy, report = make_deploy_module(model, x)
    assert report.removed_modules == ["logit_head"] and report.output_kind == names.LOGITS_NAME
    plain = dict(deploy.named_parameters())
    assert plain.keys() == dict(model.student.named_parameters()).keys()  # the plain student, nothing more
    for k, p in model.student.named_parameters():
        assert torch.equal(plain[k], p), k
    with torch.no_grad():
        assert torch.equal(deploy(x), model.heads(x)["main"])  # bitwise: the training model's main head
    assert report.checks[0]["check"] == "strip" and report.checks[0]["max_abs_diff"] == 0.0
    res = CliRunner().invoke(app, ["export", str(out), "--out", str(tmp_path / "export")])
    assert res.exit_code == 0, res.output  # its ONNX graph check forbids every logit_head weight
    manifest = json.loads((tmp_path / "export" / "manifest.json").read_text())
    assert manifest["surgery"]["removed_modules"] == ["logit_head"]


def test_dhkd_refuses_what_it_cannot_distil_from(tmp_path, teacher, data, monkeypatch):
    base = ["--method", "dhkd", "--epochs", "1", *BASE]
    res = train_cli([*base, "--out", str(tmp_path / "a")])
    assert res.exit_code == 1 and "needs --teacher" in res.output
    probs = write_teacher(tmp_path / "dho.pt", data, method="dho")
    res = train_cli([*base, "--teacher", str(probs), "--out", str(tmp_path / "b")])
    assert res.exit_code == 1 and "outputs probabilities" in res.output and "Traceback" not in res.output
    ts = tmp_path / "softmax.ts"  # a TorchScript teacher does not say: its outputs on a probe batch do
    net = nn.Sequential(build_model("tiny", num_classes=10).eval(), nn.Softmax(dim=1))
    torch.jit.save(torch.jit.trace(net, torch.randn(2, 3, 32, 32)), str(ts))
    res = train_cli([*base, "--teacher", str(ts), "--out", str(tmp_path / "c")])
    assert res.exit_code == 1 and "outputs probabilities" in res.output
    table = tmp_path / "t.npy"
    import numpy as np

    np.save(table, np.zeros((len(data.train_ids) + len(data.val_ids), 10), np.float32))
    res = train_cli([*base, "--teacher", str(table), "--out", str(tmp_path / "d")])
    assert res.exit_code == 1 and "logits file" in res.output
    res = train_cli([*base, "--teacher", str(teacher), "--out", str(tmp_path / "e"), "--set", "dhkd.head=deep"])
    assert res.exit_code == 1 and "dhkd.head" in res.output
    monkeypatch.setattr("edgekd.train.dhkd.rank_and_world", lambda: (0, 2))
    cfg = build_config(overrides=dict(model="tiny", method="dhkd", teacher=str(teacher), data=SPEC,
                                      dhkd=dict(grad_align=True)))
    with pytest.raises(ConfigError, match="grad_align .* 2 processes"):
        DHKDMethod(cfg, data, torch.device("cpu"), log=None)
    assert looks_like_probabilities(torch.softmax(torch.randn(4, 5), 1))
    assert not looks_like_probabilities(torch.randn(4, 5))


@pytest.mark.slow
def test_dhkd_trains_under_ddp(tmp_path, teacher):
    from test_distributed import edgekd_train, worker_env

    env = worker_env(tmp_path)
    run = tmp_path / "ddp"
    proc = edgekd_train(["--nproc-per-node", "2", "--method", "dhkd", "--teacher", str(teacher), "--model", "tiny",
                         "--data", SPEC, "--epochs", "1", "--batch-size", "16", "--out", str(run),
                         "--set", "max_steps_per_epoch=2", "--set", "dhkd.head=mlp"], env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert load_checkpoint(run / names.LAST_CKPT)["world_size"] == 2
    proc = edgekd_train(["--nproc-per-node", "2", "--method", "dhkd", "--teacher", str(teacher), "--model", "tiny",
                         "--data", SPEC, "--epochs", "1", "--out", str(tmp_path / "ga"),
                         "--set", "dhkd.grad_align=true"], env)
    assert proc.returncode == 1 and "dhkd.grad_align" in proc.stderr and "Traceback" not in proc.stderr


# ---------------------------------------------------------------- KD variants: DKD and logit standardization

def test_cli_train_kd_with_dkd_and_logit_standardization(tmp_path, teacher):
    for i, extra in enumerate((["--set", "kd.variant=dkd"], ["--set", "kd.logit_standardize=true"],
                               ["--set", "kd.variant=dkd", "--set", "kd.logit_standardize=true"])):
        out = tmp_path / f"run{i}"
        res = train_cli(["--method", "kd", "--teacher", str(teacher), "--epochs", "1", "--out", str(out), *BASE,
                         *extra])
        assert res.exit_code == 0, res.output
        assert math.isfinite(json.loads((out / names.METRICS_FILE).read_text().splitlines()[-1])["train_loss"])
    res = train_cli(["--method", "kd", "--teacher", str(teacher), "--epochs", "1", "--out", str(tmp_path / "bad"),
                     *BASE, "--set", "kd.variant=crd"])
    assert res.exit_code == 1 and "kd.variant" in res.output


@pytest.mark.parametrize("variant,standardize", [("hinton", True), ("dkd", False), ("dkd", True)])
def test_kd_method_loss_is_the_configured_variant(tmp_path, teacher, data, variant, standardize):
    cfg = build_config(overrides=dict(model="tiny", method="kd", teacher=str(teacher), data=SPEC, epochs=24,
                                      out=str(tmp_path / "r"), kd=dict(variant=variant, logit_standardize=standardize),
                                      dkd=dict(ce_weight=0.5, alpha=2.0, beta=3.0, temperature=2.0, warmup=0.25)))
    method = KDMethod(cfg, data, torch.device("cpu"), log=None)
    model = TrainingModel(build_model("tiny", num_classes=10)).train()
    batch = first_batch(method, data)
    torch.manual_seed(0)
    t = method.teacher_logits(batch)
    for epoch in (0, 10):
        loss, logits = method.loss(model, batch, epoch)
        ce = F.cross_entropy(logits, batch.y)
        if variant == "dkd":
            ramp = min((epoch + 1) / 6, 1.0)  # warm-up over a quarter of 24 epochs
            assert dkd_warmup_factor(epoch, 24, 0.25) == pytest.approx(ramp)
            want = 0.5 * ce + dkd_loss(logits, t, batch.y, alpha=2.0, beta=3.0, temperature=2.0, warmup=ramp,
                                       standardize=standardize)
        else:
            want = 0.1 * ce + 0.9 * kd_loss(logits, t, 4.0, standardize=standardize)
        assert loss.item() == pytest.approx(want.item(), rel=1e-5)


# ---------------------------------------------------------------- DHO: the official teacher view and KD weighting

def test_dho_default_runs_the_teacher_on_the_augmented_batch_with_the_official_weighting(tmp_path, teacher, data):
    cfg = build_config(overrides=dict(model="tiny", method="dho", teacher=str(teacher), data=SPEC, batch_size=16,
                                      out=str(tmp_path / "r"), dho=dict(labeled_per_class=3)))
    assert cfg.dho.online_teacher is None and cfg.dho.kd_reduction == "split"
    method = DHOMethod(cfg, data, torch.device("cpu"), log=None)
    assert method.online and method.table is None
    model = build_training_model(cfg, build_model("tiny", num_classes=10)).train()
    batch = first_batch(method, data)
    assert method.table is None  # no cache was made: the teacher runs every step
    torch.manual_seed(0)
    loss, _ = method.loss(model, batch, 0)
    lab = batch.labeled
    t = method.teacher.run((batch.x * torch.tensor(data.std).view(1, -1, 1, 1)
                            + torch.tensor(data.mean).view(1, -1, 1, 1)))
    _, pooled = model.student.forward_features(batch.x)
    z_ce, z_kd = model.student.head(pooled), model.kd_head(pooled)
    kl = [kd_loss(z_kd[rows], t[rows], 2.0) for rows in (lab, ~lab)]  # two batch means, summed
    want = 0.5 * F.cross_entropy(z_ce[lab], batch.y[lab]) + 0.5 * (kl[0] + kl[1])
    assert bool(lab.any()) and bool((~lab).any())
    assert loss.item() == pytest.approx(want.item(), rel=1e-5)
    cached_cfg = build_config(overrides=dict(model="tiny", method="dho", teacher=str(teacher), data=SPEC,
                                             batch_size=16, dho=dict(labeled_per_class=3, online_teacher=False)))
    cached = DHOMethod(cached_cfg, data, torch.device("cpu"), log=None)
    first_batch(cached, data)
    assert not cached.online and cached.table is not None  # the explicit speed option: one pass, clean images


# ---------------------------------------------------------------- LSSKD: HSAKD's deepest branch and main-head form

def test_lsskd_hsakd_layout_and_main_head_train_and_strip(tmp_path, data):
    out = tmp_path / "run"
    res = train_cli(["--method", "lsskd", "--epochs", "1", "--out", str(out), *BASE,
                     "--set", "lsskd.deepest_branch=true", "--set", "lsskd.main_head=hsakd"])
    assert res.exit_code == 0, res.output
    model = rebuild_training_model(load_checkpoint(out / names.BEST_CKPT))
    assert sorted(model.aux_heads) == ["0", "1"]  # every stage, the last one included
    deepest = model.aux_heads["1"].features  # tiny's last stage has 2 blocks: 2 stride-1 copies + neck
    assert len(deepest) == 3 and all(not isinstance(m, nn.Identity) for m in list(deepest)[:2])
    assert {"test_acc_aux0", "test_acc_aux1"} <= set(json.loads((out / names.SUMMARY_FILE).read_text()))
    x = torch.randn(4, 3, 32, 32)
    deploy, report = make_deploy_module(model, x)
    assert report.removed_modules == ["aux_heads.0", "aux_heads.1"]
    with torch.no_grad():
        assert torch.equal(deploy(x), model(x))
    res = train_cli(["--method", "lsskd", "--epochs", "1", "--out", str(tmp_path / "bad"), *BASE,
                     "--set", "lsskd.main_head=rotated"])
    assert res.exit_code == 1 and "lsskd.main_head" in res.output


def test_hsakd_deepest_branch_of_a_one_block_stage_is_a_stride_1_block():
    from edgekd.config import LSSKDConfig
    from edgekd.heads.aux import build_aux_heads
    from edgekd.models.resnet import BasicBlock

    student = build_model("resnet8", num_classes=10)  # one block per stage: the block downsamples
    heads = build_aux_heads(student, LSSKDConfig(deepest_branch=True), 10)
    block = heads["2"].features[0]
    assert isinstance(block, BasicBlock) and block.conv1.stride == (1, 1) and isinstance(block.shortcut, nn.Identity)
    feats, _ = student.forward_features(torch.randn(2, 3, 32, 32))
    assert heads["2"](feats[2]).shape == (2, 40)
