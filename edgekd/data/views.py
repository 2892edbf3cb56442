"""Fixed augmented views: R reproducible augmentations of every training image (a teacher cache's views).

`ViewPlan` draws round r's augmentation of every training image at once, in index order, from a
generator seeded by (seed, r) in chunks of `CHUNK` images. Image i's view in round r is therefore a
function of (seed, r, i) alone: neither the batch it lands in, the batch size nor the process count
changes it. A teacher run once per round over the split (`edgekd.train.teachers.view_logits`) gives
exactly the logits the online teacher computes on the same augmented batch, and every later run with
the same plan reuses them (DHO's `dho.teacher_cache=views`, docs/architecture.md, "Methods").

Which round a batch row uses is the loader's business: `SemiSupLoader` takes round `k mod R` for
the k-th pass (permutation cycle) of its stream over a pool, so within one pass every image has
one view, and the views repeat after R passes (R at least the run's passes: none repeats).

The augmentation is the training transform of the data's regime (`edgekd.data.transforms`), drawn
from the same distributions; per row the parameters are int64 (top, left, h, w, flip):
- native size: (top, left) is the offset into the image zero-padded by `padding` (4) and (h, w)
  the image's own size: the pad-and-crop of `train_transform`;
- a `View` (`--image-size`): a random-resized crop box of the stored square (`sample_crop_boxes`),
  resampled to view.size x view.size by `resized_crops`.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
import torch

from edgekd.data.transforms import crop_padded, resized_crops, sample_crop_boxes, to_float
from edgekd.errors import ConfigError

CHUNK = 4096  # images drawn per generator call (part of the definition of a round: never change silently)
PLAN_VERSION = 1
PAD = 4  # the native regime's crop padding, as edgekd.data.transforms.train_transform


class ViewPlan:
    """R rounds of fixed training views for the `n` images of a (height, width) training split.

    Args:
        rounds: R, the number of distinct views per image.
        seed: the augmentation seed (the same seed and data give the same views in every run).
        n, height, width: the training split's image count and stored image size.
        hflip: whether views may be mirrored (the data's flag).
        view: the fixed-size regime's geometry (`ImageData.view`); None: native size.
    """

    def __init__(self, rounds: int, seed: int, n: int, height: int, width: int, hflip: bool,
                 view: Optional[Any] = None, padding: int = PAD):
        if rounds < 1:
            raise ConfigError(f"dho.view_rounds must be >= 1, got {rounds}")
        self.rounds, self.seed, self.n = int(rounds), int(seed), int(n)
        self.height, self.width, self.hflip, self.view, self.padding = height, width, hflip, view, padding
        self._params: dict[int, torch.Tensor] = {}  # round -> (n, 5) int64, drawn on first use

    @classmethod
    def for_data(cls, data: Any, rounds: int, seed: int) -> "ViewPlan":
        """The plan for `data`'s training split (an `ImageData`)."""
        _, h, w, _ = data.x_train.shape
        return cls(rounds, seed, len(data.x_train), h, w, bool(data.hflip), data.view)

    def describe(self, r: int) -> dict:
        """What round r's views depend on (for cache keys); `rounds` itself is not part of it."""
        v = self.view
        geometry = None if v is None else {"size": v.size, "scale": list(v.scale), "ratio": list(v.ratio)}
        return {"plan": PLAN_VERSION, "chunk": CHUNK, "seed": self.seed, "round": int(r), "n": self.n,
                "hw": [self.height, self.width], "hflip": self.hflip, "padding": self.padding, "view": geometry}

    def _generator(self, r: int) -> torch.Generator:
        state = np.random.SeedSequence([self.seed, int(r), 0x71E35]).generate_state(2, np.uint32)
        return torch.Generator().manual_seed((int(state[0]) << 31 | int(state[1])) & (2**63 - 1))

    def params(self, r: int) -> torch.Tensor:
        """(n, 5) int64 (top, left, h, w, flip) of round r for every image, in index order."""
        if r not in self._params:
            g, chunks = self._generator(r), []
            for s in range(0, self.n, CHUNK):
                k = min(CHUNK, self.n - s)
                if self.view is None:
                    span = 2 * self.padding + 1
                    top, left = torch.randint(0, span, (k,), generator=g), torch.randint(0, span, (k,), generator=g)
                    box = torch.stack([top, left, torch.full((k,), self.height), torch.full((k,), self.width)], 1)
                else:
                    box = sample_crop_boxes(k, self.height, self.width, self.view.scale, self.view.ratio, g)
                flip = (torch.rand(k, generator=g) < 0.5) if self.hflip else torch.zeros(k, dtype=torch.bool)
                chunks.append(torch.cat([box.long(), flip.long()[:, None]], 1))
            self._params[r] = torch.cat(chunks) if chunks else torch.zeros(0, 5, dtype=torch.int64)
        return self._params[r]

    def row_params(self, index: torch.Tensor, rounds: torch.Tensor) -> torch.Tensor:
        """(B, 5) parameters of images `index` (B,) in rounds `rounds` (B,), both int64 on the CPU."""
        index, rounds = index.cpu().long(), rounds.cpu().long()
        out = torch.empty(len(index), 5, dtype=torch.int64)
        for r in torch.unique(rounds).tolist():
            rows = rounds == r
            out[rows] = self.params(int(r))[index[rows]]
        return out

    def apply(self, x_uint8: torch.Tensor, index: torch.Tensor, rounds: torch.Tensor) -> torch.Tensor:
        """The views of a uint8 (B, C, H, W) batch of images `index` in `rounds`, as float images in [0, 1]
        (model-sized: the image size natively, view.size x view.size with a View). Not normalised."""
        p = self.row_params(index, rounds)
        flip = p[:, 4].bool()
        if self.view is not None:
            return resized_crops(x_uint8, p[:, :4], self.view.size, flip).div_(255.0)
        x = crop_padded(to_float(x_uint8), self.padding, p[:, 0], p[:, 1])
        return torch.where(flip.to(x.device)[:, None, None, None], x.flip(3), x)

    def round_of(self, cycle: torch.Tensor) -> torch.Tensor:
        """The round that a stream's pass `cycle` (int64 tensor) uses: cycle mod R."""
        return torch.remainder(cycle, self.rounds)
