"""Training-only heads attached to a `Student` inside a `TrainingModel`.

- `edgekd.heads.aux`: auxiliary classifiers after backbone stages (LSSKD / HSAKD), joint
  4*C rotation labels; removed at inference.
- `edgekd.heads.dual`: the second (KD) head of DHO.
- `edgekd.heads.logit_head`: DHKD's auxiliary logit head (linear or MLP); removed at export.
"""
