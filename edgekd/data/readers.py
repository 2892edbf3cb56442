"""Dataset readers. Torch-free: every reader returns uint8 NHWC arrays and int64 labels.

Specs (DESIGN.md section 2): `synthetic[:n_train=N,n_test=N,seed=S,size=P]`, `npz:PATH`,
`imagefolder:PATH`, `cifar:PATH`, `mnist:PATH`.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import pickle
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from edgekd.errors import DataError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".webp")


@dataclass
class RawSplits:
    """Decoded train and test splits as read from disk (before the validation split)."""

    x_train: np.ndarray  # (N, H, W, C) uint8
    y_train: np.ndarray  # (N,) int64
    x_test: np.ndarray
    y_test: np.ndarray
    class_names: tuple[str, ...]
    hflip: bool = True  # whether horizontal flips keep the label (not for digits)


def _as_nhwc(x: np.ndarray, what: str) -> np.ndarray:
    x = np.asarray(x)
    if x.dtype != np.uint8:
        if np.issubdtype(x.dtype, np.floating) and x.size and float(np.nanmax(x)) <= 1.0 + 1e-6:
            x = np.clip(np.round(x * 255.0), 0, 255).astype(np.uint8)
        else:
            raise DataError(f"{what}: images must be uint8 (0..255) or float in [0, 1], got {x.dtype}")
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or x.shape[-1] not in (1, 3):
        raise DataError(f"{what}: images must have shape (N, H, W) or (N, H, W, 1|3), got {x.shape}")
    return np.ascontiguousarray(x)


def _check_labels(y: np.ndarray, num_classes: int, what: str) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim != 1:
        raise DataError(f"{what}: labels must be one-dimensional, got shape {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{what}: labels must be integers, got {y.dtype}")
    if y.size and (y.min() < 0 or y.max() >= num_classes):
        raise DataError(f"{what}: labels out of range: found {int(y.min())}..{int(y.max())} for {num_classes} classes")
    return y.astype(np.int64)


def _finish(x_tr, y_tr, x_te, y_te, class_names: Optional[Sequence[str]], what: str, hflip: bool = True) -> RawSplits:
    x_tr, x_te = _as_nhwc(x_tr, f"{what} train"), _as_nhwc(x_te, f"{what} test")
    if len(x_tr) == 0:
        raise DataError(f"{what}: the training split is empty")
    if len(x_te) == 0:
        raise DataError(f"{what}: the test split is empty")
    if len(x_tr) != len(y_tr) or len(x_te) != len(y_te):
        raise DataError(f"{what}: image and label counts differ ({len(x_tr)} vs {len(y_tr)}, {len(x_te)} vs {len(y_te)})")
    if x_tr.shape[1:] != x_te.shape[1:]:
        raise DataError(f"{what}: train images {x_tr.shape[1:]} and test images {x_te.shape[1:]} differ in shape")
    if class_names is None:
        num = int(max(np.max(y_tr), np.max(y_te))) + 1
        class_names = tuple(str(i) for i in range(num))
    class_names = tuple(str(c) for c in class_names)
    y_tr = _check_labels(y_tr, len(class_names), f"{what} train")
    y_te = _check_labels(y_te, len(class_names), f"{what} test")
    return RawSplits(x_tr, y_tr, x_te, y_te, class_names, hflip)


def read_synthetic(options: str = "") -> RawSplits:
    from edgekd.data.synthetic import CLASS_NAMES, make_synthetic

    opts = {"n_train": 8000, "n_test": 2000, "seed": 0, "size": 32}
    for item in filter(None, options.split(",")):
        key, _, val = item.partition("=")
        if key not in opts or not val.isdigit():
            raise DataError(f"synthetic: bad option {item!r}; use n_train=, n_test=, seed=, size= with integers")
        opts[key] = int(val)
    x_tr, y_tr = make_synthetic(opts["n_train"], opts["seed"] * 2 + 1, opts["size"])
    x_te, y_te = make_synthetic(opts["n_test"], opts["seed"] * 2 + 2, opts["size"])
    return _finish(x_tr, y_tr, x_te, y_te, CLASS_NAMES, "synthetic")


def read_npz(path: str) -> RawSplits:
    p = Path(path)
    if not p.is_file():
        raise DataError(f"npz dataset not found: {p}")
    try:
        with np.load(p, allow_pickle=False) as d:
            missing = [k for k in ("x_train", "y_train", "x_test", "y_test") if k not in d.files]
            if missing:
                raise DataError(f"npz dataset {p} lacks keys {', '.join(missing)}")
            names = tuple(str(c) for c in d["class_names"]) if "class_names" in d.files else None
            arrays = [d[k] for k in ("x_train", "y_train", "x_test", "y_test")]
    except DataError:
        raise
    except Exception as exc:  # zipfile/pickle errors: a corrupt file
        raise DataError(f"cannot read npz dataset {p}: {exc}") from None
    x_tr = arrays[0]
    hflip = not (x_tr.ndim == 3 or (x_tr.ndim == 4 and x_tr.shape[-1] == 1))  # grayscale: digits
    return _finish(*arrays, names, f"npz {p.name}", hflip=hflip)


def _cache_dir() -> Path:
    root = os.environ.get("EDGEKD_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "edgekd")
    return Path(root)


def _list_split(root: Path, split: str, class_names: Optional[Sequence[str]]) -> tuple[list, list, tuple]:
    base = root / split
    if not base.is_dir():
        raise DataError(f"imagefolder: missing folder {base}")
    if class_names is None:
        class_names = tuple(sorted(d.name for d in base.iterdir() if d.is_dir()))
        if not class_names:
            raise DataError(f"imagefolder: no class folders in {base}")
    files, labels = [], []
    for idx, name in enumerate(class_names):
        cdir = base / name
        if not cdir.is_dir():
            if split == "train":
                raise DataError(f"imagefolder: missing class folder {cdir}")
            continue
        found = sorted(f for f in cdir.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        if not found and split == "train":
            raise DataError(f"imagefolder: class folder {cdir} has no images")
        files += found
        labels += [idx] * len(found)
    extra = sorted(d.name for d in base.iterdir() if d.is_dir() and d.name not in class_names)
    if extra:
        raise DataError(f"imagefolder: {base} has classes not in train: {', '.join(extra)}")
    return files, labels, tuple(class_names)


def _decode(files: list, size: Optional[tuple], mode: str) -> np.ndarray:
    from PIL import Image

    out = None
    for i, f in enumerate(files):
        try:
            with Image.open(f) as im:
                im = im.convert(mode)
                if size is not None and im.size != size:
                    im = im.resize(size, Image.BILINEAR)
                arr = np.asarray(im, dtype=np.uint8)
        except Exception as exc:
            raise DataError(f"imagefolder: cannot decode {f}: {exc}") from None
        if out is None:
            out = np.empty((len(files),) + arr.shape, dtype=np.uint8)
        out[i] = arr
    if out is None:
        return np.zeros((0, 1, 1, 1), dtype=np.uint8)
    return out if out.ndim == 4 else out[..., None]


def read_imagefolder(path: str) -> RawSplits:
    """`PATH/train/<class>/*`, `PATH/test/<class>/*`; all images resized to the first one's size.

    Decoded arrays are cached on disk (`$EDGEKD_CACHE`, default `~/.cache/edgekd`) keyed by the
    file list, sizes and mtimes, so neither a second epoch nor a second run decodes JPEGs again.
    """
    from PIL import Image

    root = Path(path)
    if not root.is_dir():
        raise DataError(f"imagefolder dataset not found: {root}")
    tr_files, tr_labels, names = _list_split(root, "train", None)
    te_files, te_labels, _ = _list_split(root, "test", names)
    key = hashlib.sha256()
    for f in tr_files + te_files:
        st = f.stat()
        key.update(f"{f}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    cache = _cache_dir() / f"imagefolder-{key.hexdigest()[:24]}.npz"
    if cache.is_file():
        try:
            with np.load(cache) as d:
                return _finish(d["x_train"], d["y_train"], d["x_test"], d["y_test"], names, f"imagefolder {root.name}",
                               hflip=d["x_train"].shape[-1] == 3)
        except Exception:
            pass  # a broken cache is rebuilt below
    with Image.open(tr_files[0]) as first:
        mode = "L" if first.mode in ("L", "1", "I;16") else "RGB"
        size = first.size
    x_tr = _decode(tr_files, size, mode)
    x_te = _decode(te_files, size, mode)
    raw = _finish(x_tr, np.array(tr_labels), x_te, np.array(te_labels, dtype=np.int64), names,
                  f"imagefolder {root.name}", hflip=mode == "RGB")
    try:
        from edgekd.io import atomic_path

        with atomic_path(cache) as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, x_train=raw.x_train, y_train=raw.y_train, x_test=raw.x_test, y_test=raw.y_test)
    except OSError:
        pass  # caching is an optimisation; a read-only home must not break training
    return raw


def read_cifar(path: str) -> RawSplits:
    """CIFAR-10/100 python pickle batches (`data_batch_*`, `test_batch` or `train`/`test`)."""
    root = Path(path)
    if not root.is_dir():
        raise DataError(f"cifar dataset not found: {root}")

    def load(f: Path) -> dict:
        try:
            with open(f, "rb") as fh:
                return pickle.load(fh, encoding="bytes")  # noqa: S301 - the CIFAR format is pickle
        except Exception as exc:
            raise DataError(f"cifar: cannot read {f}: {exc}") from None

    def key(d: dict, *names: str):
        for n in names:
            for k in (n, n.encode()):
                if k in d:
                    return d[k]
        raise DataError(f"cifar: batch lacks {names[0]}")

    train_files = sorted(root.glob("data_batch_*")) or ([root / "train"] if (root / "train").is_file() else [])
    test_file = root / "test_batch" if (root / "test_batch").is_file() else root / "test"
    if not train_files or not test_file.is_file():
        raise DataError(f"cifar: {root} holds no data_batch_* / test_batch files")

    def arrays(files: list) -> tuple:
        xs, ys = [], []
        for f in files:
            d = load(f)
            xs.append(np.asarray(key(d, "data"), dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
            ys.append(np.asarray(key(d, "labels", "fine_labels"), dtype=np.int64))
        return np.concatenate(xs), np.concatenate(ys)

    x_tr, y_tr = arrays(train_files)
    x_te, y_te = arrays([test_file])
    names = None
    for meta in ("batches.meta", "meta"):
        if (root / meta).is_file():
            m = load(root / meta)
            raw = m.get(b"label_names") or m.get("label_names") or m.get(b"fine_label_names") or m.get("fine_label_names")
            if raw:
                names = [n.decode() if isinstance(n, bytes) else str(n) for n in raw]
    return _finish(x_tr, y_tr, x_te, y_te, names, f"cifar {root.name}")


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
        zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
        if zero != 0 or dtype_code != 0x08:
            raise ValueError("not an unsigned-byte IDX file")
        dims = struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim])
        arr = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
        return arr.reshape(dims)
    except Exception as exc:
        raise DataError(f"mnist: cannot read IDX file {path}: {exc}") from None


def read_mnist(path: str) -> RawSplits:
    """MNIST-style IDX files: `train-images-idx3-ubyte[.gz]`, `train-labels-idx1-ubyte`, `t10k-*`."""
    root = Path(path)
    if not root.is_dir():
        raise DataError(f"mnist dataset not found: {root}")

    def find(stem: str) -> Path:
        for cand in (root / stem, root / f"{stem}.gz"):
            if cand.is_file():
                return cand
        raise DataError(f"mnist: missing {stem}[.gz] in {root}")

    x_tr = _read_idx(find("train-images-idx3-ubyte"))
    y_tr = _read_idx(find("train-labels-idx1-ubyte")).astype(np.int64)
    x_te = _read_idx(find("t10k-images-idx3-ubyte"))
    y_te = _read_idx(find("t10k-labels-idx1-ubyte")).astype(np.int64)
    return _finish(x_tr, y_tr, x_te, y_te, [str(i) for i in range(10)], "mnist", hflip=False)


READERS = {
    "npz": read_npz,
    "imagefolder": read_imagefolder,
    "cifar": read_cifar,
    "mnist": read_mnist,
}


def read_spec(spec: str) -> RawSplits:
    """Read a data spec string into raw train/test splits."""
    kind, _, arg = spec.partition(":")
    if kind == "synthetic":
        return read_synthetic(arg)
    if kind not in READERS:
        raise DataError(f"unknown data spec {spec!r}; use synthetic, npz:PATH, imagefolder:PATH, cifar:PATH or mnist:PATH")
    if not arg:
        raise DataError(f"data spec {spec!r} needs a path after '{kind}:'")
    return READERS[kind](os.path.expanduser(arg))
