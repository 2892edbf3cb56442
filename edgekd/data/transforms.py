"""Batched tensor augmentations: the whole batch is augmented at once on the training device.

Augmenting uint8 batches in one vectorised step (instead of per-image PIL transforms in worker
processes) keeps the loader far off the critical path on 2-core machines.

Two regimes:
- native size (CIFAR, MNIST, no `image_size`): zero-pad random crop + flip for training, nothing
  but normalisation for evaluation (`train_transform`, `eval_transform`);
- a `View` (`--image-size N`, edgekd.data.images): images are stored as side x side squares;
  training takes random-resized crops (area fraction `view.scale`, aspect `view.ratio`, as in
  Szegedy et al. 2015 / torchvision's RandomResizedCrop) resampled to size x size with a flip,
  all in one `grid_sample` call; evaluation takes the centred size x size crop, the same integer
  offsets as `edgekd.runtime.resize.center_crop`, which the runtime applies to image files.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Optional, Sequence

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from edgekd.data.images import View

CROP_TRIALS = 10  # attempts at a crop inside the image before the central fallback (torchvision's count)


def to_float(x_uint8: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) uint8 -> float in [0, 1]."""
    return x_uint8.float().div_(255.0)


def normalize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return (x - m) / s


def random_crop(x: torch.Tensor, padding: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Zero-pad by `padding` and crop back to the input size at a random offset per image."""
    if padding <= 0:
        return x
    n = x.shape[0]
    oy = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
    ox = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
    return crop_padded(x, padding, oy, ox)


def crop_padded(x: torch.Tensor, padding: int, oy: torch.Tensor, ox: torch.Tensor) -> torch.Tensor:
    """Zero-pad (N, C, H, W) by `padding` and crop each image back to H x W at its offset (oy, ox), each (N,)
    in [0, 2 * padding] (padding, padding: the image itself)."""
    n, c, h, w = x.shape
    padded = torch.nn.functional.pad(x, (padding, padding, padding, padding))
    oy, ox = oy.to(x.device), ox.to(x.device)
    rows = (oy[:, None] + torch.arange(h, device=x.device)[None, :])  # (n, h)
    cols = (ox[:, None] + torch.arange(w, device=x.device)[None, :])  # (n, w)
    bi = torch.arange(n, device=x.device)[:, None, None, None]
    ci = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[bi, ci, rows[:, None, :, None], cols[:, None, None, :]]


def random_hflip(x: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    flip = (torch.rand(x.shape[0], generator=generator) < 0.5).to(x.device)
    return torch.where(flip[:, None, None, None], x.flip(3), x)


def train_transform(x_uint8: torch.Tensor, mean, std, hflip: bool, generator: Optional[torch.Generator],
                    padding: int = 4) -> torch.Tensor:
    """Crop with padding, optional horizontal flip, normalise. Input uint8 (N, C, H, W)."""
    x = to_float(x_uint8)
    x = random_crop(x, padding, generator)
    if hflip:
        x = random_hflip(x, generator)
    return normalize(x, mean, std)


def eval_transform(x_uint8: torch.Tensor, mean, std) -> torch.Tensor:
    return normalize(to_float(x_uint8), mean, std)


def sample_crop_boxes(n: int, height: int, width: int, scale: Sequence[float], ratio: Sequence[float],
                      generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Random-resized-crop boxes (top, left, h, w) for `n` images of (height, width): int64 (n, 4).

    Per image: area fraction ~ U(scale), log aspect ~ U(log ratio); the first of CROP_TRIALS draws
    that fits is used, else the central crop with the aspect clamped to `ratio` (torchvision's rule).
    """
    area = float(height * width)
    u = torch.rand(n, CROP_TRIALS, 4, generator=generator, dtype=torch.float64)
    target = area * (scale[0] + (scale[1] - scale[0]) * u[..., 0])
    lo, hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(lo + (hi - lo) * u[..., 1])
    w = torch.round(torch.sqrt(target * aspect)).long()
    h = torch.round(torch.sqrt(target / aspect)).long()
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = fits.long().argmax(dim=1)  # index of the first fitting trial (0 when none fits)
    rows = torch.arange(n)
    w, h, ok = w[rows, first], h[rows, first], fits[rows, first]
    top = torch.floor(u[rows, first, 2] * (height - h + 1)).long()
    left = torch.floor(u[rows, first, 3] * (width - w + 1)).long()
    # fallback: the whole image, or its central part with the aspect clamped into `ratio`
    in_ratio = width / height
    if in_ratio < ratio[0]:
        fw, fh = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        fw, fh = int(round(height * ratio[1])), height
    else:
        fw, fh = width, height
    fallback = torch.tensor([(height - fh) // 2, (width - fw) // 2, fh, fw])
    boxes = torch.stack([top, left, h, w], dim=1)
    return torch.where(ok[:, None], boxes, fallback[None, :])


def resized_crops(x: torch.Tensor, boxes: torch.Tensor, size: int,
                  flip: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Bilinear resample of crop boxes (top, left, h, w) of (N, C, H, W) images to (N, C, size, size) float.

    One affine `grid_sample` for the batch: output pixel centre k maps to left + (k + 0.5) * w / size
    (edges clamp to the border pixel); `flip` (N,) bool mirrors an image's crop horizontally.
    """
    n, _, hgt, wid = x.shape
    b = boxes.to(torch.float64)
    theta = torch.zeros(n, 2, 3, dtype=torch.float64)
    theta[:, 0, 0] = b[:, 3] / wid
    theta[:, 0, 2] = (2 * b[:, 1] + b[:, 3]) / wid - 1
    theta[:, 1, 1] = b[:, 2] / hgt
    theta[:, 1, 2] = (2 * b[:, 0] + b[:, 2]) / hgt - 1
    if flip is not None:
        theta[:, 0, 0] = torch.where(flip, -theta[:, 0, 0], theta[:, 0, 0])
    xf = x if x.is_floating_point() else x.float()
    grid = F.affine_grid(theta.to(device=x.device, dtype=xf.dtype), [n, x.shape[1], size, size], align_corners=False)
    return F.grid_sample(xf, grid, mode="bilinear", padding_mode="border", align_corners=False)


def center_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    """Centred (size, size) crop of (N, C, H, W): offsets (H - size) // 2, (W - size) // 2 (a view)."""
    h, w = x.shape[-2:]
    top, left = (h - size) // 2, (w - size) // 2
    return x[..., top:top + size, left:left + size]


def view_train_transform(x_uint8: torch.Tensor, mean, std, view: "View", hflip: bool,
                         generator: Optional[torch.Generator]) -> torch.Tensor:
    """Random-resized crop to view.size, optional flip, normalise. Input uint8 (N, C, side, side)."""
    n, _, h, w = x_uint8.shape
    boxes = sample_crop_boxes(n, h, w, view.scale, view.ratio, generator)
    flip = (torch.rand(n, generator=generator) < 0.5) if hflip else None
    x = resized_crops(x_uint8, boxes, view.size, flip).div_(255.0)
    return normalize(x, mean, std)


def view_eval_transform(x_uint8: torch.Tensor, mean, std, view: "View") -> torch.Tensor:
    """Centre crop to view.size (when larger), normalise: bitwise what the runtime computes."""
    if x_uint8.shape[-1] != view.size or x_uint8.shape[-2] != view.size:
        x_uint8 = center_crop(x_uint8, view.size)
    return eval_transform(x_uint8, mean, std)


def batch_transform(x_uint8: torch.Tensor, mean, std, *, train: bool, hflip: bool,
                    generator: Optional[torch.Generator], view: Optional["View"] = None) -> torch.Tensor:
    """The one entry point of the loaders: the training or evaluation transform of either regime."""
    if view is not None:
        if train:
            return view_train_transform(x_uint8, mean, std, view, hflip, generator)
        return view_eval_transform(x_uint8, mean, std, view)
    if train:
        return train_transform(x_uint8, mean, std, hflip, generator)
    return eval_transform(x_uint8, mean, std)
