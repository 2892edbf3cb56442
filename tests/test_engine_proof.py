"""The engine proof: engine outputs vs ONNX Runtime FP32 on labelled images; each gate fails on a broken engine."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from edgekd.errors import GateError
from edgekd.export.engine_proof import TOLERANCE, compare_source, prove_engine

N, K = 200, 10


def _reference() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    ref = rng.standard_normal((N, K)).astype(np.float32) * 3
    y = ref.argmax(1).copy()
    y[:20] = (y[:20] + 1) % K  # 90% reference top-1
    return np.zeros((N, 3, 4, 4), np.float32), y, ref


def _engine(out: np.ndarray):
    return lambda x: out[: len(x)]


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_an_engine_that_matches_passes_with_figures(precision):
    x, y, ref = _reference()
    noise = {"fp32": 1e-4, "fp16": 1e-3, "int8": 1e-2}[precision]
    got = ref + noise * np.random.default_rng(1).standard_normal(ref.shape).astype(np.float32)
    figs = prove_engine(_engine(got), x, y, ref, precision, max_drop=1.0)
    assert figs["n"] == N and figs["finite"] and figs["split"] == "val" and figs["reference_top1"] == 90.0
    assert figs["tolerance"] == TOLERANCE[precision] and figs["max_abs_diff"] > 0


@pytest.mark.parametrize("precision,breakage,match", [
    ("fp16", "nan", "not finite"),
    ("int8", "inf", "not finite"),
    ("fp32", "offset", r"max \|engine - ONNX Runtime FP32\|"),
    ("fp16", "offset", r"max \|engine - ONNX Runtime FP32\|"),
    ("fp32", "near-tie flips", "top-1 agreement"),
    ("int8", "permute", "accuracy budget exceeded"),
    ("fp16", "rows", "engine rows"),
])
def test_each_gate_fails_on_a_broken_engine(precision, breakage, match):
    x, y, ref = _reference()
    got = ref.copy()
    if breakage == "nan":
        got[7, 3] = np.nan
    elif breakage == "inf":
        got[0, 0] = np.inf
    elif breakage == "offset":
        got = got + 0.2 * np.abs(ref).max()
    elif breakage == "permute":  # a systematic class flip on 10% of the images (the 20 the reference gets wrong
        got = np.where(np.arange(N)[:, None] >= N - 20, np.roll(ref, 1, axis=1), ref)  # are the first 20)
    elif breakage == "near-tie flips":  # within the tolerance, but 5% of the images change class
        ref = np.zeros((N, K), np.float32)
        ref[:, 0], ref[:, 1] = 1.0, 1.0 - 1e-4
        got = ref.copy()
        got[:10, 1] = 1.0 + 1e-4
    elif breakage == "rows":
        got = got[:-1]
    with pytest.raises(GateError, match=match) as info:
        prove_engine(_engine(got), x, y, ref, precision, max_drop=1.0)
    assert info.value.exit_code == 3 and "\n" not in str(info.value)


def test_int8_difference_is_recorded_not_gated():
    x, y, ref = _reference()
    got = ref * 1.5  # large differences, same ranking
    figs = prove_engine(_engine(got), x, y, ref, "int8", max_drop=0.0)
    assert figs["relative_diff"] > 0.3 and figs["drop_points"] == 0.0


def test_the_embedded_source_runs_on_a_bare_python():
    # what the Jetson kit embeds: the function alone, run with no edgekd and no numpy on the path
    _, y, ref = _reference()
    got = np.where(np.arange(N)[:, None] >= N - 20, np.roll(ref, 1, axis=1), ref)
    code = compare_source() + (
        "\nimport json, sys\nd = json.load(sys.stdin)\n"
        "print(json.dumps(compare_outputs(d['got'], d['ref'], d['y'], 'int8', 1.0, None, 99.0)))\n")
    data = json.dumps({"got": got.tolist(), "ref": ref.tolist(), "y": y.tolist()})
    res = subprocess.run([sys.executable, "-I", "-S", "-c", code], input=data, capture_output=True, text=True,
                         check=True)
    figures, failure = json.loads(res.stdout)
    assert figures["n"] == N and "accuracy budget exceeded" in failure
