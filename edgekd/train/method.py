"""The method interface, written once: what the fit loop asks of a training method.

A method turns a batch into a loss; the fit loop (`edgekd.train.loop`) owns everything else.
`Method` is a `typing.Protocol` whose optional hooks have working defaults: every method class
subclasses it explicitly and overrides only what it needs, so the loop calls every hook
unconditionally (no `getattr` probes). A method does not build modules: the `TrainingModel`
comes from `edgekd.train.model.build_training_model`, the same function a checkpoint rebuild uses.

Methods by name are the dict literal `edgekd.train.methods.METHODS`.
"""

from __future__ import annotations

from typing import Callable, Iterator, Optional, Protocol

import torch
import torch.nn.functional as F

from edgekd.config import TrainConfig
from edgekd.data import ImageData
from edgekd.data.loader import Batch, BatchLoader
from edgekd.train.model import TrainingModel

Log = Callable[[str], None]


class TrainLoader(Protocol):
    """What the loop needs of a training loader (`BatchLoader`, `SemiSupLoader`): batches per epoch."""

    def __iter__(self) -> Iterator[Batch]: ...

    def __len__(self) -> int: ...

    def set_epoch(self, epoch: int) -> None: ...


class Method(Protocol):
    """A training method. Required: `loss`. Everything else has a default that does nothing special.

    Constructed as `Cls(cfg, data, device, log)` by `edgekd.train.methods.build_method`; it may
    load a teacher or allocate per-sample state there and raise one-line `EdgekdError`s for bad
    options before any training starts.
    """

    name: str
    cfg: TrainConfig
    data: ImageData
    device: torch.device
    log: Optional[Log]
    # DDP must be told when some parameters get no gradient in a step (a dropped loss term)
    find_unused_parameters: bool = False

    def loss(self, model: TrainingModel, batch: Batch, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss, logits): the scalar to minimise and the main head's (B, C) logits on the batch's upright
        images (for the running train accuracy)."""
        ...

    def backward(self, loss: torch.Tensor, scale: float = 1.0) -> None:
        """Fill every trainable parameter's `.grad` from the step's `loss` (the loop zeroed them before).

        By default `loss.backward()`. `loss` may come pre-multiplied by a loss scale (fp16 training);
        `scale` says by how much, for a method that differentiates its own loss terms instead (DHKD's
        gradient alignment) and must scale them alike."""
        loss.backward()

    def make_train_loader(self, *, rank: int, world_size: int, channels_last: bool) -> TrainLoader:
        """The training batches of this rank: by default shuffled, augmented, sharded, every image labeled."""
        data, cfg = self.data, self.cfg
        return BatchLoader(data.x_train, data.y_train, cfg.batch_size, data.mean, data.std, train=cfg.augment,
                           shuffle=True, drop_last=True, hflip=data.hflip, seed=cfg.seed, device=self.device,
                           rank=rank, world_size=world_size, channels_last=channels_last)

    def on_epoch_end(self, model: TrainingModel, epoch: int) -> None:
        """After the last step of `epoch` (0-based), on every rank (e.g. merge per-sample buffers)."""

    def on_train_end(self, model: TrainingModel, val_loader: Optional[BatchLoader]) -> Optional[dict]:
        """After training, with the best checkpoint's weights loaded on every rank.

        May change the model (e.g. DHO's mix search). Returns None when nothing changed, else a
        JSON-able record: the loop stores it in `summary.json` (its keys at the top level) and in
        `best.pt` (under `train_end`), saving the changed model through the normal checkpoint path.
        """
        return None

    def state_dict(self) -> dict:
        """Per-run state that a resume must restore (tensors and primitives only)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore `state_dict()`'s output from a checkpoint."""


class CEMethod(Method):
    """Plain cross-entropy on the student's head."""

    name = "ce"

    def __init__(self, cfg: TrainConfig, data: ImageData, device: torch.device, log: Optional[Log] = print):
        self.cfg, self.data, self.device, self.log = cfg, data, device, log

    def loss(self, model: TrainingModel, batch: Batch, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        logits = model.student(batch.x)
        # float32 logits: bf16/fp16 autocast must not reach the loss (edgekd.train.precision)
        return F.cross_entropy(logits.float(), batch.y, label_smoothing=self.cfg.label_smoothing), logits
