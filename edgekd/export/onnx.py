"""Export a deploy module to a single-file ONNX model and verify it.

Opset <= 17 uses the TorchScript exporter (`dynamo=False`): torch 2.13's dynamo exporter cannot
emit opset < 18, and TensorRT 8.5 on JetPack 5 needs 17 (docs/architecture.md, "ONNX exporter and
opsets"). Opset >= 18 uses the dynamo exporter with `external_data=False`. Either way the model
stays in memory until it is checked, so nothing is written for a model that fails.
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
from edgekd.errors import EdgekdError, GateError, first_line
from edgekd.export.options import DEFAULT_OPSET, MIN_OPSET, PARITY_ATOL
from edgekd.export.quantize import run_session
from edgekd.names import INPUT_NAME
from edgekd.runtime.session import open_session

BATCH_DIM = "batch"
PARITY_MIN_AGREEMENT = 99.0


def export_onnx(module: nn.Module, input_shape: Sequence[int], output_name: str, opset: int = DEFAULT_OPSET):
    """Export `module` (eval mode, CPU) to an in-memory `onnx.ModelProto`.

    Input `input` (N, C, H, W) float32 and output `output_name` have a dynamic batch axis.
    """
    onnx = require("onnx")
    max_opset = onnx.defs.onnx_opset_version()
    if not MIN_OPSET <= opset <= max_opset:
        raise EdgekdError(f"--opset {opset} is not supported; choose {MIN_OPSET}..{max_opset} "
                          f"(17 for TensorRT 8.5 / JetPack 5)")
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
        raise EdgekdError(f"exported ONNX model failed the checker: {first_line(exc)}") from None


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
    """A CPU ONNX Runtime session from a ModelProto, bytes or a path (`edgekd.runtime.session.open_session`).

    `spinning=False` stops ORT's intra-op threads from busy-waiting after each run, which starves
    torch's threads when the two backends alternate in one process
    (docs/architecture.md, "ONNX Runtime thread spinning").
    """
    return open_session(model_or_path, threads=threads, spinning=spinning)


def parity_figures(got: np.ndarray, want: np.ndarray, atol: float = PARITY_ATOL,
                   min_agreement: float = PARITY_MIN_AGREEMENT, what: str = "ONNX parity",
                   sides: tuple[str, str] = ("artifact", "reference")) -> dict[str, Any]:
    """Compare `got` (the artifact's outputs, N x K) with `want` (the reference's); GateError (exit 3) on failure.

    The proof fails when any output of either side is not finite (NaN compares false with any
    tolerance, so it is checked first), when max |got - want| exceeds `atol * max(1, max |want|)`,
    or when top-1 agreement counted over *every* row is below `min_agreement` percent. Rows whose
    reference top-2 margin is within twice the tolerance are near-ties: a flip there is float
    rounding, so they are reported separately (`near_ties`, `near_tie_flips`), but they still count
    in the agreement, so a systematic flip among near-tied classes cannot hide.
    """
    got, want = np.asarray(got), np.asarray(want)
    n = int(len(want))
    if got.shape != want.shape:
        raise GateError(f"{what} failed: output shape {tuple(got.shape)} differs from the reference's "
                        f"{tuple(want.shape)}")
    bad_got = int((~np.isfinite(got.reshape(n, -1))).any(1).sum()) if n else 0
    bad_want = int((~np.isfinite(want.reshape(n, -1))).any(1).sum()) if n else 0
    if bad_got or bad_want:
        raise GateError(f"{what} failed: outputs are not finite (NaN or inf) on {max(bad_got, bad_want)} of {n} "
                        f"images ({sides[0]} {bad_got}, {sides[1]} {bad_want})")
    diff = float(np.abs(got.astype(np.float64) - want).max()) if got.size else 0.0
    tol = atol * max(1.0, float(np.abs(want).max()) if want.size else 1.0)
    agree = got.argmax(1) == want.argmax(1) if n else np.zeros(0, bool)
    top2 = np.sort(want, axis=1)[:, -2:] if want.ndim == 2 and want.shape[1] > 1 else np.zeros((n, 2))
    near = (top2[:, 1] - top2[:, 0]) <= 2 * tol
    agreement = 100.0 * float(agree.mean()) if n else 100.0
    out = {"batch": n, "max_abs_diff": diff, "tolerance": tol, "finite": True, "top1_agreement": round(agreement, 4),
           "min_agreement": min_agreement, "near_ties": int(near.sum()), "near_tie_flips": int((near & ~agree).sum()),
           "decisive_flips": int((~near & ~agree).sum())}
    if diff > tol:
        raise GateError(f"{what} failed: max |{sides[0]} - {sides[1]}| = {diff:.3g} > tolerance {tol:.3g} on {n} "
                        f"images (top-1 agreement {agreement:.2f}%)")
    if agreement < min_agreement:
        raise GateError(f"{what} failed: top-1 agreement {agreement:.2f}% < {min_agreement}% on {n} images "
                        f"({out['near_tie_flips']} flips among {out['near_ties']} near-ties, "
                        f"{out['decisive_flips']} elsewhere)")
    return out


def check_parity(model, module: nn.Module, x: torch.Tensor, atol: float = PARITY_ATOL,
                 min_agreement: float = PARITY_MIN_AGREEMENT) -> dict[str, Any]:
    """ONNX Runtime vs PyTorch on a real batch (`parity_figures`); GateError (exit 3) on failure."""
    with torch.no_grad():
        want = module.eval()(x).numpy()
    got = run_session(make_session(model), x.numpy())
    return parity_figures(got, want, atol, min_agreement, "ONNX parity", ("ONNX Runtime", "torch"))


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
                expected_nodes: Optional[int] = None,
                forbidden_names: Sequence[str] = ("aux_heads", "kd_head", "logit_head")) -> dict:
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
