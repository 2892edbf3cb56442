"""Dataset readers. Torch-free: every reader returns uint8 NHWC arrays and int64 labels.

Specs (docs/architecture.md, "Data specs"): `synthetic[:n_train=N,n_test=N,seed=S,size=P]`, `npz:PATH`,
`imagefolder:PATH`, `cifar:PATH`, `mnist:PATH`.

Bad input (docs/architecture.md, "Bad input"): every reader answers a bad file with one `DataError`
line. Image files are decoded by the runtime's `read_image` (one conversion for training and device,
see edgekd.runtime.preprocess). An image-folder image that cannot be decoded is skipped, counted and
listed (`RawSplits.skipped`; training writes the list to `skipped_images.txt` in the run directory),
unless more than `ImagePolicy.max_bad_fraction` of a split is unreadable, which refuses the dataset;
`ImagePolicy(strict=True)` (`--strict-images`) refuses the first unreadable image. CIFAR batches are
pickles by format and go through a restricted unpickler (edgekd.data.unpickle) that never runs code.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from edgekd.errors import DataError, first_line
from edgekd.runtime.preprocess import ImageError, convert_image, image_channels, is_image_file, read_image

# Written into the run directory when images were skipped: one `path<TAB>reason` line per image.
SKIPPED_FILE = "skipped_images.txt"
# Bump when decoding changes (e.g. 16-bit scaling, alpha): caches of the old decoder are then not reused.
DECODER_VERSION = 2
# The synthetic task's bounds: shapes need a few pixels; bigger than this is a typo, not an experiment.
SYNTHETIC_SIZE_RANGE = (4, 2048)


@dataclass(frozen=True)
class ImagePolicy:
    """What the image-folder reader does with an image file it cannot decode (never a silent skip)."""

    strict: bool = False  # `--strict-images`: the first unreadable image refuses the dataset
    max_bad_fraction: float = 0.01  # otherwise skip and list them, but refuse a split with more unreadable


@dataclass
class RawSplits:
    """Decoded train and test splits as read from disk (before the validation split)."""

    x_train: np.ndarray  # (N, H, W, C) uint8
    y_train: np.ndarray  # (N,) int64
    x_test: np.ndarray
    y_test: np.ndarray
    class_names: tuple[str, ...]
    hflip: bool = True  # whether horizontal flips keep the label (not for digits)
    skipped: tuple[tuple[str, str], ...] = ()  # (file, reason) of unreadable images left out (image folders)


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


def _finish(x_tr, y_tr, x_te, y_te, class_names: Optional[Sequence[str]], what: str, hflip: bool = True,
            skipped: Sequence[tuple[str, str]] = ()) -> RawSplits:
    x_tr, x_te = _as_nhwc(x_tr, f"{what} train"), _as_nhwc(x_te, f"{what} test")
    if len(x_tr) == 0:
        raise DataError(f"{what}: the training split is empty")
    if len(x_te) == 0:
        raise DataError(f"{what}: the test split is empty")
    if len(x_tr) != len(y_tr) or len(x_te) != len(y_te):
        raise DataError(f"{what}: image and label counts differ ({len(x_tr)} vs {len(y_tr)}, "
                        f"{len(x_te)} vs {len(y_te)})")
    if x_tr.shape[1:] != x_te.shape[1:]:
        raise DataError(f"{what}: train images {x_tr.shape[1:]} and test images {x_te.shape[1:]} differ in shape")
    if class_names is None:
        num = int(max(np.max(y_tr), np.max(y_te))) + 1
        class_names = tuple(str(i) for i in range(num))
    class_names = tuple(str(c) for c in class_names)
    y_tr = _check_labels(y_tr, len(class_names), f"{what} train")
    y_te = _check_labels(y_te, len(class_names), f"{what} test")
    return RawSplits(x_tr, y_tr, x_te, y_te, class_names, hflip, tuple(skipped))


def read_synthetic(options: str = "") -> RawSplits:
    from edgekd.data.synthetic import CLASS_NAMES, make_synthetic

    opts = {"n_train": 8000, "n_test": 2000, "seed": 0, "size": 32}
    for item in filter(None, options.split(",")):
        key, _, val = item.partition("=")
        if key not in opts or not val.isdigit():
            raise DataError(f"synthetic: bad option {item!r}; use n_train=, n_test=, seed=, size= with integers")
        opts[key] = int(val)
    lo, hi = SYNTHETIC_SIZE_RANGE
    if not lo <= opts["size"] <= hi:
        raise DataError(f"synthetic: size={opts['size']} is out of range; use {lo}..{hi} pixels")
    for key in ("n_train", "n_test"):
        if opts[key] < 1:
            raise DataError(f"synthetic: {key}={opts[key]} must be at least 1")
    try:
        x_tr, y_tr = make_synthetic(opts["n_train"], opts["seed"] * 2 + 1, opts["size"])
        x_te, y_te = make_synthetic(opts["n_test"], opts["seed"] * 2 + 2, opts["size"])
    except MemoryError:
        raise DataError(f"synthetic: {opts['n_train']}+{opts['n_test']} images of {opts['size']}px "
                        f"do not fit in memory") from None
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
    entries = _listdir(base)
    broken = [d for d in entries if d.is_symlink() and not d.exists()]  # exists() is False for a loop too
    if broken:
        raise DataError(f"imagefolder: {broken[0]} is a broken symlink or a symlink loop")
    if class_names is None:
        class_names = tuple(d.name for d in entries if d.is_dir())
        if not class_names:
            raise DataError(f"imagefolder: no class folders in {base}")
    files, labels = [], []
    for idx, name in enumerate(class_names):
        cdir = base / name
        if not cdir.is_dir():
            if split == "train":
                raise DataError(f"imagefolder: missing class folder {cdir}")
            continue
        # a file with an image suffix is listed even when it cannot be opened (a dangling link, a
        # symlink loop): decoding then reports it, nothing is left out silently
        found = [f for f in _listdir(cdir) if is_image_file(f)]
        if not found and split == "train":
            raise DataError(f"imagefolder: class folder {cdir} has no images")
        files += found
        labels += [idx] * len(found)
    extra = sorted(d.name for d in entries if d.is_dir() and d.name not in class_names)
    if extra:
        raise DataError(f"imagefolder: {base} has classes not in train: {', '.join(extra)}")
    return files, labels, tuple(class_names)


def _listdir(path: Path) -> list[Path]:
    try:
        return sorted(path.iterdir())
    except OSError as exc:
        raise DataError(f"imagefolder: cannot list {path} ({exc.strerror or first_line(exc)})") from None


def _probe(files: list) -> tuple[str, tuple[int, int]]:
    """The folder's mode and (width, height): the first train image that decodes sets both (upright)."""
    from PIL import Image

    first_error = None
    for f in files:
        try:
            with Image.open(f) as im:
                mode = "L" if image_channels(im.mode) == 1 else "RGB"
                return mode, convert_image(im, mode).size
        except Exception as exc:  # noqa: BLE001 - an unreadable image is reported (and counted) by _decode
            first_error = first_error or f"{f}: {first_line(exc)}"
    raise DataError(f"imagefolder: cannot decode any train image (first: {first_error})")


def _decode(files: list, size: Optional[tuple], mode: str, strict: bool = False) -> tuple[np.ndarray, list, list]:
    """Decode `files` to uint8 (N, H, W, C); returns the images, the positions kept and (file, reason) of the rest.

    With `strict`, the first unreadable file raises a DataError instead of being skipped.
    """
    out, kept, bad = None, [], []
    for i, f in enumerate(files):
        try:
            arr = read_image(f, mode, size)
        except ImageError as exc:
            reason = str(exc).removeprefix(f"{f}: ")
            if strict:
                raise DataError(f"imagefolder: cannot decode {f}: {reason} (--strict-images)") from None
            bad.append((str(f), reason))
            continue
        if out is None:
            out = np.empty((len(files),) + arr.shape, dtype=np.uint8)
        out[len(kept)] = arr
        kept.append(i)
    if out is None:
        return np.zeros((0, 1, 1, 1), dtype=np.uint8), kept, bad
    out = out[:len(kept)]
    return (out if out.ndim == 4 else out[..., None]), kept, bad


def check_skipped(bad: Sequence[tuple[str, str]], total: int, split: str, policy: ImagePolicy) -> None:
    """Refuse a split whose unreadable images break `policy` (strict: any; else more than the fraction)."""
    if not bad:
        return
    f, reason = bad[0]
    if policy.strict:
        raise DataError(f"imagefolder: cannot decode {f}: {reason} (--strict-images)")
    if len(bad) > policy.max_bad_fraction * total:
        raise DataError(f"imagefolder: cannot decode {len(bad)} of {total} {split} images (more than "
                        f"{policy.max_bad_fraction:.0%} allowed); first: {f}: {reason}")


def write_skipped(skipped: Sequence[tuple[str, str]], run_dir: str | os.PathLike) -> Optional[Path]:
    """Write `skipped_images.txt` (`file<TAB>reason` lines) into a run directory; None when nothing was skipped.

    With nothing skipped, a list from an earlier attempt (a resumed run whose images were fixed) is removed.
    """
    from edgekd.io import write_text_atomic

    path = Path(run_dir) / SKIPPED_FILE
    if not skipped:
        if path.is_file():
            path.unlink()
        return None
    write_text_atomic(path, "".join(f"{f}\t{reason}\n" for f, reason in skipped))
    return path


def _cache_key(files: list) -> str:
    key = hashlib.sha256(f"decoder {DECODER_VERSION}\n".encode())
    for f in files:
        try:
            st = f.stat()
            key.update(f"{f}|{st.st_size}|{st.st_mtime_ns}\n".encode())
        except OSError as exc:  # a dangling link or a loop: decoding reports it
            key.update(f"{f}|unreadable {exc.errno}\n".encode())
    return key.hexdigest()[:24]


def _skip_array(bad: list) -> np.ndarray:
    return np.array(bad, dtype=str).reshape(-1, 2)  # unicode, so np.load needs no pickle


def _read_cache(cache: Path, names: tuple, what: str) -> Optional[tuple[RawSplits, list, list]]:
    """The cached decode (splits, skipped train, skipped test), or None when absent, broken or of an old decoder."""
    if not cache.is_file():
        return None
    try:
        with np.load(cache, allow_pickle=False) as d:
            bad_tr, bad_te = ([(str(f), str(r)) for f, r in d[k]] for k in ("skipped_train", "skipped_test"))
            raw = _finish(d["x_train"], d["y_train"], d["x_test"], d["y_test"], names, what,
                          hflip=d["x_train"].shape[-1] == 3, skipped=bad_tr + bad_te)
        return raw, bad_tr, bad_te
    except Exception:  # noqa: BLE001 - a broken cache is rebuilt
        return None


def read_imagefolder(path: str, policy: ImagePolicy = ImagePolicy()) -> RawSplits:
    """`PATH/train/<class>/*`, `PATH/test/<class>/*`; all images resized to the first one's size.

    Decoded arrays are cached on disk (`$EDGEKD_CACHE`, default `~/.cache/edgekd`) keyed by the
    file list, sizes, mtimes and the decoder version, so neither a second epoch nor a second run
    decodes JPEGs again. Unreadable images follow `policy` (module docstring).
    """
    root = Path(path)
    if not root.is_dir():
        raise DataError(f"imagefolder dataset not found: {root}")
    tr_files, tr_labels, names = _list_split(root, "train", None)
    te_files, te_labels, _ = _list_split(root, "test", names)
    what = f"imagefolder {root.name}"
    cache = _cache_dir() / f"imagefolder-{_cache_key(tr_files + te_files)}.npz"
    cached = _read_cache(cache, names, what)
    if cached is not None:
        raw, bad_tr, bad_te = cached
        check_skipped(bad_tr, len(tr_files), "train", policy)
        check_skipped(bad_te, len(te_files), "test", policy)
        return raw
    mode, size = _probe(tr_files)
    x_tr, keep_tr, bad_tr = _decode(tr_files, size, mode, policy.strict)
    x_te, keep_te, bad_te = _decode(te_files, size, mode, policy.strict)
    check_skipped(bad_tr, len(tr_files), "train", policy)
    check_skipped(bad_te, len(te_files), "test", policy)
    y_tr, y_te = np.array(tr_labels, dtype=np.int64)[keep_tr], np.array(te_labels, dtype=np.int64)[keep_te]
    raw = _finish(x_tr, y_tr, x_te, y_te, names, what, hflip=mode == "RGB", skipped=bad_tr + bad_te)
    try:
        from edgekd.io import atomic_path

        with atomic_path(cache) as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, x_train=raw.x_train, y_train=raw.y_train, x_test=raw.x_test, y_test=raw.y_test,
                         skipped_train=_skip_array(bad_tr), skipped_test=_skip_array(bad_te))
    except OSError:
        pass  # caching is an optimisation; a read-only or full disk must not break training
    return raw


# Every key of the CIFAR-10 and CIFAR-100 python batches and meta files; anything else is refused.
CIFAR_KEYS = ("data", "labels", "fine_labels", "coarse_labels", "filenames", "batch_label",
              "label_names", "fine_label_names", "coarse_label_names", "num_cases_per_batch", "num_vis")
_CIFAR_PIXELS = 3 * 32 * 32


def _cifar_load(f: Path) -> dict:
    from edgekd.data.unpickle import load_restricted

    try:
        with open(f, "rb") as fh:
            return load_restricted(fh, f"cifar: {f}", keys=CIFAR_KEYS)
    except OSError as exc:
        raise DataError(f"cifar: cannot read {f} ({exc.strerror or first_line(exc)})") from None


def _cifar_key(d: dict, f: Path, *names: str):
    for n in names:
        for k in (n, n.encode()):
            if k in d:
                return d[k]
    raise DataError(f"cifar: {f}: batch lacks {names[0]}")


def _cifar_batch(f: Path) -> tuple[np.ndarray, np.ndarray]:
    """One batch file -> uint8 (N, 32, 32, 3) images and int64 (N,) labels, shapes checked."""
    d = _cifar_load(f)
    try:
        x = np.asarray(_cifar_key(d, f, "data"))
        y = np.asarray(_cifar_key(d, f, "labels", "fine_labels"))
    except ValueError as exc:  # ragged lists
        raise DataError(f"cifar: {f}: {first_line(exc)}") from None
    if not (np.issubdtype(x.dtype, np.integer) and np.issubdtype(y.dtype, np.integer)):
        raise DataError(f"cifar: {f}: data and labels must be integers, got {x.dtype} and {y.dtype}")
    if x.size % _CIFAR_PIXELS or (x.ndim == 2 and x.shape[1] != _CIFAR_PIXELS) or x.ndim not in (1, 2):
        raise DataError(f"cifar: {f}: data has shape {x.shape}; a CIFAR batch is (N, 3072): 32x32 RGB, "
                        f"channels first")
    n = x.size // _CIFAR_PIXELS
    if y.ndim != 1 or len(y) != n:
        raise DataError(f"cifar: {f}: {n} images but labels of shape {y.shape}")
    if x.size and (x.min() < 0 or x.max() > 255):
        raise DataError(f"cifar: {f}: pixel values must be 0..255, found {int(x.min())}..{int(x.max())}")
    return x.astype(np.uint8).reshape(n, 3, 32, 32).transpose(0, 2, 3, 1), y.astype(np.int64)


def read_cifar(path: str) -> RawSplits:
    """CIFAR-10/100 python pickle batches (`data_batch_*`, `test_batch` or `train`/`test`), unpickled restricted."""
    root = Path(path)
    if not root.is_dir():
        raise DataError(f"cifar dataset not found: {root}")
    train_files = sorted(root.glob("data_batch_*")) or ([root / "train"] if (root / "train").is_file() else [])
    test_file = root / "test_batch" if (root / "test_batch").is_file() else root / "test"
    if not train_files or not test_file.is_file():
        raise DataError(f"cifar: {root} holds no data_batch_* / test_batch files")

    def arrays(files: list) -> tuple:
        xs, ys = zip(*(_cifar_batch(f) for f in files))
        return np.concatenate(xs), np.concatenate(ys)

    x_tr, y_tr = arrays(train_files)
    x_te, y_te = arrays([test_file])
    names = None
    for meta in ("batches.meta", "meta"):
        if (root / meta).is_file():
            m = _cifar_load(root / meta)
            found = [m[k] for k in (b"label_names", "label_names", b"fine_label_names", "fine_label_names") if k in m]
            if found and not isinstance(found[0], (list, tuple, np.ndarray)):
                raise DataError(f"cifar: {root / meta}: label names must be a list")
            if found and len(found[0]):
                names = [n.decode(errors="replace") if isinstance(n, bytes) else str(n) for n in found[0]]
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


def read_spec(spec: str, images: ImagePolicy = ImagePolicy()) -> RawSplits:
    """Read a data spec string into raw train/test splits; `images` rules unreadable image-folder files."""
    kind, _, arg = spec.partition(":")
    if kind == "synthetic":
        return read_synthetic(arg)
    if kind not in READERS:
        raise DataError(f"unknown data spec {spec!r}; use synthetic, npz:PATH, imagefolder:PATH, cifar:PATH "
                        f"or mnist:PATH")
    if not arg:
        raise DataError(f"data spec {spec!r} needs a path after '{kind}:'")
    if kind == "imagefolder":
        return read_imagefolder(os.path.expanduser(arg), images)
    return READERS[kind](os.path.expanduser(arg))
