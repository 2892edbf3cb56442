"""The README's two commands stay true: they name Makefile targets that set up and run the demo
and the tests, and the demo command itself runs (on a reduced budget)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _make_recipe(target: str) -> str:
    text = (ROOT / "Makefile").read_text()
    m = re.search(rf"^{target}:.*\n((?:\t.*\n)+)", text, re.M)
    assert m, f"Makefile has no {target} target"
    return m.group(1)


def test_readme_commands_name_make_targets():
    readme = (ROOT / "README.md").read_text()
    assert "make demo" in readme and "make test" in readme
    assert "edgekd demo" in _make_recipe("demo")
    assert "pytest" in _make_recipe("test")
    # every install pins torch through the constraints file
    installs = re.findall(r"(?:pip|\$\(PIP\)) install.*", (ROOT / "Makefile").read_text())
    assert installs and all("-c constraints.txt" in line for line in installs)
    assert "torch==" in (ROOT / "constraints.txt").read_text()
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_demo_command_runs_reduced(tmp_path):
    """`edgekd demo` (the README's main job) on a reduced budget: every stage leaves its artifact."""
    out = tmp_path / "demo"
    proc = subprocess.run([sys.executable, "-m", "edgekd", "demo", "--quick", "--out", str(out)],
                          capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    summary = json.loads((out / "demo_summary.json").read_text())
    assert (out / "train" / "best.pt").is_file()
    assert "train" in summary
    for stage, path in summary.get("artifacts", {}).items():
        assert (out / path).exists(), f"demo stage {stage} did not write {path}"
