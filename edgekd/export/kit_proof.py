"""The engine proof on the device: what the Jetson kit carries for it and the step `build_engine.sh` runs.

The device has trtexec and a bare python3, and maybe no TensorRT Python bindings, cuda-python,
numpy or onnxruntime. So the export machine does the ONNX Runtime half: it stores validation
images as raw float32 batches (`proof/input.<i>.bin`, what `trtexec --loadInputs` reads), and
stores their labels and ORT FP32 outputs of `model.onnx` in `proof/reference.json`. On the
device, `build_engine.sh` runs the new engine on each batch with `trtexec --loadEngine
--loadInputs --exportOutput`. It then compares with `edgekd.export.engine_proof.compare_outputs`,
whose source is embedded in the script, so both places run the same proof. A failed proof exits 3
and leaves no engine. A passed proof's figures go into the engine's provenance record.

The proof batches are `max_batch` images each (always inside the engine's profile), as many as
fit in `MAX_PROOF_BYTES` and the images given. CIFAR-sized inputs carry all 256 verification
images (3 MiB). ImageNet-sized ones carry about 50 per 32 MiB.
"""

from __future__ import annotations

import json
import os
import shlex
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from edgekd.errors import EdgekdError
from edgekd.export.engine_proof import MIN_AGREEMENT_FP32, TOLERANCE, compare_source
from edgekd.names import INPUT_NAME

PROOF_DIR = "proof"
PROOF_REFERENCE = f"{PROOF_DIR}/reference.json"
PROOF_FORMAT = "edgekd-engine-proof/1"
PROOF_RESULT = ".proof.result.json"  # written beside the temporary engine; the sidecar step reads it
MAX_PROOF_BYTES = 32 << 20
# trtexec's quickest single inference: one iteration, no warm-up, no timed duration
TRTEXEC_ONE_RUN = ("--iterations=1", "--warmUp=0", "--duration=0", "--avgRuns=1")


def proof_batches(n_images: int, image_bytes: int, min_batch: int, max_batch: int,
                  budget: int = MAX_PROOF_BYTES) -> tuple[int, int]:
    """(batch, count): `count` batches of `batch` images, inside the profile and the byte budget."""
    if n_images < min_batch:
        raise EdgekdError(f"the engine proof needs at least the profile's min batch ({min_batch}) of images, "
                          f"got {n_images}")
    batch = min(max_batch, n_images)
    count = max(1, min(n_images // batch, budget // max(1, batch * image_bytes)))
    return batch, count


def write_proof_set(out_dir: str | os.PathLike, x: np.ndarray, y: np.ndarray, reference: np.ndarray,
                    precision: str, max_drop: float, min_batch: int, max_batch: int, output_name: str,
                    split: str = "val") -> list[Path]:
    """Write `proof/` into the kit: raw input batches and the reference record; return the files.

    `x` (N, C, H, W) float32 are the model's inputs (normalised), `y` (N,) labels, `reference`
    ORT FP32's (N, K) outputs of `model.onnx` on `x`.
    """
    x = np.ascontiguousarray(x, dtype="<f4")
    if len(x) != len(y) or len(x) != len(reference):
        raise EdgekdError(f"the proof set has {len(x)} images, {len(y)} labels and {len(reference)} reference rows")
    batch, count = proof_batches(len(x), int(x[0].nbytes) if len(x) else 0, min_batch, max_batch)
    n = batch * count
    root = Path(out_dir) / PROOF_DIR
    root.mkdir(parents=True, exist_ok=True)
    files, chunks = [], []
    for i in range(count):
        path = root / f"input.{i}.bin"
        path.write_bytes(x[i * batch:(i + 1) * batch].tobytes())
        path.chmod(0o644)
        files.append(path)
        chunks.append({"file": f"{PROOF_DIR}/{path.name}", "batch": batch})
    record = {"format": PROOF_FORMAT, "precision": precision, "max_accuracy_drop": float(max_drop),
              "tolerance": TOLERANCE[precision], "min_agreement": MIN_AGREEMENT_FP32, "split": split,
              "input": INPUT_NAME, "output": output_name, "shape": [int(d) for d in x.shape[1:]], "chunks": chunks,
              "labels": [int(v) for v in y[:n]],
              "reference": np.asarray(reference[:n], dtype=np.float64).reshape(n, -1).tolist()}
    ref_path = Path(out_dir) / PROOF_REFERENCE
    ref_path.write_text(json.dumps(record) + "\n")
    ref_path.chmod(0o644)
    return [*files, ref_path]


# The device side. stdlib only (JetPack 5 ships Python 3.8). argv: reference.json, the folder of
# trtexec's exported outputs, where to write the figures. compare_outputs is prepended.
_DEVICE_SNIPPET = r'''
import json, os, re, sys

ref_path, out_dir, result_path = sys.argv[1], sys.argv[2], sys.argv[3]
with open(ref_path) as f:
    ref = json.load(f)


def number_tokens(text):
    # trtexec prints non-finite values as nan / -nan / inf / -inf, which JSON does not allow
    def repl(m):
        return ("NaN" if m.group(2).lower() == "nan" else ("-Infinity" if m.group(1) else "Infinity"))
    return re.sub(r'(?<![\w."])(-?)(nan|inf)(?![\w"])', repl, text, flags=re.I)


got = []
for i, chunk in enumerate(ref["chunks"]):
    with open(os.path.join(out_dir, ".proof.%d.json" % i)) as f:
        outputs = json.loads(number_tokens(f.read()))
    out = [o for o in outputs if o.get("name") == ref["output"]] or outputs
    values = [float(v) for v in out[0]["values"]]
    k = len(values) // chunk["batch"]
    got.extend(values[j * k:(j + 1) * k] for j in range(chunk["batch"]))
figures, failure = compare_outputs(got, ref["reference"], ref["labels"], ref["precision"],
                                   ref["max_accuracy_drop"], ref["tolerance"], ref["min_agreement"])
figures["split"] = ref.get("split")
with open(result_path, "w") as f:
    json.dump(figures, f, indent=2)
if failure:
    sys.stderr.write("error: engine proof failed: %s\n" % failure)
    sys.exit(3)
print("engine proof passed on %d %s images: max |diff| %.3g, top-1 agreement %.2f%%, top-1 %.2f%% vs %.2f%% (ORT FP32)"
      % (figures["n"], ref.get("split"), figures["max_abs_diff"], figures["top1_agreement"], figures["engine_top1"],
         figures["reference_top1"]))
'''


def render_proof_step(proof: Optional[dict[str, Any]], input_shape: Sequence[int], dla_core: Optional[int]) -> str:
    """The bash lines of build_engine.sh that prove `$TMP_ENGINE` (or say the kit has no proof set).

    `proof` is the reference record `write_proof_set` wrote (None: the kit was written without
    images, and the engine is published unproven, with a warning and `"proof": null` in its record).
    """
    if proof is None:
        return (f'echo "warning: this kit has no proof set ({PROOF_REFERENCE}); the engine is NOT checked against '
                'ONNX Runtime (re-export with edgekd export to get one)" >&2\nrm -f "$PROOF_RESULT"\n')
    c, h, w = (int(d) for d in input_shape)
    lines = [f'echo "proving the engine on {sum(ch["batch"] for ch in proof["chunks"])} {proof.get("split")} images '
             'against ONNX Runtime FP32 (log: $PROOF_LOG)"', ': > "$PROOF_LOG"']
    dla = [f"--useDLACore={dla_core}"] if dla_core is not None else []
    for i, chunk in enumerate(proof["chunks"]):
        args = [f"--loadInputs={INPUT_NAME}:{chunk['file']}", f"--shapes={INPUT_NAME}:{chunk['batch']}x{c}x{h}x{w}",
                f"--exportOutput=.proof.{i}.json", *TRTEXEC_ONE_RUN, *dla]
        quoted = " ".join(shlex.quote(a) for a in args)
        lines.append(f'"$TRTEXEC" "--loadEngine=$TMP_ENGINE" {quoted} >> "$PROOF_LOG" 2>&1 || {{ echo "error: trtexec '
                     f'could not run the engine on the proof images; see $PROOF_LOG" >&2; exit 1; }}')
    snippet = compare_source() + _DEVICE_SNIPPET
    heredoc = "<<'EDGEKD_PROOF'"  # quoted: the shell expands nothing inside the Python
    lines.append(f'"$PYTHON" - {shlex.quote(PROOF_REFERENCE)} . "$PROOF_RESULT" {heredoc}\n{snippet}EDGEKD_PROOF')
    return "\n".join(lines) + "\n"
