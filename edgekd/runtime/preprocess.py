"""Pre-processing that reproduces training's evaluation path with numpy and Pillow only.

Training (edgekd.data.readers + edgekd.data.transforms.eval_transform) decodes with Pillow,
converts to the dataset's mode (`RGB` or `L`), resizes with bilinear filtering when the size
differs, then computes `(x / 255 - mean) / std` in float32 on NCHW tensors. The same float32
operations in the same order give bitwise-equal inputs (a test checks this against torch).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from edgekd.errors import EdgekdError

# The suffixes the training image-folder reader accepts (edgekd.data.readers.IMAGE_SUFFIXES).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".webp")

# Pillow modes by how many colour channels they carry; alpha is dropped as training's convert does.
_GRAY_MODES = {"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}


class ImageError(EdgekdError):
    """An image cannot be decoded or does not fit the model (channel count)."""


def image_channels(mode: str) -> int:
    """Colour channels of a Pillow mode: 1 for grayscale modes, 3 for colour (RGB, RGBA, P, CMYK...)."""
    return 1 if mode in _GRAY_MODES else 3


def load_image(path: str | Path, channels: int, size: tuple[int, int], convert: bool = False) -> np.ndarray:
    """Decode one image file to uint8 (H, W, C) as training's reader did.

    Args:
        path: image file.
        channels: the model's channel count (1 or 3).
        size: the model's (H, W); other sizes are resized with bilinear filtering.
        convert: convert a grayscale image for a colour model (or the reverse) instead of refusing it.

    Raises:
        ImageError: unreadable file, or a channel count other than the model's without `convert`.
    """
    from PIL import Image, UnidentifiedImageError

    p = Path(path)
    try:
        with Image.open(p) as im:
            have = image_channels(im.mode)
            if have != channels and not convert:
                want = "grayscale (1 channel)" if channels == 1 else "RGB (3 channels)"
                raise ImageError(f"{p}: image has {have} channel{'s' if have > 1 else ''} (mode {im.mode}), "
                                 f"the model expects {want}; pass --convert to convert it")
            im = im.convert("L" if channels == 1 else "RGB")
            h, w = size
            if im.size != (w, h):
                im = im.resize((w, h), Image.BILINEAR)
            arr = np.asarray(im, dtype=np.uint8)
    except ImageError:
        raise
    except FileNotFoundError:
        raise ImageError(f"{p}: no such file") from None
    except UnidentifiedImageError:
        raise ImageError(f"{p}: not a readable image") from None
    except (OSError, ValueError, SyntaxError) as exc:  # truncated or corrupt data, unsupported mode
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ImageError(f"{p}: cannot decode image ({msg})") from None
    return arr[..., None] if arr.ndim == 2 else arr


def normalize_batch(images: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """uint8 (N, H, W, C) -> float32 (N, C, H, W): `(x / 255 - mean) / std`.

    Raises:
        ImageError: the array is not (N, H, W, C) with C equal to len(mean).
    """
    x = np.asarray(images)
    c = len(mean)
    if x.ndim != 4 or x.shape[-1] != c:
        raise ImageError(f"images must be uint8 (N, H, W, {c}) for this model, got shape {tuple(x.shape)}")
    if x.dtype != np.uint8:
        raise ImageError(f"images must be uint8 (0..255), got {x.dtype}")
    # float32 throughout, division (not multiplication by 1/255) to match torch bit for bit
    f = x.transpose(0, 3, 1, 2).astype(np.float32) / np.float32(255.0)
    m = np.asarray(mean, dtype=np.float32).reshape(1, c, 1, 1)
    s = np.asarray(std, dtype=np.float32).reshape(1, c, 1, 1)
    return np.ascontiguousarray((f - m) / s, dtype=np.float32)


def list_images(path: str | Path) -> list[Path]:
    """Image files under a directory (recursive, sorted), by suffix."""
    root = Path(path)
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
