"""Post-processing: model outputs -> class probabilities -> top-k class names with scores."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np


@dataclass(frozen=True)
class Prediction:
    """Top-k classes of one image, best first; `label`/`index`/`score` are the top-1 entry."""

    top_k: tuple[tuple[str, int, float], ...]  # (class name, class index, probability)

    @property
    def label(self) -> str:
        return self.top_k[0][0]

    @property
    def index(self) -> int:
        return self.top_k[0][1]

    @property
    def score(self) -> float:
        return self.top_k[0][2]

    def to_dict(self) -> dict:
        return {"label": self.label, "index": self.index, "score": self.score,
                "top_k": [{"label": n, "index": i, "score": s} for n, i, s in self.top_k]}


def softmax(z: np.ndarray) -> np.ndarray:
    """Row-wise softmax of (N, K) logits in float32, shifted by the row max for stability."""
    z = np.asarray(z, dtype=np.float32)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def to_probabilities(outputs: np.ndarray, output_kind: str) -> np.ndarray:
    """(N, K) model outputs -> probabilities: softmax for `logits`, unchanged for `probs`."""
    out = np.asarray(outputs, dtype=np.float32)
    return softmax(out) if output_kind == "logits" else out


def select_top_k(probs: np.ndarray, class_names: Sequence[str], k: int) -> list[Prediction]:
    """The `k` most probable classes per row; ties keep the lower class index first."""
    k = max(1, min(int(k), probs.shape[1]))
    order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    return [Prediction(tuple((class_names[j], int(j), float(row[j])) for j in idx)) for row, idx in zip(probs, order)]
