"""DHO (issue 4): dual-head mix and its search, semi-supervised data, teachers and their cache, training."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from edgekd.cli import app
from edgekd.config import TrainConfig
from edgekd.data import load_dataset
from edgekd.data.semisup import UNLABELED, SemiSupLoader, select_labeled
from edgekd.errors import ConfigError, DataError, EdgekdError
from edgekd.heads.dual import NormalizedLinearHead, build_kd_head, mix_probs, search_mix
from edgekd.losses.dho import dho_loss, distill_kl
from edgekd.models import build_model
from edgekd.train.checkpoint import build_payload, load_checkpoint, rebuild_training_model, save_checkpoint
from edgekd.train.model import TrainingModel
from edgekd.train.teachers import cache_dir, load_teacher, teacher_logits

SPEC = "synthetic:n_train=200,n_test=60"


@pytest.fixture(scope="module")
def data():
    return load_dataset(SPEC, 0.2, 0)


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEKD_CACHE", str(tmp_path / "cache"))


def write_teacher_ckpt(path: Path, data, seed: int = 0, num_classes: int | None = None,
                       input_shape: list | None = None, model: str = "tiny", mean=None, std=None) -> Path:
    """An edgekd checkpoint of a randomly initialised model (no training needed to be a teacher)."""
    torch.manual_seed(seed)
    k = num_classes or data.num_classes
    shape = input_shape or list(data.input_shape)
    student = build_model(model, num_classes=k, in_channels=shape[0])
    tm = TrainingModel(student).eval()
    facts = SimpleNamespace(spec=data.spec, input_shape=tuple(shape), mean=mean or data.mean, std=std or data.std,
                            class_names=list(data.class_names)[:k] + [f"x{i}" for i in range(k - data.num_classes)])
    save_checkpoint(path, build_payload(TrainConfig(model=model), tm, facts))
    return path


# ---------------------------------------------------------------- mix and search

def test_mix_formula_matches_definition_and_training_model():
    torch.manual_seed(0)
    z_ce, z_kd = torch.randn(5, 4), torch.randn(5, 4) * 3
    a, b = 0.3, 1.5
    e_ce = torch.exp(z_ce) / torch.exp(z_ce).sum(1, keepdim=True)
    e_kd = torch.exp(z_kd / b) / torch.exp(z_kd / b).sum(1, keepdim=True)
    p = mix_probs(z_ce, z_kd, a, b)
    assert torch.allclose(p, a * e_ce + (1 - a) * e_kd, atol=1e-6)
    assert torch.allclose(p.sum(1), torch.ones(5), atol=1e-6)
    assert torch.allclose(mix_probs(z_ce, z_kd, 1.0, b), e_ce, atol=1e-6)  # a=1: the CE head alone
    tm = TrainingModel(build_model("tiny", num_classes=4), kd_head=build_kd_head(16, 4))
    tm.mix_alpha.fill_(a)
    tm.mix_beta.fill_(b)
    assert torch.allclose(tm.mix(z_ce, z_kd), p, atol=1e-6)


def test_search_mix_picks_the_pair_that_fixes_both_heads():
    # label 0: CE head right and confident, KD head mildly wrong; label 1: CE mildly wrong, KD right
    z_ce = torch.tensor([[2.0, 0.0], [0.5, 0.0]])
    z_kd = torch.tensor([[0.0, 1.0], [0.0, 3.0]])
    y = torch.tensor([0, 1])
    res = search_mix(z_ce, z_kd, y, alphas=[0.0, 0.5, 1.0], betas=[1.0])
    assert (res.alpha, res.beta, res.accuracy) == (0.5, 1.0, 100.0)
    assert res.grid[(0.0, 1.0)] == 50.0 and res.grid[(1.0, 1.0)] == 50.0


def test_search_mix_picks_beta_that_softens_an_overconfident_kd_head():
    z_ce = torch.tensor([[2.0, 0.0], [0.0, 2.0]])
    z_kd = torch.tensor([[0.0, 4.0], [0.0, 4.0]])  # confidently wrong on the first image
    y = torch.tensor([0, 1])
    res = search_mix(z_ce, z_kd, y, alphas=[0.5], betas=[0.5, 4.0])
    assert res.beta == 4.0 and res.accuracy == 100.0
    assert res.grid[(0.5, 0.5)] == 50.0


def test_search_mix_default_grid_matches_exhaustive_evaluation():
    g = torch.Generator().manual_seed(1)
    y = torch.randint(0, 5, (200,), generator=g)
    z_ce = torch.randn(200, 5, generator=g) + 1.5 * F.one_hot(y, 5) * (torch.rand(200, 1, generator=g) > 0.4)
    z_kd = 3 * torch.randn(200, 5, generator=g) + 4 * F.one_hot(y, 5) * (torch.rand(200, 1, generator=g) > 0.5)
    res = search_mix(z_ce, z_kd, y)
    assert len(res.grid) == 21 * 7
    best = max(100.0 * float((mix_probs(z_ce, z_kd, a, b).argmax(1) == y).float().mean())
               for a in [i / 20 for i in range(21)] for b in (0.5, 0.75, 1, 1.25, 1.5, 2, 4))
    assert math.isclose(res.accuracy, best, abs_tol=1e-4)
    assert res.accuracy >= max(res.grid[(0.0, 1.0)], res.grid[(1.0, 1.0)])


def test_normalized_kd_head_uses_fixed_scale():
    head = build_kd_head(8, 3, normalized=True, logit_scale=10.0)
    assert isinstance(head, NormalizedLinearHead)
    f = torch.randn(4, 8)
    assert torch.allclose(head(f), head(f * 7.0), atol=1e-5)  # invariant to feature norm
    assert torch.allclose(head(f), head.linear(F.normalize(f, dim=1) * 10.0), atol=1e-6)
    assert isinstance(build_kd_head(8, 3), torch.nn.Linear)


def test_dho_loss_golden_values():
    z_ce = torch.tensor([[1.0, 0.0, -1.0], [0.0, 2.0, 0.0]])
    z_kd = torch.tensor([[0.5, 0.5, 0.0], [0.0, 1.0, 1.0]])
    t = torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.0, 2.0]])
    y = torch.tensor([0, UNLABELED])
    labeled = torch.tensor([True, False])
    loss, parts = dho_loss(z_ce, z_kd, y, labeled, t, temperature=2.0, ce_weight=0.5, kd_weight=0.5)
    ce = -math.log(math.e / (math.e + 1 + math.exp(-1)))  # CE on the labeled row only
    p_t = torch.softmax(t / 2, 1)
    kl = float((p_t * (p_t.log() - torch.log_softmax(z_kd / 2, 1))).sum(1).mean()) * 4
    assert math.isclose(parts["ce"], ce, rel_tol=1e-5) and math.isclose(parts["kd"], kl, rel_tol=1e-5)
    assert math.isclose(float(loss), 0.5 * ce + 0.5 * kl, rel_tol=1e-5)
    assert float(distill_kl(t, t, 2.0)) == pytest.approx(0.0, abs=1e-6)


# ---------------------------------------------------------------- semi-supervised data

def test_labeled_subset_is_class_balanced_and_deterministic(data):
    idx = select_labeled(data.y_train, per_class=3, seed=0)
    assert np.bincount(data.y_train[idx], minlength=10).tolist() == [3] * 10
    assert np.array_equal(idx, select_labeled(data.y_train, per_class=3, seed=0))
    assert not np.array_equal(idx, select_labeled(data.y_train, per_class=3, seed=1))
    frac = select_labeled(data.y_train, fraction=0.1, seed=0)
    counts = np.bincount(data.y_train, minlength=10)
    assert np.bincount(data.y_train[frac], minlength=10).tolist() == [max(1, round(0.1 * c)) for c in counts]
    with pytest.raises(ConfigError):
        select_labeled(data.y_train, fraction=0.1, per_class=2)
    with pytest.raises(DataError):
        select_labeled(data.y_train, per_class=10_000)


def test_semisup_loader_mixes_labeled_and_unlabeled_and_shards(data):
    lab = select_labeled(data.y_train, per_class=2, seed=0)
    kw = dict(mean=data.mean, std=data.std, unlabeled_ratio=3, seed=0, train=False)
    loader = SemiSupLoader(data.x_train, data.y_train, lab, 16, **kw)
    assert loader.n_labeled == 4 and len(loader) == len(data.y_train) // 16
    seen_unl = []
    for b in loader:
        assert b.labeled.tolist() == [True] * 4 + [False] * 12
        assert set(b.index[:4].tolist()) <= set(lab.tolist()) and not set(b.index[4:].tolist()) & set(lab.tolist())
        assert torch.equal(b.y[:4], torch.from_numpy(data.y_train[b.index[:4].numpy()]))
        assert (b.y[4:] == UNLABELED).all()  # unlabeled labels never reach the loss
        x_ref = (torch.from_numpy(data.x_train[b.index.numpy()]).permute(0, 3, 1, 2).float() / 255
                 - torch.tensor(data.mean).view(1, -1, 1, 1)) / torch.tensor(data.std).view(1, -1, 1, 1)
        assert torch.allclose(b.x, x_ref, atol=1e-5)  # index names the image actually in the batch
        seen_unl += b.index[4:].tolist()
    assert len(set(seen_unl)) == len(seen_unl)  # no repeat before the unlabeled pool is exhausted
    shards = [SemiSupLoader(data.x_train, data.y_train, lab, 8, rank=r, world_size=2, **kw) for r in (0, 1)]
    assert len(shards[0]) == len(shards[1]) == len(data.y_train) // 16
    u0 = {i for b in shards[0] for i in b.index[b.labeled.logical_not()].tolist()}
    u1 = {i for b in shards[1] for i in b.index[b.labeled.logical_not()].tolist()}
    assert not u0 & u1  # ranks take disjoint shares of one permutation
    only_lab = SemiSupLoader(data.x_train, data.y_train, lab, 16, **dict(kw, unlabeled_ratio=0))
    assert all(bool(b.labeled.all()) for b in only_lab) and len(only_lab) == len(loader)


# ---------------------------------------------------------------- teachers and the cache

def test_cache_hit_miss_and_invalidation(tmp_path, data):
    t1 = write_teacher_ckpt(tmp_path / "t1.pt", data, seed=0)
    teacher = load_teacher(t1, data)
    calls = []
    run = teacher.run
    teacher.run = lambda x: calls.append(len(x)) or run(x)
    first = teacher_logits(teacher, data)
    assert first.dtype == torch.float16 and first.shape == (len(data.y_train), 10)
    assert sum(calls) == len(data.y_train) and len(list(cache_dir().glob("*.npz"))) == 1
    direct = run(torch.from_numpy(data.x_train[:8]).permute(0, 3, 1, 2).float() / 255)
    assert torch.allclose(first[:8].float(), direct, atol=2e-2, rtol=1e-2)
    calls.clear()
    again = teacher_logits(teacher, data)  # hit: the teacher does not run
    assert calls == [] and torch.equal(first, again)
    # a different teacher file (other weights, same name) is a miss
    write_teacher_ckpt(t1, data, seed=1)
    other = teacher_logits(load_teacher(t1, data), data)
    assert not torch.equal(other, first) and len(list(cache_dir().glob("*.npz"))) == 2
    # a different dataset is a miss, even with the same teacher
    data2 = load_dataset("synthetic:n_train=200,n_test=60,seed=3", 0.2, 0)
    t2 = load_teacher(t1, data2)
    calls2 = []
    run2 = t2.run
    t2.run = lambda x: calls2.append(len(x)) or run2(x)
    teacher_logits(t2, data2)
    assert sum(calls2) == len(data2.y_train) and len(list(cache_dir().glob("*.npz"))) == 3
    # a corrupt entry is rebuilt, not trusted
    for p in cache_dir().glob("*.npz"):
        p.write_bytes(b"garbage")
    calls2.clear()
    teacher_logits(t2, data2)
    assert sum(calls2) == len(data2.y_train)


def test_torchscript_and_onnx_teachers_match_the_torch_teacher(tmp_path, data):
    ck = write_teacher_ckpt(tmp_path / "t.pt", data, seed=2)
    torch_teacher = load_teacher(ck, data)
    module = torch_teacher.extra["module"].student.eval()
    example = torch.randn(2, *data.input_shape)
    ts_path = tmp_path / "teacher.ts"
    torch.jit.save(torch.jit.trace(module, example), str(ts_path))
    onnx_path = tmp_path / "teacher.onnx"
    torch.onnx.export(module, (example,), str(onnx_path), input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, opset_version=17, dynamo=False)
    x01 = torch.from_numpy(data.x_train[:16]).permute(0, 3, 1, 2).float() / 255
    ref = torch_teacher.run(x01)
    for path, kind in ((ts_path, "torchscript"), (onnx_path, "onnx")):
        t = load_teacher(path, data)
        assert t.kind == kind and t.num_classes == 10
        assert torch.allclose(t.run(x01), ref, atol=1e-4), kind
        cached = teacher_logits(t, data)
        assert torch.allclose(cached[:16].float(), ref, atol=2e-2, rtol=1e-2)


def test_mismatched_teachers_are_refused(tmp_path, data):
    def refused(path, match):
        with pytest.raises(EdgekdError, match=match) as info:
            load_teacher(path, data)
        assert "\n" not in str(info.value)

    refused(write_teacher_ckpt(tmp_path / "k5.pt", data, num_classes=5), "5 classes but the data has 10")
    refused(write_teacher_ckpt(tmp_path / "gray.pt", data, input_shape=[1, 32, 32]), r"input of shape \[1, 32, 32\]")
    module = build_model("tiny", num_classes=7).eval()
    torch.jit.save(torch.jit.trace(module, torch.randn(1, 3, 32, 32)), str(tmp_path / "k7.ts"))
    refused(tmp_path / "k7.ts", "7 classes")
    small = tmp_path / "small.onnx"
    torch.onnx.export(build_model("tiny").eval(), (torch.randn(1, 3, 16, 16),), str(small), input_names=["input"],
                      output_names=["logits"], opset_version=17, dynamo=False)
    refused(small, r"input of shape \[1, 3, 16, 16\]")
    np.save(tmp_path / "cols.npy", np.zeros((len(data.y_train), 4), np.float32))
    refused(tmp_path / "cols.npy", "4 classes")
    np.save(tmp_path / "rows.npy", np.zeros((17, 10), np.float32))
    refused(tmp_path / "rows.npy", "17 rows")
    refused(tmp_path / "missing.pt", "not found")


def test_logits_file_teacher_is_indexed_by_train_ids(tmp_path, data):
    n_raw = len(data.train_ids) + len(data.val_ids)
    table = np.random.default_rng(0).normal(size=(n_raw, 10)).astype(np.float32)
    np.savez(tmp_path / "logits.npz", logits=table)
    t = load_teacher(tmp_path / "logits.npz", data)
    got = teacher_logits(t, data)
    assert np.allclose(got.float().numpy(), table[data.train_ids], atol=1e-2)


# ---------------------------------------------------------------- training

def _run(args):
    return CliRunner().invoke(app, ["train", *args])


@pytest.fixture(scope="module")
def dho_run(tmp_path_factory, data):
    root = tmp_path_factory.mktemp("dho")
    teacher = write_teacher_ckpt(root / "teacher.pt", data, seed=5)
    out = root / "run"
    import os

    old = os.environ.get("EDGEKD_CACHE")
    os.environ["EDGEKD_CACHE"] = str(root / "cache")
    try:
        res = _run(["--method", "dho", "--teacher", str(teacher), "--labeled-per-class", "3", "--model", "tiny",
                    "--data", SPEC, "--epochs", "2", "--batch-size", "32", "--out", str(out), "--no-progress",
                    "--set", "max_steps_per_epoch=3", "--set", "val_fraction=0.2"])
    finally:
        if old is None:
            os.environ.pop("EDGEKD_CACHE", None)
        else:
            os.environ["EDGEKD_CACHE"] = old
    return res, out, teacher


def test_cli_train_dho_reports_every_head_and_stores_the_mix(dho_run):
    res, out, _ = dho_run
    assert res.exit_code == 0, res.output
    assert "30 labeled / 130 unlabeled" in res.output and "mix searched on 40 validation images" in res.output
    summary = json.loads((out / "summary.json").read_text())
    assert {"test_acc", "test_acc_main", "test_acc_kd"} <= set(summary)  # mix, CE head, KD head
    record = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert {"val_acc", "val_acc_main", "val_acc_kd"} <= set(record)
    ck = load_checkpoint(out / "best.pt")
    assert ck["output_kind"] == "probs"
    a, b = float(ck["model_state"]["mix_alpha"]), float(ck["model_state"]["mix_beta"])
    assert 0.0 <= a <= 1.0 and b in (0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 4.0)
    model = rebuild_training_model(ck)  # edgekd.train.model.dho_model from the stored config: no teacher, no data
    assert model.kd_head is not None and model.output_kind == "probs"
    x = torch.randn(3, 3, 32, 32)
    heads = model.heads(x)
    assert torch.allclose(model(x), mix_probs(heads["main"], heads["kd"], a, b), atol=1e-6)


def test_dho_mix_search_evidence_is_kept_in_summary_and_best(dho_run):
    res, out, _ = dho_run
    assert res.exit_code == 0, res.output
    summary = json.loads((out / "summary.json").read_text())
    mix = summary["dho_mix"]
    assert mix["source"] == "search" and mix["n"] == 40
    assert len(mix["betas"]) == 7 and len(mix["alphas"]) == 21
    assert [len(row) for row in mix["accuracy"]] == [21] * 7  # accuracy[b][a], percent
    chosen = mix["accuracy"][mix["betas"].index(mix["beta"])][mix["alphas"].index(mix["alpha"])]
    assert chosen == mix["val_acc_mix"] == max(max(row) for row in mix["accuracy"])
    ck = load_checkpoint(out / "best.pt")
    assert ck["train_end"]["dho_mix"] == mix  # best.pt, written through the one payload builder, holds it too
    assert float(ck["model_state"]["mix_alpha"]) == pytest.approx(mix["alpha"])
    assert float(ck["model_state"]["mix_beta"]) == pytest.approx(mix["beta"])
    # the finished best.pt keeps the best epoch's progress (not a rewrite that loses it)
    last = load_checkpoint(out / "last.pt")
    assert 1 <= ck["epoch"] <= last["epoch"] and ck["optimizer"] and "labeled_idx" in ck["method_state"]
    assert ck["val_acc"] == summary["best_val_acc"] and "train_end" not in last


def test_cli_train_dho_errors_are_one_line(dho_run, tmp_path, data):
    _, _, teacher = dho_run
    base = ["--method", "dho", "--model", "tiny", "--data", SPEC, "--epochs", "1", "--no-progress",
            "--set", "max_steps_per_epoch=1"]
    res = _run(base + ["--out", str(tmp_path / "a"), "--labeled-per-class", "3"])
    assert res.exit_code == 1 and "needs --teacher" in res.output
    bad = write_teacher_ckpt(tmp_path / "k5.pt", data, num_classes=5)
    res = _run(base + ["--out", str(tmp_path / "b"), "--teacher", str(bad)])
    assert res.exit_code == 1 and "5 classes but the data has 10" in res.output
    assert "Traceback" not in res.output


def test_dho_with_lsskd_aux_heads_and_alpha_beta_override(tmp_path, data):
    from edgekd.config import build_config
    from edgekd.train.loop import train

    teacher = write_teacher_ckpt(tmp_path / "t.pt", data)
    cfg = build_config(overrides=dict(
        model="tiny", method="dho", teacher=str(teacher), epochs=1, batch_size=32, out=str(tmp_path / "run"),
        data=SPEC, val_fraction=0.2, max_steps_per_epoch=2, progress=False,
        dho=dict(labeled_per_class=4, alpha=0.3, beta=2.0, online_teacher=True),
        lsskd=dict(stages=[0], branch="light")))
    res = train(cfg, data, log=lambda s: None)
    model = rebuild_training_model(load_checkpoint(res.out_dir / "best.pt"))
    assert "0" in model.aux_heads and model.kd_head is not None
    assert float(model.mix_alpha) == pytest.approx(0.3) and float(model.mix_beta) == pytest.approx(2.0)
    assert "test_acc_aux0" in res.summary and "test_acc_kd" in res.summary
    assert res.summary["dho_mix"] == {"alpha": pytest.approx(0.3), "beta": 2.0, "source": "override"}


# ---------------------------------------------------------------- the teacher cache of fixed augmented views

def write_loud_teacher(path: Path, data) -> Path:
    """A random teacher with O(1) logits (a fresh head's are ~0.01: every view would look alike)."""
    tm = TrainingModel(build_model("tiny", num_classes=data.num_classes)).eval()
    g = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for name, t in tm.state_dict().items():
            if t.is_floating_point() and t.ndim > 0:
                t.copy_(torch.rand(t.shape, generator=g) + 0.5 if name.endswith("running_var")
                        else torch.randn(t.shape, generator=g) * 0.3)
    facts = SimpleNamespace(spec=data.spec, input_shape=tuple(data.input_shape), mean=data.mean, std=data.std,
                            class_names=list(data.class_names))
    save_checkpoint(path, build_payload(TrainConfig(model="tiny"), tm, facts))
    return path


def _views_method(teacher: Path, data, log=None, world: int = 1, rank: int = 0, **dho):
    from edgekd.config import build_config
    from edgekd.train.dho import DHOMethod

    cfg = build_config(overrides=dict(model="tiny", method="dho", teacher=str(teacher), data=SPEC, batch_size=16,
                                      seed=4, dho=dict(labeled_per_class=3, teacher_cache="views", **dho)))
    method = DHOMethod(cfg, data, torch.device("cpu"), log=log)
    return method, method.make_train_loader(rank=rank, world_size=world, channels_last=False)


@pytest.mark.parametrize("image_size", [None, 24])  # native pad-and-crop, and random-resized crops of a View
def test_view_cache_gives_the_online_teachers_logits_on_the_same_augmented_batch(tmp_path, image_size):
    from edgekd.data.images import View
    from edgekd.train.teachers import unnormalize

    d = load_dataset(SPEC, 0.2, 0, view=None if image_size is None else View(image_size))
    teacher = write_loud_teacher(tmp_path / "t.pt", d)
    lines: list[str] = []
    method, loader = _views_method(teacher, d, log=lines.append, view_rounds=3)
    assert not method.online and method.table is None and len(method.view_tables) == 3
    assert sum("on view round" in s for s in lines) == 3  # one teacher pass per round, before training
    clean = teacher_logits(method.teacher, d, "train")  # the clean cache: another target
    seen_rounds, diff_clean = set(), 0.0
    for epoch in range(3):
        loader.set_epoch(epoch)
        for batch in loader:
            assert batch.rounds is not None and batch.x.shape[1:] == tuple(d.input_shape)
            cached = method._teacher_batch(batch)
            online = method.teacher.run(unnormalize(batch.x, d.mean, d.std))  # the default: teacher on this batch
            torch.testing.assert_close(cached, online, rtol=2e-3, atol=2e-3)  # fp16 table rows
            diff_clean = max(diff_clean, float((cached - clean[batch.index].float()).abs().max()))
            seen_rounds |= set(batch.rounds.tolist())
    assert seen_rounds == {0, 1, 2} and diff_clean > 0.1  # every round used; views are not the clean images
    # a second run with the same views reuses the cache and sees the very same batches
    again, loader2 = _views_method(teacher, d, log=lines.append, view_rounds=3)
    assert sum("on view round" in s for s in lines) == 3
    loader.set_epoch(1)
    loader2.set_epoch(1)
    b1, b2 = next(iter(loader)), next(iter(loader2))
    assert torch.equal(b1.x, b2.x) and torch.equal(again._teacher_batch(b2), method._teacher_batch(b1))
    # a process of a 2-process run: its rows are views of the same plan (independent of batching and sharding)
    _, shard = _views_method(teacher, d, world=2, rank=1, view_rounds=3)
    b = next(iter(shard))
    x_u8 = torch.from_numpy(np.asarray(d.x_train[b.index.numpy()])).permute(0, 3, 1, 2)
    want = method.views.apply(x_u8, b.index, b.rounds)
    torch.testing.assert_close(unnormalize(b.x, d.mean, d.std), want, rtol=0, atol=1e-5)


def test_teacher_cache_options_are_checked(tmp_path, data):
    from edgekd.config import build_config
    from edgekd.train.dho import DHOMethod

    teacher = write_teacher_ckpt(tmp_path / "t.pt", data)
    logits = tmp_path / "t.npy"
    np.save(logits, np.zeros((len(data.train_ids) + len(data.val_ids), data.num_classes), np.float32))

    def method(teacher_path, augment=True, **dho):
        cfg = build_config(overrides=dict(model="tiny", method="dho", teacher=str(teacher_path), data=SPEC,
                                          augment=augment, dho=dict(labeled_per_class=3, **dho)))
        return DHOMethod(cfg, data, torch.device("cpu"), log=None)

    for bad, match in [(dict(teacher_cache="disk"), "unknown dho.teacher_cache"),
                       (dict(teacher_cache="views", online_teacher=False), "not both"),
                       (dict(teacher_cache="views", view_rounds=0), "view_rounds must be >= 1")]:
        with pytest.raises(ConfigError, match=match):
            method(teacher, **bad)
    with pytest.raises(ConfigError, match="without augment"):
        method(teacher, augment=False, teacher_cache="views")
    with pytest.raises(ConfigError, match="needs a model teacher"):
        method(logits, teacher_cache="views")
    assert method(teacher).online and method(teacher, teacher_cache="clean").cache == "clean"
    assert not method(logits).online  # a logits file gives its rows whatever the default
