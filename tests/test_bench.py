"""edgekd bench: percentile math, the baseline gate, interleaved compare on a known 2x cost
difference, runner parity (torch vs ONNX Runtime), accuracy, the JSON schema, the INT8 flag
and one-line errors for bad input."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from edgekd.bench.gate import (
    CompareSettings,
    bootstrap_ratio_ci,
    check_baseline,
    compare_runners,
    decide,
    enforce_gate,
    parse_percent,
)
from edgekd.bench.latency import LatencySettings, make_input, measure_interleaved, percentile, summarize_samples
from edgekd.bench.report import ARTIFACT_KEYS, LATENCY_KEYS, REPORT_KEYS, SCHEMA, SCHEMA_VERSION, new_report
from edgekd.bench.runners import OrtRunner, TorchRunner
from edgekd.cli import app
from edgekd.errors import EdgekdError, GateError

DATA = "synthetic:n_train=300,n_test=100"
FAST = ["--min-time", "0.05", "--min-iters", "5", "--warmup", "2", "--threads", "1"]


def conv_stack_onnx(path: Path, layers: int, channels: int = 16, size: int = 32) -> Path:
    """`layers` identical 3x3 convs (shared weights): cost proportional to `layers` by construction."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    conv = nn.Conv2d(channels, channels, 3, padding=1)
    body = [nn.Conv2d(3, channels, 3, padding=1), nn.ReLU()]
    for _ in range(layers):
        body += [conv, nn.ReLU()]
    model = nn.Sequential(*body, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, 10)).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.zeros(2, 3, size, size),), str(path), dynamo=False, opset_version=17,
                          input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny trained checkpoint and its ONNX export (with manifest when the export pipeline exists)."""
    from edgekd.config import build_config
    from edgekd.train.loop import train

    root = tmp_path_factory.mktemp("bench")
    cfg = build_config(overrides=dict(model="tiny", epochs=1, out=str(root / "run"), data=DATA,
                                      max_steps_per_epoch=3, progress=False))
    run = train(cfg, log=lambda *a, **k: None)
    ckpt = Path(run.out_dir) / "best.pt"
    out = root / "exp"
    try:
        from edgekd.export.pipeline import ExportOptions, run_export

        run_export(ExportOptions(ckpt=str(ckpt), out=str(out)), log=lambda s: None)
    except ImportError:  # the export helper has not landed: a plain export without manifest
        import torch

        from edgekd.train.checkpoint import load_checkpoint, rebuild_training_model

        model = rebuild_training_model(load_checkpoint(ckpt)).student.eval()
        out.mkdir()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (torch.zeros(2, 3, 32, 32),), str(out / "model.onnx"), dynamo=False,
                              opset_version=17, input_names=["input"], output_names=["logits"],
                              dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    return {"ckpt": ckpt, "onnx": out / "model.onnx", "root": root}


@pytest.fixture(scope="module")
def stacks(tmp_path_factory):
    root = tmp_path_factory.mktemp("stacks")
    return {"x1": conv_stack_onnx(root / "x1.onnx", 6), "x2": conv_stack_onnx(root / "x2.onnx", 12)}


def invoke(args):
    res = CliRunner().invoke(app, [str(a) for a in args])
    return res, res.stderr if res.stderr_bytes is not None else ""


# ------------------------------------------------------------------------------ latency math


def test_percentile_on_known_samples():
    s = list(range(1, 101))  # 1..100, shuffled order must not matter
    rng = np.random.default_rng(0)
    s = [int(v) for v in rng.permutation(s)]
    assert percentile(s, 50) == pytest.approx(50.5)
    assert percentile(s, 90) == pytest.approx(90.1)
    assert percentile(s, 99) == pytest.approx(99.01)
    assert percentile(s, 0) == 1 and percentile(s, 100) == 100
    assert percentile([1, 2, 3, 4], 50) == pytest.approx(2.5)
    assert percentile([7.0], 99) == 7.0
    with pytest.raises(ValueError):
        percentile([], 50)


def test_summary_statistics_and_instability_warning():
    st = summarize_samples([2.0, 2.0, 2.0, 2.0], batch_size=8)
    assert (st.p50_ms, st.mean_ms, st.std_ms, st.min_ms, st.cv) == (2.0, 2.0, 0.0, 2.0, 0.0)
    assert st.fps == pytest.approx(8 * 1000 / 2.0) and not st.unstable
    noisy = summarize_samples([1.0, 1.0, 1.0, 10.0], batch_size=1, cv_warn=0.25)
    assert noisy.std_ms == pytest.approx(np.std([1, 1, 1, 10], ddof=1))
    assert noisy.unstable and "coefficient of variation" in noisy.warnings[0]


def test_latency_settings_reject_nonsense():
    with pytest.raises(EdgekdError):
        LatencySettings(min_iters=0)


# ------------------------------------------------------------------------------ baseline gate


IDENTITY = {"sha256": "a" * 64, "source_sha256": "b" * 64, "model": "tiny", "input_shape": [3, 32, 32],
            "num_classes": 10, "classes_sha256": "c" * 64, "precision": "fp32", "output_kind": "logits"}
DATA_ID = {"spec": DATA, "split": "test", "n": 100, "sha256": "d" * 64}


def _report(p50: float, top1: float, name: str = "exp/model.onnx") -> dict:
    rep = new_report({}, {})
    rep["artifacts"] = [{"name": name, "accuracy": {"top1": top1}, "identity": dict(IDENTITY), "data": dict(DATA_ID),
                         "latency": [{"batch_size": 1, "p50_ms": 1.0}, {"batch_size": 8, "p50_ms": p50}]}]
    return rep


def test_gate_passes_within_limits_and_names_broken_figure():
    base = _report(4.0, 80.0)
    ok = check_baseline(_report(4.3, 79.6), base, max_latency_regression=0.10, max_accuracy_drop=0.5)
    assert ok["passed"] and len(ok["checks"]) == 3
    enforce_gate(ok)
    slow = check_baseline(_report(4.5, 80.0), base, 0.10, 0.5)
    assert not slow["passed"] and len(slow["failures"]) == 1
    assert "batch 8" in slow["failures"][0] and "p50" in slow["failures"][0] and "12.5%" in slow["failures"][0]
    worse = check_baseline(_report(4.0, 79.4), base, 0.10, 0.5)
    assert not worse["passed"] and "top-1" in worse["failures"][0] and "0.60 points" in worse["failures"][0]
    with pytest.raises(GateError, match="top-1"):
        enforce_gate(worse)
    # matched by file name when the directory differs; an unmatched artifact is noted, not gated
    moved = check_baseline(_report(4.5, 80.0, name="/ci/run/model.onnx"), base, 0.10, 0.5)
    assert not moved["passed"]
    other = check_baseline(_report(9.0, 10.0, name="other.onnx"), base, 0.10, 0.5)
    assert other["passed"] and other["notes"]


def test_parse_percent():
    assert parse_percent("10%") == pytest.approx(0.10) and parse_percent("2.5") == pytest.approx(0.025)
    with pytest.raises(EdgekdError):
        parse_percent("ten")


def test_cli_baseline_gate_exits_3_on_a_regression(trained, tmp_path):
    rep = tmp_path / "base.json"
    res, err = invoke(["bench", trained["onnx"], "--batch-sizes", "4", "--json", rep, *FAST])
    assert res.exit_code == 0, err
    base = json.loads(rep.read_text())
    ok, err = invoke(["bench", trained["onnx"], "--batch-sizes", "4", "--baseline", rep,
                      "--max-latency-regression", "1000%", *FAST])
    assert ok.exit_code == 0, err
    base["artifacts"][0]["latency"][0]["p50_ms"] /= 50.0  # a baseline 50x faster than anything real
    rep.write_text(json.dumps(base))
    bad, err = invoke(["bench", trained["onnx"], "--batch-sizes", "4", "--baseline", rep, *FAST])
    assert bad.exit_code == 3
    assert "latency p50" in err and "batch 4" in err and "Traceback" not in err


# ------------------------------------------------------------------------------ compare


def test_bootstrap_interval_and_decision():
    a = np.ones(30)
    b = np.full(30, 2.0) * np.random.default_rng(0).uniform(0.98, 1.02, 30)
    ratio, lo, hi = bootstrap_ratio_ci(a, b)
    assert lo <= ratio <= hi and 1.95 < lo and hi < 2.05
    assert decide(lo, hi, 0.10) == "regression"
    assert decide(0.95, 1.05, 0.10) == "ok" and decide(1.05, 1.2, 0.10) == "inconclusive"


def test_compare_detects_a_known_2x_cost_and_passes_a_model_against_itself(stacks):
    x = make_input((3, 32, 32), 1)
    settings = CompareSettings(rounds=12, time_s=0.8, threshold=0.10)
    a = OrtRunner(stacks["x1"], threads=1, allow_spinning=False)
    b = OrtRunner(stacks["x2"], threads=1, allow_spinning=False)
    res = compare_runners(a, b, x, settings)
    assert res.failed and res.verdict == "regression"
    assert 1.5 < res.ratio < 2.6 and res.ci_low > 1.1
    same = compare_runners(a, OrtRunner(stacks["x1"], threads=1, allow_spinning=False), x, settings)
    assert not same.failed and 0.8 < same.ratio < 1.25


def test_cli_compare_exit_codes(stacks, tmp_path):
    args = ["--rounds", "8", "--compare-time", "0.5", "--warmup", "2", "--threads", "1"]
    slow, err = invoke(["bench", "compare", stacks["x1"], stacks["x2"], "--json", tmp_path / "c.json", *args])
    assert slow.exit_code == 3 and "latency ratio" in err
    data = json.loads((tmp_path / "c.json").read_text())
    assert data["schema"] == "edgekd-bench-compare" and data["passed"] is False and data["result"]["ratio"] > 1.3
    faster, err = invoke(["bench", "compare", stacks["x2"], stacks["x1"], *args])
    assert faster.exit_code == 0, err
    assert "ratio B/A" in faster.stdout


def test_interleaved_bench_orders_two_models_by_cost(stacks):
    x = make_input((3, 32, 32), 2)
    a = OrtRunner(stacks["x1"], threads=1, allow_spinning=False)
    b = OrtRunner(stacks["x2"], threads=1, allow_spinning=False)
    sa, sb = measure_interleaved([a, b], [x, x], LatencySettings(warmup_iters=3, min_time_s=0.3, min_iters=10))
    assert sa.iters >= 10 and sb.iters >= 10 and sb.p50_ms > 1.3 * sa.p50_ms
    assert sa.min_ms <= sa.p50_ms <= sa.p90_ms <= sa.p99_ms


# ------------------------------------------------------------------------------ runners, accuracy


def test_torch_and_ort_runners_give_the_same_output(trained):
    import torch

    from edgekd.train.checkpoint import load_checkpoint, rebuild_training_model

    x = make_input((3, 32, 32), 5, seed=3)
    tr, ort_r = TorchRunner(trained["ckpt"]), OrtRunner(trained["onnx"])
    yt, yo = tr.run(x), ort_r.run(x)
    with torch.inference_mode():
        direct = rebuild_training_model(load_checkpoint(trained["ckpt"]))(torch.from_numpy(x)).numpy()
    assert yt.shape == yo.shape == (5, 10)
    np.testing.assert_allclose(yt, direct, rtol=0, atol=0)
    np.testing.assert_allclose(yo, yt, rtol=1e-4, atol=1e-5)
    assert tr.info.output_kind == ort_r.info.output_kind == "logits"
    assert tr.info.input_shape == ort_r.info.input_shape == (3, 32, 32)


def test_accuracy_and_parity_agree_across_backends(trained, tmp_path):
    import torch

    from edgekd.data import load_dataset
    from edgekd.data.loader import nhwc_to_tensor
    from edgekd.data.transforms import eval_transform
    from edgekd.train.checkpoint import load_checkpoint, rebuild_training_model

    rep = tmp_path / "r.json"
    res, err = invoke(["bench", trained["ckpt"], trained["onnx"], "--data", DATA, "--reference", trained["ckpt"],
                       "--batch-sizes", "1", "--json", rep, *FAST])
    assert res.exit_code == 0, err
    arts = json.loads(rep.read_text())["artifacts"]
    # top-1 computed independently with the training code's eval transform
    ck = load_checkpoint(trained["ckpt"])
    data = load_dataset(DATA)
    with torch.inference_mode():
        logits = rebuild_training_model(ck)(eval_transform(nhwc_to_tensor(data.x_test), ck["mean"], ck["std"]))
    expected = float((logits.argmax(1).numpy() == data.y_test).mean() * 100)
    for art in arts:
        assert art["accuracy"]["top1"] == pytest.approx(expected)
        assert art["accuracy"]["n"] == len(data.y_test) and art["accuracy"]["normalisation"] == "model"
        assert art["parity"]["top1_agreement"] == 100.0 and art["parity"]["max_abs_diff"] < 1e-4
    assert arts[0]["parity"]["max_abs_diff"] == 0.0  # the checkpoint against itself


def test_json_schema_is_stable(trained, tmp_path):
    rep, md = tmp_path / "r.json", tmp_path / "r.md"
    res, err = invoke(["bench", trained["onnx"], "--batch-sizes", "1,3", "--json", rep, "--markdown", md, *FAST])
    assert res.exit_code == 0, err
    data = json.loads(rep.read_text())
    assert list(data) == list(REPORT_KEYS)
    assert data["schema"] == SCHEMA == "edgekd-bench-report" and data["schema_version"] == SCHEMA_VERSION == 1
    art = data["artifacts"][0]
    assert list(art) == list(ARTIFACT_KEYS)
    assert [row["batch_size"] for row in art["latency"]] == [1, 3]
    for row in art["latency"]:
        assert set(LATENCY_KEYS) <= set(row)
        assert 0 < row["min_ms"] <= row["p50_ms"] <= row["p90_ms"] <= row["p99_ms"]
    env = data["environment"]
    for key in ("cpu_model", "cpu_count", "threads", "packages", "gpu", "cuda", "jetson", "board_model"):
        assert key in env
    assert env["packages"]["onnxruntime"] and art["format"] == "onnx" and art["size_bytes"] > 0
    text = md.read_text()
    assert "| artifact |" in text and "p99 ms" in text and str(trained["onnx"]) in text


# ------------------------------------------------------------------------------ INT8 flag


def _verdict(ratio: float, lo: float, hi: float, verdict: str):
    from edgekd.bench.compare import CompareResult

    return CompareResult(ratio=ratio, ci_low=lo, ci_high=hi, confidence=0.95, threshold=0.0, verdict=verdict,
                         rounds=10, calls_per_round=(5, 5), a_p50_ms=1.0, b_p50_ms=ratio, processes=6,
                         level="process")


def test_int8_artifact_slower_than_its_fp32_source_is_flagged():
    """The INT8 check is decided by the compare statistic (A = FP32, B = INT8, threshold 0): a whole
    interval above 1 fails, an interval that straddles 1 is a warning."""
    from edgekd.bench.suite import judge_int8

    arts = [{"name": "int8", "status": "ok",
             "latency": [{"batch_size": 1, "p50_ms": 1.2, "status": "ok", "warnings": []},
                         {"batch_size": 8, "p50_ms": 2.0, "status": "ok", "warnings": []}]},
            {"name": "fp32", "status": "ok",
             "latency": [{"batch_size": 1, "p50_ms": 1.0}, {"batch_size": 8, "p50_ms": 4.0}]}]
    judge_int8(arts[0], "fp32", {1: _verdict(1.2, 1.1, 1.3, "regression"), 8: _verdict(0.5, 0.45, 0.55, "ok")})
    assert arts[0]["status"] == "int8 slower than fp32" and len(arts[0]["failures"]) == 1
    assert "batch 1" in arts[0]["failures"][0] and arts[0]["latency"][1]["int8_speedup"] == pytest.approx(2.0)
    assert arts[0]["latency"][0]["int8_check"]["verdict"] == "regression"
    from edgekd.bench.suite import raise_on_failures, report_failures

    rep = {"artifacts": arts, "gate": None}
    with pytest.raises(GateError, match="INT8 slower"):
        raise_on_failures(rep)
    assert report_failures(rep, allow_slow_int8=True) == []
    # the interval straddles 1 (0.97x): a warning on the row, not a failure
    near = [{"name": "int8", "status": "ok",
             "latency": [{"batch_size": 1, "p50_ms": 1.03, "status": "ok", "warnings": []}]},
            {"name": "fp32", "status": "ok", "latency": [{"batch_size": 1, "p50_ms": 1.0}]}]
    judge_int8(near[0], "fp32", {1: _verdict(1.03, 0.95, 1.11, "inconclusive")})
    assert near[0]["status"] == "ok" and "failures" not in near[0]
    assert "noise tolerance" in near[0]["latency"][0]["warnings"][0]


# ------------------------------------------------------------------------------ bad input


def _one_line_error(res, err, code=1):
    assert res.exit_code == code, (res.exit_code, err, res.stdout)
    lines = [ln for ln in err.strip().splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err
    return lines[0]


def test_bad_input_is_one_line_exit_1(trained, tmp_path):
    from tests.imagedata import write_npz

    npz = write_npz(tmp_path / "small.npz", size=8)  # 8x8 images; the model takes 32x32
    msg = _one_line_error(*invoke(["bench", trained["onnx"], "--data", f"npz:{npz}", *FAST]))
    assert "(3, 32, 32)" in msg and "(3, 8, 8)" in msg
    msg = _one_line_error(*invoke(["bench", trained["onnx"], "--backend", "tflite", *FAST]))
    assert "unknown backend" in msg
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"not an engine")
    msg = _one_line_error(*invoke(["bench", engine, "--device", "cuda", *FAST]))
    assert "tensorrt" in msg.lower() or "cuda" in msg.lower()
    bad_onnx = tmp_path / "broken.onnx"
    bad_onnx.write_bytes(b"\x08\x07garbage" * 10)
    assert "not a loadable ONNX model" in _one_line_error(*invoke(["bench", bad_onnx, *FAST]))
    bad_pt = tmp_path / "broken.pt"
    bad_pt.write_bytes(b"garbage")
    assert "checkpoint" in _one_line_error(*invoke(["bench", bad_pt, *FAST]))
    assert "suffix" in _one_line_error(*invoke(["bench", tmp_path / "small.npz", *FAST]))
    assert "not found" in _one_line_error(*invoke(["bench", tmp_path / "missing.onnx", *FAST]))
    assert "batch" in _one_line_error(*invoke(["bench", trained["onnx"], "--batch-sizes", "0", *FAST]))
    res, err = invoke(["bench", "compare", trained["onnx"]])  # a usage error of the compare sub-command: exit 2
    assert res.exit_code == 2 and "compare" in err and "Missing argument 'B'" in err and "Traceback" not in err
    assert not list(tmp_path.glob("*.json"))


def test_trt_runner_without_tensorrt_is_a_missing_dependency(tmp_path):
    import importlib.util

    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("TensorRT is installed here")
    from edgekd.bench.runners import build_runner
    from edgekd.errors import MissingDependencyError

    engine = tmp_path / "m.plan"
    engine.write_bytes(b"x")
    with pytest.raises(EdgekdError) as info:
        build_runner(engine, device="cuda")
    assert isinstance(info.value, (MissingDependencyError, EdgekdError)) and "\n" not in str(info.value)
    with pytest.raises(EdgekdError, match="CUDA only"):
        build_runner(engine, device="cpu")


def test_bench_modules_do_not_import_backends():
    code = ("import sys, edgekd.bench.runners, edgekd.bench.latency, edgekd.bench.gate, edgekd.bench.report, "
            "edgekd.bench.accuracy, edgekd.bench.fingerprint, edgekd.bench.suite; "
            "print(sorted(m for m in ('torch', 'onnxruntime', 'tensorrt') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
