"""Export: deploy module -> verified ONNX (FP32 and INT8 QDQ), manifest, TensorRT engine or build kit.

Modules (import them directly; this package imports nothing heavy on purpose):
- `edgekd.export.onnx`: `export_onnx`, checker, onnxsim, ORT-vs-torch parity, graph check.
- `edgekd.export.quantize`: `quantize_int8` (ORT static QDQ) and its accuracy budget.
- `edgekd.export.manifest`: `build_manifest`, `embed_manifest` (the reader is `edgekd.runtime.manifest`).
- `edgekd.export.pipeline`: `run_export(ExportOptions) -> ExportResult`, used by `edgekd export`
  and `edgekd demo`.
- `edgekd.export.tensorrt`, `edgekd.export.jetson`: building engines and Jetson build kits (loading
  and running them is `edgekd.runtime.engine`).
"""
