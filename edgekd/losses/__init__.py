"""Loss functions: pure functions, each citing its paper.

- `kd`: Hinton KD (T^2-scaled KL, batchmean) and soft-target cross-entropy.
- `pskd`: PS-KD progressive targets.
- `lsskd`: rotation / joint-label helpers and the LSSKD loss terms.
- `dho`: DHO dual-head losses.
"""
