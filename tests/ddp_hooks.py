"""Test-only hooks for distributed runs, installed in worker processes by a `sitecustomize.py`.

`tests/test_distributed.py` puts a `sitecustomize.py` that calls `install()` on the workers'
PYTHONPATH, so nothing test-specific lives in edgekd itself:

- `tiny_gn`: `tiny` with every BatchNorm replaced by a GroupNorm. BatchNorm is the one place
  where DDP legitimately computes something else than one process with the same global batch
  (each process normalises its own shard); GroupNorm normalises each image on its own, so with
  it the two runs do the same arithmetic and agree to float rounding.
- `EDGEKD_TEST_FAIL_RANK=R`, `EDGEKD_TEST_FAIL_EPOCH=E` (1-based): rank R raises a one-line
  `DataError` at the first step of epoch E, as a corrupt input seen by one rank only would;
  with `EDGEKD_TEST_FAIL_MODE=hang` it sleeps there instead (a stuck rank), after writing its pid
  to `EDGEKD_TEST_FAIL_MARKER=FILE` when set (a test then kills it, as a node that dies).
- `EDGEKD_TEST_WRITE_LOG=FILE`: every `os.replace` (the last step of each atomic write) appends
  `RANK PATH` to FILE, so a test can tell which rank wrote which file.
"""

from __future__ import annotations

import os
import time

from torch import nn


def tiny_gn(num_classes: int = 10, in_channels: int = 3):
    """`tiny` with GroupNorm (4 groups) in each BatchNorm's place: normalisation per image."""
    from edgekd.models.tiny import tiny

    model = tiny(num_classes=num_classes, in_channels=in_channels)
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, nn.BatchNorm2d):
                setattr(module, name, nn.GroupNorm(4, child.num_features))
    return model


def register_models() -> None:
    from edgekd.models import ZOO

    ZOO["tiny_gn"] = tiny_gn


def install() -> None:
    """Called in every worker: register `tiny_gn`, arm the failure injection when asked."""
    register_models()
    if os.environ.get("EDGEKD_TEST_WRITE_LOG"):
        _log_writes(os.environ["EDGEKD_TEST_WRITE_LOG"], os.environ.get("RANK", "?"))
    fail_rank = os.environ.get("EDGEKD_TEST_FAIL_RANK")
    if fail_rank is None or os.environ.get("RANK") != fail_rank:
        return
    fail_epoch = int(os.environ.get("EDGEKD_TEST_FAIL_EPOCH", "1")) - 1
    hang = os.environ.get("EDGEKD_TEST_FAIL_MODE") == "hang"
    from edgekd.errors import DataError
    from edgekd.train.method import CEMethod

    real_loss = CEMethod.loss

    def loss(self, model, batch, epoch):
        if epoch == fail_epoch and hang:
            if os.environ.get("EDGEKD_TEST_FAIL_MARKER"):
                with open(os.environ["EDGEKD_TEST_FAIL_MARKER"] + ".tmp", "w") as f:
                    f.write(str(os.getpid()))
                os.rename(os.environ["EDGEKD_TEST_FAIL_MARKER"] + ".tmp", os.environ["EDGEKD_TEST_FAIL_MARKER"])
            time.sleep(3600)
        if epoch == fail_epoch:
            raise DataError(f"injected: a corrupt image seen by rank {fail_rank} only")
        return real_loss(self, model, batch, epoch)

    CEMethod.loss = loss


def _log_writes(log_file: str, rank: str) -> None:
    real_replace = os.replace

    def replace(src, dst, *args, **kwargs):
        with open(log_file, "a") as f:  # one short line per write: appends do not interleave
            f.write(f"{rank} {os.fspath(dst)}\n")
        return real_replace(src, dst, *args, **kwargs)

    os.replace = replace
