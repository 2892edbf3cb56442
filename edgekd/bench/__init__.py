"""Benchmarking: runners (torch, ONNX Runtime, TensorRT), latency, accuracy and parity, an
environment fingerprint, reports (table, JSON, markdown) and the CI regression gate.

Nothing heavy is imported here: each runner imports its backend when it is built.
"""
