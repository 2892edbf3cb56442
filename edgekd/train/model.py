"""`TrainingModel`: the deployable `Student` plus training-only parts.

Training-only parts live here and never in the `Student`:
- `aux_heads`: auxiliary classifiers by stage (LSSKD), an `nn.ModuleDict` keyed by stage index;
- `kd_head`: the second (KD) head of DHO on the student's pooled feature;
- the teacher is held by the method, frozen, and is never saved with the run.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from edgekd.models import Student


class TrainingModel(nn.Module):
    def __init__(self, student: Student, aux_heads: Optional[nn.ModuleDict] = None,
                 kd_head: Optional[nn.Module] = None):
        super().__init__()
        self.student = student
        self.aux_heads = aux_heads if aux_heads is not None else nn.ModuleDict()
        self.kd_head = kd_head
        # DHO inference mix p = a*softmax(z_ce) + (1-a)*softmax(z_kd/b); searched after training
        self.register_buffer("mix_alpha", torch.tensor(1.0))
        self.register_buffer("mix_beta", torch.tensor(1.0))

    @property
    def output_kind(self) -> str:
        """`logits` for a single-head model, `probs` for a dual head (DESIGN.md section 4)."""
        return "probs" if self.kd_head is not None else "logits"

    def heads(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every head's raw output on upright images: {'main': logits, 'kd': ..., 'aux<i>': ...}."""
        feats, pooled = self.student.forward_features(x)
        out = {"main": self.student.head(pooled)}
        if self.kd_head is not None:
            out["kd"] = self.kd_head(pooled)
        for key, head in self.aux_heads.items():
            out[f"aux{key}"] = head(feats[int(key)])
        return out

    def mix(self, z_ce: torch.Tensor, z_kd: torch.Tensor) -> torch.Tensor:
        a, b = self.mix_alpha, self.mix_beta
        return a * torch.softmax(z_ce, dim=1) + (1 - a) * torch.softmax(z_kd / b, dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Inference output: student logits, or mixed probabilities when a KD head exists."""
        if self.kd_head is None:
            return self.student(x)
        _, pooled = self.student.forward_features(x)
        return self.mix(self.student.head(pooled), self.kd_head(pooled))
