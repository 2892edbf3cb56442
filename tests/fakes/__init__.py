"""Stand-ins for what a test machine lacks: TensorRT, cuda-python, trtexec and nvidia-smi.

They record the calls edgekd makes against the documented APIs; they say nothing about the real
libraries. `tensorrt` holds the fakes, `onnx_models` the tiny real ONNX models they run.
"""
