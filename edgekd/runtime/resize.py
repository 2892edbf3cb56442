"""The evaluation geometry for real-resolution images, shared by training and the runtime (torch-free).

An image is brought to a fixed square `side` once: its largest centred square is resized to
side x side with Pillow's bilinear filter (antialiased when shrinking). That is how the on-disk
store and the in-memory path keep every image, and how the runtime treats a camera frame. The
evaluation view is then the centred `size` x `size` crop of that square, `side = size / crop_ratio`
(256 for 224 at the usual 0.875): "resize the shorter side, centre crop".

Training and the runtime call the same functions in the same order on the same decoded image
(`edgekd.runtime.preprocess.read_image(path, mode)` with no size, then `eval_view`), so the model
sees the same pixels in both (a test checks this on JPEGs).
"""

from __future__ import annotations

from typing import Any

import numpy as np

DEFAULT_CROP_RATIO = 0.875  # evaluation crop / stored side: 224 of 256


def stored_side(size: int, crop_ratio: float = DEFAULT_CROP_RATIO) -> int:
    """The side images are stored and resized to for a `size` evaluation crop (256 for 224 at 0.875)."""
    if size < 1 or not 0.0 < crop_ratio <= 1.0:
        raise ValueError(f"need size >= 1 and crop_ratio in (0, 1], got {size} and {crop_ratio}")
    return max(size, int(round(size / crop_ratio)))


def fit_square(image: Any, side: int) -> np.ndarray:
    """The largest centred square of a Pillow image (`L` or `RGB`) resized to side x side: uint8 (side, side, C)."""
    from PIL import Image

    w, h = image.size
    s = min(w, h)
    if (w, h) != (side, side):
        box = ((w - s) / 2, (h - s) / 2, (w + s) / 2, (h + s) / 2)
        image = image.resize((side, side), Image.BILINEAR, box=box)
    arr = np.asarray(image, dtype=np.uint8)
    return arr[..., None] if arr.ndim == 2 else arr


def fit_array(image: np.ndarray, side: int) -> np.ndarray:
    """`fit_square` for a decoded uint8 (H, W, C) or (H, W) array (C = 1 or 3): uint8 (side, side, C)."""
    from PIL import Image

    image = np.asarray(image, dtype=np.uint8)
    if image.ndim == 2:
        image = image[..., None]
    if image.shape[:2] == (side, side):
        return image.copy()
    if image.shape[-1] == 1:
        return fit_square(Image.fromarray(np.ascontiguousarray(image[..., 0]), "L"), side)
    return fit_square(Image.fromarray(np.ascontiguousarray(image), "RGB"), side)


def center_crop(images: np.ndarray, size: int) -> np.ndarray:
    """The centred (size, size) crop of (..., H, W, C) images; a view, no copy.

    Offsets are `(H - size) // 2` and `(W - size) // 2`, the same integer rule as the torch path.
    """
    h, w = images.shape[-3], images.shape[-2]
    if size > h or size > w:
        raise ValueError(f"cannot crop {size}x{size} from {h}x{w} images")
    top, left = (h - size) // 2, (w - size) // 2
    return images[..., top:top + size, left:left + size, :]


def eval_view(image: np.ndarray, size: int, side: int) -> np.ndarray:
    """What the model sees at evaluation: `center_crop(fit_array(image, side), size)`, uint8 (size, size, C).

    `image` is the decoded uint8 (H, W[, C]) array of `edgekd.runtime.preprocess.read_image(path, mode)`.
    """
    return np.ascontiguousarray(center_crop(fit_array(image, side), size))


__all__ = ["DEFAULT_CROP_RATIO", "center_crop", "eval_view", "fit_array", "fit_square", "stored_side"]
