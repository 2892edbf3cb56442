"""Tensor and file names shared by export, runners, runtime and tests (docs/architecture.md, "Names")."""

INPUT_NAME = "input"
LOGITS_NAME = "logits"
PROBS_NAME = "probs"
OUTPUT_KINDS = (LOGITS_NAME, PROBS_NAME)

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.jsonl"
LAST_CKPT = "last.pt"
BEST_CKPT = "best.pt"
SUMMARY_FILE = "summary.json"
MODEL_ONNX = "model.onnx"
MODEL_INT8_ONNX = "model.int8.onnx"
MODEL_FP16_ONNX = "model.fp16.onnx"
MODEL_ENGINE = "model.engine"
MANIFEST_FILE = "manifest.json"
