"""Installs that explain themselves: with only the README's bench install (`pip install edgekd typer
rich`: no torch, onnx, PyYAML or matplotlib), every command that needs more names the missing extra
in one line (exit 1, no traceback), `edgekd bench` of an ONNX model works, and `--version` answers.

The partial install is simulated in a subprocess by an import hook that makes the packages of
the `[train]` and `[plot]` extras unimportable (a fresh venv per test would download them). The
same commands were checked once in a real fresh venv (see the closing note of issue 20)."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

BLOCKED = "torch,torchvision,onnx,onnxsim,onnxscript,yaml,matplotlib"
HOOK = '''
import os, sys
_BLOCK = set(os.environ.get("EDGEKD_TEST_BLOCK", "").split(","))
class _Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in _BLOCK:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None
sys.meta_path.insert(0, _Block())
'''


@pytest.fixture(scope="module")
def bench_only(tmp_path_factory):
    """Run `python -m edgekd ARGS` as on a bench-only install; returns (exit code, stdout, stderr)."""
    hook = tmp_path_factory.mktemp("hook")
    (hook / "sitecustomize.py").write_text(HOOK)
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "EDGEKD_TEST_BLOCK": BLOCKED, "COLUMNS": "100",
           "PYTHONPATH": os.pathsep.join([str(hook), str(root)])}

    def run(*args: str, cwd: Path = hook) -> tuple[int, str, str]:
        res = subprocess.run([sys.executable, "-m", "edgekd", *args], capture_output=True, text=True, env=env,
                             cwd=cwd, timeout=300)
        return res.returncode, res.stdout, res.stderr

    return run


def _one_line_naming(stderr: str, extra: str) -> None:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error: ") and extra in lines[0] and "Traceback" not in stderr


@pytest.mark.parametrize("args", [["train", "--epochs", "1"], ["export", "run/best.pt", "--out", "exp"],
                                  ["info", "--zoo"], ["demo", "--quick"]])
def test_commands_needing_the_train_extra_name_it_in_one_line(bench_only, args):
    code, _, err = bench_only(*args)
    assert code == 1
    _one_line_naming(err, "edgekd[train]")


def test_plot_without_matplotlib_names_the_plot_extra(bench_only, tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"epoch": 1, "train_loss": 1.0}\n')
    code, _, err = bench_only("plot", str(tmp_path))
    assert code == 1
    _one_line_naming(err, "edgekd[plot]")


def test_version_and_help_without_the_train_extra(bench_only):
    from edgekd import __version__

    code, out, err = bench_only("--version")
    assert code == 0 and out.strip() == f"edgekd {__version__}", err
    code, out, err = bench_only("--help")
    assert code == 0 and "bench" in out and "train" in out, err
    assert "<bool>" not in out


def test_bench_of_an_onnx_model_works_without_torch(bench_only, tmp_path):
    import torch
    from torch import nn

    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 5)).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.zeros(1, 3, 16, 16),), str(tmp_path / "m.onnx"), dynamo=False,
                          opset_version=17, input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    code, out, err = bench_only("bench", str(tmp_path / "m.onnx"), "--batch-sizes", "1", "--min-time", "0.05",
                                "--min-iters", "5", "--warmup", "2", "--threads", "1",
                                "--json", str(tmp_path / "r.json"))
    assert code == 0, err
    table = [line for line in out.splitlines() if not line.startswith("recommendation")]  # a sentence, not the table
    assert "edgekd bench" in out and max(len(line) for line in table) <= 100
    assert (tmp_path / "r.json").is_file()


def test_export_tensorrt_without_tensorrt_fails_before_the_onnx_export(tmp_path, monkeypatch):
    import importlib.util

    from edgekd.errors import MissingDependencyError
    from edgekd.export import pipeline
    from edgekd.export.options import ExportOptions

    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("TensorRT is installed here; this checks the error without it")

    def export_ran(*args, **kwargs):
        raise AssertionError("the ONNX export ran before TensorRT was checked")

    monkeypatch.setattr(pipeline, "_export_into", export_ran)
    with pytest.raises(MissingDependencyError, match="tensorrt"):
        pipeline.run_export(ExportOptions(ckpt=str(tmp_path / "any.pt"), out=str(tmp_path / "t"), format="tensorrt"),
                            log=lambda s: None)
    assert not (tmp_path / "t").exists()
