"""Real-resolution image splits: the view geometry and a row reader over memory or an on-disk store.

With an image size set (`--image-size 224`), every image is kept as a fixed `side` x `side` uint8
square (`edgekd.runtime.resize.fit_square`, side = size / crop_ratio, 256 for 224). Training reads
random-resized crops of it (edgekd.data.transforms), evaluation its centred `size` crop, which is
exactly what the runtime computes from an image file. `ImageRows` serves both from one base array
(in memory, or a split of the on-disk store) without copying the split: indexing returns a numpy
array of the rows asked for, cropped for evaluation when the rows are an evaluation view.
Torch-free.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Optional, Protocol

import numpy as np

from edgekd.runtime.resize import DEFAULT_CROP_RATIO, center_crop, fit_array, stored_side


@dataclass(frozen=True)
class View:
    """Geometry of training and evaluation at a fixed input size.

    size: the model's input side (training and export resolution).
    crop_ratio: evaluation crop / stored side; images are kept at side = size / crop_ratio.
    scale: random-resized crop, range of the crop's area as a fraction of the stored square.
    ratio: random-resized crop, range of the crop's aspect ratio (w / h), sampled log-uniformly.
    """

    size: int
    crop_ratio: float = DEFAULT_CROP_RATIO
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0)

    @property
    def side(self) -> int:
        return stored_side(self.size, self.crop_ratio)

    @classmethod
    def from_config(cls, cfg: Any) -> Optional["View"]:
        """The view of a run config (a TrainConfig or a checkpoint's config dict); None without `image_size`.

        Keys: `image_size`, `crop_ratio`, `crop_scale` (min, max area), `crop_aspect` (min, max w/h).
        """
        get = cfg.get if isinstance(cfg, dict) else (lambda k, d=None: getattr(cfg, k, d))
        size = get("image_size", None)
        if not size:
            return None
        default = cls(int(size))
        return cls(int(size), float(get("crop_ratio", None) or default.crop_ratio),
                   tuple(get("crop_scale", None) or default.scale),
                   tuple(get("crop_aspect", None) or default.ratio)).validate()

    def to_dict(self) -> dict:
        """What a checkpoint or manifest records: size, stored side and crop parameters."""
        return {"image_size": self.size, "resize": self.side, "crop_ratio": self.crop_ratio,
                "crop_scale": list(self.scale), "crop_aspect": list(self.ratio)}

    def validate(self) -> "View":
        from edgekd.errors import ConfigError

        if self.size < 8:
            raise ConfigError(f"image_size must be >= 8, got {self.size}")
        if not 0.0 < self.crop_ratio <= 1.0:
            raise ConfigError(f"crop_ratio must be in (0, 1], got {self.crop_ratio}")
        lo, hi = self.scale
        if not 0.0 < lo <= hi <= 1.0:
            raise ConfigError(f"crop_scale must be 0 < min <= max <= 1, got {self.scale}")
        if not 0.0 < self.ratio[0] <= self.ratio[1]:
            raise ConfigError(f"crop_aspect must be 0 < min <= max, got {self.ratio}")
        return self


class RowSource(Protocol):
    """A (N, H, W, C) uint8 array that can read rows: a numpy array, or an on-disk store split."""

    shape: tuple[int, ...]

    def read(self, rows: np.ndarray) -> np.ndarray: ...


class ArraySource:
    """An in-memory (N, H, W, C) uint8 array as a `RowSource`."""

    def __init__(self, array: np.ndarray):
        self.array = array
        self.shape = tuple(array.shape)

    def read(self, rows: np.ndarray) -> np.ndarray:
        return self.array[rows]


class ImageRows:
    """Read-only (N, H, W, C) uint8 images: rows `rows` of `source`, optionally centre-cropped.

    Args:
        source: a numpy array or a `RowSource` (an on-disk store split: edgekd.data.store.RowFile).
        rows: int64 positions in `source` (None: all of them, in order).
        crop: centre-crop every image read to (crop, crop): an evaluation view.
        view: the training geometry, for the train loader's random-resized crops (train split only).

    Indexing (`x[i]`, `x[a:b]`, `x[int_array]`, `x[bool_mask]`) returns a numpy array; `len`,
    `shape`, `dtype` and `ndim` behave as for the array it stands for.
    """

    dtype = np.dtype(np.uint8)
    ndim = 4

    def __init__(self, source: Any, rows: Optional[np.ndarray] = None, crop: Optional[int] = None,
                 view: Optional[View] = None):
        self.source: RowSource = ArraySource(source) if isinstance(source, np.ndarray) else source
        self.rows = None if rows is None else np.asarray(rows, dtype=np.int64)
        self.crop, self.view = crop, view

    def __len__(self) -> int:
        return self.source.shape[0] if self.rows is None else len(self.rows)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        _, h, w, c = self.source.shape
        return (len(self), self.crop or h, self.crop or w, c)

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape))

    def positions(self, key: Any) -> np.ndarray:
        """Positions in `source` of the rows `key` selects (int64, in the order asked for)."""
        if isinstance(key, slice):
            idx = np.arange(len(self))[key]
        else:
            idx = np.asarray(key)
            if idx.dtype == bool:
                idx = np.flatnonzero(idx)
            idx = idx.astype(np.int64, copy=False)
            idx = np.where(idx < 0, idx + len(self), idx)
            if idx.size and (idx.min() < 0 or idx.max() >= len(self)):
                raise IndexError(f"row index out of range for {len(self)} images")
        return idx if self.rows is None else self.rows[idx]

    def read(self, key: Any) -> np.ndarray:
        """The selected rows as a (k, H, W, C) uint8 array (read in sorted order for locality)."""
        pos = self.positions(key).reshape(-1)
        uniq, inverse = np.unique(pos, return_inverse=True)
        out = self.source.read(uniq)
        out = out if len(uniq) == len(pos) and np.array_equal(uniq, pos) else out[inverse.reshape(-1)]
        return np.ascontiguousarray(center_crop(out, self.crop)) if self.crop else out

    def __getitem__(self, key: Any) -> np.ndarray:
        if isinstance(key, (int, np.integer)):
            return self.read(np.array([key]))[0]
        return self.read(key)

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        out = self.read(slice(None))
        return out if dtype is None else out.astype(dtype)

    def subset(self, rows: np.ndarray, crop: Optional[int] = None, view: Optional[View] = None) -> "ImageRows":
        """These images' rows `rows` as another view (no copy)."""
        base = np.arange(self.source.shape[0]) if self.rows is None else self.rows
        return ImageRows(self.source, base[np.asarray(rows, dtype=np.int64)], crop, view)

    def eval_view(self) -> "ImageRows":
        """The same rows, read as the model sees them at evaluation (centre crop of `view.size`)."""
        if self.crop or self.view is None:
            return self
        return ImageRows(self.source, self.rows, self.view.size, None)

    def iter_chunks(self, chunk: int = 256):
        """(start, images) over all rows in chunks of `chunk` (bounded memory)."""
        for start in range(0, len(self), chunk):
            yield start, self.read(slice(start, start + chunk))


def fit_images(x: np.ndarray, side: int, threads: int = 4) -> np.ndarray:
    """Every image of uint8 (N, H, W, C) brought to (side, side) by `fit_square` (threads: Pillow drops the GIL)."""
    out = np.empty((len(x), side, side, x.shape[-1]), dtype=np.uint8)
    if x.shape[1:3] == (side, side):
        out[:] = x
        return out

    def one(i: int) -> None:
        out[i] = fit_array(x[i], side)

    with ThreadPoolExecutor(max(1, threads)) as pool:
        list(pool.map(one, range(len(x))))
    return out


def image_sums(images: np.ndarray) -> np.ndarray:
    """Per-image, per-channel sum and sum of squares of pixel values in [0, 1]: float64 (k, 2, C)."""
    f = images.reshape(len(images), -1, images.shape[-1]).astype(np.float64) / 255.0
    return np.stack([f.sum(axis=1), (f * f).sum(axis=1)], axis=1)


def stats_from_sums(sums: np.ndarray, pixels_per_image: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Channel mean and std (rounded to 4 places, std >= 1e-3) from `image_sums` rows."""
    total = sums.sum(axis=0) / (len(sums) * pixels_per_image)
    mean = total[0]
    std = np.maximum(np.sqrt(np.maximum(total[1] - mean * mean, 0.0)), 1e-3)
    return tuple(round(float(v), 4) for v in mean), tuple(round(float(v), 4) for v in std)


def rows_stats(x: ImageRows, chunk: int = 256) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Channel mean and std over every image of `x`, read in chunks (bounded memory)."""
    sums = np.concatenate([image_sums(imgs) for _, imgs in x.iter_chunks(chunk)])
    return stats_from_sums(sums, x.shape[1] * x.shape[2])


__all__ = ["ArraySource", "ImageRows", "RowSource", "View", "fit_images", "image_sums", "rows_stats",
           "stats_from_sums"]
