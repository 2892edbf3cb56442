"""Torch-free inference for the device: numpy + onnxruntime (or a TensorRT engine) + Pillow.

    from edgekd.runtime import Classifier
    clf = Classifier("export/model.onnx")          # reads export/manifest.json
    for r in clf.classify_files(["cat.jpg"], top_k=3):
        print(r.path, r.prediction.label, r.prediction.score)

Only edgekd/__init__.py, edgekd/errors.py, edgekd/names.py and this package are needed: copying
those files onto a device is enough (the aarch64 check does exactly that). Nothing here imports
torch, onnx, or the training and export stack at module level.
"""

from edgekd.runtime.classifier import Classifier, FileResult, ModelError, check_model_matches
from edgekd.runtime.manifest import METADATA_KEY, Manifest, ManifestError, find_manifest, parse_manifest, read_manifest_file
from edgekd.runtime.postprocess import Prediction, select_top_k, softmax, to_probabilities
from edgekd.runtime.preprocess import IMAGE_SUFFIXES, ImageError, list_images, load_image, normalize_batch

__all__ = [
    "Classifier", "FileResult", "ModelError", "check_model_matches",
    "METADATA_KEY", "Manifest", "ManifestError", "find_manifest", "parse_manifest", "read_manifest_file",
    "Prediction", "select_top_k", "softmax", "to_probabilities",
    "IMAGE_SUFFIXES", "ImageError", "list_images", "load_image", "normalize_batch",
]
