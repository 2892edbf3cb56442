"""Pre-processing that reproduces training's evaluation path with numpy and Pillow only.

Training (edgekd.data.readers + edgekd.data.transforms.eval_transform) decodes every image with
`read_image` below: Pillow decode, `convert_image` to the dataset's mode (`RGB` or `L`), bilinear
resize when the size differs; then `(x / 255 - mean) / std` in float32 on NCHW tensors. The runtime
calls the same two functions and the same float32 operations in the same order, so its inputs are
bitwise equal to training's (a test checks this against torch). A model trained at a fixed size
(`--image-size`, manifest `resize`) is fed `edgekd.runtime.resize.eval_view` of the file decoded at its
own size: the on-disk store's decode plus evaluation's centre crop (`load_image(..., resize=S)`).

How each kind of image file becomes 8-bit `L` or `RGB` (`convert_image`; tests in tests/test_images.py):

| source                                   | conversion                                                       |
|------------------------------------------|------------------------------------------------------------------|
| EXIF Orientation 2..8 (phone photos)     | turned upright first (`ImageOps.exif_transpose`), as viewers do  |
| 16-bit gray (`I;16*`, PNG 16-bit) / `I`  | the high byte (v >> 8): 0..65535 -> 0..255 (`I` clipped to 0..65535) |
| 16-bit colour PNG                        | Pillow already keeps the high byte: the same scaling             |
| float (`F`, TIFF)                        | values in [0, 1] are scaled by 255; any other range is refused   |
| alpha (`RGBA`, `LA`, `PA`, `P` or `L`/`RGB` with a transparent colour) | composited on white, alpha dropped |
| palette (`P`)                            | its colours (after the transparency rule above)                  |
| `CMYK`, `YCbCr`, `LAB`, `HSV`, `1`       | Pillow's `convert` (CMYK without ICC profile, as every reader)   |
| colour -> `L`                            | ITU-R 601-2 luma (Pillow); `L` -> `RGB` repeats the gray value   |

White, not black, under transparency: that is what a browser or document viewer shows, so a dark
glyph on a transparent background stays visible (on black it would vanish).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Optional, Sequence

import numpy as np

from edgekd.errors import EdgekdError, first_line
from edgekd.runtime.resize import eval_view

if TYPE_CHECKING:  # Pillow is imported where images are decoded: `import edgekd.runtime` stays light
    from PIL import Image as PILImage

# The image files the training image-folder reader and the runtime's directory listing take, by suffix
# (TIFF for 16-bit and float scans).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".webp", ".tif", ".tiff")

# Pillow modes by how many colour channels they carry; alpha is composited away (convert_image).
_GRAY_MODES = {"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}
# Integer gray modes wider than 8 bits: scaled to 8 bits by the high byte of a 16-bit value.
_WIDE_GRAY_MODES = {"I", "I;16", "I;16B", "I;16L", "I;16N"}
_ALPHA_MODES = {"RGBA", "RGBa", "LA", "La", "PA"}
_ORIENTATION_TAG = 0x0112  # EXIF Orientation: 1 upright, 2..8 mirrored and/or rotated


class ImageError(EdgekdError):
    """An image cannot be decoded or does not fit the model (channel count)."""


def image_channels(mode: str) -> int:
    """Colour channels of a Pillow mode: 1 for grayscale modes, 3 for colour (RGB, RGBA, P, CMYK...)."""
    return 1 if mode in _GRAY_MODES else 3


def _upright(im: "PILImage.Image") -> "PILImage.Image":
    """Apply the EXIF orientation (only when there is one: exif_transpose copies the image otherwise)."""
    from PIL import ImageOps

    try:
        orientation = im.getexif().get(_ORIENTATION_TAG, 1)
    except Exception:  # noqa: BLE001 - a broken EXIF block is no reason to refuse the pixels
        return im
    return ImageOps.exif_transpose(im) if orientation in range(2, 9) else im


def _eight_bit_gray(im: "PILImage.Image") -> "PILImage.Image":
    """A wide gray image (16-bit, 32-bit integer, float) as 8-bit `L`; Pillow's own convert clips at 255."""
    from PIL import Image

    a = np.asarray(im)
    if im.mode == "F":
        finite = a[np.isfinite(a)]
        if finite.size != a.size or (a.size and (float(finite.min()) < 0.0 or float(finite.max()) > 1.0)):
            raise ImageError("float image with values outside [0, 1] (or NaN): convert it to 8 or 16 bits")
        return Image.fromarray(np.round(a * 255.0).astype(np.uint8), "L")
    # v >> 8: the high byte, as Pillow and libpng reduce 16-bit colour PNGs (a gray image and its RGB twin agree)
    return Image.fromarray((np.clip(a.astype(np.int64), 0, 65535) >> 8).astype(np.uint8), "L")


def _has_alpha(im: "PILImage.Image") -> bool:
    return im.mode in _ALPHA_MODES or (im.mode in ("P", "L", "RGB") and "transparency" in im.info)


def convert_image(im: "PILImage.Image", mode: str) -> "PILImage.Image":
    """A decoded Pillow image as 8-bit `mode` ("L" or "RGB"), by the rules in this module's docstring.

    The one conversion training (edgekd.data.readers) and the runtime share: both must see the same pixels.
    """
    from PIL import Image

    if mode not in ("L", "RGB"):
        raise ValueError(f"mode must be 'L' or 'RGB', got {mode!r}")
    im = _upright(im)
    if im.mode in _WIDE_GRAY_MODES or im.mode == "F":
        im = _eight_bit_gray(im)
    if _has_alpha(im):
        # palette transparency, premultiplied and gray alpha all end as RGBA (Pillow has no La -> RGBA)
        rgba = (im.convert("LA") if im.mode == "La" else im).convert("RGBA")
        im = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    return im if im.mode == mode else im.convert(mode)


def read_image(path: str | Path, mode: str, size: Optional[tuple[int, int]] = None,
               channels: Optional[int] = None) -> np.ndarray:
    """Decode one image file to uint8 (H, W) for "L" or (H, W, 3) for "RGB": convert_image, then resize.

    Args:
        path: image file.
        mode: "L" or "RGB".
        size: (width, height) to resize to with bilinear filtering (after conversion), or None to keep it.
        channels: refuse a file whose own mode has a different channel count (image_channels), or None.

    Raises:
        ImageError: one line naming the file: missing, not an image, truncated, symlink loop, wrong channels.
    """
    from PIL import Image, UnidentifiedImageError

    p = Path(path)
    try:
        with Image.open(p) as im:
            have = image_channels(im.mode)
            if channels is not None and have != channels:
                want = "grayscale (1 channel)" if channels == 1 else "RGB (3 channels)"
                raise ImageError(f"{p}: image has {have} channel{'s' if have > 1 else ''} (mode {im.mode}), "
                                 f"the model expects {want}; pass --convert to convert it")
            im = convert_image(im, mode)
            if size is not None and im.size != tuple(size):
                im = im.resize(tuple(size), Image.BILINEAR)
            return np.asarray(im, dtype=np.uint8)
    except ImageError as exc:
        if str(exc).startswith(f"{p}:"):
            raise
        raise ImageError(f"{p}: {exc}") from None
    except FileNotFoundError:
        raise ImageError(f"{p}: no such file") from None
    except UnidentifiedImageError:
        raise ImageError(f"{p}: not a readable image") from None
    except OSError as exc:  # ELOOP (symlink loop), EISDIR, EACCES, truncated data
        raise ImageError(f"{p}: cannot decode image ({exc.strerror or first_line(exc)})") from None
    except Exception as exc:  # noqa: BLE001 - Pillow raises ValueError, SyntaxError, DecompressionBombError...
        raise ImageError(f"{p}: cannot decode image ({first_line(exc)})") from None


def load_image(path: str | Path, channels: int, size: tuple[int, int], convert: bool = False,
               resize: Optional[int] = None) -> np.ndarray:
    """Decode one image file to uint8 (H, W, C) as training's evaluation saw it.

    Args:
        path: image file.
        channels: the model's channel count (1 or 3).
        size: the model's (H, W); other sizes are resized with bilinear filtering.
        convert: convert a grayscale image for a colour model (or the reverse) instead of refusing it.
        resize: the manifest's `resize` (a run trained with --image-size): decode at the file's own size,
            then `edgekd.runtime.resize.eval_view` (largest centred square to resize x resize, centred
            H x W crop), the store's decode plus evaluation's crop, bit for bit. Needs a square `size`.

    Raises:
        ImageError: unreadable file, or a channel count other than the model's without `convert`.
    """
    h, w = size
    mode = "L" if channels == 1 else "RGB"
    if resize is None:
        arr = read_image(path, mode, (w, h), None if convert else channels)
        return arr[..., None] if arr.ndim == 2 else arr
    if h != w:
        raise ValueError(f"an evaluation view needs a square input, got {h}x{w}")
    return eval_view(read_image(path, mode, None, None if convert else channels), h, resize)


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


def is_image_file(p: Path) -> bool:
    """A file with an image suffix: a regular file, or a link that does not resolve (a dangling link, a
    symlink loop), listed so that reading it reports the file (one line) instead of skipping it silently.
    Directories, FIFOs and devices are not (opening a FIFO would block)."""
    return p.suffix.lower() in IMAGE_SUFFIXES and (p.is_file() or (p.is_symlink() and not p.exists()))


def list_images(path: str | Path) -> list[Path]:
    """Image files under a directory (recursive, sorted), by suffix (`is_image_file`).

    Symlinked directories are not followed (a loop of them cannot recurse).
    """
    root = Path(path)
    try:
        return sorted(p for p in root.rglob("*") if is_image_file(p))
    except OSError as exc:
        raise ImageError(f"{root}: cannot list images ({exc.strerror or first_line(exc)})") from None
