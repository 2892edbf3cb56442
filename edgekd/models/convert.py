"""Load weights trained elsewhere: torchvision-layout state dicts onto edgekd's ImageNet-layout models.

The mapping is by key prefix (shapes are checked, nothing is transposed except one reshape):

| torchvision key                        | edgekd key                         | models                  |
|----------------------------------------|------------------------------------|-------------------------|
| `conv1.*`, `bn1.*`                     | `stem.0.*`, `stem.1.*`             | resnet18, resnet34      |
| `layer{i}.{b}.*`                       | `stages.{i-1}.{b}.*`               | resnet18, resnet34      |
| `layer{i}.{b}.downsample.{0,1}.*`      | `stages.{i-1}.{b}.shortcut.{0,1}.*`| resnet18, resnet34      |
| `fc.*`                                 | `head.*`                           | resnet18, resnet34      |
| `features.0.*`, `features.1.*`         | `stem.0.*`, `stem.1.*`             | mobilenetv2_224         |
| `features.{j}.*` (j = 2..17)           | `stages.{s}.{b}.*` (in order)      | mobilenetv2_224         |
| `features.18.*`, `classifier.1.*`      | `neck.*`, `head.*`                 | mobilenetv2_224         |
| `features.0.*`                         | `stem.*`                           | mobilenetv3_small       |
| `features.{j}.*` (j = 1..11)           | `stages.{s}.{b}.*` (in order)      | mobilenetv3_small       |
| `features.12.{0,1}.*`                  | `neck.{0,1}.*`                     | mobilenetv3_small       |
| `classifier.0.*` (Linear 576->1024)    | `neck.4.*` (1x1 conv, reshaped)    | mobilenetv3_small       |
| `classifier.3.*`                       | `head.*`                           | mobilenetv3_small       |

Within a block the names are torchvision's own (`conv1`, `bn2`, `conv.0.1`, `block.2.fc1`, ...).
A `module.` prefix (DDP) is stripped, and `{"state_dict": ...}` / `{"model": ...}` wrappers are
unwrapped. A head for another number of classes (ImageNet's 1000 onto a 10-class student) is
refused unless `skip_head=True`, which keeps the student's freshly initialised head.
"""

from __future__ import annotations

from typing import Mapping

import torch

from edgekd.errors import EdgekdError
from edgekd.models.student import Student

ARCHES = ("resnet18", "resnet34", "mobilenetv2_224", "mobilenetv3_small")
HEAD_PREFIX = "head."


def _stage_prefixes(student: Student, first: int) -> list[tuple[str, str]]:
    """`features.{j}.` -> `stages.{s}.{b}.` for the blocks of every stage, numbered from `first`."""
    rules, j = [], first
    for s, stage in enumerate(student.stages):
        for b in range(len(stage)):
            rules.append((f"features.{j}.", f"stages.{s}.{b}."))
            j += 1
    return rules


def prefix_rules(arch: str, student: Student) -> list[tuple[str, str]]:
    """(torchvision prefix, edgekd prefix) pairs for `arch`, tried longest first."""
    if arch in ("resnet18", "resnet34"):
        rules = [("conv1.", "stem.0."), ("bn1.", "stem.1."), ("fc.", HEAD_PREFIX)]
        for s, stage in enumerate(student.stages):
            for b in range(len(stage)):
                rules.append((f"layer{s + 1}.{b}.downsample.", f"stages.{s}.{b}.shortcut."))
                rules.append((f"layer{s + 1}.{b}.", f"stages.{s}.{b}."))
        return rules
    if arch == "mobilenetv2_224":
        rules = _stage_prefixes(student, 2)
        last = 2 + sum(len(st) for st in student.stages)
        return rules + [("features.0.", "stem.0."), ("features.1.", "stem.1."), (f"features.{last}.", "neck."),
                        ("classifier.1.", HEAD_PREFIX)]
    if arch == "mobilenetv3_small":
        rules = _stage_prefixes(student, 1)
        last = 1 + sum(len(st) for st in student.stages)
        return rules + [("features.0.", "stem."), (f"features.{last}.", "neck."), ("classifier.0.", "neck.4."),
                        ("classifier.3.", HEAD_PREFIX)]
    raise EdgekdError(f"no torchvision mapping for {arch!r}; mappings exist for {', '.join(ARCHES)}")


def unwrap_state_dict(obj) -> dict[str, torch.Tensor]:
    """A plain {key: tensor} dict from a saved object: unwraps `state_dict`/`model` and strips `module.`."""
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model"):
            if key in obj and isinstance(obj[key], Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping):
        raise EdgekdError(f"expected a state dict, got {type(obj).__name__}")
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in obj.items()}


def from_torchvision(state_dict: Mapping[str, torch.Tensor], arch: str, student: Student) -> dict[str, torch.Tensor]:
    """Rename a torchvision-layout state dict to `student`'s keys (no loading, no shape checks)."""
    rules = sorted(prefix_rules(arch, student), key=lambda r: -len(r[0]))
    out, unknown = {}, []
    for key, value in unwrap_state_dict(state_dict).items():
        for src, dst in rules:
            if key.startswith(src):
                new = dst + key[len(src):]
                if new.startswith("neck.4.weight") and value.ndim == 2:  # Linear (1024, 576) -> 1x1 conv
                    value = value[:, :, None, None]
                out[new] = value
                break
        else:
            unknown.append(key)
    if unknown:
        raise EdgekdError(f"{len(unknown)} key(s) are not in the torchvision {arch} layout, e.g. {unknown[0]!r}")
    return out


def load_torchvision(student: Student, state_dict, arch: str, skip_head: bool = False) -> list[str]:
    """Load torchvision-layout weights into `student` (strict on every key but the head); returns the keys loaded.

    Raises:
        EdgekdError: keys outside the layout, missing keys, a shape mismatch, or a head for another
            number of classes without `skip_head`.
    """
    mapped = from_torchvision(state_dict, arch, student)
    own = student.state_dict()
    if skip_head:
        mapped = {k: v for k, v in mapped.items() if not k.startswith(HEAD_PREFIX)}
    bad = [f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in mapped.items()
           if k in own and v.shape != own[k].shape]
    if bad:
        hint = " (a head for another number of classes: pass skip_head=True)" if bad[0].startswith(HEAD_PREFIX) else ""
        raise EdgekdError(f"shape mismatch loading {arch} weights: {bad[0]}{hint}")
    missing = [k for k in own if k not in mapped and not (skip_head and k.startswith(HEAD_PREFIX))]
    extra = [k for k in mapped if k not in own]
    if missing or extra:
        what = f"missing {missing[0]!r}" if missing else f"unexpected {extra[0]!r}"
        raise EdgekdError(f"{arch} weights do not fit the model: {len(missing)} missing, {len(extra)} unexpected "
                          f"({what})")
    student.load_state_dict(mapped, strict=False)
    return sorted(mapped)


__all__ = ["ARCHES", "from_torchvision", "load_torchvision", "prefix_rules", "unwrap_state_dict"]
