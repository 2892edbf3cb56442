"""Train/val/test splits with normalisation statistics (torch-free).

Two regimes (edgekd.data.images):
- native size (no view): the reader's arrays in memory, as they are;
- a `View` (`--image-size N`): every image kept as a side x side square. `x_train` is then an
  `ImageRows` of those squares carrying the view (the train loader takes random-resized crops),
  `x_val` / `x_test` read their centred size x size crops, i.e. exactly what the model and the
  runtime see. Image folders and `store:PATH` specs read the on-disk store (edgekd.data.store:
  decoded once, bounded memory); other specs are decoded and squared in memory (small datasets).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

from edgekd.data.images import ImageRows, View, fit_images, image_sums, stats_from_sums
from edgekd.data.readers import RawSplits, read_spec
from edgekd.errors import DataError


@dataclass
class ImageData:
    """A dataset ready for training: uint8 NHWC arrays, labels, class names and mean/std.

    `train_ids` are the positions of the training images in the reader's train split, so
    per-sample state (PS-KD buffers, teacher caches) can be keyed stably.
    """

    spec: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    class_names: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    hflip: bool
    train_ids: np.ndarray
    val_ids: np.ndarray
    view: Optional[View] = None  # set: fixed-size regime (x_train is side x side ImageRows, see the module docstring)
    skipped: tuple[tuple[str, str], ...] = ()  # (file, reason) of unreadable image-folder files left out
    store: Optional[Any] = None  # the edgekd.data.store.Store read, when the images are on disk

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one model input (the view's size in the fixed-size regime)."""
        h, w, c = self.x_train.shape[1:]
        return (c, self.view.size, self.view.size) if self.view is not None else (c, h, w)

    def split(self, name: str) -> tuple[Any, np.ndarray]:
        """Images and labels of a split as the model sees them at evaluation (train: centre crops too)."""
        if name not in ("train", "val", "test"):
            raise DataError(f"unknown split {name!r}; use train, val or test")
        x, y = getattr(self, f"x_{name}"), getattr(self, f"y_{name}")
        if len(x) == 0:
            raise DataError(f"the {name} split of {self.spec} is empty")
        return (x.eval_view() if isinstance(x, ImageRows) else x), y


def channel_stats(x: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 NHWC images scaled to [0, 1]."""
    flat = x.reshape(-1, x.shape[-1])
    if len(flat) > 4_000_000:  # a strided subsample is plenty for the statistics
        flat = flat[:: len(flat) // 4_000_000 + 1]
    f = flat.astype(np.float64) / 255.0
    std = np.maximum(f.std(axis=0), 1e-3)
    return tuple(round(float(v), 4) for v in f.mean(axis=0)), tuple(round(float(v), 4) for v in std)


def split_train_val(raw: RawSplits | np.ndarray, val_fraction: float,
                    split_seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified, deterministic held-out validation indices taken from train (`raw` or its train labels)."""
    y_train = raw.y_train if isinstance(raw, RawSplits) else np.asarray(raw)
    rng = np.random.default_rng(split_seed)
    val = []
    if val_fraction > 0:
        for c in np.unique(y_train):
            idx = np.flatnonzero(y_train == c)
            k = int(round(len(idx) * val_fraction))
            if k >= len(idx):
                k = len(idx) - 1
            val.append(rng.permutation(idx)[:k])
    val_idx = np.sort(np.concatenate(val)) if val else np.zeros(0, dtype=np.int64)
    mask = np.ones(len(y_train), dtype=bool)
    mask[val_idx] = False
    return np.flatnonzero(mask), val_idx


def load_dataset(spec: str, val_fraction: float = 0.1, split_seed: int = 0, view: Optional[View] = None,
                 images: Any = None) -> ImageData:
    """Read a data spec and split a held-out validation set from its training split.

    Args:
        spec: data spec (edgekd.data.readers; `store:PATH` opens a store built by edgekd.data.store).
        view: the fixed-size regime (`--image-size`); None keeps the images' own size.
        images: edgekd.data.readers.ImagePolicy for unreadable image-folder files (None: the default).
    """
    kind = spec.partition(":")[0]
    if view is None and kind != "store":
        raw = read_spec(spec) if images is None else read_spec(spec, images)
        tr, va = _split(raw.y_train, val_fraction, split_seed, spec)
        mean, std = channel_stats(raw.x_train[tr])
        return ImageData(
            spec=spec, x_train=raw.x_train[tr], y_train=raw.y_train[tr], x_val=raw.x_train[va],
            y_val=raw.y_train[va], x_test=raw.x_test, y_test=raw.y_test, class_names=raw.class_names,
            mean=mean, std=std, hflip=raw.hflip, train_ids=tr, val_ids=va, skipped=tuple(raw.skipped),
        )
    return _load_fixed_size(spec, val_fraction, split_seed, view, images)


def _split(y_train: np.ndarray, val_fraction: float, split_seed: int, spec: str) -> tuple[np.ndarray, np.ndarray]:
    tr, va = split_train_val(y_train, val_fraction, split_seed)
    if len(tr) == 0:
        raise DataError(f"{spec}: nothing left to train on after the validation split")
    return tr, va


def _load_fixed_size(spec: str, val_fraction: float, split_seed: int, view: Optional[View], images: Any) -> ImageData:
    """The fixed-size regime: squares from the on-disk store (image folders, stores) or fitted in memory."""
    from edgekd.data.store import imagefolder_store, open_store

    kind, _, arg = spec.partition(":")
    store, skipped = None, ()
    if kind in ("imagefolder", "store"):
        if not arg:
            raise DataError(f"data spec {spec!r} needs a path after '{kind}:'")
        if kind == "store":
            store = open_store(Path(arg).expanduser())
            if view is None:
                if not store.meta.get("size"):
                    raise DataError(f"store {arg} records no training size; pass --image-size")
                view = View(int(store.meta["size"]))
        else:
            store = imagefolder_store(Path(arg).expanduser(), view.side, policy=images, size=view.size)
        if store.side != view.side:
            raise DataError(f"store {store.root} holds {store.side}-px squares; image size {view.size} at crop ratio "
                            f"{view.crop_ratio} needs {view.side} px (decode the folder again for that size)")
        train, test = store.split("train"), store.split("test")
        base_tr, base_te = train.image_rows(), test.image_rows()
        y_all, y_test, sums = train.labels, test.labels, train.sums
        names, hflip = store.class_names, store.hflip
        skipped = tuple(tuple(ln.split("\t", 2)[1:]) for s in ("train", "test")
                        for ln in (store.root / f"{s}.skipped.txt").read_text().splitlines())
    else:
        raw = read_spec(spec) if images is None else read_spec(spec, images)
        x_tr, x_te = fit_images(raw.x_train, view.side), fit_images(raw.x_test, view.side)
        base_tr, base_te = ImageRows(x_tr), ImageRows(x_te)
        y_all, y_test, names, hflip = raw.y_train, raw.y_test, raw.class_names, raw.hflip
        sums, skipped = np.concatenate([image_sums(x_tr[i:i + 256]) for i in range(0, len(x_tr), 256)]), raw.skipped
    tr, va = _split(y_all, val_fraction, split_seed, spec)
    mean, std = stats_from_sums(sums[tr], view.side * view.side)
    return ImageData(
        spec=spec, x_train=base_tr.subset(tr, view=view), y_train=y_all[tr], x_val=base_tr.subset(va, crop=view.size),
        y_val=y_all[va], x_test=ImageRows(base_te.source, base_te.rows, crop=view.size), y_test=y_test,
        class_names=tuple(names), mean=mean, std=std, hflip=hflip, train_ids=tr, val_ids=va, view=view,
        skipped=tuple(skipped), store=store,
    )
