"""Dataset helpers for tests: the shared real datasets and tiny real files written on demand.

The shared data lives in `../shared/data` beside the checkout (absent on a user's machine: tests
that need it skip with a reason). The CIFAR-10 JPEG archive is extracted once into
`/tmp/edgekd-data/` by whichever process gets there first (extract to a temp dir, then rename).
"""

from __future__ import annotations

import os
import pickle
import shutil
import struct
import tarfile
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np
import pytest

EXTRACT_ROOT = Path(os.environ.get("EDGEKD_DATA_CACHE", "/tmp/edgekd-data"))
CIFAR_DIRNAME = "CIFAR-10-images"


def shared_data_dir() -> Path:
    """`../shared/data` relative to the project root (may not exist)."""
    return Path(__file__).resolve().parents[2] / "shared" / "data"


def _skip_missing(path: Path) -> None:
    pytest.skip(f"real dataset not available: {path} is absent (needs ../shared/data)")


def extract_cifar10_folder() -> Path:
    """Extract the CIFAR-10 JPEG archive once; returns the `CIFAR-10-images` path.

    Safe against concurrent callers: each extracts into its own temp dir and renames it into
    place; a loser of the race deletes its copy and uses the winner's. Raises FileNotFoundError
    when the archive is absent.
    """
    target = EXTRACT_ROOT / CIFAR_DIRNAME
    if (target / "test").is_dir():
        return target
    archive = shared_data_dir() / "cifar10-jpg.tar.gz"
    if not archive.is_file():
        raise FileNotFoundError(archive)
    EXTRACT_ROOT.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".extract-", dir=EXTRACT_ROOT))
    try:
        with tarfile.open(archive) as tar:
            members = [m for m in tar.getmembers()
                       if m.name.split("/")[0] == CIFAR_DIRNAME and (m.isfile() or m.isdir())]
            tar.extractall(tmp, members=members, filter="data")
        try:
            os.rename(tmp / CIFAR_DIRNAME, target)
        except OSError:
            if not (target / "test").is_dir():  # not a lost race: a real failure
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def cifar10_folder() -> Path:
    """The extracted real CIFAR-10 image folder, or pytest.skip when the archive is absent."""
    try:
        return extract_cifar10_folder()
    except FileNotFoundError as exc:
        _skip_missing(Path(str(exc)))
        raise  # unreachable: pytest.skip raises


def mnist_npz() -> Path:
    """The real MNIST npz (`npz:` spec path), or pytest.skip when absent."""
    p = shared_data_dir() / "mnist_uint8.npz"
    if not p.is_file():
        _skip_missing(p)
    return p


# ---- tiny real datasets written to a directory -------------------------------------------

def random_images(n: int, size: int = 8, channels: int = 3, seed: int = 0) -> np.ndarray:
    """(n, size, size, channels) uint8 images, or (n, size, size) for channels == 1."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, size=(n, size, size, channels), dtype=np.uint8)
    return x[..., 0] if channels == 1 else x


def write_image_folder(root: Path, class_names: Sequence[str] = ("cat", "dog", "eel"), per_class: int = 4,
                       test_per_class: int = 2, size: int = 8, mode: str = "RGB", fmt: str = "png",
                       seed: int = 0) -> tuple[Path, dict]:
    """Write `root/{train,test}/<class>/*.{png,jpg}`; returns (root, {split: (x, y)}) of what was written.

    PNG is lossless, so the written arrays equal what a reader must decode.
    """
    from PIL import Image

    channels = 1 if mode == "L" else 3
    out = {}
    for s, (split, k) in enumerate((("train", per_class), ("test", test_per_class))):
        xs, ys = [], []
        for ci, name in enumerate(class_names):
            d = root / split / name
            d.mkdir(parents=True, exist_ok=True)
            imgs = random_images(k, size, channels, seed=seed * 100 + s * 10 + ci)
            for j, arr in enumerate(imgs):
                Image.fromarray(arr, mode=mode).save(d / f"{j:04d}.{fmt}")
                xs.append(arr if arr.ndim == 3 else arr[..., None])
                ys.append(ci)
        out[split] = (np.stack(xs), np.array(ys, dtype=np.int64))
    return root, out


def write_cifar_batches(root: Path, n_train: int = 20, n_test: int = 10, num_classes: int = 10,
                        seed: int = 0) -> tuple[Path, dict]:
    """Write CIFAR-10-style python pickle batches (2 data batches, test batch, meta)."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    x_tr = rng.integers(0, 256, size=(n_train, 3, 32, 32), dtype=np.uint8)
    y_tr = rng.integers(0, num_classes, size=n_train)
    y_tr[:num_classes] = np.arange(num_classes)  # every class present
    x_te = rng.integers(0, 256, size=(n_test, 3, 32, 32), dtype=np.uint8)
    y_te = rng.integers(0, num_classes, size=n_test)
    half = n_train // 2
    for i, sl in enumerate((slice(0, half), slice(half, n_train)), start=1):
        with open(root / f"data_batch_{i}", "wb") as f:
            pickle.dump({b"data": x_tr[sl].reshape(-1, 3072), b"labels": y_tr[sl].tolist()}, f)
    with open(root / "test_batch", "wb") as f:
        pickle.dump({b"data": x_te.reshape(-1, 3072), b"labels": y_te.tolist()}, f)
    names = [f"class{i}" for i in range(num_classes)]
    with open(root / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [n.encode() for n in names]}, f)
    nhwc = lambda a: a.transpose(0, 2, 3, 1)  # noqa: E731
    return root, {"train": (nhwc(x_tr), y_tr), "test": (nhwc(x_te), y_te), "class_names": names}


def _write_idx(path: Path, arr: np.ndarray, gz: bool) -> None:
    import gzip

    header = struct.pack(">HBB", 0, 0x08, arr.ndim) + struct.pack(">" + "I" * arr.ndim, *arr.shape)
    data = header + np.ascontiguousarray(arr, dtype=np.uint8).tobytes()
    if gz:
        with gzip.open(str(path) + ".gz", "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)


def write_mnist_idx(root: Path, n_train: int = 20, n_test: int = 10, gz: bool = False,
                    seed: int = 0) -> tuple[Path, dict]:
    """Write MNIST IDX files (optionally gzipped) of 28x28 grayscale images, labels 0..9."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    x_tr = rng.integers(0, 256, size=(n_train, 28, 28), dtype=np.uint8)
    y_tr = (np.arange(n_train) % 10).astype(np.uint8)
    x_te = rng.integers(0, 256, size=(n_test, 28, 28), dtype=np.uint8)
    y_te = (np.arange(n_test) % 10).astype(np.uint8)
    _write_idx(root / "train-images-idx3-ubyte", x_tr, gz)
    _write_idx(root / "train-labels-idx1-ubyte", y_tr, gz)
    _write_idx(root / "t10k-images-idx3-ubyte", x_te, gz)
    _write_idx(root / "t10k-labels-idx1-ubyte", y_te, gz)
    return root, {"train": (x_tr, y_tr), "test": (x_te, y_te)}


def write_npz(path: Path, n_train: int = 30, n_test: int = 10, size: int = 8, channels: int = 3,
              num_classes: int = 3, class_names: Sequence[str] | None = None, seed: int = 0, **override) -> Path:
    """Write an `npz:` dataset (keys x_train/y_train/x_test/y_test [+ class_names]); `override` replaces arrays."""
    rng = np.random.default_rng(seed)
    arrays = {
        "x_train": random_images(n_train, size, channels, seed),
        "y_train": np.arange(n_train) % num_classes,
        "x_test": random_images(n_test, size, channels, seed + 1),
        "y_test": rng.integers(0, num_classes, size=n_test),
    }
    if class_names is not None:
        arrays["class_names"] = np.array(list(class_names))
    arrays.update(override)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)
    return path
