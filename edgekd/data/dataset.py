"""Train/val/test splits with normalisation statistics (torch-free)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

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

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image."""
        h, w, c = self.x_train.shape[1:]
        return (c, h, w)

    def split(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        if name not in ("train", "val", "test"):
            raise DataError(f"unknown split {name!r}; use train, val or test")
        x, y = getattr(self, f"x_{name}"), getattr(self, f"y_{name}")
        if len(x) == 0:
            raise DataError(f"the {name} split of {self.spec} is empty")
        return x, y


def channel_stats(x: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 NHWC images scaled to [0, 1]."""
    flat = x.reshape(-1, x.shape[-1])
    if len(flat) > 4_000_000:  # a strided subsample is plenty for the statistics
        flat = flat[:: len(flat) // 4_000_000 + 1]
    f = flat.astype(np.float64) / 255.0
    std = np.maximum(f.std(axis=0), 1e-3)
    return tuple(round(float(v), 4) for v in f.mean(axis=0)), tuple(round(float(v), 4) for v in std)


def split_train_val(raw: RawSplits, val_fraction: float, split_seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified, deterministic held-out validation indices taken from train."""
    rng = np.random.default_rng(split_seed)
    val = []
    if val_fraction > 0:
        for c in np.unique(raw.y_train):
            idx = np.flatnonzero(raw.y_train == c)
            k = int(round(len(idx) * val_fraction))
            if k >= len(idx):
                k = len(idx) - 1
            val.append(rng.permutation(idx)[:k])
    val_idx = np.sort(np.concatenate(val)) if val else np.zeros(0, dtype=np.int64)
    mask = np.ones(len(raw.y_train), dtype=bool)
    mask[val_idx] = False
    return np.flatnonzero(mask), val_idx


def load_dataset(spec: str, val_fraction: float = 0.1, split_seed: int = 0) -> ImageData:
    """Read a data spec and split a held-out validation set from its training split."""
    raw = read_spec(spec)
    tr, va = split_train_val(raw, val_fraction, split_seed)
    if len(tr) == 0:
        raise DataError(f"{spec}: nothing left to train on after the validation split")
    mean, std = channel_stats(raw.x_train[tr])
    return ImageData(
        spec=spec, x_train=raw.x_train[tr], y_train=raw.y_train[tr], x_val=raw.x_train[va],
        y_val=raw.y_train[va], x_test=raw.x_test, y_test=raw.y_test, class_names=raw.class_names,
        mean=mean, std=std, hflip=raw.hflip, train_ids=tr, val_ids=va,
    )
