"""benchmarks/fidelity.py (issue 18): the fair-teacher split, the paired statistics, the verdicts, the
merge of protocols run one command at a time, and the committed CPU result's required summary keys."""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import fidelity  # noqa: E402

REQUIRED = ("lsskd_minus_ce", "lsskd_minus_ce_equal_compute", "lsskd_minus_pskd", "dho_minus_kd_1pct",
            "dho_minus_kd_10pct", "dhkd_minus_kd")


def _rows(group, a, b, diffs, base=50.0):
    out = []
    for seed, d in enumerate(diffs):
        for run, acc in ((b, base), (a, base + d)):
            out.append({"group": group, "run": run, "seed": seed, "test_acc": acc, "epochs": 1, "epoch_time_s": 1.0})
    return out


def test_teacher_and_pool_are_disjoint_and_sized():
    y = np.repeat(np.arange(10), 50)
    b = fidelity.Budget(student="tiny", teacher_model="tiny", teacher_per_class=20, pool_per_class=25,
                        lowdata_per_class=5, val_per_class=5, test_per_class=5, epochs=1, lowdata_epochs=1,
                        teacher_epochs=1, batch_size=8, lr=0.1)
    t, p = fidelity.split_teacher_pool(SimpleNamespace(y_train=y), b)
    assert len(t) == 200 and len(p) == 250
    assert not set(t.tolist()) & set(p.tolist())
    assert np.bincount(y[p]).tolist() == [25] * 10


def test_paired_difference_is_by_seed_and_its_interval_can_exclude_zero():
    clear = fidelity.paired(_rows("g", "x", "y", [1.0, 1.2, 0.9]), "g", "x", "y")
    assert clear["mean"] == pytest.approx(1.03, abs=0.01) and clear["per_seed"] == [1.0, 1.2, 0.9]
    assert clear["ci95"][0] > 0  # consistent over seeds: told apart from 0
    noisy = fidelity.paired(_rows("g", "x", "y", [2.0, -1.5, 0.4]), "g", "x", "y")
    assert noisy["ci95"][0] < 0 < noisy["ci95"][1]
    assert "not distinguishable from 0" in fidelity.noise(noisy)
    assert "not distinguishable" not in fidelity.noise(clear)
    # a seed missing on one side is left out, not paired with another seed
    rows = _rows("g", "x", "y", [1.0, 2.0, 3.0])
    rows = [r for r in rows if not (r["run"] == "y" and r["seed"] == 2)]
    assert fidelity.paired(rows, "g", "x", "y")["per_seed"] == [1.0, 2.0]
    assert fidelity.paired(rows, "other", "x", "y") is None
    # the validation figure (a choice is made on it) pairs the same way; rows without it are left out
    for r in rows:
        r["best_val_acc"] = r["test_acc"] * 2
    assert fidelity.paired(rows, "g", "x", "y", "best_val_acc", "best_val_acc")["per_seed"] == [2.0, 4.0]
    del rows[0]["best_val_acc"]
    assert fidelity.paired(rows, "g", "x", "y", "best_val_acc", "best_val_acc")["per_seed"] == [4.0]


def test_verdicts_say_not_met_below_the_target():
    rows = _rows("lsskd", "lsskd", "ce", [0.2, 0.3, 0.1])  # lsskd = 50 + d, ce = 50
    rows += [{**r, "run": "pskd", "test_acc": r["test_acc"] - 0.9} for r in rows if r["run"] == "lsskd"]
    s = fidelity.summarize(rows, fidelity.BUDGETS["smoke"], [0, 1, 2])
    text = "\n".join(fidelity.verdicts(s))
    assert "`lsskd_minus_ce`: +0.20" in text and "(target ≥ +1.0: not met)" in text
    assert "`lsskd_minus_pskd`: +0.90" in text and "(target ≥ +0.5: met)" in text
    assert "`dho_minus_kd_1pct`: not measured" in text
    assert s["teacher_saw_pool_labels"] is False and s["seeds"] == [0, 1, 2]


def test_protocols_run_one_at_a_time_merge_into_one_result(tmp_path, monkeypatch):
    monkeypatch.setattr(fidelity, "RESULTS", tmp_path)
    args = SimpleNamespace(tag="t", budget="smoke", seed_list=[0, 1], protocols="lsskd", precision="fp32")
    first = fidelity.Recorder(args, "cmd lsskd", "machine", 0.0)
    for r in _rows("lsskd", "lsskd", "ce", [1.0, 2.0]):
        first(r.pop("group"), r)
    args.protocols = "dho"
    second = fidelity.Recorder(args, "cmd dho", "machine", 0.0)
    for r in _rows("dho/1pct", "dho@1pct", "kd@1pct", [0.5, 0.7]):
        second(r.pop("group"), r)
    doc = json.loads((tmp_path / "fidelity_t.json").read_text())
    assert doc["summary"]["lsskd_minus_ce"]["mean"] == 1.5  # kept from the first command
    assert doc["summary"]["dho_minus_kd_1pct"]["mean"] == 0.6
    assert doc["commands"] == ["cmd lsskd", "cmd dho"]
    # running a protocol again replaces its rows instead of adding to them
    args.protocols = "lsskd"
    third = fidelity.Recorder(args, "cmd lsskd", "machine", 0.0)
    for r in _rows("lsskd", "lsskd", "ce", [3.0, 3.0]):
        third(r.pop("group"), r)
    doc = json.loads((tmp_path / "fidelity_t.json").read_text())
    assert doc["summary"]["lsskd_minus_ce"]["per_seed"] == [3.0, 3.0]
    assert doc["summary"]["dho_minus_kd_1pct"]["mean"] == 0.6
    # another budget never mixes in
    args.budget = "cpu"
    assert fidelity.Recorder(args, "cmd", "machine", 0.0).kept == []


@pytest.mark.parametrize("tag", ["cpu", "cuda"])
def test_committed_result_has_the_required_summary(tag):
    path = ROOT / "benchmarks" / "results" / f"fidelity_{tag}.json"
    if not path.is_file():
        pytest.skip(f"{path.name} is not committed (the {tag} budget has not been run)")
    doc = json.loads(path.read_text())
    s = doc["summary"]
    for key in REQUIRED:
        assert isinstance(s[key]["mean"], float | int) and isinstance(s[key]["std"], float | int), key
        assert len(s[key]["per_seed"]) == len(s["seeds"]) >= 3, key
    assert s["teacher_saw_pool_labels"] is False and isinstance(s["epochs"], int)
    assert doc["teacher"]["saw_pool_labels"] is False
    md = path.with_suffix(".md").read_text()
    for key in REQUIRED:
        assert f"`{key}`" in md
    assert "Smoke budget" not in md


def test_probe_estimate_scales_epochs_and_packs_units_on_jobs():
    full = replace(fidelity.BUDGETS["smoke"], epochs=10, lowdata_epochs=40, teacher_epochs=5)
    rows = [{"group": "lsskd", "run": "ce", "seed": 0, "wall_s": 3.0, "epoch_time_s": 1.0, "epochs": 1},
            {"group": "lowdata", "run": "ce", "seed": 0, "wall_s": 2.0, "epoch_time_s": 0.5, "epochs": 1}]
    # lsskd:0 = 3 + 1 * 9 = 12 s; lowdata:0 = 2 + 0.5 * 39 = 21.5 s; teacher 4 s * 5 epochs = 20 s
    assert fidelity.estimate_full_s(rows, {"wall_s": 4.0}, full, jobs=1) == pytest.approx(20 + 33.5)
    assert fidelity.estimate_full_s(rows, {"wall_s": 4.0}, full, jobs=2) == pytest.approx(20 + 21.5)  # longest unit
    assert fidelity.estimate_full_s(rows, None, full, jobs=2) == pytest.approx(21.5)
