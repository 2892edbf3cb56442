"""edgekd.runtime: pre-processing equals training's, post-processing, torch-free import, CLI errors,
parity with torch and with bench's ORT runner on real images, and a fresh torch-free venv install."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from edgekd.runtime import (
    Classifier,
    ImageError,
    ManifestError,
    list_images,
    load_image,
    normalize_batch,
    parse_manifest,
    select_top_k,
    softmax,
    to_probabilities,
)
from edgekd.runtime.__main__ import main as run_main

sys.path.insert(0, str(Path(__file__).parent))
from imagedata import cifar10_folder  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
MEAN3, STD3 = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)


# ---- helpers: small real ONNX models and manifests -------------------------------------------

def export_module(module: torch.nn.Module, path: Path, input_shape, output_name: str = "logits",
                  static_batch: int = 0) -> Path:
    """Export with edgekd.export.onnx (the export stack's own exporter); static_batch fixes axis 0."""
    import onnx

    from edgekd.export.onnx import export_onnx

    module.eval()
    if static_batch:  # the export stack always makes the batch dynamic; a static one comes from elsewhere
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        torch.onnx.export(module, torch.zeros(static_batch, *input_shape), str(path), dynamo=False, opset_version=17,
                          input_names=["input"], output_names=[output_name])
    else:
        onnx.save(export_onnx(module, input_shape, output_name), str(path))
    return path


def manifest_dict(class_names, input_shape, mean, std, kind: str = "logits") -> dict:
    """The manifest form `edgekd export` writes (edgekd.export.manifest.build_manifest)."""
    c, h, w = input_shape
    return {"format": "edgekd-manifest", "format_version": 1, "class_names": list(class_names),
            "input": {"name": "input", "shape": [None, c, h, w], "layout": "NCHW", "dtype": "float32",
                      "mean": list(mean), "std": list(std)},
            "output": {"name": kind, "kind": kind, "shape": [None, len(class_names)]}}


def make_model_dir(d: Path, *, channels: int = 3, size: int = 16, classes=("cat", "dog", "eel"),
                   kind: str = "logits", static_batch: int = 0, seed: int = 0) -> tuple[Path, torch.nn.Module]:
    """A random-init tiny Student exported to d/model.onnx with d/manifest.json; returns (model path, torch module)."""
    from edgekd.models import build_model

    torch.manual_seed(seed)
    student = build_model("tiny", num_classes=len(classes), in_channels=channels).eval()
    module = torch.nn.Sequential(student, torch.nn.Softmax(dim=1)) if kind == "probs" else student
    d.mkdir(parents=True, exist_ok=True)
    mean, std = (MEAN3, STD3) if channels == 3 else ((0.13,), (0.31,))
    model = export_module(module, d / "model.onnx", (channels, size, size), kind, static_batch)
    (d / "manifest.json").write_text(json.dumps(manifest_dict(classes, (channels, size, size), mean, std, kind)))
    return model, module.eval()


def write_pngs(d: Path, n: int, size: int = 16, mode: str = "RGB", seed: int = 0) -> list[Path]:
    rng = np.random.default_rng(seed)
    d.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        shape = (size, size) if mode == "L" else (size, size, 3)
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode=mode).save(d / f"{i:03d}.png")
        out.append(d / f"{i:03d}.png")
    return out


def torch_eval_input(x_nhwc_uint8: np.ndarray, mean, std) -> torch.Tensor:
    """Training's evaluation transform on uint8 NHWC images."""
    from edgekd.data.transforms import eval_transform

    nchw = torch.from_numpy(np.ascontiguousarray(x_nhwc_uint8)).permute(0, 3, 1, 2).contiguous()
    return eval_transform(nchw, mean, std)


def copy_real_images(dst: Path, per_class: int, train_per_class: int = 1) -> list[Path]:
    """Real CIFAR-10 JPEGs as a small image folder dst/{train,test}/<class>/*.jpg; returns test files."""
    src = cifar10_folder()
    test_files = []
    for cdir in sorted(p for p in (src / "test").iterdir() if p.is_dir()):
        for split, k in (("train", train_per_class), ("test", per_class)):
            files = sorted((src / split / cdir.name).glob("*.jpg"))[:k]
            for f in files:
                out = dst / split / cdir.name / f.name
                out.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(f, out)
                if split == "test":
                    test_files.append(out)
    return test_files


@pytest.fixture(scope="module")
def rgb_model(tmp_path_factory) -> tuple[Path, torch.nn.Module]:
    return make_model_dir(tmp_path_factory.mktemp("rgb"))


# ---- pre-processing == training's eval transform ---------------------------------------------

def test_png_preprocessing_is_bitwise_training_eval_transform(tmp_path, monkeypatch):
    from edgekd.data.readers import read_spec

    monkeypatch.setenv("EDGEKD_CACHE", str(tmp_path / "cache"))
    for split, n in (("train", 2), ("test", 5)):
        write_pngs(tmp_path / "ds" / split / "a", n, size=12, seed=len(split))
    raw = read_spec(f"imagefolder:{tmp_path / 'ds'}")
    files = list_images(tmp_path / "ds" / "test")
    arrays = np.stack([load_image(f, 3, (12, 12)) for f in files])
    assert np.array_equal(arrays, raw.x_test)  # decode: PNG is lossless, same pixels as the reader
    ours = normalize_batch(arrays, MEAN3, STD3)
    ref = torch_eval_input(raw.x_test, MEAN3, STD3).numpy()
    assert ours.dtype == np.float32 and ours.shape == (5, 3, 12, 12)
    assert np.array_equal(ours, ref)


def test_grayscale_preprocessing_matches_training(tmp_path, monkeypatch):
    from edgekd.data.readers import read_spec

    monkeypatch.setenv("EDGEKD_CACHE", str(tmp_path / "cache"))
    write_pngs(tmp_path / "ds" / "train" / "d", 2, size=10, mode="L", seed=1)
    write_pngs(tmp_path / "ds" / "test" / "d", 4, size=10, mode="L", seed=2)
    raw = read_spec(f"imagefolder:{tmp_path / 'ds'}")
    arrays = np.stack([load_image(f, 1, (10, 10)) for f in list_images(tmp_path / "ds" / "test")])
    assert arrays.shape == (4, 10, 10, 1) and np.array_equal(arrays, raw.x_test)
    assert np.array_equal(normalize_batch(arrays, (0.13,), (0.31,)),
                          torch_eval_input(raw.x_test, (0.13,), (0.31,)).numpy())


def test_resize_matches_training_reader(tmp_path, monkeypatch):
    """Images of another size are resized bilinearly to the model's size, as the reader resizes them."""
    from edgekd.data.readers import read_spec

    monkeypatch.setenv("EDGEKD_CACHE", str(tmp_path / "cache"))
    write_pngs(tmp_path / "ds" / "train" / "a", 1, size=16, seed=3)  # the reader takes the first image's size
    rng = np.random.default_rng(4)
    d = tmp_path / "ds" / "test" / "a"
    d.mkdir(parents=True)
    Image.fromarray(rng.integers(0, 256, (23, 29, 3), dtype=np.uint8)).save(d / "big.png")
    raw = read_spec(f"imagefolder:{tmp_path / 'ds'}")
    ours = load_image(d / "big.png", 3, (16, 16))
    assert ours.shape == (16, 16, 3) and np.array_equal(ours[None], raw.x_test)


@pytest.mark.data
def test_real_jpeg_preprocessing_matches_training(tmp_path, monkeypatch):
    """Real CIFAR-10 JPEGs: after decode, the runtime's model input is bitwise training's."""
    from edgekd.data.readers import read_spec

    monkeypatch.setenv("EDGEKD_CACHE", str(tmp_path / "cache"))
    files = copy_real_images(tmp_path / "cifar", per_class=2)
    raw = read_spec(f"imagefolder:{tmp_path / 'cifar'}")
    arrays = np.stack([load_image(f, 3, (32, 32)) for f in files])
    assert np.array_equal(arrays, raw.x_test)
    assert np.array_equal(normalize_batch(arrays, MEAN3, STD3), torch_eval_input(raw.x_test, MEAN3, STD3).numpy())


def test_normalize_batch_rejects_wrong_channels():
    with pytest.raises(ImageError, match="channels|shape"):
        normalize_batch(np.zeros((2, 8, 8, 3), np.uint8), (0.5,), (0.2,))
    with pytest.raises(ImageError, match="uint8"):
        normalize_batch(np.zeros((2, 8, 8, 1), np.float32), (0.5,), (0.2,))


# ---- post-processing ---------------------------------------------------------------------------

def test_softmax_and_probs_passthrough():
    z = np.array([[1.0, 2.0, 3.0], [1000.0, 0.0, -1000.0]], dtype=np.float32)
    p = softmax(z)
    assert np.allclose(p, torch.softmax(torch.from_numpy(z), 1).numpy(), atol=1e-7)
    assert np.allclose(p.sum(1), 1.0) and np.isfinite(p).all()
    probs = np.array([[0.2, 0.7, 0.1]], dtype=np.float32)
    assert np.array_equal(to_probabilities(probs, "probs"), probs)
    assert not np.array_equal(to_probabilities(probs, "logits"), probs)


def test_select_top_k_orders_and_clips():
    p = np.array([[0.1, 0.6, 0.3], [0.4, 0.2, 0.4]], dtype=np.float32)
    preds = select_top_k(p, ["a", "b", "c"], k=2)
    assert [(n, i) for n, i, _ in preds[0].top_k] == [("b", 1), ("c", 2)]
    assert preds[0].label == "b" and preds[0].score == pytest.approx(0.6)
    assert [i for _, i, _ in preds[1].top_k] == [0, 2]  # a tie keeps the lower index first
    assert len(select_top_k(p, ["a", "b", "c"], k=10)[0].top_k) == 3
    d = preds[0].to_dict()
    assert d["label"] == "b" and [t["label"] for t in d["top_k"]] == ["b", "c"]


# ---- manifest ----------------------------------------------------------------------------------

def test_manifest_forms_and_constants_match_export():
    from edgekd.export import manifest as export_manifest
    from edgekd.runtime import manifest as runtime_manifest

    assert runtime_manifest.METADATA_KEY == export_manifest.METADATA_KEY
    assert runtime_manifest.MANIFEST_FORMAT == export_manifest.MANIFEST_FORMAT
    m = parse_manifest(manifest_dict(["x", "y"], (1, 28, 28), (0.13,), (0.31,), "probs"))
    assert (m.channels, m.size, m.output_kind, m.class_names) == (1, (28, 28), "probs", ("x", "y"))
    flat = parse_manifest({"class_names": ["x", "y"], "input_shape": [3, 8, 8], "mean": [0, 0, 0], "std": [1, 1, 1]})
    assert flat.output_kind == "logits" and flat.layout == "NCHW"
    bad = [{"class_names": [], "input_shape": [3, 8, 8], "mean": [0] * 3, "std": [1] * 3},
           {"class_names": ["a"], "input_shape": [4, 8, 8], "mean": [0] * 4, "std": [1] * 4},
           {"class_names": ["a"], "input_shape": [3, 8, 8], "mean": [0], "std": [1] * 3},
           {"class_names": ["a"], "input_shape": [3, 8, 8], "mean": [0] * 3, "std": [1, 0, 1]},
           {"class_names": ["a"], "input_shape": [3, 8, 8], "mean": [0] * 3, "std": [1] * 3, "layout": "NHWC"},
           {"class_names": ["a"], "input_shape": [3, 8, 8], "mean": [0] * 3, "std": [1] * 3, "output_kind": "x"}]
    for data in bad:
        with pytest.raises(ManifestError):
            parse_manifest(data)


def test_embedded_manifest_is_used_without_manifest_file(tmp_path, rgb_model):
    import onnx

    from edgekd.export.manifest import embed_manifest

    model_path, _ = rgb_model
    proto = onnx.load(str(model_path))
    embed_manifest(proto, manifest_dict(["p", "q", "r"], (3, 16, 16), MEAN3, STD3))
    onnx.save(proto, str(tmp_path / "solo.onnx"))
    clf = Classifier(tmp_path / "solo.onnx")
    assert clf.manifest.class_names == ("p", "q", "r") and "metadata" in clf.manifest.source


def test_manifest_sha256_is_checked_against_the_model_once_per_load(tmp_path, rgb_model, monkeypatch):
    """manifest.json's `files` sha256 and the embedded copy's source checkpoint must match the model file."""
    import onnx

    import edgekd.runtime.manifest as rm
    from edgekd.export.manifest import embed_manifest
    from edgekd.io import sha256_file

    model_path, _ = rgb_model
    d = tmp_path / "m"
    d.mkdir()
    proto = onnx.load(str(model_path))
    embed_manifest(proto, {**manifest_dict(["cat", "dog", "eel"], (3, 16, 16), MEAN3, STD3),
                           "source": {"sha256": "a" * 64}})
    onnx.save(proto, str(d / "model.onnx"))
    good = {**manifest_dict(["cat", "dog", "eel"], (3, 16, 16), MEAN3, STD3), "source": {"sha256": "a" * 64},
            "files": {"model.onnx": sha256_file(d / "model.onnx")}}
    (d / "manifest.json").write_text(json.dumps(good))
    calls = []
    monkeypatch.setattr(rm, "sha256_file", lambda p: calls.append(p) or sha256_file(p))
    assert Classifier(d / "model.onnx").manifest.num_classes == 3
    assert calls == [d / "model.onnx"]  # one read of the model per load
    for bad, what in (({"files": {"model.onnx": "0" * 64}}, "records sha256"),
                      ({"source": {"sha256": "b" * 64}}, "source checkpoint sha256")):
        (d / "manifest.json").write_text(json.dumps({**good, **bad}))
        with pytest.raises(ManifestError, match=f"belongs to another export.*{what}"):
            Classifier(d / "model.onnx")
    # a model under a name the manifest does not list: only the embedded source is compared
    (d / "manifest.json").write_text(json.dumps(good))
    shutil.copy(d / "model.onnx", d / "renamed.onnx")
    assert Classifier(d / "renamed.onnx", manifest=d / "manifest.json").manifest.num_classes == 3


# ---- classification: arrays, files, batching, static batch, probs --------------------------------

def test_classifier_matches_torch_and_batching(tmp_path, rgb_model):
    model_path, module = rgb_model
    files = write_pngs(tmp_path / "imgs", 7, size=16)
    clf = Classifier(model_path, threads=1)
    x = np.stack([load_image(f, 3, (16, 16)) for f in files])
    with torch.no_grad():
        ref = torch.softmax(module(torch_eval_input(x, MEAN3, STD3)), 1).numpy()
    got = [r.prediction for r in clf.classify_files(files, top_k=3, batch_size=3)]
    assert [p.index for p in got] == ref.argmax(1).tolist()
    assert np.allclose([p.score for p in got], ref.max(1), atol=1e-5)
    again = [r.prediction.index for r in clf.classify_files(files, batch_size=1)]
    assert again == [p.index for p in got]


def test_static_batch_model_and_probs_output(tmp_path):
    model_path, module = make_model_dir(tmp_path / "static", static_batch=4, kind="probs", seed=1)
    files = write_pngs(tmp_path / "imgs", 6, size=16, seed=5)
    clf = Classifier(model_path)
    assert clf.fixed_batch == 4 and clf.manifest.output_kind == "probs"
    x = np.stack([load_image(f, 3, (16, 16)) for f in files])
    with torch.no_grad():
        ref = module(torch_eval_input(x, MEAN3, STD3)).numpy()  # already probabilities
    preds = [r.prediction for r in clf.classify_files(files, top_k=1, batch_size=6)]
    assert np.allclose([p.score for p in preds], ref.max(1), atol=1e-5)
    assert [p.index for p in preds] == ref.argmax(1).tolist()


def test_grayscale_model_end_to_end(tmp_path):
    model_path, module = make_model_dir(tmp_path / "gray", channels=1, size=12, classes=("0", "1"), seed=2)
    files = write_pngs(tmp_path / "imgs", 3, size=12, mode="L", seed=6)
    preds = [r.prediction for r in Classifier(model_path).classify_files(files, top_k=2)]
    x = np.stack([load_image(f, 1, (12, 12)) for f in files])
    with torch.no_grad():
        ref = torch.softmax(module(torch_eval_input(x, (0.13,), (0.31,))), 1).numpy()
    assert [p.index for p in preds] == ref.argmax(1).tolist()


# ---- CLI and its error paths -----------------------------------------------------------------

def run_cli(capsys, *argv) -> tuple[int, str, str]:
    code = run_main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_error_line(err: str, *needles: str) -> None:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for n in needles:
        assert n in lines[0], lines[0]


def test_cli_text_and_json(tmp_path, capsys, rgb_model):
    model_path, _ = rgb_model
    write_pngs(tmp_path / "imgs" / "sub", 3, size=20)  # another size: resized; nested: found recursively
    code, out, err = run_cli(capsys, model_path, tmp_path / "imgs", "--top-k", "2")
    assert code == 0 and err == ""
    lines = out.strip().splitlines()
    assert len(lines) == 3 and all(ln.count(",") == 1 and "\t" in ln for ln in lines)
    code, out, _ = run_cli(capsys, model_path, tmp_path / "imgs", "--json", "--top-k", "3", "--batch-size", "2",
                           "--threads", "1")
    doc = json.loads(out)
    assert code == 0 and len(doc["results"]) == 3 and doc["output_kind"] == "logits"
    for r in doc["results"]:
        assert len(r["top_k"]) == 3 and r["label"] in ("cat", "dog", "eel")
        assert sum(t["score"] for t in r["top_k"]) == pytest.approx(1.0, abs=1e-5)


def test_cli_directory_with_bad_file_goes_on(tmp_path, capsys, rgb_model):
    model_path, _ = rgb_model
    write_pngs(tmp_path / "imgs", 3, size=16)
    (tmp_path / "imgs" / "001b_broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    code, out, err = run_cli(capsys, model_path, tmp_path / "imgs", "--json")
    doc = json.loads(out)
    good = [r for r in doc["results"] if "error" not in r]
    bad = [r for r in doc["results"] if "error" in r]
    assert code == 1 and len(good) == 3 and len(bad) == 1 and bad[0]["file"].endswith("001b_broken.jpg")
    assert_one_error_line(err, "001b_broken.jpg")


@pytest.mark.parametrize("case", ["missing_model", "not_onnx", "classes_mismatch", "shape_mismatch", "kind_mismatch",
                                  "no_manifest", "bad_manifest_json", "unreadable_image", "wrong_channels",
                                  "missing_image"])
def test_cli_error_paths(tmp_path, capsys, rgb_model, case):
    model_path, _ = rgb_model
    d = tmp_path / "m"
    shutil.copytree(model_path.parent, d)
    model, manifest = d / "model.onnx", d / "manifest.json"
    img = write_pngs(tmp_path / "imgs", 1, size=16)[0]
    m = json.loads(manifest.read_text())
    needle = ""
    if case == "missing_model":
        model, needle = d / "nope.onnx", "model not found"
    elif case == "not_onnx":
        model = d / "fake.onnx"
        model.write_text("this is not a protobuf\n")
        needle = "not a loadable ONNX model"
    elif case == "classes_mismatch":
        m["class_names"] = ["a", "b"]
        needle = "2 class names vs 3 model outputs"
    elif case == "shape_mismatch":
        m["input"]["shape"] = [None, 3, 24, 24]
        needle = "input_shape"
    elif case == "kind_mismatch":
        m["output"] = {"name": "logits", "kind": "probs"}
        needle = "output"
    elif case == "no_manifest":
        manifest.unlink()
        needle = "no manifest"
    elif case == "bad_manifest_json":
        manifest.write_text("{not json")
        needle = "not valid JSON"
    elif case == "unreadable_image":
        img = tmp_path / "imgs" / "bad.png"
        img.write_bytes(b"garbage bytes")
        needle = "not a readable image"
    elif case == "wrong_channels":
        img = write_pngs(tmp_path / "gray", 1, size=16, mode="L")[0]
        needle = "1 channel"
    elif case == "missing_image":
        img, needle = tmp_path / "imgs" / "nothere.jpg", "no such file"
    if case in ("classes_mismatch", "shape_mismatch", "kind_mismatch"):
        manifest.write_text(json.dumps(m))
    code, out, err = run_cli(capsys, model, img)
    assert code == 1, (case, out, err)
    assert out == ""
    assert_one_error_line(err, needle)


def test_cli_convert_flag_accepts_grayscale(tmp_path, capsys, rgb_model):
    model_path, _ = rgb_model
    img = write_pngs(tmp_path / "gray", 1, size=16, mode="L")[0]
    code, out, _ = run_cli(capsys, model_path, img, "--convert")
    assert code == 0 and out.startswith(str(img))


def test_cli_usage_error_exit_2(capsys):
    with pytest.raises(SystemExit) as exc:
        run_main([])
    assert exc.value.code == 2
    capsys.readouterr()


def test_cli_subprocess_one_line_error(tmp_path):
    """As a process: `python -m edgekd.runtime` on a non-ONNX file prints one line and exits 1."""
    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"\x00\x01 nothing")
    proc = subprocess.run([sys.executable, "-m", "edgekd.runtime", str(bad), str(bad)], capture_output=True, text=True)
    assert proc.returncode == 1 and proc.stdout == ""
    assert_one_error_line(proc.stderr, "not a loadable ONNX model")


# ---- torch-free import ----------------------------------------------------------------------------

NO_TORCH = textwrap.dedent("""
    import sys
    for name in ("torch", "onnx", "onnxscript", "onnxsim", "typer", "yaml"):
        sys.modules[name] = None  # any import of these now raises ImportError
    import edgekd.runtime as rt
    clf = rt.Classifier(sys.argv[1])
    preds = [r.prediction.label for r in clf.classify_files(sys.argv[2:], top_k=2)]
    sys.argv = ["edgekd-run", sys.argv[1], *sys.argv[2:], "--json"]
    from edgekd.runtime.__main__ import main
    code = main(sys.argv[1:])
    heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "onnx") and sys.modules[m] is not None)
    root = ("edgekd.runtime", "edgekd.errors", "edgekd.names", "edgekd.deps", "edgekd.io")  # RUNTIME_ROOT_FILES
    ours = sorted(m for m in sys.modules if m.startswith("edgekd.") and not m.startswith(root))
    print("PREDS", preds, "CODE", code, "HEAVY", heavy, "OURS", ours, file=sys.stderr)
""")


def test_runtime_imports_and_classifies_without_torch(tmp_path, rgb_model):
    model_path, _ = rgb_model
    files = [str(f) for f in write_pngs(tmp_path / "imgs", 2, size=16)]
    proc = subprocess.run([sys.executable, "-c", NO_TORCH, str(model_path), *files], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    summary = proc.stderr.strip().splitlines()[-1]
    assert "CODE 0" in summary and "HEAVY []" in summary and "OURS []" in summary, summary
    assert len(json.loads(proc.stdout)["results"]) == 2


def test_runtime_files_alone_are_enough(tmp_path, rgb_model):
    """The files the aarch64 check copies (RUNTIME_ROOT_FILES and runtime/) run on their own."""
    model_path, _ = rgb_model
    copy_runtime(tmp_path / "copy")
    img = write_pngs(tmp_path / "imgs", 1, size=16)[0]
    code = ("import sys; sys.modules['torch'] = None; import edgekd, edgekd.runtime.__main__ as m; "
            "assert edgekd.__file__.startswith(sys.argv[1]), edgekd.__file__; sys.exit(m.main(sys.argv[2:]))")
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "copy")}
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "copy"), str(model_path), str(img)],
                          capture_output=True, text=True, env=env, cwd=tmp_path)  # not the checkout on sys.path
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(str(img))


# The package root files the runtime imports: a device copy is these plus edgekd/runtime/.
RUNTIME_ROOT_FILES = ("__init__.py", "errors.py", "names.py", "deps.py", "io.py")

# Imported by a device copy before anything else: torch and the training/export stack cannot be
# imported at all (a meta path finder refuses them), so a stray import fails loudly.
BLOCK_TORCH = textwrap.dedent("""
    import sys

    class _Blocker:
        BLOCKED = ("torch", "torchvision", "onnx", "onnxscript", "onnxsim", "typer", "yaml")

        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in self.BLOCKED:
                raise ImportError(f"{name} is blocked: the device runtime must not import it")
            return None

    sys.meta_path.insert(0, _Blocker())
""")


def copy_runtime(dest: Path) -> Path:
    """Copy edgekd/runtime/ and RUNTIME_ROOT_FILES to dest/edgekd (no other edgekd file); returns dest."""
    pkg = dest / "edgekd"
    (pkg / "runtime").mkdir(parents=True)
    for name in RUNTIME_ROOT_FILES:
        shutil.copy(REPO / "edgekd" / name, pkg / name)
    for f in (REPO / "edgekd" / "runtime").glob("*.py"):
        shutil.copy(f, pkg / "runtime" / f.name)
    return dest


def test_runtime_copy_classifies_real_pngs_with_torch_unimportable(tmp_path):
    """A copy of runtime/ + the root files runs an ONNX model exported by edgekd's exporter (manifest
    embedded by edgekd.export.manifest) on PNG files, in a process where torch cannot be imported,
    and predicts what the checkout's Classifier predicts."""
    import onnx

    from edgekd.export.manifest import embed_manifest
    from edgekd.export.onnx import export_onnx
    from edgekd.models import build_model

    torch.manual_seed(3)
    student = build_model("tiny", num_classes=4, in_channels=3).eval()
    proto = export_onnx(student, (3, 16, 16), "logits")
    embed_manifest(proto, manifest_dict(["ant", "bee", "cow", "dog"], (3, 16, 16), MEAN3, STD3))
    model = tmp_path / "model" / "model.onnx"  # no manifest.json beside it: the embedded one is read
    model.parent.mkdir()
    onnx.save(proto, str(model))
    images = write_pngs(tmp_path / "imgs", 5, size=20, seed=4)  # resized to 16x16 by the runtime
    copy = copy_runtime(tmp_path / "copy")
    (copy / "sitecustomize.py").write_text(BLOCK_TORCH)
    code = textwrap.dedent("""
        import json, sys
        import edgekd
        assert edgekd.__file__.startswith(sys.argv[1]), edgekd.__file__
        try:
            import torch  # noqa: F401
        except ImportError:
            pass
        else:
            raise SystemExit("torch is importable")
        from edgekd.runtime.__main__ import main
        code = main([sys.argv[2], *sys.argv[3:], "--json", "--top-k", "2"])
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "onnx"))
        names = sorted(m for m in sys.modules if m.startswith("edgekd"))
        print(json.dumps({"code": code, "loaded": loaded, "edgekd": names}), file=sys.stderr)
    """)
    env = {**os.environ, "PYTHONPATH": str(copy)}
    proc = subprocess.run([sys.executable, "-c", code, str(copy), str(model), *map(str, images)],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stderr.strip().splitlines()[-1])
    assert info["code"] == 0 and info["loaded"] == []
    assert {m.split(".")[1] for m in info["edgekd"] if "." in m} <= {"runtime", "errors", "names", "deps", "io"}
    doc = json.loads(proc.stdout)
    assert "metadata" in doc["manifest"] and len(doc["results"]) == 5
    want = {str(r.path): (r.prediction.label, r.prediction.score) for r in Classifier(model).classify_files(images)}
    got = {r["file"]: (r["label"], r["score"]) for r in doc["results"]}
    assert got.keys() == want.keys()
    for f, (label, score) in got.items():
        assert label == want[f][0] and abs(score - want[f][1]) < 1e-6


FORBIDDEN_IN_RUNTIME = ("torch", "torchvision", "onnx", "edgekd.export", "edgekd.bench", "edgekd.train")


def test_runtime_imports_nothing_above_it():
    """No module of edgekd/runtime/ imports torch, onnx or the export/bench/train layers, at module
    level or inside functions (including `require("...")` of an optional dependency)."""
    import ast

    bad = []
    for f in sorted((REPO / "edgekd" / "runtime").glob("*.py")):
        for node in ast.walk(ast.parse(f.read_text(), str(f))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""] if node.level == 0 else []
            elif (isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", "")) in
                  ("require", "import_module") and node.args and isinstance(node.args[0], ast.Constant)):
                names = [str(node.args[0].value)]
            else:
                continue
            bad += [f"{f.name}:{node.lineno} {n}" for n in names
                    if any(n == m or n.startswith(m + ".") for m in FORBIDDEN_IN_RUNTIME)]
    assert bad == []


# ---- parity on real images: torch, bench's ORT runner, the runtime ------------------------------

@pytest.fixture(scope="module")
def exported_run(tmp_path_factory):
    """A tiny student trained a few steps, exported by the real pipeline (`edgekd export`)."""
    from edgekd.config import build_config
    from edgekd.export.pipeline import ExportOptions, run_export
    from edgekd.train.loop import train

    tmp = tmp_path_factory.mktemp("run")
    cfg = build_config(overrides=dict(model="tiny", epochs=1, out=str(tmp / "run"),
                                      data="synthetic:n_train=300,n_test=100", max_steps_per_epoch=3, progress=False))
    train(cfg, log=lambda s: None)
    res = run_export(ExportOptions(ckpt=str(tmp / "run" / "best.pt"), out=str(tmp / "export"), verify_size=64),
                     log=lambda s: None)
    return tmp / "run" / "best.pt", res.out_dir / "model.onnx"


@pytest.mark.data
def test_parity_real_images_torch_bench_runtime(tmp_path, monkeypatch, exported_run):
    """On real CIFAR-10 JPEGs: runtime top-1 == torch model's == bench ORT runner's (100%, FP32)."""
    from edgekd.bench.accuracy import predict
    from edgekd.bench.runners import build_runner
    from edgekd.data.readers import read_spec
    from edgekd.train.checkpoint import load_checkpoint, rebuild_training_model

    monkeypatch.setenv("EDGEKD_CACHE", str(tmp_path / "cache"))
    ckpt_path, model_path = exported_run
    files = copy_real_images(tmp_path / "cifar", per_class=5)
    raw = read_spec(f"imagefolder:{tmp_path / 'cifar'}")  # training's reader on the same files
    ckpt = load_checkpoint(ckpt_path)
    with torch.no_grad():
        torch_out = rebuild_training_model(ckpt)(torch_eval_input(raw.x_test, ckpt["mean"], ckpt["std"]))
    torch_probs = torch.softmax(torch_out, 1).numpy()
    runner = build_runner(model_path, "ort", threads=1)
    bench_top1 = predict(runner, normalize_batch(raw.x_test, ckpt["mean"], ckpt["std"])).argmax(1)

    clf = Classifier(model_path, threads=1)
    results = list(clf.classify_files(files, top_k=len(clf.manifest.class_names), batch_size=16))
    assert all(r.error is None for r in results) and len(results) == 50
    ours_top1 = np.array([r.prediction.index for r in results])
    ours_probs = np.zeros_like(torch_probs)
    for row, r in zip(ours_probs, results):
        for _, j, s in r.prediction.top_k:
            row[j] = s
    assert np.array_equal(ours_top1, torch_probs.argmax(1))
    assert np.array_equal(ours_top1, bench_top1)
    assert np.abs(ours_probs - torch_probs).max() < 1e-5


# ---- a fresh venv with the base install only (no torch) classifies real images -----------------

@pytest.mark.slow
@pytest.mark.data
def test_fresh_venv_base_install_has_no_torch_and_classifies(tmp_path, exported_run):
    _, model_path = exported_run
    src = tmp_path / "src"  # a copy, so the build does not write into the checkout
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    shutil.copytree(REPO / "edgekd", src / "edgekd", ignore=shutil.ignore_patterns("__pycache__"))
    files = copy_real_images(tmp_path / "cifar", per_class=1, train_per_class=0)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", str(src)],
                         capture_output=True, text=True, timeout=600)
    assert pip.returncode == 0, pip.stderr[-2000:]
    probe = subprocess.run([str(venv / "bin" / "python"), "-c",
                            "import importlib.util as u; "
                            "print([m for m in ('torch', 'onnx', 'typer') if u.find_spec(m)])"],
                           capture_output=True, text=True)
    assert probe.stdout.strip() == "[]", probe.stdout  # the base install brought no training stack
    proc = subprocess.run([str(venv / "bin" / "edgekd-run"), str(model_path), str(tmp_path / "cifar" / "test"),
                           "--json"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert len(doc["results"]) == len(files) == 10
    ref = {str(r.path): r.prediction.index for r in Classifier(model_path).classify_files(files)}
    assert {r["file"]: r["index"] for r in doc["results"]} == ref
