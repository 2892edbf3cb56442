"""Training: the `TrainingModel`, the methods, the fit loop, checkpoints and distributed launch.

Modules, lowest first (each imports only modules listed before it):

- `model`: `TrainingModel` and `build_training_model` (the modules of each method, for training
  and for checkpoint rebuilds); `checkpoint`: save, load, `build_payload`, `rebuild_training_model`;
- `collective`: what ranks do together (rank, device, share/broadcast from rank 0, all-reduce);
- `precision`: the autocast dtype of `--precision`; `zeroshot`: `zeroshot:ENCODER.onnx,TEXT.npz` teachers;
- `teachers`: the one `--teacher` loader (checkpoint, TorchScript, ONNX, logits file, zero-shot) and its cache;
- `method`: the `Method` interface with its defaults, and CE; `kd`, `selfkd` (PS-KD, LSSKD), `dho`,
  `dhkd`: the other methods; `methods`: the `METHODS` dict literal;
- `evaluate`, `progress`: per-head evaluation, console output; `loop`: `train` (setup, epoch, finish);
- `distributed`: the torchrun worker entry and the elastic launcher (imports `loop`, never the reverse).
"""
