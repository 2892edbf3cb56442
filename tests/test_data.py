"""Data: every reader on small generated files, splits, synthetic data, augmentation, loader, errors."""

from __future__ import annotations

import os
import shutil
import time

import numpy as np
import pytest
import torch

from edgekd.data import load_dataset
from edgekd.data.dataset import split_train_val
from edgekd.data.loader import BatchLoader
from edgekd.data.readers import RawSplits, read_spec
from edgekd.data.transforms import eval_transform, random_crop, train_transform
from edgekd.errors import DataError
from imagedata import cifar10_folder, mnist_npz, write_cifar_batches, write_image_folder, write_mnist_idx, write_npz

# ---- readers ------------------------------------------------------------------------------


@pytest.mark.parametrize("mode, fmt", [("RGB", "png"), ("L", "png"), ("RGB", "jpg")])
def test_imagefolder_reads_what_was_written(tmp_path, mode, fmt):
    root, written = write_image_folder(tmp_path / "ds", mode=mode, fmt=fmt)
    raw = read_spec(f"imagefolder:{root}")
    assert raw.class_names == ("cat", "dog", "eel")
    channels = 1 if mode == "L" else 3
    assert raw.x_train.shape == (12, 8, 8, channels) and raw.x_train.dtype == np.uint8
    assert raw.x_test.shape == (6, 8, 8, channels)
    np.testing.assert_array_equal(raw.y_train, written["train"][1])
    np.testing.assert_array_equal(raw.y_test, written["test"][1])
    if fmt == "png":  # lossless: exact pixels
        np.testing.assert_array_equal(raw.x_train, written["train"][0])
        np.testing.assert_array_equal(raw.x_test, written["test"][0])
    assert raw.hflip == (mode == "RGB")  # grayscale folders are treated like digits: no flips


def test_imagefolder_resizes_to_first_image_size(tmp_path):
    from PIL import Image

    root, _ = write_image_folder(tmp_path / "ds", size=8)
    Image.fromarray(np.zeros((12, 10, 3), np.uint8)).save(root / "train" / "dog" / "odd.png")
    raw = read_spec(f"imagefolder:{root}")
    assert raw.x_train.shape[1:] == (8, 8, 3) and len(raw.y_train) == 13


def test_imagefolder_decode_cache_hit_on_second_load(tmp_path, edgekd_cache, monkeypatch):
    import edgekd.data.readers as readers

    root, written = write_image_folder(tmp_path / "ds")
    first = read_spec(f"imagefolder:{root}")
    cached = list(edgekd_cache.glob("imagefolder-*.npz"))
    assert len(cached) == 1

    def no_decode(*_a, **_k):
        raise AssertionError("decoded again although the cache is valid")

    monkeypatch.setattr(readers, "_decode", no_decode)
    second = read_spec(f"imagefolder:{root}")
    np.testing.assert_array_equal(first.x_train, second.x_train)
    np.testing.assert_array_equal(first.y_test, second.y_test)
    assert second.class_names == first.class_names
    # a changed file invalidates the cache: decoding is needed again
    f = root / "train" / "cat" / "0000.png"
    os.utime(f, ns=(time.time_ns(), time.time_ns() + 10**9))
    with pytest.raises(AssertionError, match="decoded again"):
        read_spec(f"imagefolder:{root}")


def test_imagefolder_corrupt_cache_is_rebuilt(tmp_path, edgekd_cache):
    root, written = write_image_folder(tmp_path / "ds")
    read_spec(f"imagefolder:{root}")
    (cache,) = edgekd_cache.glob("imagefolder-*.npz")
    cache.write_bytes(b"garbage")
    raw = read_spec(f"imagefolder:{root}")
    np.testing.assert_array_equal(raw.x_train, written["train"][0])


def test_cifar_pickle_batches(tmp_path):
    root, written = write_cifar_batches(tmp_path / "cifar")
    raw = read_spec(f"cifar:{root}")
    np.testing.assert_array_equal(raw.x_train, written["train"][0])
    np.testing.assert_array_equal(raw.y_train, written["train"][1])
    np.testing.assert_array_equal(raw.x_test, written["test"][0])
    assert raw.class_names == tuple(written["class_names"])
    assert raw.x_train.shape == (20, 32, 32, 3)


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_idx_grayscale(tmp_path, gz):
    root, written = write_mnist_idx(tmp_path / "mnist", gz=gz)
    raw = read_spec(f"mnist:{root}")
    assert raw.x_train.shape == (20, 28, 28, 1)
    np.testing.assert_array_equal(raw.x_train[..., 0], written["train"][0])
    np.testing.assert_array_equal(raw.y_test, written["test"][1])
    assert raw.hflip is False and raw.class_names == tuple(str(i) for i in range(10))


def test_npz_color_grayscale_and_float(tmp_path):
    p = write_npz(tmp_path / "c.npz", class_names=("a", "b", "c"))
    raw = read_spec(f"npz:{p}")
    assert raw.x_train.shape == (30, 8, 8, 3) and raw.class_names == ("a", "b", "c") and raw.hflip
    g = write_npz(tmp_path / "g.npz", channels=1)
    raw = read_spec(f"npz:{g}")
    assert raw.x_train.shape == (30, 8, 8, 1) and not raw.hflip and raw.class_names == ("0", "1", "2")
    x = np.random.default_rng(0).integers(0, 256, (30, 8, 8, 3)).astype(np.uint8)
    f = write_npz(tmp_path / "f.npz", x_train=x.astype(np.float32) / 255.0)
    np.testing.assert_array_equal(read_spec(f"npz:{f}").x_train, x)


def test_synthetic_is_deterministic_per_seed():
    a = read_spec("synthetic:n_train=60,n_test=20,seed=1")
    b = read_spec("synthetic:n_train=60,n_test=20,seed=1")
    c = read_spec("synthetic:n_train=60,n_test=20,seed=2")
    np.testing.assert_array_equal(a.x_train, b.x_train)
    np.testing.assert_array_equal(a.y_test, b.y_test)
    assert not np.array_equal(a.x_train, c.x_train)
    assert not np.array_equal(a.x_train[:20], a.x_test)  # train and test are different draws
    assert a.x_train.shape == (60, 32, 32, 3) and len(a.class_names) == 10
    assert np.bincount(a.y_train, minlength=10).tolist() == [6] * 10  # balanced
    assert read_spec("synthetic:n_train=10,n_test=10,size=16").x_train.shape == (10, 16, 16, 3)


# ---- error paths -------------------------------------------------------------------------


def test_missing_paths_are_data_errors(tmp_path):
    for kind in ("npz", "imagefolder", "cifar", "mnist"):
        with pytest.raises(DataError, match="not found"):
            read_spec(f"{kind}:{tmp_path / 'absent'}")


def test_empty_class_folder(tmp_path):
    root, _ = write_image_folder(tmp_path / "ds")
    shutil.rmtree(root / "train" / "dog")
    (root / "train" / "dog").mkdir()
    with pytest.raises(DataError, match="has no images"):
        read_spec(f"imagefolder:{root}")


def test_imagefolder_structure_errors(tmp_path):
    root, _ = write_image_folder(tmp_path / "ds")
    (root / "test" / "yak").mkdir()
    with pytest.raises(DataError, match="classes not in train"):
        read_spec(f"imagefolder:{root}")
    shutil.rmtree(root / "test")
    with pytest.raises(DataError, match="missing folder"):
        read_spec(f"imagefolder:{root}")


def test_undecodable_image(tmp_path):
    root, _ = write_image_folder(tmp_path / "ds")
    (root / "train" / "eel" / "9999.png").write_bytes(b"not an image")
    with pytest.raises(DataError, match="cannot decode"):
        read_spec(f"imagefolder:{root}")


def test_labels_out_of_range(tmp_path):
    p = write_npz(tmp_path / "bad.npz", class_names=("a", "b", "c"), y_test=np.array([0, 1, 2, 3] + [0] * 6))
    with pytest.raises(DataError, match="labels out of range"):
        read_spec(f"npz:{p}")
    neg = write_npz(tmp_path / "neg.npz", y_train=-(np.arange(30) % 3))
    with pytest.raises(DataError, match="labels out of range"):
        read_spec(f"npz:{neg}")


@pytest.mark.parametrize("spec, match", [
    ("imagenet:/x", "unknown data spec"),
    ("npz:", "needs a path"),
    ("synthetic:n_train=abc", "bad option"),
    ("synthetic:colour=1", "bad option"),
])
def test_bad_specs(spec, match):
    with pytest.raises(DataError, match=match):
        read_spec(spec)


def test_npz_bad_contents(tmp_path):
    p = tmp_path / "keys.npz"
    np.savez(p, x_train=np.zeros((2, 4, 4), np.uint8))
    with pytest.raises(DataError, match="lacks keys"):
        read_spec(f"npz:{p}")
    c = tmp_path / "corrupt.npz"
    c.write_bytes(b"PK\x03\x04 nonsense")
    with pytest.raises(DataError, match="cannot read npz"):
        read_spec(f"npz:{c}")
    n = write_npz(tmp_path / "count.npz", y_train=np.zeros(5, np.int64))
    with pytest.raises(DataError, match="counts differ"):
        read_spec(f"npz:{n}")
    s = write_npz(tmp_path / "shape.npz", x_test=np.zeros((10, 9, 9, 3), np.uint8))
    with pytest.raises(DataError, match="differ in shape"):
        read_spec(f"npz:{s}")


def test_corrupt_idx_and_pickle(tmp_path):
    root, _ = write_mnist_idx(tmp_path / "mnist")
    (root / "t10k-images-idx3-ubyte").write_bytes(b"\x00\x00\x0d\x03garbage")
    with pytest.raises(DataError, match="cannot read IDX"):
        read_spec(f"mnist:{root}")
    croot, _ = write_cifar_batches(tmp_path / "cifar")
    (croot / "test_batch").write_bytes(b"not a pickle")
    with pytest.raises(DataError, match="cannot read"):
        read_spec(f"cifar:{croot}")


# ---- splits ------------------------------------------------------------------------------


def test_split_is_deterministic_stratified_and_disjoint():
    y = np.repeat(np.arange(5), [40, 30, 20, 50, 60])
    raw = RawSplits(np.zeros((len(y), 2, 2, 3), np.uint8), y, np.zeros((1, 2, 2, 3), np.uint8),
                    np.zeros(1, np.int64), tuple("abcde"))
    tr, va = split_train_val(raw, 0.1, split_seed=3)
    tr2, va2 = split_train_val(raw, 0.1, split_seed=3)
    np.testing.assert_array_equal(va, va2)
    np.testing.assert_array_equal(tr, tr2)
    assert not np.array_equal(va, split_train_val(raw, 0.1, split_seed=4)[1])
    assert len(np.intersect1d(tr, va)) == 0 and len(tr) + len(va) == len(y)
    assert np.bincount(y[va], minlength=5).tolist() == [4, 3, 2, 5, 6]  # 10% of every class
    assert len(split_train_val(raw, 0.0, 0)[1]) == 0


def test_load_dataset_keeps_ids_and_stats(tmp_path):
    data = load_dataset("synthetic:n_train=200,n_test=50", val_fraction=0.2, split_seed=1)
    raw = read_spec("synthetic:n_train=200,n_test=50")
    assert len(data.y_train) == 160 and len(data.y_val) == 40 and len(data.y_test) == 50
    np.testing.assert_array_equal(data.x_train, raw.x_train[data.train_ids])
    np.testing.assert_array_equal(data.y_val, raw.y_train[data.val_ids])
    expect = (raw.x_train[data.train_ids].reshape(-1, 3) / 255.0).mean(0)
    np.testing.assert_allclose(data.mean, expect, atol=1e-4)
    assert data.input_shape == (3, 32, 32) and data.num_classes == 10
    gray = load_dataset(f"npz:{write_npz(tmp_path / 'g.npz', channels=1)}")
    assert gray.input_shape == (1, 8, 8) and len(gray.mean) == 1 and not gray.hflip
    with pytest.raises(DataError, match="unknown split"):
        data.split("holdout")


# ---- augmentation and loader -------------------------------------------------------------


def test_random_crop_shifts_content_within_padding():
    x = torch.arange(2 * 1 * 6 * 6, dtype=torch.float32).view(2, 1, 6, 6) + 1
    g = torch.Generator().manual_seed(0)
    out = random_crop(x, 2, g)
    assert out.shape == x.shape
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(2):  # every output is some 6x6 window of the padded image
        windows = [padded[i, :, r:r + 6, c:c + 6] for r in range(5) for c in range(5)]
        assert any(torch.equal(out[i], w) for w in windows)


def test_train_transform_shapes_and_determinism():
    x = torch.randint(0, 256, (16, 3, 8, 8), dtype=torch.uint8)
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.2, 0.2)
    a = train_transform(x, mean, std, True, torch.Generator().manual_seed(5))
    b = train_transform(x, mean, std, True, torch.Generator().manual_seed(5))
    c = train_transform(x, mean, std, True, torch.Generator().manual_seed(6))
    assert a.shape == (16, 3, 8, 8) and a.dtype == torch.float32
    assert torch.equal(a, b) and not torch.equal(a, c)
    e = eval_transform(x, mean, std)
    expect = (x.float() / 255 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    torch.testing.assert_close(e, expect)
    gray = train_transform(x[:, :1], (0.5,), (0.25,), False, torch.Generator().manual_seed(0))
    assert gray.shape == (16, 1, 8, 8)


def test_loader_epochs_shards_and_channels_last():
    x = np.random.default_rng(0).integers(0, 256, (50, 8, 8, 3), dtype=np.uint8)
    y = np.arange(50) % 5
    kw = dict(mean=(0.5,) * 3, std=(0.25,) * 3, seed=1)
    tl = BatchLoader(x, y, 16, train=True, channels_last=True, **kw)
    assert len(tl) == 3  # drop_last for training
    first = [b.index.tolist() for b in tl]
    again = [b.index.tolist() for b in tl]
    assert first == again
    tl.set_epoch(1)
    assert [b.index.tolist() for b in tl] != first  # a new permutation per epoch
    b = next(iter(tl))
    assert b.x.shape == (16, 3, 8, 8) and b.x.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(b.y, torch.from_numpy(y[b.index.numpy()]))
    el = BatchLoader(x, y, 16, train=False, **kw)
    assert len(el) == 4 and torch.cat([b.index for b in el]).tolist() == list(range(50))
    torch.testing.assert_close(next(iter(el)).x,
                               eval_transform(torch.from_numpy(x[:16].transpose(0, 3, 1, 2)), kw["mean"], kw["std"]))
    shards = [BatchLoader(x, y, 5, train=True, rank=r, world_size=2, **kw) for r in range(2)]
    seen = [set(torch.cat([b.index for b in s]).tolist()) for s in shards]
    assert not (seen[0] & seen[1]) and len(seen[0] | seen[1]) == 50


# ---- real data ---------------------------------------------------------------------------


@pytest.mark.data
def test_real_mnist_npz():
    data = load_dataset(f"npz:{mnist_npz()}")
    assert data.input_shape == (1, 28, 28) and data.num_classes == 10
    counts = np.bincount(np.concatenate([data.y_train, data.y_val]), minlength=10)
    assert counts.sum() == 60000 and len(data.y_test) == 10000
    assert len(data.y_val) == sum(int(round(c * 0.1)) for c in counts)  # 10% of every class
    assert abs(data.mean[0] - 0.1307) < 0.002 and abs(data.std[0] - 0.3081) < 0.002
    assert not data.hflip


@pytest.mark.data
def test_real_cifar10_jpegs(tmp_path):
    """A small image folder made of real CIFAR-10 JPEGs (links, 20 per class) decodes correctly."""
    src = cifar10_folder()
    for split, k in (("train", 20), ("test", 5)):
        for cdir in sorted((src / split).iterdir()):
            dst = tmp_path / "mini" / split / cdir.name
            dst.mkdir(parents=True)
            for f in sorted(cdir.iterdir())[:k]:
                os.symlink(f, dst / f.name)
    data = load_dataset(f"imagefolder:{tmp_path / 'mini'}", val_fraction=0.1)
    assert data.class_names[0] == "airplane" and data.num_classes == 10
    assert data.input_shape == (3, 32, 32) and data.hflip
    assert len(data.y_train) == 180 and len(data.y_val) == 20 and len(data.y_test) == 50
    assert 0.3 < data.mean[0] < 0.7 and data.x_train.std() > 30  # real photos, not blank decodes
