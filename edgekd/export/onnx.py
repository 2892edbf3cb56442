"""Export a deploy module to a single-file ONNX model and verify it.

Opset <= 17 uses the TorchScript exporter (`dynamo=False`): torch 2.13's dynamo exporter cannot
emit opset < 18, and TensorRT 8.5 on JetPack 5 needs 17 (DESIGN.md section 6). Opset >= 18 uses
the dynamo exporter with `external_data=False`. Either way the model stays in memory until it is
checked, so nothing is written for a model that fails.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from typing import Any, Iterable, Optional, Sequence

import numpy as np
import torch
from torch import nn

from edgekd.deps import require
from edgekd.errors import EdgekdError, GateError
from edgekd.names import INPUT_NAME

DEFAULT_OPSET = 17
MIN_OPSET = 13
BATCH_DIM = "batch"
# parity: |ort - torch| <= PARITY_ATOL * max(1, max |torch|); FP32 ORT vs torch is ~1e-6 relative
PARITY_ATOL = 1e-4
PARITY_MIN_AGREEMENT = 99.0


def export_onnx(module: nn.Module, input_shape: Sequence[int], output_name: str, opset: int = DEFAULT_OPSET):
    """Export `module` (eval mode, CPU) to an in-memory `onnx.ModelProto`.

    Input `input` (N, C, H, W) float32 and output `output_name` have a dynamic batch axis.
    """
    onnx = require("onnx")
    max_opset = onnx.defs.onnx_opset_version()
    if not MIN_OPSET <= opset <= max_opset:
        raise EdgekdError(f"--opset {opset} is not supported; choose {MIN_OPSET}..{max_opset} (17 for TensorRT 8.5 / JetPack 5)")
    module = module.eval().cpu()
    x = torch.zeros(2, *input_shape)  # batch 2: a batch-1 example would let the tracer specialise the axis
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice, tracer warnings
        if opset <= 17:
            buf = io.BytesIO()
            torch.onnx.export(module, (x,), buf, dynamo=False, opset_version=opset, input_names=[INPUT_NAME],
                              output_names=[output_name], do_constant_folding=True,
                              dynamic_axes={INPUT_NAME: {0: BATCH_DIM}, output_name: {0: BATCH_DIM}})
            model = onnx.load_from_string(buf.getvalue())
        else:
            program = torch.onnx.export(module, (x,), dynamo=True, opset_version=opset, input_names=[INPUT_NAME],
                                        output_names=[output_name], external_data=False, verbose=False,
                                        dynamic_shapes=({0: torch.export.Dim(BATCH_DIM)},), optimize=True)
            model = program.model_proto
            _rename_batch_dim(model)
    if model.opset_import and _default_opset(model) != opset:
        raise EdgekdError(f"the exporter produced opset {_default_opset(model)} instead of {opset}")
    return model


def _default_opset(model) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), -1)


def _rename_batch_dim(model) -> None:
    """Name the dynamic batch axis `batch` on the input and the output (dynamo names it s0/s1...)."""
    for vi in list(model.graph.input) + list(model.graph.output):
        dim = vi.type.tensor_type.shape.dim[0]
        if not dim.HasField("dim_value"):
            dim.dim_param = BATCH_DIM


def check_onnx(model) -> None:
    """The ONNX checker with full_check (type and shape inference); one-line error on failure."""
    onnx = require("onnx")
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as exc:  # onnx raises ValidationError / InferenceError
        raise EdgekdError(f"exported ONNX model failed the checker: {str(exc).splitlines()[0][:200]}") from None


def simplify_onnx(model) -> tuple[Any, bool]:
    """Run onnxsim; keep its result only when it removes nodes or initializers. Returns (model, changed)."""
    onnxsim = require("onnxsim")
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            simplified, ok = onnxsim.simplify(model)
    except Exception:  # onnxsim failing is not an export failure: keep the checked model
        return model, False
    if not ok:
        return model, False
    before = (len(model.graph.node), len(model.graph.initializer))
    after = (len(simplified.graph.node), len(simplified.graph.initializer))
    if after[0] < before[0] or (after[0] == before[0] and after[1] < before[1]):
        _rename_batch_dim(simplified)
        return simplified, True
    return model, False


def make_session(model_or_path, threads: Optional[int] = None, spinning: bool = True):
    """A CPU ONNX Runtime session from a ModelProto, bytes or a path.

    `spinning=False` stops ORT's intra-op threads from busy-waiting after each run, which starves
    torch's threads when the two backends alternate in one process (DESIGN.md section 6).
    """
    ort = require("onnxruntime")
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = threads
    if not spinning:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    src = model_or_path.SerializeToString() if hasattr(model_or_path, "SerializeToString") else model_or_path
    if not isinstance(src, (bytes, bytearray)):
        src = str(src)
    return ort.InferenceSession(src, sess_options=opts, providers=["CPUExecutionProvider"])


def run_session(session, x: np.ndarray, batch: int = 256) -> np.ndarray:
    """Run a one-input one-output session over `x` in chunks of `batch`."""
    name = session.get_inputs()[0].name
    outs = [session.run(None, {name: np.ascontiguousarray(x[i:i + batch], dtype=np.float32)})[0]
            for i in range(0, len(x), batch)]
    return np.concatenate(outs) if outs else np.zeros((0,), np.float32)


def check_parity(model, module: nn.Module, x: torch.Tensor, atol: float = PARITY_ATOL,
                 min_agreement: float = PARITY_MIN_AGREEMENT) -> dict[str, Any]:
    """ONNX Runtime vs PyTorch on a real batch; GateError (exit 3) beyond tolerance.

    Top-1 agreement is gated on decisive samples only (torch's top-2 margin above twice the
    tolerance): a near-tie can flip within float rounding without anything being wrong.
    """
    with torch.no_grad():
        want = module.eval()(x).numpy()
    got = run_session(make_session(model), x.numpy())
    diff = float(np.abs(got - want).max()) if got.size else 0.0
    tol = atol * max(1.0, float(np.abs(want).max()) if want.size else 1.0)
    agree = got.argmax(1) == want.argmax(1)
    top2 = np.sort(want, axis=1)[:, -2:] if want.shape[1] > 1 else np.zeros((len(want), 2))
    decisive = (top2[:, 1] - top2[:, 0]) > 2 * tol
    agree_all = 100.0 * float(agree.mean()) if len(agree) else 100.0
    agree_dec = 100.0 * float(agree[decisive].mean()) if decisive.any() else 100.0
    out = {"batch": int(len(x)), "max_abs_diff": diff, "tolerance": tol, "top1_agreement": round(agree_all, 4),
           "top1_agreement_decisive": round(agree_dec, 4), "min_agreement": min_agreement}
    if diff > tol:
        raise GateError(f"ONNX parity failed: max |ORT - torch| = {diff:.3g} > tolerance {tol:.3g} on {len(x)} images "
                        f"(top-1 agreement {agree_all:.2f}%)")
    if agree_dec < min_agreement:
        raise GateError(f"ONNX parity failed: top-1 agreement {agree_dec:.2f}% < {min_agreement}% on {len(x)} images")
    return out


def float_initializers(model) -> Iterable[tuple[str, np.ndarray]]:
    """(name, array) of every float tensor with more than one element: initializers and Constant nodes."""
    onnx = require("onnx")
    for init in model.graph.initializer:
        arr = onnx.numpy_helper.to_array(init)
        if arr.dtype.kind == "f" and arr.size > 1:
            yield init.name, arr
    for node in model.graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.TENSOR:
                    arr = onnx.numpy_helper.to_array(attr.t)
                    if arr.dtype.kind == "f" and arr.size > 1:
                        yield node.output[0], arr


def count_onnx_params(model) -> int:
    """Elements of the float weight tensors of an ONNX graph (BN is folded into conv by the exporter)."""
    return int(sum(a.size for _, a in float_initializers(model)))


def check_graph(model, output_name: str, training_only: dict[str, torch.Tensor], expected_params: int,
                expected_nodes: Optional[int] = None, forbidden_names: Sequence[str] = ("aux_heads", "kd_head")) -> dict:
    """Graph check: one input `input` with a dynamic batch axis, exactly one output `output_name`,
    no weight taken from a training-only module (by name or by value), and the expected
    parameter count (that of the plain student exported the same way, plus any folded head)."""
    g = model.graph
    problems = []
    if len(g.output) != 1 or g.output[0].name != output_name:
        problems.append(f"outputs are {[o.name for o in g.output]}, expected exactly [{output_name!r}]")
    if len(g.input) != 1 or g.input[0].name != INPUT_NAME:
        problems.append(f"inputs are {[i.name for i in g.input]}, expected [{INPUT_NAME!r}]")
    elif g.input[0].type.tensor_type.shape.dim[0].HasField("dim_value"):
        problems.append("the batch axis of the input is not dynamic")
    weights = list(float_initializers(model))
    bad_names = [n for n, _ in weights if any(f in n for f in forbidden_names)]
    if bad_names:
        problems.append(f"initializers from training-only modules: {bad_names[:3]}")
    digests = {(a.shape, a.astype(np.float32).tobytes()) for _, a in weights}
    leaked = [k for k, t in training_only.items() if t.numel() >= 16 and t.is_floating_point()
              and (tuple(t.shape), t.detach().float().cpu().numpy().tobytes()) in digests]
    if leaked:
        problems.append(f"weights of training-only modules are in the graph: {leaked[:3]}")
    params = int(sum(a.size for _, a in weights))
    if params != expected_params:
        problems.append(f"parameter count {params:,} != {expected_params:,} expected (plain student)")
    nodes = len(g.node)
    if expected_nodes is not None and nodes != expected_nodes:
        problems.append(f"node count {nodes} != {expected_nodes} of the plain student")
    if problems:
        raise GateError("ONNX graph check failed: " + "; ".join(problems))
    return {"outputs": [o.name for o in g.output], "params": params, "expected_params": expected_params,
            "nodes": nodes, "expected_nodes": expected_nodes,
            "ops": sorted({n.op_type for n in g.node})}
