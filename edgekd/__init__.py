"""edgekd: distil, export, verify and benchmark compact image classifiers for edge devices.

`import edgekd` stays light: it loads neither torch nor onnxruntime nor tensorrt.
"""

__version__ = "0.1.0"
