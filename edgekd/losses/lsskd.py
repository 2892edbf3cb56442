"""LSSKD: self-distillation with self-supervised augmented labels and auxiliary classifiers.

Reconstructed from HSAKD (Yang et al. 2021, "Hierarchical Self-supervised Augmented Knowledge
Distillation", IJCAI) without a pre-trained teacher (docs/architecture.md, "Methods"). Every image is seen at
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
MAIN_ROWS = ("upright", "all")  # rows of the rotated batch the main head is trained on


def rotate_batch(x: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> (4N, C, H, W), row 4*i + k = `torch.rot90(x[i], k, dims=(1, 2))` (counter-clockwise).

    Written once into its final layout (channels-last when `x` is): each rotation is copied into
    its rows of one preallocated tensor, instead of stacking copies and converting the result.
    """
    if x.shape[-1] != x.shape[-2]:
        raise EdgekdError(f"LSSKD rotates images by 90 degrees and needs square inputs, got {tuple(x.shape[-2:])}")
    n, c, h, w = x.shape
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        # storage (N, 4, H, W, C): merging the first two dims gives a channels-last (4N, C, H, W) view
        out = x.new_empty((n, ROTATIONS, h, w, c)).permute(0, 1, 4, 2, 3)
    else:
        out = x.new_empty((n, ROTATIONS, c, h, w))
    for k in range(ROTATIONS):
        out[:, k] = torch.rot90(x, k, dims=(2, 3)) if k else x
    return out.flatten(0, 1)


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


def view_class_logits(z: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Joint logits on a rotated batch (4N, 4C) -> class logits of each view (4N, C).

    Row r was seen at the known rotation k = r % 4, so its class logits are the entries `4*c + k`
    (no averaging over the four views: `marginalize_rotations` is the per-image mean of these).
    """
    rows = z.shape[0]
    k = torch.arange(rows, device=z.device) % ROTATIONS
    return z.reshape(rows, num_classes, ROTATIONS)[torch.arange(rows, device=z.device), :, k]


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
                     main_target: Optional[torch.Tensor] = None, label_smoothing: float = 0.0,
                     main_rows: str = "upright") -> dict[str, torch.Tensor]:
    """The LSSKD loss terms and their weighted sum `loss`.

    - `main_ce`: CE of the main head on upright images (soft CE against `main_target` when given,
      e.g. PS-KD progressive targets);
    - `aux_ce`: sum over aux heads of CE on the joint labels of the rotated batch;
    - `layer_kd`: sum over `layer_pairs` of T^2 KL(deeper, detached || shallower) on joint labels;
    - `ensemble_kd`: T^2 KL from the aux ensemble (mean of `marginalize_rotations` logits, detached)
      to the main head.

    With `main_rows="all"` (HSAKD's main-head form) `main_logits` holds the main head on all 4N rows
    of the rotated batch: `main_ce` uses the upright rows `[0::4]` only and `ensemble_kd` distils every
    row, each towards the aux ensemble's class logits of that same view (`view_class_logits`).

    Args:
        main_logits: (N, C) main head on the upright images, or (4N, C) on the rotated batch (`main_rows="all"`).
        aux_logits: {stage: (4N, 4C)} aux heads on the rotated batch (`rotate_batch` layout).
        labels: (N,) class labels.
        main_target: optional (N, C) probability target for the main head.
        main_rows: `upright` (edgekd's form: the main head never sees rotated rows) | `all` (HSAKD's).
    """
    if main_rows not in MAIN_ROWS:
        raise EdgekdError(f"unknown lsskd main-head rows {main_rows!r}; choose {' or '.join(MAIN_ROWS)}")
    num_classes = main_logits.shape[1]
    upright = main_logits[0::ROTATIONS] if main_rows == "all" else main_logits
    zero = main_logits.new_zeros((), dtype=torch.float32)
    if main_target is not None:
        main_ce = soft_cross_entropy(upright, main_target)
    else:
        main_ce = F.cross_entropy(upright.float(), labels, label_smoothing=label_smoothing)
    y_joint = joint_labels(labels)
    # float32 once per head (a no-op in fp32): every term below reads these, none casts again
    aux32 = {k: z.float() for k, z in aux_logits.items()}
    aux_ce = sum((F.cross_entropy(z, y_joint) for z in aux32.values()), zero)
    layer_kd = sum((kd_loss(aux32[a], aux32[b].detach(), temperature)
                    for a, b in layer_pairs(list(aux32), pairing)), zero)
    ensemble_kd = zero
    if aux32:
        per_head = marginalize_rotations if main_rows == "upright" else view_class_logits
        ens = torch.stack([per_head(z.detach(), num_classes) for z in aux32.values()]).mean(0)
        ensemble_kd = kd_loss(main_logits, ens, temperature)
    loss = (main_ce_weight * main_ce + aux_ce_weight * aux_ce + layer_kd_weight * layer_kd
            + ensemble_kd_weight * ensemble_kd)
    return {"loss": loss, "main_ce": main_ce, "aux_ce": aux_ce, "layer_kd": layer_kd, "ensemble_kd": ensemble_kd}


__all__ = ["ROTATIONS", "PAIRINGS", "MAIN_ROWS", "rotate_batch", "joint_labels", "marginalize_rotations",
           "view_class_logits", "layer_pairs", "lsskd_loss_terms"]
