"""LSSKD: self-distillation with self-supervised augmented labels and auxiliary classifiers.

Reconstructed from HSAKD (Yang et al. 2021, "Hierarchical Self-supervised Augmented Knowledge
Distillation", IJCAI) without a pre-trained teacher (DESIGN.md section 3). Every image is seen at
0/90/180/270 degrees; auxiliary classifiers predict the joint label `4*c + k` (class c, rotation
k*90 degrees); the main head sees upright images only. The paper's exact weights are not public,
so every weight and the pairing are `LSSKDConfig` fields.

Batch layout (as in HSAKD's code): a batch of N images becomes 4N rows, row `4*i + k` is image i
rotated by k*90 degrees; the upright rows are `[0::4]`.
"""

from __future__ import annotations

from typing import Mapping, Optional, Sequence

import torch
import torch.nn.functional as F

from edgekd.errors import EdgekdError
from edgekd.losses.kd import kd_loss, soft_cross_entropy

ROTATIONS = 4
PAIRINGS = ("adjacent", "deepest")


def rotate_batch(x: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> (4N, C, H, W), row 4*i + k = `torch.rot90(x[i], k, dims=(1, 2))` (counter-clockwise)."""
    if x.shape[-1] != x.shape[-2]:
        raise EdgekdError(f"LSSKD rotates images by 90 degrees and needs square inputs, got {tuple(x.shape[-2:])}")
    out = torch.stack([torch.rot90(x, k, dims=(2, 3)) for k in range(ROTATIONS)], dim=1).flatten(0, 1)
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        out = out.contiguous(memory_format=torch.channels_last)
    return out


def joint_labels(y: torch.Tensor) -> torch.Tensor:
    """(N,) class labels -> (4N,) joint labels, row 4*i + k = 4*y[i] + k (matches `rotate_batch`)."""
    k = torch.arange(ROTATIONS, device=y.device, dtype=y.dtype)
    return (ROTATIONS * y[:, None] + k[None, :]).flatten()


def marginalize_rotations(z: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Joint logits on a rotated batch (4N, 4C) -> class logits (N, C) of the N source images.

    Row 4*i + k was seen at the known rotation k, so its class logits are the entries `4*c + k`;
    the four views of each image are averaged (a rotation test-time ensemble).
    """
    n = z.shape[0] // ROTATIONS
    z4 = z.reshape(n, ROTATIONS, num_classes, ROTATIONS)  # (image, view rotation, class, label rotation)
    k = torch.arange(ROTATIONS, device=z.device)
    return z4[:, k, :, k].mean(dim=0)  # advanced indexing puts the paired k first: (4, N, C) -> (N, C)


def layer_pairs(stages: Sequence[int], pairing: str = "adjacent") -> list[tuple[int, int]]:
    """(learner stage, teacher stage) pairs of the layered transfer; the deeper head is the teacher.

    `adjacent`: stage s_{j+1} teaches s_j. `deepest`: the deepest aux head teaches every other one.
    """
    if pairing not in PAIRINGS:
        raise EdgekdError(f"unknown lsskd.pairing {pairing!r}; choose {' or '.join(PAIRINGS)}")
    s = sorted(stages)
    if pairing == "adjacent":
        return [(s[j], s[j + 1]) for j in range(len(s) - 1)]
    return [(a, s[-1]) for a in s[:-1]]


def lsskd_loss_terms(main_logits: torch.Tensor, aux_logits: Mapping[int, torch.Tensor], labels: torch.Tensor, *,
                     temperature: float = 3.0, main_ce_weight: float = 1.0, aux_ce_weight: float = 1.0,
                     layer_kd_weight: float = 1.0, ensemble_kd_weight: float = 1.0, pairing: str = "adjacent",
                     main_target: Optional[torch.Tensor] = None, label_smoothing: float = 0.0) -> dict[str, torch.Tensor]:
    """The LSSKD loss terms and their weighted sum `loss`.

    - `main_ce`: CE of the main head on upright images (soft CE against `main_target` when given,
      e.g. PS-KD progressive targets);
    - `aux_ce`: sum over aux heads of CE on the joint labels of the rotated batch;
    - `layer_kd`: sum over `layer_pairs` of T^2 KL(deeper, detached || shallower) on joint labels;
    - `ensemble_kd`: T^2 KL from the aux ensemble (mean of `marginalize_rotations` logits, detached)
      to the main head.

    Args:
        main_logits: (N, C) main head on the upright images.
        aux_logits: {stage: (4N, 4C)} aux heads on the rotated batch (`rotate_batch` layout).
        labels: (N,) class labels.
        main_target: optional (N, C) probability target for the main head.
    """
    n, num_classes = main_logits.shape
    zero = main_logits.new_zeros((), dtype=torch.float32)
    if main_target is not None:
        main_ce = soft_cross_entropy(main_logits, main_target)
    else:
        main_ce = F.cross_entropy(main_logits.float(), labels, label_smoothing=label_smoothing)
    y_joint = joint_labels(labels)
    aux_ce = sum((F.cross_entropy(z.float(), y_joint) for z in aux_logits.values()), zero)
    layer_kd = sum((kd_loss(aux_logits[a], aux_logits[b].detach(), temperature)
                    for a, b in layer_pairs(list(aux_logits), pairing)), zero)
    ensemble_kd = zero
    if aux_logits:
        ens = torch.stack([marginalize_rotations(z.detach().float(), num_classes) for z in aux_logits.values()]).mean(0)
        ensemble_kd = kd_loss(main_logits, ens, temperature)
    loss = (main_ce_weight * main_ce + aux_ce_weight * aux_ce + layer_kd_weight * layer_kd
            + ensemble_kd_weight * ensemble_kd)
    return {"loss": loss, "main_ce": main_ce, "aux_ce": aux_ce, "layer_kd": layer_kd, "ensemble_kd": ensemble_kd}


__all__ = ["ROTATIONS", "PAIRINGS", "rotate_batch", "joint_labels", "marginalize_rotations", "layer_pairs",
           "lsskd_loss_terms"]
