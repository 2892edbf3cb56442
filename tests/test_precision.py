"""Training precision: the `auto` resolver (mocked CPU flags and GPUs), bf16 steps with float32 losses,
the resolved choice in config.yaml, checkpoints and the summary, fp16 refused off CUDA."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from edgekd import names
from edgekd.cli import app
from edgekd.config import LSSKDConfig, build_config
from edgekd.errors import ConfigError
from edgekd.losses.kd import kd_loss
from edgekd.models import build_model
from edgekd.train.checkpoint import load_checkpoint
from edgekd.train.loop import train
from edgekd.train.model import TrainingModel
from edgekd.train.precision import (
    autocast,
    cpu_has_bf16,
    make_grad_scaler,
    read_cpu_flags,
    resolve_precision,
)
from edgekd.train.selfkd import PredictionBuffer, lsskd_forward

CPU = torch.device("cpu")
CUDA = torch.device("cuda")
DATA = "synthetic:n_train=300,n_test=100"


# ------------------------------------------------------------------------------ resolver


@pytest.mark.parametrize("flags,want", [
    ({"avx512f", "avx512_bf16"}, "bf16"),  # Cooper Lake / Zen 4
    ({"amx_tile", "amx_bf16", "amx_int8"}, "bf16"),  # Sapphire Rapids
    ({"avx2", "avx512f", "avx512_vnni"}, "fp32"),  # AVX-512 without bf16: emulated bf16 is slower
    (set(), "fp32"),
])
def test_auto_on_cpu_follows_the_bf16_flags(flags, want):
    assert cpu_has_bf16(flags) == (want == "bf16")
    assert resolve_precision("auto", CPU, cpu_flags=flags) == want


def test_explicit_choices_and_refusals_on_cpu():
    assert resolve_precision("fp32", CPU, cpu_flags={"amx_bf16"}) == "fp32"
    assert resolve_precision("bf16", CPU, cpu_flags=set()) == "bf16"  # asked for: allowed, just slow
    with pytest.raises(ConfigError, match="fp16 trains on CUDA only"):
        resolve_precision("fp16", CPU)
    with pytest.raises(ConfigError, match="unknown precision"):
        resolve_precision("half", CPU)
    with pytest.raises(ConfigError, match="unknown precision"):
        build_config(overrides={"precision": "half"})


@pytest.mark.parametrize("bf16_gpu,auto,fp16", [(True, "bf16", "fp16"), (False, "fp32", "fp16")])
def test_auto_on_cuda_follows_the_gpu(monkeypatch, bf16_gpu, auto, fp16):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16_gpu)
    assert resolve_precision("auto", CUDA, cpu_flags={"amx_bf16"}) == auto
    assert resolve_precision("fp16", CUDA) == fp16
    if not bf16_gpu:
        with pytest.raises(ConfigError, match="no bf16 support"):
            resolve_precision("bf16", CUDA)


def test_legacy_amp_key_keeps_its_meaning():
    # runs stored before `precision` hold `amp: auto` (autocast on CUDA only): a resume keeps fp32 on a CPU
    assert resolve_precision("auto", CPU, cpu_flags={"amx_bf16"}, amp="auto") == "fp32"
    assert resolve_precision("auto", CPU, cpu_flags=set(), amp="on") == "bf16"
    assert resolve_precision("auto", CPU, cpu_flags={"amx_bf16"}, amp="off") == "fp32"
    assert resolve_precision("fp32", CPU, amp="on") == "fp32"  # an explicit precision wins


def test_cpu_flags_are_read_from_cpuinfo(tmp_path):
    x86 = tmp_path / "x86"
    x86.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx512f avx512_bf16\n\nprocessor\t: 1\nflags\t: fpu\n")
    assert read_cpu_flags(x86) == {"fpu", "sse2", "avx512f", "avx512_bf16"}  # the first core's line
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nFeatures\t: fp asimd bf16 i8mm\n")
    assert read_cpu_flags(arm) == {"fp", "asimd", "bf16", "i8mm"}
    assert not cpu_has_bf16(read_cpu_flags(arm))  # aarch64 bf16 is not what `auto` looks for
    assert read_cpu_flags(tmp_path / "missing") == frozenset()


def test_scaler_only_for_fp16():
    assert make_grad_scaler("bf16", CPU) is None and make_grad_scaler("fp32", CPU) is None
    assert isinstance(make_grad_scaler("fp16", CPU), torch.amp.GradScaler)  # built lazily; CUDA in practice


# ------------------------------------------------------------------------------ bf16 steps


def test_bf16_lsskd_step_runs_and_every_loss_is_float32():
    torch.manual_seed(0)
    from edgekd.heads.aux import build_aux_heads

    student = build_model("tiny", num_classes=4, in_channels=3)
    model = TrainingModel(student, aux_heads=build_aux_heads(student, LSSKDConfig(), 4))
    x, y = torch.randn(6, 3, 16, 16), torch.randint(0, 4, (6,))
    buf = PredictionBuffer(6, 4, CPU)
    target = buf.targets(torch.arange(6), y, 0.5)
    with autocast("bf16", CPU):
        out = lsskd_forward(model, x, y, LSSKDConfig(), main_target=target)
        assert out.main_logits.dtype == torch.bfloat16  # the forward really ran in bf16
        kd = kd_loss(out.main_logits, out.main_logits.detach() * 2, 3.0)
    assert out.loss.dtype == torch.float32 and kd.dtype == torch.float32
    assert all(t.dtype == torch.float32 for t in out.terms.values()), {k: t.dtype for k, t in out.terms.items()}
    assert torch.isfinite(out.loss)
    (out.loss + kd).backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads)
    buf.update(torch.arange(6), torch.softmax(out.main_logits.detach().float(), dim=1))
    assert buf.pred.dtype == torch.float16 and bool(buf.seen.all())


@pytest.mark.parametrize("method", ["ce", "lsskd"])
def test_bf16_run_records_its_precision(tmp_path, method):
    cfg = build_config(overrides=dict(model="tiny", method=method, epochs=1, out=str(tmp_path / "run"), data=DATA,
                                      max_steps_per_epoch=2, batch_size=32, progress=False, precision="bf16",
                                      device="cpu"))
    logs: list[str] = []
    res = train(cfg, log=logs.append)
    run = Path(res.out_dir)
    stored = yaml.safe_load((run / names.CONFIG_FILE).read_text())
    assert stored["precision"] == "bf16" and stored["amp"] is None
    for ck in (names.LAST_CKPT, names.BEST_CKPT):
        ckpt = load_checkpoint(run / ck)
        assert ckpt["config"]["precision"] == "bf16" and "grad_scaler" not in ckpt
        assert all(v.dtype != torch.bfloat16 for v in ckpt["model_state"].values())  # weights stay fp32
    assert json.loads((run / names.SUMMARY_FILE).read_text())["precision"] == "bf16"
    assert any("(bf16)" in line for line in logs)
    assert 0.0 <= res.test_acc <= 100.0


def test_auto_is_resolved_before_it_is_written(tmp_path):
    cfg = build_config(overrides=dict(model="tiny", epochs=1, out=str(tmp_path / "run"), data=DATA,
                                      max_steps_per_epoch=1, batch_size=32, progress=False, device="cpu"))
    assert cfg.precision == "auto"
    train(cfg, log=lambda m: None)
    stored = yaml.safe_load((tmp_path / "run" / names.CONFIG_FILE).read_text())
    assert stored["precision"] == resolve_precision("auto", CPU)
    assert load_checkpoint(tmp_path / "run" / names.LAST_CKPT)["config"]["precision"] == stored["precision"]


def test_cli_fp16_on_cpu_is_a_one_line_error(tmp_path):
    res = CliRunner().invoke(app, ["train", "--model", "tiny", "--data", DATA, "--device", "cpu", "--precision",
                                   "fp16", "--out", str(tmp_path / "run"), "--no-progress"])
    err = res.stderr if res.stderr_bytes is not None else res.output
    assert res.exit_code == 1, res.output
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "fp16 trains on CUDA only" in lines[0]
    assert not (tmp_path / "run" / names.LAST_CKPT).exists()

