"""Torch-free inference for the device: numpy + onnxruntime (or a TensorRT engine) + Pillow.

    from edgekd.runtime import Classifier
    clf = Classifier("export/model.onnx")          # reads export/manifest.json
    for r in clf.classify_files(["cat.jpg"], top_k=3):
        print(r.path, r.prediction.label, r.prediction.score)

The bottom layer of edgekd (docs/architecture.md, "Layers"): nothing here imports torch, onnx,
`edgekd.export`, `edgekd.bench` or `edgekd.train`, at module level or inside functions (a test
walks the imports). A device copy needs this package plus the package root files it imports:
edgekd/__init__.py, errors.py, names.py, deps.py and io.py (a test runs exactly that copy with
torch unimportable). TensorRT engines also need `tensorrt` and cuda-python, imported only when
an engine is loaded; `backend="openvino"` (and OpenVINO IR `model.xml`) needs `openvino`, imported
only then (`edgekd.runtime.openvino`).
"""

from edgekd.runtime.classifier import Classifier, FileResult, check_model_matches
from edgekd.runtime.manifest import (
    METADATA_KEY,
    Manifest,
    ManifestError,
    embedded_manifest,
    find_manifest,
    locate_manifest,
    parse_manifest,
    read_manifest_data,
    read_manifest_file,
    verify_model_file,
)
from edgekd.runtime.postprocess import Prediction, select_top_k, softmax, to_probabilities
from edgekd.runtime.preprocess import IMAGE_SUFFIXES, ImageError, list_images, load_image, normalize_batch
from edgekd.runtime.session import ModelError, open_session

__all__ = [
    "Classifier", "FileResult", "ModelError", "check_model_matches", "open_session",
    "METADATA_KEY", "Manifest", "ManifestError", "embedded_manifest", "find_manifest", "locate_manifest",
    "parse_manifest", "read_manifest_data", "read_manifest_file", "verify_model_file",
    "Prediction", "select_top_k", "softmax", "to_probabilities",
    "IMAGE_SUFFIXES", "ImageError", "list_images", "load_image", "normalize_batch",
]
