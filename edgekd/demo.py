"""`edgekd demo`: the whole pipeline on the embedded synthetic dataset."""

from __future__ import annotations

import shutil
from pathlib import Path

from edgekd.config import build_config


def run_demo(out: Path, quick: bool = False, log=print) -> dict:
    """Train on `synthetic`, then run every later stage that exists. Returns a summary dict."""
    out = Path(out)
    if out.exists():
        shutil.rmtree(out)
    data = "synthetic:n_train=1000,n_test=300" if quick else "synthetic"
    train_cfg = build_config(overrides=dict(
        data=data, model="resnet8", epochs=1 if quick else 8, batch_size=64, lr=0.1, warmup_epochs=0.5,
        out=str(out / "train"), max_steps_per_epoch=4 if quick else None, progress=not quick))
    from edgekd.train.loop import train

    log("== stage 1/1: train (CE) ==")
    result = train(train_cfg, log=log)
    summary = {"train": result.summary, "artifacts": {"train": "train/best.pt"}}
    from edgekd.io import write_json_atomic

    write_json_atomic(out / "demo_summary.json", summary)
    log(f"demo done: test top-1 {result.test_acc:.2f}% -> {out}")
    return summary
