"""A model trained with `--image-size 224`, exported, then run by the runtime and bench on JPEG files:
the runtime's inputs and predictions equal what evaluation fed the model, 100%, not within a tolerance.

No real 224-px photographs exist offline: the JPEGs are written from procedural images
(`synthetic:size=224`, at assorted sizes around 224 px: up- and downsampled, landscape, portrait)
and, when ../shared/data is present, from CIFAR-10 test images upsampled from 32 px (accuracy
plumbing, not real photographs). One short training run (two steps of mobilenetv3_small) and one
export serve every test here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from edgekd.data.dataset import load_dataset
from edgekd.data.images import View
from edgekd.data.loader import BatchLoader
from edgekd.runtime.manifest import ManifestError, parse_manifest
from edgekd.runtime.preprocess import load_image, normalize_batch

SIZE = 224
VIEW = View(SIZE)  # stored side 256
# (width, height) of the JPEGs: exact, upsampled landscape, downsampled portrait, upsampled square, wide
SHAPES = [(224, 224), (300, 250), (200, 230), (256, 256), (340, 190)]


def write_jpegs(images: np.ndarray, labels: np.ndarray, root: Path, split: str, names: list[str]) -> list[Path]:
    """Each image resized to the next of SHAPES (Pillow bicubic) and saved as JPEG under root/split/<class>/."""
    from PIL import Image

    files = []
    for i, (img, c) in enumerate(zip(images, labels)):
        d = root / split / names[int(c)]
        d.mkdir(parents=True, exist_ok=True)
        f = d / f"{i:03d}.jpg"
        Image.fromarray(img).resize(SHAPES[i % len(SHAPES)], Image.BICUBIC).save(f, quality=90)
        files.append(f)
    return files


def synthetic_folder(root: Path) -> Path:
    """A 3-class image folder of JPEGs written from `synthetic:size=224` images."""
    from edgekd.data.readers import read_spec

    raw = read_spec("synthetic:n_train=40,n_test=30,size=224,seed=3")
    names = [f"shape{c}" for c in range(10)]
    for split, x, y, per_class in (("train", raw.x_train, raw.y_train, 4), ("test", raw.x_test, raw.y_test, 3)):
        keep = np.concatenate([np.flatnonzero(y == c)[:per_class] for c in range(3)])
        write_jpegs(x[keep], y[keep], root, split, names)
    return root


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(image folder, run dir, export dir): mobilenetv3_small trained 2 steps at 224 px from the store, exported."""
    from edgekd.config import build_config
    from edgekd.export.pipeline import ExportOptions, run_export
    from edgekd.train.loop import train

    tmp = tmp_path_factory.mktemp("view-export")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EDGEKD_CACHE", str(tmp / "cache"))  # module scope: conftest's per-test cache is not set yet
        src = synthetic_folder(tmp / "folder")
        cfg = build_config(overrides=dict(model="mobilenetv3_small", method="ce", epochs=1, batch_size=4,
                                          max_steps_per_epoch=2, out=str(tmp / "run"), data=f"imagefolder:{src}",
                                          image_size=SIZE, val_fraction=0.25, progress=False))
        train(cfg, log=lambda s: None)
        run_export(ExportOptions(ckpt=str(tmp / "run" / "best.pt"), out=str(tmp / "export")), log=lambda s: None)
    return src, tmp / "run", tmp / "export"


def evaluation_inputs(data) -> np.ndarray:
    """What evaluation feeds the model for the test split: the eval loader's normalised batches."""
    loader = BatchLoader(data.x_test, data.y_test, 4, data.mean, data.std, train=False)
    return torch.cat([b.x for b in loader]).numpy()


def store_files(data, root: Path) -> list[Path]:
    """The test split's files in the order evaluation reads them."""
    split = data.store.split("test")
    return [root / split.files[r] for r in split.rows]


def check_runtime_equals_evaluation(clf, data, files: list[Path]) -> None:
    """The runtime's pre-processing of `files` is evaluation's input bit for bit, so its predictions
    are evaluation's: same top-1 for every image and the same probabilities."""
    m = clf.manifest
    fed = evaluation_inputs(data)
    runtime_x = normalize_batch(np.stack([load_image(f, 3, m.size, resize=m.resize) for f in files]),
                                m.mean, m.std)
    assert fed.shape == runtime_x.shape == (len(files), 3, SIZE, SIZE)
    assert np.array_equal(fed, runtime_x)  # 100% of the pixels, exactly
    results = list(clf.classify_files(files, top_k=1, batch_size=len(files)))
    assert all(r.error is None for r in results), [r.error for r in results]
    evaluated = clf.predict_tensor(fed)  # the same session on evaluation's batch
    got = np.array([m.class_names.index(r.prediction.label) for r in results])
    assert np.array_equal(got, evaluated.argmax(1))  # 100% top-1 agreement
    assert np.array_equal(np.array([r.prediction.score for r in results], dtype=np.float32),
                          evaluated.max(1).astype(np.float32))


def test_manifest_records_the_view_and_the_runtime_reproduces_evaluation(exported):
    from edgekd.info import describe_checkpoint
    from edgekd.runtime import Classifier
    from edgekd.runtime.manifest import read_manifest_data
    from edgekd.train.checkpoint import load_checkpoint, rebuild_training_model

    src, run, out = exported
    ckpt = load_checkpoint(run / "best.pt")
    assert ckpt["view"] == VIEW.to_dict()
    assert "centred 224-px crop of 256-px squares" in describe_checkpoint(run / "best.pt")  # edgekd info CKPT
    record = read_manifest_data(out)
    assert record["input"]["resize"] == 256 and record["input"]["crop_ratio"] == 0.875
    assert record["input"]["shape"] == [None, 3, SIZE, SIZE] and "centred" in record["input"]["preprocess"]
    clf = Classifier(out / "model.onnx", threads=1)
    assert clf.manifest.resize == 256 and clf.manifest.crop_ratio == 0.875

    data = load_dataset(f"imagefolder:{src}", 0.25, 0, view=View.from_config(ckpt["view"]))
    assert tuple(clf.manifest.mean) == tuple(data.mean) and tuple(clf.manifest.std) == tuple(data.std)
    files = store_files(data, src)
    check_runtime_equals_evaluation(clf, data, files)

    # and the torch model the checkpoint holds agrees with the exported one on those inputs
    model = rebuild_training_model(ckpt).eval()
    with torch.no_grad():
        ref = torch.softmax(model(torch.from_numpy(evaluation_inputs(data))).float(), 1).numpy()
    got = clf.predict_tensor(evaluation_inputs(data))
    assert np.abs(got - ref).max() < 1e-4


def test_bench_loads_data_at_the_models_view_in_chunks(exported, monkeypatch):
    """`edgekd bench MODEL --data imagefolder:...` evaluates at the manifest's view (a native-size load
    would not even have the model's input shape), reading the split in chunks, same figures."""
    from edgekd.bench import accuracy
    from edgekd.bench.identity import split_sha256
    from edgekd.bench.runners import build_runner
    from edgekd.runtime import Classifier

    src, run, out = exported
    runner = build_runner(out / "model.onnx", "ort", threads=1)
    assert runner.info.view == {"image_size": SIZE, "resize": 256, "crop_ratio": 0.875}
    assert accuracy.data_view([runner]) == VIEW
    torch_runner = build_runner(run / "best.pt", "torch", threads=1)
    assert accuracy.data_view([runner, torch_runner]) == VIEW  # the checkpoint's view is the same one

    spec = f"imagefolder:{src}"
    whole = accuracy.evaluate_accuracy(runner, spec, batch_size=64)
    monkeypatch.setattr(accuracy, "EVAL_CHUNK", 2)  # 9 test images in chunks of 2
    chunked = accuracy.evaluate_accuracy(runner, spec, batch_size=2)
    assert whole["n"] == chunked["n"] == 9 and whole["top1"] == chunked["top1"]
    data = load_dataset(spec, view=VIEW)
    clf = Classifier(out / "model.onnx", threads=1)
    preds = np.array([clf.manifest.class_names.index(r.prediction.label)
                      for r in clf.classify_files(store_files(data, src), top_k=1)])
    assert whole["top1"] == pytest.approx(float((preds == data.y_test).mean() * 100))
    x, y = data.split("test")
    assert split_sha256(x, y, chunk=4) == split_sha256(np.asarray(x), y)  # chunked hash = whole-array hash
    runner.close()
    torch_runner.close()


@pytest.mark.data
def test_upsampled_cifar10_jpegs_at_224(exported, tmp_path):
    """CIFAR-10 test images upsampled from 32 px and written as JPEGs (not real 224-px photographs): the
    runtime on the files equals evaluation of the same folder at the model's view, 100%."""
    from PIL import Image

    from edgekd.runtime import Classifier
    from imagedata import cifar10_folder

    cifar = cifar10_folder()
    root = tmp_path / "cifar224"
    for split, n in (("train", 2), ("test", 2)):
        for k, cdir in enumerate(sorted((cifar / split).iterdir())[:3]):
            (root / split / cdir.name).mkdir(parents=True)
            for j, f in enumerate(sorted(cdir.iterdir())[:n]):
                w, h = SHAPES[(2 * k + j) % len(SHAPES)]
                with Image.open(f) as im:
                    im.convert("RGB").resize((w, h), Image.BICUBIC).save(root / split / cdir.name / f.name,
                                                                          quality=90)
    _, _, out = exported
    clf = Classifier(out / "model.onnx", threads=1)
    data = load_dataset(f"imagefolder:{root}", 0.0, 0, view=VIEW)
    data.mean, data.std = clf.manifest.mean, clf.manifest.std  # the model's normalisation, as bench does
    check_runtime_equals_evaluation(clf, data, store_files(data, root))


def test_manifest_view_is_validated():
    base = {"class_names": ["a", "b"], "input_shape": [3, 224, 224], "mean": [0.5] * 3, "std": [0.25] * 3}
    m = parse_manifest(dict(base, resize=256, crop_ratio=0.875))
    assert (m.resize, m.crop_ratio) == (256, 0.875) and "resize" not in (m.extra or {})
    assert parse_manifest(base).resize is None
    with pytest.raises(ManifestError, match="resize must be an integer >= the side"):
        parse_manifest(dict(base, resize=200))
    with pytest.raises(ManifestError, match="resize must be"):
        parse_manifest(dict(base, input_shape=[3, 224, 200], resize=256))
    with pytest.raises(ManifestError, match="crop_ratio must be"):
        parse_manifest(dict(base, resize=256, crop_ratio=1.5))
