"""Image conversion: one function (edgekd.runtime.preprocess.convert_image) for training and the runtime.

Each kind of file the module docstring's table names is written here, decoded by the runtime's
`load_image` and by the training reader, and compared with the expected 8-bit pixels: 16-bit gray
and colour PNGs scaled (not clipped), palette with transparency, RGBA/LA on white, CMYK, EXIF
orientation. Then the image-folder reader's handling of unreadable files (skip, list, threshold,
strict) and symlink loops.
"""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgekd.data.readers import SKIPPED_FILE, ImagePolicy, read_spec, write_skipped
from edgekd.errors import DataError
from edgekd.runtime.preprocess import ImageError, convert_image, list_images, load_image, read_image

RNG = np.random.default_rng(0)


def png16(path: Path, arr: np.ndarray) -> Path:
    """Write a 16-bit PNG by hand: (H, W) gray, (H, W, 2) gray+alpha, (H, W, 3) RGB, (H, W, 4) RGBA."""
    arr = np.asarray(arr, dtype=np.uint16)
    color_type = {2: 0, 3: 4}[arr.ndim] if arr.ndim == 2 else {2: 4, 3: 2, 4: 6}[arr.shape[2]]
    h, w = arr.shape[:2]
    raw = b"".join(b"\x00" + arr[i].astype(">u2").tobytes() for i in range(h))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", w, h, 16, color_type, 0, 0, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    body = chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + body)
    return path


def gray8(h=6, w=5) -> np.ndarray:
    g = RNG.integers(0, 256, (h, w), dtype=np.uint8)
    g.flat[:2] = (0, 255)  # both ends of the range
    return g


# ---- 16-bit and wide modes -------------------------------------------------------------------------


def test_16bit_gray_png_is_scaled_not_clipped(tmp_path):
    g = gray8()
    twin8 = tmp_path / "g8.png"
    Image.fromarray(g, "L").save(twin8)
    p16 = tmp_path / "g16.png"
    Image.fromarray(g.astype(np.uint16) * 257).save(p16)  # Pillow writes I;16 as a 16-bit PNG
    with Image.open(p16) as im:
        assert im.mode == "I;16"
    got = load_image(p16, 1, g.shape)
    np.testing.assert_array_equal(got[..., 0], g)  # v * 257 >> 8 == v: the 8-bit twin exactly
    np.testing.assert_array_equal(got, load_image(twin8, 1, g.shape))
    # clipping would have turned everything above 255/65535 white
    assert (got[..., 0] < 255).sum() == (g < 255).sum()


def test_16bit_gray_and_colour_agree(tmp_path):
    v = np.array([[0, 255, 256, 32767, 32768, 65280, 65534, 65535]], dtype=np.uint16)
    gray = read_image(png16(tmp_path / "g.png", v), "L")
    rgb = read_image(png16(tmp_path / "c.png", np.stack([v, v, v], -1)), "L")
    np.testing.assert_array_equal(gray, (v >> 8).astype(np.uint8))  # the high byte, as libpng strips 16 bits
    np.testing.assert_array_equal(gray, rgb)  # a 16-bit gray image and its RGB twin agree
    ga = read_image(png16(tmp_path / "ga.png", np.stack([v, np.full_like(v, 65535)], -1)), "L")
    np.testing.assert_array_equal(ga, gray)  # opaque 16-bit gray+alpha: same pixels


def test_32bit_int_and_float_modes():
    i32 = Image.fromarray(np.array([[-5, 0, 256, 65535, 70000]], dtype=np.int32))
    assert i32.mode == "I"
    np.testing.assert_array_equal(np.asarray(convert_image(i32, "L")), [[0, 0, 1, 255, 255]])
    f = Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32))
    np.testing.assert_array_equal(np.asarray(convert_image(f, "L")), [[0, 128, 255]])
    with pytest.raises(ImageError, match=r"outside \[0, 1\]"):
        convert_image(Image.fromarray(np.array([[0.0, 3.0]], dtype=np.float32)), "L")


# ---- alpha, palette, CMYK, EXIF ---------------------------------------------------------------------


def test_rgba_and_la_are_composited_on_white(tmp_path):
    px = np.array([[[10, 20, 30, 255], [10, 20, 30, 0], [200, 100, 0, 128]]], dtype=np.uint8)
    Image.fromarray(px, "RGBA").save(tmp_path / "a.png")
    got = load_image(tmp_path / "a.png", 3, (1, 3))[0]
    np.testing.assert_array_equal(got[0], [10, 20, 30])  # opaque: its colour
    np.testing.assert_array_equal(got[1], [255, 255, 255])  # transparent: white, whatever colour it hides
    expect = np.round(px[0, 2, :3].astype(float) * 128 / 255 + 255 * (1 - 128 / 255))
    assert np.abs(got[2].astype(int) - expect).max() <= 1  # half: the blend
    la = np.array([[[40, 255], [40, 0]]], dtype=np.uint8)
    Image.fromarray(la, "LA").save(tmp_path / "la.png")
    np.testing.assert_array_equal(load_image(tmp_path / "la.png", 1, (1, 2))[..., 0], [[40, 255]])
    # premultiplied modes (in memory only) follow the same rule
    assert convert_image(Image.new("La", (1, 1)), "L").getpixel((0, 0)) == 255


def test_palette_with_transparency(tmp_path):
    p = Image.fromarray(np.array([[0, 1], [2, 1]], np.uint8), "P")
    p.putpalette([10, 20, 30, 200, 0, 0, 0, 0, 200])
    p.save(tmp_path / "p.png", transparency=1)
    got = load_image(tmp_path / "p.png", 3, (2, 2))
    np.testing.assert_array_equal(got, [[[10, 20, 30], [255, 255, 255]], [[0, 0, 200], [255, 255, 255]]])
    p.save(tmp_path / "opaque.png")  # no transparency: the palette colours
    np.testing.assert_array_equal(load_image(tmp_path / "opaque.png", 3, (2, 2))[0, 1], [200, 0, 0])


def test_cmyk_converts_like_pillow(tmp_path):
    c = Image.new("CMYK", (2, 1))
    c.putpixel((0, 0), (0, 0, 0, 0))
    c.putpixel((1, 0), (0, 255, 255, 0))
    c.save(tmp_path / "c.tif")
    np.testing.assert_array_equal(load_image(tmp_path / "c.tif", 3, (1, 2)), [[[255, 255, 255], [255, 0, 0]]])
    with pytest.raises(ImageError, match="channels"):  # CMYK is colour: a gray model refuses it without --convert
        load_image(tmp_path / "c.tif", 1, (1, 2))


@pytest.mark.parametrize("orientation, turn", [(3, lambda a: np.rot90(a, 2)), (6, lambda a: np.rot90(a, -1)),
                                               (8, lambda a: np.rot90(a, 1)), (2, lambda a: a[:, ::-1])])
def test_exif_orientation_is_applied(tmp_path, orientation, turn):
    a = RNG.integers(0, 256, (4, 6, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(a).save(tmp_path / "e.png", exif=exif)
    want = turn(a)
    got = load_image(tmp_path / "e.png", 3, want.shape[:2])
    np.testing.assert_array_equal(got, want)


def _mixed_folder(root: Path) -> list[Path]:
    """An image folder whose test split holds one file of every kind above (train: plain RGB)."""
    for split in ("train", "test"):
        (root / split / "a").mkdir(parents=True)
    for i in range(3):
        Image.fromarray(RNG.integers(0, 256, (6, 6, 3), dtype=np.uint8)).save(root / "train" / "a" / f"{i}.png")
    t = root / "test" / "a"
    png16(t / "g16.png", RNG.integers(0, 65536, (6, 6), dtype=np.uint16))
    png16(t / "rgb48.png", RNG.integers(0, 65536, (6, 6, 3), dtype=np.uint16))
    Image.fromarray(RNG.integers(0, 256, (6, 6, 4), dtype=np.uint8), "RGBA").save(t / "rgba.png")
    p = Image.fromarray(RNG.integers(0, 3, (6, 6), dtype=np.uint8), "P")
    p.putpalette([1, 2, 3, 4, 5, 6, 7, 8, 9])
    p.save(t / "pal.png", transparency=2)
    Image.new("CMYK", (6, 6), (10, 20, 30, 40)).save(t / "cmyk.tif")
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(RNG.integers(0, 256, (6, 6, 3), dtype=np.uint8)).save(t / "exif.png", exif=exif)
    Image.fromarray(RNG.integers(0, 256, (12, 9, 3), dtype=np.uint8)).save(t / "big.png")  # resized
    return sorted(t.iterdir())


def test_training_reader_and_runtime_see_the_same_pixels(tmp_path):
    files = _mixed_folder(tmp_path / "ds")
    raw = read_spec(f"imagefolder:{tmp_path / 'ds'}")
    assert raw.x_test.shape == (len(files), 6, 6, 3) and raw.skipped == ()
    runtime = np.stack([load_image(f, 3, (6, 6), convert=True) for f in files])
    np.testing.assert_array_equal(raw.x_test, runtime)


def test_grayscale_folder_decides_mode_from_16bit_first_image(tmp_path):
    for split in ("train", "test"):
        png16(tmp_path / "ds" / split / "a" / "0.png", RNG.integers(0, 65536, (5, 5), dtype=np.uint16))
    raw = read_spec(f"imagefolder:{tmp_path / 'ds'}")
    assert raw.x_train.shape == (1, 5, 5, 1) and not raw.hflip
    np.testing.assert_array_equal(raw.x_train[0], load_image(tmp_path / "ds" / "train" / "a" / "0.png", 1, (5, 5)))


# ---- unreadable images: skip, list, threshold, strict -----------------------------------------------


def _folder(root: Path, n_per_class: int = 60, bad: tuple = ()) -> Path:
    for split, n in (("train", n_per_class), ("test", 3)):
        for c in ("x", "y"):
            d = root / split / c
            d.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(np.full((4, 4, 3), 40 * (c == "y") + i % 7, np.uint8)).save(d / f"{i:03d}.png")
    for rel in bad:
        (root / rel).write_bytes(b"not an image")
    return root


def test_one_bad_image_is_skipped_counted_and_listed(tmp_path, edgekd_cache):
    root = _folder(tmp_path / "ds", bad=("train/y/007.png",))
    raw = read_spec(f"imagefolder:{root}")
    assert len(raw.y_train) == 119 and (raw.y_train == 1).sum() == 59  # the label went with its image
    assert [Path(f).name for f, _ in raw.skipped] == ["007.png"] and "not a readable image" in raw.skipped[0][1]
    listed = write_skipped(raw.skipped, tmp_path / "run")
    assert listed == tmp_path / "run" / SKIPPED_FILE
    assert listed.read_text() == f"{root / 'train' / 'y' / '007.png'}\tnot a readable image\n"
    assert write_skipped((), tmp_path / "run2") is None and not (tmp_path / "run2").exists()
    assert write_skipped((), tmp_path / "run") is None and not listed.exists()  # fixed images: the old list goes
    # the cache keeps the list, and the policy is applied to a cached decode too
    again = read_spec(f"imagefolder:{root}")
    assert again.skipped == raw.skipped and len(list(edgekd_cache.glob("imagefolder-*.npz"))) == 1
    with pytest.raises(DataError, match=r"cannot decode .*007\.png: not a readable image \(--strict-images\)"):
        read_spec(f"imagefolder:{root}", ImagePolicy(strict=True))


def test_too_many_bad_images_refuse_the_dataset(tmp_path):
    root = _folder(tmp_path / "ds", bad=("train/x/001.png", "train/y/002.png"))
    with pytest.raises(DataError, match=r"cannot decode 2 of 120 train images \(more than 1% allowed\)"):
        read_spec(f"imagefolder:{root}")
    assert len(read_spec(f"imagefolder:{root}", ImagePolicy(max_bad_fraction=0.05)).skipped) == 2
    with pytest.raises(DataError, match="strict-images"):
        read_spec(f"imagefolder:{root}", ImagePolicy(strict=True))


def test_symlink_loops_in_an_image_folder(tmp_path):
    root = _folder(tmp_path / "ds")
    loop = root / "train" / "x" / "loop.png"
    os.symlink(loop, loop)  # points at itself: ELOOP on open
    raw = read_spec(f"imagefolder:{root}", ImagePolicy(max_bad_fraction=0.05))
    assert [(Path(f).name, r) for f, r in raw.skipped] == [("loop.png", "cannot decode image (Too many levels of "
                                                                         "symbolic links)")]
    with pytest.raises(DataError, match="loop.png.*symbolic links"):
        read_spec(f"imagefolder:{root}", ImagePolicy(strict=True))
    os.symlink(root / "train" / "z", root / "train" / "z")  # a class entry that loops
    with pytest.raises(DataError, match="broken symlink or a symlink loop"):
        read_spec(f"imagefolder:{root}")
    # the runtime lists the looping file and reports it (one line) instead of skipping it silently
    files = list_images(root / "train" / "x")
    assert loop in files
    with pytest.raises(ImageError, match="loop.png: cannot decode image"):
        load_image(loop, 3, (4, 4))


def test_fifo_with_an_image_suffix_is_not_opened(tmp_path):
    root = _folder(tmp_path / "ds", n_per_class=3)
    os.mkfifo(root / "train" / "x" / "pipe.png")  # opening it would block forever
    assert len(read_spec(f"imagefolder:{root}").y_train) == 6
    assert root / "train" / "x" / "pipe.png" not in list_images(root)


def test_unreadable_first_image_does_not_decide_the_folder(tmp_path):
    root = _folder(tmp_path / "ds", n_per_class=100, bad=("train/x/000.png",))
    raw = read_spec(f"imagefolder:{root}")
    assert raw.x_train.shape == (199, 4, 4, 3) and len(raw.skipped) == 1
