"""Training loop: a short run of `tiny`, checkpoints, exact resume, a killed run, NaN loss, seeds."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from edgekd import names
from edgekd.config import build_config
from edgekd.errors import CheckpointError, ConfigError, EdgekdError
from edgekd.train.checkpoint import load_checkpoint, rebuild_training_model, save_checkpoint
from edgekd.train.loop import lr_at, train

DATA = "synthetic:n_train=300,n_test=100"
DOCUMENTED_KEYS = {"model_name", "model_kwargs", "model_state", "config", "class_names", "input_shape", "mean",
                   "std", "output_kind", "data_spec", "epoch", "val_acc", "optimizer", "global_step",
                   "edgekd_version", "format", "format_version"}


def quick_cfg(out: Path, **kw):
    opts = dict(model="tiny", epochs=1, out=str(out), data=DATA, max_steps_per_epoch=3, batch_size=32,
                progress=False)
    opts.update(kw)
    return build_config(overrides=opts)


def read_metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / names.METRICS_FILE).read_text().splitlines()]


def weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["model_state"]


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_two_step_training_of_tiny_writes_the_run(tmp_path):
    logs: list[str] = []
    res = train(quick_cfg(tmp_path / "run", max_steps_per_epoch=2), log=logs.append)
    run = tmp_path / "run"
    for f in (names.CONFIG_FILE, names.METRICS_FILE, names.LAST_CKPT, names.BEST_CKPT, names.SUMMARY_FILE):
        assert (run / f).is_file(), f
    (rec,) = read_metrics(run)
    assert rec["epoch"] == 1 and rec["img_per_s"] > 0 and 0 <= rec["val_acc"] <= 100
    assert torch.isfinite(torch.tensor(rec["train_loss"]))
    summary = json.loads((run / names.SUMMARY_FILE).read_text())
    assert summary["test_acc"] == res.test_acc and summary["model"] == "tiny"
    assert any(line.startswith("done:") for line in logs)
    assert build_config(str(run / names.CONFIG_FILE)).model == "tiny"  # resolved config reloads
    assert not list(run.glob(".*.tmp"))  # atomic writes leave no temp files


def test_checkpoint_is_weights_only_and_documented(tmp_path):
    train(quick_cfg(tmp_path / "run"))
    ck = torch.load(tmp_path / "run" / names.LAST_CKPT, weights_only=True)
    assert DOCUMENTED_KEYS <= ck.keys()
    assert ck["model_name"] == "tiny" and ck["input_shape"] == [3, 32, 32] and len(ck["class_names"]) == 10
    assert ck["output_kind"] == names.LOGITS_NAME and ck["epoch"] == 1 and ck["data_spec"] == DATA
    assert ck["config"]["model"] == "tiny" and isinstance(ck["config"]["milestones"], list)
    assert "state" in ck["optimizer"] and ck["global_step"] == 3
    # rebuilt model == trained weights, in eval mode, on the same inputs
    model = rebuild_training_model(load_checkpoint(tmp_path / "run"))
    assert not model.training
    x = torch.randn(2, 3, 32, 32)
    sd = model.state_dict()
    assert all(torch.equal(sd[k], v) for k, v in ck["model_state"].items())
    assert model(x).shape == (2, 10)


def test_checkpoint_errors(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "absent.pt")
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"\x80\x04 this is not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable edgekd checkpoint"):
        load_checkpoint(corrupt)
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {"w": torch.zeros(2)}}, foreign)
    with pytest.raises(CheckpointError, match="no edgekd format marker"):
        load_checkpoint(foreign)
    pickled = tmp_path / "pickled.pt"
    torch.save({"format": "edgekd-checkpoint", "obj": Path("x")}, pickled)  # arbitrary object: refused
    with pytest.raises(CheckpointError, match="not a readable edgekd checkpoint"):
        load_checkpoint(pickled)
    partial = tmp_path / "partial.pt"
    save_checkpoint(partial, {"model_name": "tiny"})
    with pytest.raises(CheckpointError, match="incomplete"):
        load_checkpoint(partial)
    train(quick_cfg(tmp_path / "run", max_steps_per_epoch=1))
    ck = load_checkpoint(tmp_path / "run" / names.LAST_CKPT)
    ck["model_name"] = "resnet8"  # weights that do not fit the named model
    with pytest.raises(CheckpointError, match="do not fit"):
        rebuild_training_model(ck)


def test_existing_run_is_not_overwritten(tmp_path):
    train(quick_cfg(tmp_path / "run", max_steps_per_epoch=1))
    with pytest.raises(ConfigError, match="already holds a run"):
        train(quick_cfg(tmp_path / "run", max_steps_per_epoch=1))
    with pytest.raises(CheckpointError, match="cannot resume"):
        train(quick_cfg(tmp_path / "other", resume=str(tmp_path / "nothing")))


class _StopAfterEpoch(Exception):
    pass


def test_resume_continues_exactly(tmp_path):
    """2 epochs straight == 1 epoch, interrupted, then resumed to 2: identical weights and optimizer."""
    kw = dict(epochs=2, max_steps_per_epoch=4, warmup_epochs=0.5, augment=True)
    train(quick_cfg(tmp_path / "straight", **kw))

    def stop_after_first_epoch(msg: str) -> None:
        if msg.startswith("epoch 1 "):
            raise _StopAfterEpoch

    with pytest.raises(_StopAfterEpoch):
        train(quick_cfg(tmp_path / "resumed", **kw), log=stop_after_first_epoch)
    assert load_checkpoint(tmp_path / "resumed" / names.LAST_CKPT)["epoch"] == 1
    # the resumed run's stored config is a layer under the options given: epochs and steps stay the run's
    res = train(build_config(overrides=dict(resume=str(tmp_path / "resumed"), out=str(tmp_path / "ignored-out"),
                                            progress=False)), log=lambda m: None)
    assert res.out_dir == tmp_path / "resumed" and not (tmp_path / "ignored-out").exists()
    a = load_checkpoint(tmp_path / "straight" / names.LAST_CKPT)
    b = load_checkpoint(tmp_path / "resumed" / names.LAST_CKPT)
    assert a["epoch"] == b["epoch"] == 2 and a["global_step"] == b["global_step"] == 8
    assert_same_weights(a["model_state"], b["model_state"])
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert torch.equal(sa["momentum_buffer"], sb["momentum_buffer"])
    assert [r["epoch"] for r in read_metrics(tmp_path / "resumed")] == [1, 2]
    assert read_metrics(tmp_path / "resumed")[1]["val_acc"] == read_metrics(tmp_path / "straight")[1]["val_acc"]


def test_resume_with_more_epochs_extends_the_run_and_fewer_is_refused(tmp_path):
    """`--resume RUN --epochs N` is a layer over RUN's stored config: N is honoured, the rest is the run's."""
    run = tmp_path / "run"
    train(quick_cfg(run, max_steps_per_epoch=1), log=lambda m: None)
    res = train(build_config(overrides=dict(resume=str(run), epochs=2)), log=lambda m: None)
    ck = load_checkpoint(run / names.LAST_CKPT)
    assert res.epochs_run == 2 and ck["epoch"] == 2 and ck["global_step"] == 2  # 1 step per epoch, as stored
    assert [r["epoch"] for r in read_metrics(run)] == [1, 2]
    with pytest.raises(ConfigError, match="already trained 2 epochs"):
        train(build_config(overrides=dict(resume=str(run), epochs=1)), log=lambda m: None)


def test_seeded_runs_are_reproducible(tmp_path):
    train(quick_cfg(tmp_path / "a", seed=3))
    train(quick_cfg(tmp_path / "b", seed=3))
    train(quick_cfg(tmp_path / "c", seed=4))
    assert_same_weights(weights(tmp_path / "a" / names.LAST_CKPT), weights(tmp_path / "b" / names.LAST_CKPT))
    wa, wc = weights(tmp_path / "a" / names.LAST_CKPT), weights(tmp_path / "c" / names.LAST_CKPT)
    assert any(not torch.equal(wa[k], wc[k]) for k in wa)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    from edgekd.train.method import CEMethod

    real_loss = CEMethod.loss

    def loss_nan_in_epoch_2(self, model, batch, epoch):
        loss, logits = real_loss(self, model, batch, epoch)
        return (loss * float("nan") if epoch == 1 else loss), logits

    monkeypatch.setattr(CEMethod, "loss", loss_nan_in_epoch_2)
    run = tmp_path / "run"
    with pytest.raises(EdgekdError, match=r"loss became nan at epoch 2, step 1.*last good checkpoint kept"):
        train(quick_cfg(run, epochs=3))
    ck = load_checkpoint(run / names.LAST_CKPT)
    assert ck["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in ck["model_state"].values() if v.is_floating_point())


def test_lr_schedule_warmup_cosine_step():
    cfg = build_config(overrides=dict(lr=0.1, warmup_epochs=1, schedule="cosine"))
    lrs = [lr_at(cfg, s, 100, 10) for s in range(100)]
    assert lrs[0] == pytest.approx(0.01) and lrs[9] == pytest.approx(0.1)  # linear warmup over 10 steps
    assert lrs[10] == pytest.approx(0.1) and lrs[-1] < 1e-3
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))  # cosine decays monotonically
    step = build_config(overrides=dict(lr=0.1, schedule="step", milestones=[0.5, 0.75], gamma=0.1))
    assert [round(lr_at(step, s, 100, 10), 6) for s in (0, 49, 50, 74, 75, 99)] == [0.1, 0.1, 0.01, 0.01, 0.001, 0.001]


@pytest.mark.slow
def test_run_killed_mid_epoch_resumes_to_a_valid_model(tmp_path):
    """SIGKILL a training process after its first checkpoint; `--resume` finishes the run."""
    run = tmp_path / "run"
    args = [sys.executable, "-m", "edgekd", "train", "--data", "synthetic:n_train=1200,n_test=100",
            "--model", "resnet8", "--epochs", "3", "--batch-size", "64", "--out", str(run), "--threads", "1",
            "--no-progress"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    try:
        deadline = time.monotonic() + 120
        while not (run / names.LAST_CKPT).exists():
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "no checkpoint within 120 s"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (run / names.SUMMARY_FILE).exists()  # it really was cut short
    killed_at = load_checkpoint(run / names.LAST_CKPT)["epoch"]
    assert killed_at < 3
    done = subprocess.run([sys.executable, "-m", "edgekd", "train", "--resume", str(run), "--no-progress"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    ck = load_checkpoint(run / names.LAST_CKPT)
    assert ck["epoch"] == 3 and ck["global_step"] == 3 * (1080 // 64)
    epochs = [r["epoch"] for r in read_metrics(run)]
    assert epochs == sorted(set(epochs)) and epochs[-1] == 3
    summary = json.loads((run / names.SUMMARY_FILE).read_text())
    assert summary["test_acc"] > 10.0  # better than chance on 10 balanced classes: a working model
    model = rebuild_training_model(load_checkpoint(run / names.BEST_CKPT))
    assert torch.isfinite(model(torch.randn(2, 3, 32, 32))).all()
