"""Accuracy (top-1 / top-5 on a data spec) and parity against a reference model.

Pre-processing is the device runtime's (`edgekd.runtime.preprocess.normalize_batch`: training's
evaluation normalisation in numpy, bit for bit): uint8 NHWC -> float [0, 1] -> (x - mean) / std
-> NCHW, with the mean/std the *model* was trained with (from the checkpoint, or the manifest).
Probabilities are the runtime's softmax, so bench and a device agree on what they compare.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np

from edgekd.bench.runners import Runner
from edgekd.errors import DataError, EdgekdError
from edgekd.names import PROBS_NAME
from edgekd.runtime.postprocess import to_probabilities
from edgekd.runtime.preprocess import normalize_batch

EVAL_CHUNK = 256  # images read, normalised and scored at a time (154 MB of float32 at 224 px)


def check_data_shape(runner: Runner, input_shape: Sequence[int], spec: str) -> None:
    """Refuse data whose images do not have the model's input shape, in one line."""
    if tuple(input_shape) != tuple(runner.info.input_shape):
        raise EdgekdError(f"{runner.info.path} expects images of shape {tuple(runner.info.input_shape)} (C, H, W) "
                          f"but {spec} has {tuple(input_shape)}")


def normalisation(runner: Runner, fallback_mean, fallback_std) -> tuple[tuple, tuple, str]:
    """The model's mean/std, or the data's (with the source named) when the artifact has none."""
    if runner.info.mean is not None and runner.info.std is not None:
        return tuple(runner.info.mean), tuple(runner.info.std), "model"
    return tuple(fallback_mean), tuple(fallback_std), "data (the model carries no mean/std)"


def predict(runner: Runner, x: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """Outputs for a float32 NCHW array, in batches (padded to a static batch when the model has one)."""
    fixed = runner.info.fixed_batch
    bs = fixed or batch_size
    outs = []
    for i in range(0, len(x), bs):
        chunk = x[i:i + bs]
        n = len(chunk)
        if fixed and n < fixed:  # pad the last chunk of a static-batch model, drop the padding after
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], fixed - n, axis=0)])
        outs.append(runner.run(chunk)[:n])
    return np.concatenate(outs)


def topk_accuracy(scores: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Percentage of rows whose label is among the k highest scores."""
    k = min(k, scores.shape[1])
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    return float((top == labels[:, None]).any(axis=1).mean() * 100.0)


def data_view(runners: Sequence[Runner]) -> Any:
    """The evaluation view (edgekd.data.images.View) the models were trained at (`ModelInfo.view`, from the
    checkpoint or manifest), to load --data the way training evaluated it; None for native-size models.

    Raises:
        EdgekdError: two models were evaluated on different views (one loaded dataset cannot serve both).
    """
    from edgekd.data.images import View

    views: dict[tuple[int, int], str] = {}
    found = None
    for r in runners:
        if r.info.view:
            found = View.from_config(r.info.view)
            views.setdefault((found.size, found.side), r.info.path)
    if len(views) > 1:
        raise EdgekdError("the models were evaluated on different views (size, resize): "
                          + ", ".join(f"{k} for {p}" for k, p in views.items()) + "; bench them separately")
    return found


def evaluate_accuracy(runner: Runner, spec: str, split: str = "test", batch_size: int = 64,
                      data: Any = None, limit: Optional[int] = None) -> dict[str, Any]:
    """Top-1 / top-5 of a runner on one split of a data spec (loaded with edgekd.data.load_dataset, at the
    runner's evaluation view). The split is read and normalised in chunks: an on-disk store split of
    ImageNet size never sits in memory as float32 at once."""
    from edgekd.data import load_dataset

    data = data if data is not None else load_dataset(spec, view=data_view([runner]))
    x_u8, y = data.split(split)
    if limit:
        x_u8, y = x_u8[:limit], y[:limit]
    check_data_shape(runner, data.input_shape, spec)
    mean, std, source = normalisation(runner, data.mean, data.std)
    bs = runner.info.fixed_batch or batch_size
    chunk = bs * max(1, EVAL_CHUNK // bs)  # whole batches per chunk: a static-batch model pads only the last
    scores = np.concatenate([predict(runner, normalize_batch(x_u8[i:i + chunk], mean, std), batch_size)
                             for i in range(0, len(y), chunk)])
    if scores.ndim != 2 or scores.shape[0] != len(y):
        raise EdgekdError(f"{runner.info.path} returned shape {scores.shape} for {len(y)} images; "
                          f"expected (N, classes)")
    if int(y.max()) >= scores.shape[1]:
        raise DataError(f"{spec} has labels up to {int(y.max())} but {runner.info.path} outputs "
                        f"{scores.shape[1]} classes")
    out = {"data": spec, "split": split, "n": int(len(y)), "top1": topk_accuracy(scores, y, 1),
           "top5": topk_accuracy(scores, y, 5) if scores.shape[1] >= 5 else None, "normalisation": source}
    return out


def compare_outputs(out: np.ndarray, ref: np.ndarray, kind: str, ref_kind: str) -> dict[str, Any]:
    """Max/mean abs difference and top-1 agreement; outputs of different kinds are compared as probabilities."""
    if out.shape != ref.shape:
        raise EdgekdError(f"parity: output shape {out.shape} differs from the reference's {ref.shape}")
    space = kind
    if kind != ref_kind:
        out, ref, space = to_probabilities(out, kind), to_probabilities(ref, ref_kind), PROBS_NAME
    diff = np.abs(out.astype(np.float64) - ref.astype(np.float64))
    return {"max_abs_diff": float(diff.max()), "mean_abs_diff": float(diff.mean()),
            "top1_agreement": float((out.argmax(1) == ref.argmax(1)).mean() * 100.0), "n": int(len(out)),
            "compared_as": space}


def measure_parity(runner: Runner, reference: Runner, x: np.ndarray, batch_size: int = 64,
                   source: str = "random") -> dict[str, Any]:
    """Run both models on the same float32 NCHW inputs and compare their outputs."""
    if tuple(reference.info.input_shape) != tuple(runner.info.input_shape):
        raise EdgekdError(f"parity: {runner.info.path} takes {runner.info.input_shape} but the reference "
                          f"{reference.info.path} takes {reference.info.input_shape}")
    res = compare_outputs(predict(runner, x, batch_size), predict(reference, x, batch_size),
                          runner.info.output_kind, reference.info.output_kind)
    res.update(reference=reference.info.path, inputs=source)
    return res
