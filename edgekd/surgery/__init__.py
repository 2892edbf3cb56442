"""Surgery: turn a `TrainingModel` into the deploy module, and prove it (docs/architecture.md, "Surgery math").

- `strip_aux_heads`: drop the auxiliary classifiers; the student's path is untouched, so the
  deploy output is bitwise equal to the training model's.
- `fold_dual_head`: fold DHO's two heads with `exact` (one GEMM of 2C rows + softmax mix,
  output `probs`), `logit` (one Linear, an approximation gated on agreement), `ce` or `kd`.
- `make_deploy_module`: both steps, each verified on real inputs with `torch.testing.assert_close`,
  plus a report of what was removed (parameters, MACs, modules).
"""

from edgekd.surgery.deploy import SurgeryReport, make_deploy_module
from edgekd.surgery.fold import FOLD_MODES, DualHeadStudent, fold_dual_head
from edgekd.surgery.strip import strip_aux_heads
from edgekd.surgery.verify import verify_fold, verify_logit_fold, verify_strip

__all__ = ["FOLD_MODES", "DualHeadStudent", "SurgeryReport", "fold_dual_head", "make_deploy_module",
           "strip_aux_heads", "verify_fold", "verify_logit_fold", "verify_strip"]
