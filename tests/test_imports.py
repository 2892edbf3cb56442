"""What importing edgekd loads: the package root and the device runtime stay torch-free, and the CLI's
help (every command's) loads neither torch, nor TensorRT, nor ONNX Runtime.

Each check runs in a fresh interpreter: this test process has long since imported torch.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "tensorrt", "onnxruntime", "onnx", "cuda")


def loaded_after(code: str) -> dict:
    """Run `code` in a fresh interpreter; returns {"heavy": [top-level heavy modules loaded], "edgekd": [...]}."""
    probe = textwrap.dedent(f"""
        import json, sys
        {textwrap.indent(textwrap.dedent(code), "        ").strip()}
        tops = {{name.split(".")[0] for name in sys.modules}}
        print("\\n" + json.dumps({{"heavy": sorted(t for t in tops if t in {HEAVY!r}),
                                  "edgekd": sorted(n for n in sys.modules if n.startswith("edgekd"))}}))
    """)
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_import_edgekd_is_light():
    assert loaded_after("import edgekd")["heavy"] == []


def test_import_runtime_loads_no_torch_and_no_training_stack():
    res = loaded_after("import edgekd.runtime\nfrom edgekd.runtime import Classifier")
    assert "torch" not in res["heavy"] and "tensorrt" not in res["heavy"]
    stack = [m for m in res["edgekd"] if m.split(".")[1:2] in (["export"], ["bench"], ["train"], ["cli"])]
    assert stack == [], f"the device runtime imports the training/export stack: {stack}"


def test_runtime_cli_help_loads_no_torch():
    code = """
        sys.argv = ["edgekd-run", "--help"]
        from edgekd.runtime.__main__ import main
        try:
            main()
        except SystemExit as exc:
            assert exc.code in (0, None), exc.code
    """
    assert "torch" not in loaded_after(code)["heavy"]


@pytest.mark.parametrize("argv", [["--help"], ["train", "--help"], ["export", "--help"], ["bench", "--help"],
                                  ["bench", "compare", "--help"], ["info", "--help"], ["demo", "--help"]])
def test_cli_help_loads_neither_torch_nor_tensorrt_nor_onnxruntime(argv):
    code = f"""
        sys.argv = ["edgekd", *{argv!r}]
        from edgekd.__main__ import main
        try:
            main()
        except SystemExit as exc:
            assert exc.code in (0, None), exc.code
    """
    assert loaded_after(code)["heavy"] == [], f"`edgekd {' '.join(argv)}` loads heavy modules"


def test_cli_help_works_as_a_command():
    proc = subprocess.run([sys.executable, "-m", "edgekd", "--help"], capture_output=True, text=True, timeout=120,
                          cwd=ROOT)
    assert proc.returncode == 0 and "bench" in proc.stdout and "export" in proc.stdout, proc.stderr
