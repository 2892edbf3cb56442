"""Shared by the benchmarks: the real CIFAR-10 JPEG folder and class-balanced subsets.

The archive is `../shared/data/cifar10-jpg.tar.gz` unless `EDGEKD_CIFAR_ARCHIVE` names another
copy (the GPU machine gets one carried in the working tree); it is extracted once into
`EDGEKD_DATA_DIR` (default /tmp/edgekd-data) through a temp dir and an atomic rename, so
parallel benchmark processes can race for it safely.
"""

from __future__ import annotations

import os
import sys
import tarfile
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
ARCHIVE = Path(os.environ.get("EDGEKD_CIFAR_ARCHIVE", ROOT.parent / "shared" / "data" / "cifar10-jpg.tar.gz"))
DATA_DIR = Path(os.environ.get("EDGEKD_DATA_DIR", "/tmp/edgekd-data"))


def ensure_cifar() -> str:
    """Extract the CIFAR-10 JPEG archive once; return its `imagefolder:` data spec."""
    target = DATA_DIR / "CIFAR-10-images"
    if not (target / "test").is_dir():
        if not ARCHIVE.is_file():
            sys.exit(f"CIFAR-10 archive not found at {ARCHIVE} (set EDGEKD_CIFAR_ARCHIVE)")
        DATA_DIR.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".extract-", dir=DATA_DIR))
        with tarfile.open(ARCHIVE) as t:
            t.extractall(tmp, filter="data")
        try:
            os.rename(tmp / "CIFAR-10-images", target)
        except OSError:
            pass  # another process won the race
    return f"imagefolder:{target}"


def balanced(y: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    """Sorted indices of up to `per_class` images of every class (fixed seed)."""
    rng = np.random.default_rng(seed)
    return np.sort(np.concatenate([rng.permutation(np.flatnonzero(y == c))[:per_class] for c in np.unique(y)]))


def subset_data(data, train: int, val: int, test: int, tag: str = "train"):
    """Class-balanced subsets of each split; the spec is tagged so caches never mix subsets."""
    tr, va, te = balanced(data.y_train, train, 11), balanced(data.y_val, val, 12), balanced(data.y_test, test, 13)
    return replace(data, spec=f"{data.spec}#{tag}{train}-val{val}-test{test}", x_train=data.x_train[tr],
                   y_train=data.y_train[tr], train_ids=data.train_ids[tr], x_val=data.x_val[va], y_val=data.y_val[va],
                   val_ids=data.val_ids[va], x_test=data.x_test[te], y_test=data.y_test[te])


def machine_line(device: str, threads: int) -> str:
    """One line naming where a benchmark ran (GPU name on CUDA)."""
    import platform

    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        where = f"{torch.cuda.get_device_name(0)} (CUDA {torch.version.cuda}), {os.cpu_count()} CPUs"
    else:
        where = f"{platform.machine()} CPU, {os.cpu_count()} CPUs (shared), {threads} threads"
    return f"{where}, torch {torch.__version__}"
