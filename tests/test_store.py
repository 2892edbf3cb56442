"""The fixed-size regime: resize geometry, random-resized crops, the on-disk store, the loader over it,
and the runtime reproducing evaluation exactly on JPEG files.

Images are small (56-px crops of 64-px squares, JPEGs of 60-100 px) so the suite stays fast; the
geometry does not depend on the size. No real 224-px photographs exist offline: procedural images
(`synthetic:size=...`) written as JPEGs stand in for them.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from edgekd.data import store as store_mod
from edgekd.data.dataset import load_dataset
from edgekd.data.images import ImageRows, View
from edgekd.data.loader import BatchLoader, prefetch
from edgekd.data.readers import ImagePolicy, read_spec
from edgekd.data.store import build_store, open_store, write_store
from edgekd.data.synthetic import make_synthetic
from edgekd.data.transforms import center_crop, resized_crops, sample_crop_boxes, view_eval_transform
from edgekd.errors import DataError
from edgekd.runtime.preprocess import normalize_batch, read_image
from edgekd.runtime.resize import center_crop as np_center_crop
from edgekd.runtime.resize import eval_view, fit_array, stored_side

VIEW = View(56)  # stored side 64
SIZES = [(90, 70), (70, 96), (64, 64), (100, 60)]  # (width, height): landscape, portrait, square


def write_folder(root, n_train: int = 6, n_test: int = 3, classes: int = 3, corrupt: bool = False,
                 scale: int = 1):
    """An image folder of JPEGs (and one PNG per class) of procedural images at assorted sizes (times `scale`)."""
    from PIL import Image

    x, _ = make_synthetic(classes * (n_train + n_test), seed=5, size=100 * scale)
    i = 0
    for split, n in (("train", n_train), ("test", n_test)):
        for c in range(classes):
            d = root / split / f"class{c}"
            d.mkdir(parents=True)
            for k in range(n):
                w, h = (v * scale for v in SIZES[i % len(SIZES)])
                im = Image.fromarray(x[i][:h, :w])
                im.save(d / f"{k:03d}.png") if k == 0 else im.save(d / f"{k:03d}.jpg", quality=90)
                i += 1
    if corrupt:
        (root / "train" / "class1" / "zzz.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    return root


# ---------------------------------------------------------------- geometry


def test_resize_geometry():
    assert stored_side(224) == 256 and stored_side(32, 1.0) == 32 and VIEW.side == 64
    img = np.random.default_rng(0).integers(0, 256, (60, 90, 3), dtype=np.uint8)
    out = fit_array(img, 64)
    assert out.shape == (64, 64, 3) and out.dtype == np.uint8
    from PIL import Image

    ref = np.asarray(Image.fromarray(img[:, 15:75]).resize((64, 64), Image.BILINEAR))  # the centred 60x60 square
    # inside, the same pixels; on the border the box resize also reads the pixels just outside the square
    assert np.abs(out.astype(int) - ref)[1:-1, 1:-1].max() <= 1
    assert np.array_equal(fit_array(img[:, :60], 60), img[:, :60])  # already square at the side: unchanged
    grid = np.arange(7 * 8).reshape(1, 7, 8, 1)
    assert np.array_equal(np_center_crop(grid, 4)[0, :, :, 0], grid[0, 1:5, 2:6, 0])
    t = torch.from_numpy(grid).permute(0, 3, 1, 2)
    assert torch.equal(center_crop(t, 4), torch.from_numpy(np_center_crop(grid, 4)).permute(0, 3, 1, 2))


def test_random_resized_crop_boxes_and_resampling():
    g = torch.Generator().manual_seed(0)
    boxes = sample_crop_boxes(500, 64, 48, (0.08, 1.0), (3 / 4, 4 / 3), g)
    top, left, h, w = boxes.T
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= 64).all() and (left + w <= 48).all()
    area = (h * w).float() / (64 * 48)
    assert area.min() >= 0.06 and area.max() <= 1.0 and area.std() > 0.1  # spread over the scale range
    again = sample_crop_boxes(500, 64, 48, (0.08, 1.0), (3 / 4, 4 / 3), torch.Generator().manual_seed(0))
    assert torch.equal(boxes, again)
    # impossible aspect range: every image falls back to the central crop with the ratio clamped
    fb = sample_crop_boxes(3, 64, 64, (0.9, 1.0), (3.0, 4.0), g)
    assert fb.tolist() == [[21, 0, 21, 64]] * 3  # w = 64, h = round(64 / 3), centred

    x = torch.randint(0, 256, (2, 3, 20, 20), dtype=torch.uint8)
    whole = torch.tensor([[0, 0, 20, 20]] * 2)
    torch.testing.assert_close(resized_crops(x, whole, 20), x.float(), atol=1e-3, rtol=0)
    flip = torch.tensor([True, False])
    flipped = resized_crops(x, whole, 20, flip)
    torch.testing.assert_close(flipped[0], x[0].flip(-1).float(), atol=1e-3, rtol=0)
    torch.testing.assert_close(flipped[1], x[1].float(), atol=1e-3, rtol=0)
    sub = torch.tensor([[3, 5, 8, 8], [10, 0, 8, 8]])  # same-size boxes: plain slices
    got = resized_crops(x, sub, 8)
    torch.testing.assert_close(got[0], x[0, :, 3:11, 5:13].float(), atol=1e-3, rtol=0)
    torch.testing.assert_close(got[1], x[1, :, 10:18, 0:8].float(), atol=1e-3, rtol=0)


def test_view_eval_transform_is_the_runtimes_bitwise():
    x = np.random.default_rng(1).integers(0, 256, (4, 64, 64, 3), dtype=np.uint8)
    mean, std = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)
    torch_out = view_eval_transform(torch.from_numpy(x).permute(0, 3, 1, 2), mean, std, VIEW).numpy()
    numpy_out = normalize_batch(np.ascontiguousarray(np_center_crop(x, 56)), mean, std)
    assert np.array_equal(torch_out, numpy_out)


# ---------------------------------------------------------------- the on-disk store


def test_store_rows_are_the_runtime_decode_and_decoding_resumes(tmp_path, monkeypatch):
    src = write_folder(tmp_path / "folder")
    monkeypatch.setattr(store_mod, "CHUNK", 4)
    calls = []

    class Stop(Exception):
        pass

    def interrupt(split, done, total):
        calls.append((split, done, total))
        if split == "train" and done == 8:
            raise Stop  # as a kill after the second chunk of train

    with pytest.raises(Stop):
        build_store(src, tmp_path / "st", 64, progress=interrupt)
    with pytest.raises(DataError, match="interrupted decode"):
        open_store(tmp_path / "st")
    calls.clear()
    st = build_store(src, tmp_path / "st", 64, progress=lambda *a: calls.append(a))
    assert calls[0] == ("train", 12, 18)  # resumed after the 8 finished train images
    clean = build_store(src, tmp_path / "clean", 64)
    for name in ("train", "test"):
        a, b = st.split(name), clean.split(name)
        assert np.array_equal(a.load(), b.load()) and np.array_equal(a.labels, b.labels)
        assert np.array_equal(a.sums, b.sums) and a.files == b.files
    train = st.split("train")
    assert st.class_names == ("class0", "class1", "class2") and len(train) == 18 and st.side == 64
    for i in (0, 1, 5, 17):
        assert np.array_equal(train.load()[i], fit_array(read_image(src / train.files[i], "RGB"), 64))
    assert np.array_equal(train.memmap()[3], train.load()[3])  # the files are plain memory-mappable .npy
    again = build_store(src, tmp_path / "st", 64, progress=lambda *a: calls.append(("again",)))
    assert ("again",) not in calls and again.meta == st.meta  # complete and unchanged: nothing decoded


def test_unreadable_images_follow_the_policy(tmp_path):
    src = write_folder(tmp_path / "folder", corrupt=True)
    with pytest.raises(DataError, match="cannot decode 1 of 19 train images"):
        build_store(src, tmp_path / "strict", 64)
    data = load_dataset(f"imagefolder:{src}", 0.0, 0, view=VIEW, images=ImagePolicy(max_bad_fraction=0.1))
    assert len(data.y_train) == 18 and [f for f, _ in data.skipped] == ["train/class1/zzz.jpg"]
    split = data.store.split("train")
    bad = split.files.index("train/class1/zzz.jpg")  # listed, and left out of the rows read
    assert bad not in split.rows and len(split.files) == 19


@pytest.mark.parametrize("view, scale", [(VIEW, 1), (View(224), 3)])
def test_runtime_reproduces_store_evaluation_exactly_on_jpegs(tmp_path, view, scale):
    """What `edgekd-run` computes from an image file equals, bit for bit, what evaluation fed the model
    (at 56 px, and at 224 px from JPEGs of 180-300 px, i.e. up- and downsampled)."""
    src = write_folder(tmp_path / "folder", n_train=4, n_test=4, classes=2 if scale > 1 else 3, scale=scale)
    data = load_dataset(f"imagefolder:{src}", 0.25, 0, view=view)
    n_test = len(data.y_test)
    assert data.input_shape == (3, view.size, view.size) and data.x_train.shape[1:] == (view.side, view.side, 3)
    loader = BatchLoader(data.x_test, data.y_test, 5, data.mean, data.std, train=False)
    fed = torch.cat([b.x for b in loader]).numpy()
    split = data.store.split("test")
    files = [src / split.files[r] for r in split.rows]
    views = [eval_view(read_image(f, "RGB"), view.size, view.side) for f in files]
    runtime = normalize_batch(np.stack(views), data.mean, data.std)
    assert fed.shape == runtime.shape == (n_test, 3, view.size, view.size)
    assert np.array_equal(fed, runtime)  # 100% agreement, not a tolerance
    assert np.array_equal(data.split("train")[0][:2], np_center_crop(data.x_train[:2], view.size))


def test_in_memory_and_store_paths_agree(tmp_path):
    spec = "synthetic:n_train=30,n_test=10,size=72"
    mem = load_dataset(spec, 0.2, 1, view=VIEW)
    raw = read_spec(spec)
    write_store(tmp_path / "st", {"train": (raw.x_train, raw.y_train), "test": (raw.x_test, raw.y_test)},
                raw.class_names, VIEW.side, size=VIEW.size)
    disk = load_dataset(f"store:{tmp_path / 'st'}", 0.2, 1)  # the view comes from the store's meta
    assert disk.view == mem.view and disk.mean == mem.mean and disk.std == mem.std
    for name in ("x_train", "x_val", "x_test"):
        assert np.array_equal(np.asarray(getattr(disk, name)), np.asarray(getattr(mem, name))), name
    assert np.array_equal(disk.y_train, mem.y_train) and np.array_equal(disk.train_ids, mem.train_ids)
    a = [b.x for b in BatchLoader(mem.x_train, mem.y_train, 8, mem.mean, mem.std, train=True, seed=3)]
    b = [b.x for b in BatchLoader(disk.x_train, disk.y_train, 8, disk.mean, disk.std, train=True, seed=3)]
    assert a[0].shape == (8, 3, 56, 56) and all(torch.equal(p, q) for p, q in zip(a, b))
    with pytest.raises(DataError, match="needs 80 px"):
        load_dataset(f"store:{tmp_path / 'st'}", view=View(70))


class CountingRows:
    """A row source that records which rows it was asked for."""

    def __init__(self, array: np.ndarray):
        self.array, self.shape, self.asked = array, array.shape, []
        self.lock = threading.Lock()

    def read(self, rows):
        with self.lock:
            self.asked.extend(int(r) for r in rows)
        return self.array[rows]


def test_ranks_read_only_their_shard():
    x = np.random.default_rng(0).integers(0, 256, (23, 64, 64, 3), dtype=np.uint8)
    y = np.arange(23) % 3
    seen = []
    for rank in (0, 1):
        src = CountingRows(x)
        rows = ImageRows(src, np.arange(23), view=VIEW)
        for kw in (dict(train=True), dict(train=False, even_shards=False)):
            src.asked.clear()
            loader = BatchLoader(rows, y, 4, (0.5,) * 3, (0.25,) * 3, rank=rank, world_size=2, **kw)
            batches = list(loader)
            assert all(b.x.shape[1:] == (3, 56, 56) for b in batches)
            assert sorted(src.asked) == sorted(int(i) for b in batches for i in b.index)
        seen.append(set(src.asked))
    assert not seen[0] & seen[1] and seen[0] | seen[1] == set(range(23))  # evaluation: disjoint, complete


def test_prefetch_runs_at_most_depth_ahead_and_stops():
    read_count, consumed, ahead = [0], [0], []

    def read(i):
        read_count[0] += 1
        return i

    it = prefetch(read, list(range(50)), depth=2)
    for v in it:
        assert v == consumed[0]
        consumed[0] += 1
        ahead.append(read_count[0] - consumed[0])
        if v == 20:
            break
    it.close()
    assert max(ahead) <= 3  # depth in the queue + one being read
    n = read_count[0]
    threading.Event().wait(0.3)
    assert read_count[0] == n < 50  # the thread stopped with the consumer
    assert not any(t.name == "edgekd-prefetch" and t.is_alive() for t in threading.enumerate())

    def boom(i):
        if i == 3:
            raise ValueError("bad row")
        return i

    with pytest.raises(ValueError, match="bad row"):
        list(prefetch(boom, list(range(10)), depth=2))


def test_synthetic_at_224():
    raw = read_spec("synthetic:n_train=20,n_test=10,size=224")
    assert raw.x_train.shape == (20, 224, 224, 3) and sorted(set(raw.y_train.tolist())) == list(range(10))
    assert np.array_equal(raw.x_train, read_spec("synthetic:n_train=20,n_test=10,size=224").x_train)
    data = load_dataset("synthetic:n_train=20,n_test=10,size=224", 0.0, 0, view=View(224))
    assert data.input_shape == (3, 224, 224) and data.x_train.shape == (20, 256, 256, 3)
    batch = next(iter(BatchLoader(data.x_train, data.y_train, 4, data.mean, data.std, train=True)))
    assert batch.x.shape == (4, 3, 224, 224) and torch.isfinite(batch.x).all()


def test_training_on_a_store_with_aux_heads(tmp_path):
    """A 224-layout student trains from the on-disk store with LSSKD's auxiliary classifiers attached."""
    from edgekd.config import build_config
    from edgekd.train.checkpoint import load_checkpoint
    from edgekd.train.loop import train

    src = write_folder(tmp_path / "folder", n_train=8, n_test=2)
    cfg = build_config(overrides=dict(model="mobilenetv3_small", method="lsskd", epochs=1, batch_size=6,
                                      max_steps_per_epoch=2, out=str(tmp_path / "run"), data=f"imagefolder:{src}",
                                      image_size=56, val_fraction=0.25, progress=False))
    res = train(cfg, log=lambda s: None)  # the loop loads the data: the view comes from `image_size`
    ckpt = load_checkpoint(tmp_path / "run" / "best.pt")
    assert list(ckpt["input_shape"]) == [3, 56, 56] and 0 <= res.test_acc <= 100
    assert ckpt["view"] == VIEW.to_dict() and View.from_config(ckpt["view"]) == VIEW  # export rebuilds the view
    assert any(k.startswith("aux_heads.") for k in ckpt["model_state"])


def test_semi_supervised_loader_reads_rows_with_the_view():
    """DHO's labeled + unlabeled loader takes the same fixed-size rows (random-resized crops to the size)."""
    from edgekd.data.semisup import SemiSupLoader

    data = load_dataset("synthetic:n_train=40,n_test=10,size=72", 0.0, 0, view=VIEW)
    loader = SemiSupLoader(data.x_train, data.y_train, np.arange(0, 40, 4), 8, data.mean, data.std)
    batches = list(loader)
    assert len(batches) == 5 and all(b.x.shape == (8, 3, 56, 56) for b in batches)
    assert int(batches[0].labeled.sum()) == 4


@pytest.mark.data
def test_upsampled_cifar10_jpegs_through_the_store(tmp_path):
    """Real JPEGs (CIFAR-10, 32 px, upsampled to 64-px squares: accuracy plumbing, not real 224-px photographs):
    the store path and the runtime's decode agree bit for bit, and labels follow the folders."""
    import shutil

    from imagedata import cifar10_folder

    src, sub = cifar10_folder(), tmp_path / "cifar-subset"
    for split, n in (("train", 6), ("test", 2)):
        for cdir in sorted((src / split).iterdir()):
            (sub / split / cdir.name).mkdir(parents=True)
            for f in sorted(cdir.iterdir())[:n]:
                shutil.copy(f, sub / split / cdir.name / f.name)
    data = load_dataset(f"imagefolder:{sub}", 0.0, 0, view=VIEW)
    assert data.num_classes == 10 and len(data.y_train) == 60 and data.x_test.shape == (20, 56, 56, 3)
    fed = torch.cat([b.x for b in BatchLoader(data.x_test, data.y_test, 8, data.mean, data.std, train=False)])
    split = data.store.split("test")
    views = [eval_view(read_image(sub / split.files[r], "RGB"), 56, 64) for r in split.rows]
    runtime = normalize_batch(np.stack(views), data.mean, data.std)
    assert np.array_equal(fed.numpy(), runtime)
    assert [data.class_names[c] for c in data.y_test[:2]] == [Path(f).parent.name for f in split.files[:2]]
