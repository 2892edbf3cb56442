"""Run configuration: frozen dataclasses, YAML via safe_load, unknown keys are an error.

Precedence (docs/architecture.md, "Configuration layers"): defaults < the stored config of the run
named by `--resume RUN` (`RUN/config.yaml`) < `--config FILE` < command-line options (including
`--set key=value`). Config keys are the CLI option names with underscores; method sections are
nested (`kd.temperature`, `lsskd.aux_ce_weight`, ...).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any, Optional, Tuple, get_type_hints

from edgekd.errors import ConfigError, first_line
from edgekd.names import CONFIG_FILE

METHODS = ("ce", "kd", "pskd", "lsskd", "dho", "dhkd")


@dataclass(frozen=True)
class KDConfig:
    """KD from a frozen teacher (docs/architecture.md, "Methods").

    variant `hinton` (Hinton et al. 2015): loss = ce_weight*CE + kd_weight*T^2*KL (mdistiller's 0.1 / 0.9 / T 4).
    variant `dkd` (Zhao et al. 2022): loss = dkd.ce_weight*CE + warmup*(dkd.alpha*TCKD + dkd.beta*NCKD), the
    `dkd` section's keys; `kd.ce_weight`, `kd.kd_weight` and `kd.temperature` are not used.
    `logit_standardize` (Sun et al. 2024) z-scores student and teacher logits before /T, in either variant;
    the authors' CIFAR-100 KD recipe with it is T 2, ce_weight 0.1, kd_weight 9.
    """

    temperature: float = 4.0
    ce_weight: float = 0.1
    kd_weight: float = 0.9
    variant: str = "hinton"  # hinton | dkd
    logit_standardize: bool = False


@dataclass(frozen=True)
class DKDConfig:
    """Decoupled KD (Zhao et al. 2022; official megvii-research/mdistiller defaults), used when kd.variant=dkd.

    `warmup` is the fraction of the run over which the DKD term ramps up linearly, per epoch
    (`min((epoch+1) / (warmup*epochs), 1)`); the default 20/240 is the official 20 of 240 epochs.
    """

    ce_weight: float = 1.0
    alpha: float = 1.0  # TCKD weight
    beta: float = 8.0  # NCKD weight
    temperature: float = 4.0
    warmup: float = 20 / 240


@dataclass(frozen=True)
class DHKDConfig:
    """DHKD dual-head KD (Yang et al. 2024, arXiv 2411.08937; official penghui-yang/DHKD).

    loss = gamma * CE(main head, y) + alpha * L_T(aux head, teacher logits), L = binary_kl_norm (the
    paper's) or binary_kl. `alpha` has no official default: the authors' commands use 1 on CIFAR-100
    (with head mlp and grad_align) and 0.1 on ImageNet (head linear); edgekd's default is 1.
    `grad_align` projects the KD gradient off the CE gradient when they conflict (the official
    `--ga` optimizer; two backward passes per step).
    """

    head: str = "linear"  # linear | mlp (Linear(D,200)-Dropout(0.1)-BN-ReLU-Linear(200,C))
    loss: str = "binary_kl_norm"  # binary_kl_norm | binary_kl
    gamma: float = 1.0
    alpha: float = 1.0
    temperature: float = 2.0
    grad_align: bool = False


@dataclass(frozen=True)
class PSKDConfig:
    """PS-KD (Kim et al. 2021): target = (1-a_t)*onehot + a_t*p_prev, a_t = alpha_T*epoch/E."""

    alpha_T: float = 0.8


@dataclass(frozen=True)
class LSSKDConfig:
    """LSSKD self-distillation with auxiliary classifiers (docs/architecture.md, "Methods"; edgekd.losses.lsskd).

    loss = main_ce_weight * CE(main, upright) + aux_ce_weight * sum_i CE(aux_i, joint 4*c+k)
         + layer_kd_weight * sum_pairs T^2 KL(deeper aux, detached || shallower aux)
         + ensemble_kd_weight * T^2 KL(mean rotation-marginalised aux logits, detached || main).
    The paper's weights are not public. The defaults were set by the ablation of benchmarks/fidelity.py
    (fidelity_cpu.md): with both KD weights at 0 the student beat HSAKD-style unit weights on the validation
    split in every seed (+2.23; chosen there), then on the test split by +1.47 points (8 epochs, 95% interval
    over 3 seeds [+0.32, +2.61]), by +1.95 at 24 epochs ([+1.26, +2.64]) and by +0.68 (30 epochs, 1,000
    images, better in every seed), so layer_kd_weight and ensemble_kd_weight default to 0: the joint
    (class, rotation) auxiliary classifiers train the shared backbone, the main head learns from its own
    CE. Set both to 1 for the paper-shaped self-distillation loss (T=3, adjacent pairing, hsakd branches).
    """

    stages: Tuple[int, ...] = ()  # stage indices with an aux classifier; () = every stage but the last
    branch: str = "hsakd"  # hsakd (fresh copies of the later stages) | light (one conv block)
    temperature: float = 3.0
    main_ce_weight: float = 1.0
    aux_ce_weight: float = 1.0
    layer_kd_weight: float = 0.0  # 1.0 before the issue-18 ablation (see the docstring)
    ensemble_kd_weight: float = 0.0
    pairing: str = "adjacent"  # adjacent (stage i+1 teaches i) | deepest (last aux teaches all)
    # HSAKD's deepest branch: also an aux classifier after the LAST stage, made of a fresh stride-1 copy of
    # that stage's blocks + neck + pooling + 4C linear (with the default stages: exactly HSAKD's layout)
    deepest_branch: bool = False
    main_head: str = "upright"  # upright (edgekd: CE + ensemble KD, upright rows) | hsakd (CE upright, KD all 4N rows)
    progressive: bool = False  # PS-KD-style progressive targets on the main head
    alpha_T: float = 0.8  # final mixing weight of the progressive targets (used when progressive)


@dataclass(frozen=True)
class DHOConfig:
    """DHO dual-head distillation (docs/architecture.md, "Methods")."""

    temperature: float = 2.0
    ce_weight: float = 0.5
    kd_weight: float = 0.5
    labeled_fraction: Optional[float] = None
    labeled_per_class: Optional[int] = None
    unlabeled_ratio: int = 1  # unlabeled images per labeled image in a batch
    normalized_kd_head: bool = False
    logit_scale: float = 16.0
    # where the teacher's targets come from (edgekd.train.dho): none = a model teacher runs on every augmented
    # batch (the official code; a logits file gives its rows) | clean = its logits on un-augmented images, cached
    # (another target) | views = its logits on `view_rounds` fixed augmented views per image (seed `view_seed`,
    # None: the run's seed), cached: the online target, reusable by every run with the same views
    teacher_cache: str = "none"
    view_rounds: int = 4
    view_seed: Optional[int] = None
    online_teacher: Optional[bool] = None  # legacy (before teacher_cache): false = teacher_cache clean
    kd_reduction: str = "split"  # split: KL(labeled) + KL(unlabeled), two batch means (official) | rows: one mean
    alpha: Optional[float] = None  # override the searched mix weight
    beta: Optional[float] = None  # override the searched temperature
    single_head: bool = False  # baseline: CE + KD both on the student's head (no KD head, no mix)


@dataclass(frozen=True)
class TrainConfig:
    data: str = "synthetic"
    model: str = "resnet20"
    method: str = "ce"
    teacher: Optional[str] = None
    epochs: int = 10
    batch_size: int = 128
    eval_batch_size: int = 512
    optimizer: str = "sgd"  # sgd | adamw
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    schedule: str = "cosine"  # cosine | step | constant
    warmup_epochs: float = 0.0
    milestones: Tuple[float, ...] = (0.5, 0.75)  # fractions of the run, for the step schedule
    gamma: float = 0.1
    label_smoothing: float = 0.0
    augment: bool = True
    # fixed-size regime (edgekd.data.images.View): images kept as (size / crop_ratio)-px squares, random-resized
    # crops of `crop_scale` area and `crop_aspect` w/h for training, the centred crop for evaluation and export
    image_size: Optional[int] = None
    crop_ratio: float = 0.875
    crop_scale: Tuple[float, ...] = (0.08, 1.0)
    crop_aspect: Tuple[float, ...] = (3 / 4, 4 / 3)
    val_fraction: float = 0.1
    split_seed: int = 0
    # image folders: refuse the first unreadable image; default: skip them, list them in the run directory
    # (skipped_images.txt) and refuse above 1% of a split (edgekd.data.readers.ImagePolicy)
    strict_images: bool = False
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    # auto: bf16 autocast on CPUs with AMX/AVX-512-BF16 and bf16 GPUs, else fp32 | fp32 | bf16 | fp16 (CUDA,
    # with a gradient scaler); edgekd.train.precision. config.yaml stores the resolved value, never auto.
    precision: str = "auto"
    amp: Optional[str] = None  # legacy (runs stored before `precision`): auto | on | off, read only with auto
    channels_last: str = "auto"  # auto (CPU and CUDA) | on | off
    threads: Optional[int] = None
    out: str = "runs/train"
    resume: Optional[str] = None
    max_steps_per_epoch: Optional[int] = None
    progress: bool = True
    dist_timeout: float = 1800.0  # seconds a torch.distributed collective may wait before the run fails
    kd: KDConfig = field(default_factory=KDConfig)
    pskd: PSKDConfig = field(default_factory=PSKDConfig)
    lsskd: LSSKDConfig = field(default_factory=LSSKDConfig)
    dho: DHOConfig = field(default_factory=DHOConfig)
    dkd: DKDConfig = field(default_factory=DKDConfig)
    dhkd: DHKDConfig = field(default_factory=DHKDConfig)

    def validate(self) -> "TrainConfig":
        if self.method not in METHODS:
            raise ConfigError(f"unknown method {self.method!r}; choose one of {', '.join(METHODS)}")
        if self.optimizer not in ("sgd", "adamw"):
            raise ConfigError(f"unknown optimizer {self.optimizer!r}; choose sgd or adamw")
        if self.schedule not in ("cosine", "step", "constant"):
            raise ConfigError(f"unknown schedule {self.schedule!r}; choose cosine, step or constant")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"unknown device {self.device!r}; choose auto, cpu or cuda")
        if self.precision not in ("auto", "fp32", "bf16", "fp16"):
            raise ConfigError(f"unknown precision {self.precision!r}; choose auto, fp32, bf16 or fp16")
        if self.amp not in (None, "auto", "on", "off"):
            raise ConfigError(f"unknown amp {self.amp!r}; use precision (auto, fp32, bf16 or fp16)")
        if self.epochs < 1 or self.batch_size < 1:
            raise ConfigError("epochs and batch_size must be >= 1")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ConfigError("val_fraction must be in [0, 1)")
        self._check_ranges()
        if self.image_size is not None:
            from edgekd.data.images import View

            View.from_config(self)  # validates image_size, crop_ratio, crop_scale, crop_aspect
        return self


    def _check_ranges(self) -> None:
        """Out-of-range numbers are refused here with the key's name, not deep in torch (issue 15)."""
        checks = (
            ("lr", self.lr > 0, "> 0"), ("weight_decay", self.weight_decay >= 0, ">= 0"),
            ("warmup_epochs", self.warmup_epochs >= 0, ">= 0"), ("momentum", 0 <= self.momentum < 1, "in [0, 1)"),
            ("gamma", self.gamma > 0, "> 0"), ("label_smoothing", 0 <= self.label_smoothing < 1, "in [0, 1)"),
            ("eval_batch_size", self.eval_batch_size >= 1, ">= 1"),
            ("threads", self.threads is None or self.threads >= 1, ">= 1"),
            ("max_steps_per_epoch", self.max_steps_per_epoch is None or self.max_steps_per_epoch >= 1, ">= 1"),
            ("dist_timeout", self.dist_timeout > 0, "> 0 seconds"),
        )
        for key, ok, rule in checks:  # NaN fails every comparison: refused too
            if not ok:
                raise ConfigError(f"{key} must be {rule}, got {getattr(self, key)!r} (config key {key!r})")


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """Convert a YAML/CLI value to the dataclass field type (small, explicit set of types)."""
    origin = getattr(hint, "__origin__", None)
    args = getattr(hint, "__args__", ())
    if origin is not None and type(None) in args:  # Optional[X]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            return None
        inner = [a for a in args if a is not type(None)][0]
        return _coerce(value, inner, key)
    if origin in (tuple, Tuple):
        if isinstance(value, str):
            value = [v for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key {key!r} expects a list, got {value!r}")
        return tuple(_coerce(v, args[0], key) for v in value)
    try:
        if hint is bool:
            if isinstance(value, str):
                if value.lower() in ("1", "true", "yes", "on"):
                    return True
                if value.lower() in ("0", "false", "no", "off"):
                    return False
                raise ValueError(value)
            return bool(value)
        if hint in (int, float, str):
            if hint is int and isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return hint(value)
    except (TypeError, ValueError):
        raise ConfigError(f"config key {key!r} expects {hint.__name__}, got {value!r}") from None
    return value


def _apply(cfg: Any, updates: dict, prefix: str = "") -> Any:
    hints = get_type_hints(type(cfg))
    names = {f.name for f in fields(cfg)}
    changes = {}
    for key, value in updates.items():
        full = f"{prefix}{key}"
        if key not in names:
            raise ConfigError(f"unknown config key {full!r}")
        current = getattr(cfg, key)
        if is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"config key {full!r} is a section; give a mapping")
            changes[key] = _apply(current, value, prefix=f"{full}.")
        else:
            changes[key] = _coerce(value, hints[key], full)
    return replace(cfg, **changes)


def dotted_to_nested(items: dict) -> dict:
    """{'kd.temperature': 3} -> {'kd': {'temperature': 3}}."""
    nested: dict = {}
    for key, value in items.items():
        parts = key.split(".")
        node = nested
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return nested


def merge_nested(a: dict, b: dict) -> dict:
    """`b` over `a`, section by section: {'kd': {'temperature': 3}} keeps the other `kd` keys of `a`."""
    out = dict(a)
    for k, v in b.items():
        out[k] = merge_nested(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def parse_set_options(pairs: list[str]) -> dict:
    """Parse `--set key=value` options into a nested dict (values parsed as YAML scalars)."""
    import yaml

    flat = {}
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"--set expects key=value, got {pair!r}")
        key, raw = pair.split("=", 1)
        try:
            flat[key.strip()] = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError as exc:  # malformed, or a tag such as !!python/object: safe_load refuses it
            raise ConfigError(f"--set {key.strip()}: not a plain YAML value ({first_line(exc)})") from None
    return dotted_to_nested(flat)


def load_yaml(path: str | Path) -> dict:
    import yaml

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {p} is not valid YAML: {first_line(exc)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {p} must hold a mapping at the top level")
    return data


def build_config(config_file: Optional[str] = None, overrides: Optional[dict] = None) -> TrainConfig:
    """Layer the run configuration: defaults < stored run config < YAML file < overrides.

    The stored layer is `RUN/config.yaml` of the run named by `resume` (in the overrides or the
    file), so `--resume RUN --epochs 10` trains that run to 10 epochs while every key not given
    keeps the run's value. A missing `RUN/config.yaml` adds no layer: the trainer then reports
    the missing checkpoint (and on a multi-node run only node 0 needs the directory). A resumed run
    always writes to its own directory (`out` = `resume`). None values in the overrides are ignored.
    """
    file_layer = load_yaml(config_file) if config_file else {}
    cli_layer = _drop_none(overrides or {})
    resume = cli_layer.get("resume", file_layer.get("resume"))
    cfg = TrainConfig()
    if resume:
        cfg = _apply(cfg, read_run_config(resume))
    cfg = _apply(_apply(cfg, file_layer), cli_layer)
    if resume:
        cfg = replace(cfg, out=str(resume), resume=str(resume))
    return cfg.validate()


def read_run_config(run: str | Path) -> dict:
    """The stored (resolved) config of a run directory as a dict; {} when it has none."""
    path = Path(run) / CONFIG_FILE
    return load_yaml(path) if path.is_file() else {}


def config_from_dict(data: dict) -> TrainConfig:
    return _apply(TrainConfig(), data).validate()


def _drop_none(d: dict) -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            v = _drop_none(v)
            if v:
                out[k] = v
        elif v is not None:
            out[k] = v
    return out


def config_to_dict(cfg: Any) -> dict:
    """Plain dict of primitives (tuples become lists) for YAML and checkpoints."""

    def conv(v: Any) -> Any:
        if is_dataclass(v):
            return {f.name: conv(getattr(v, f.name)) for f in fields(v)}
        if isinstance(v, tuple):
            return [conv(x) for x in v]
        return v

    return conv(cfg)


def save_config(cfg: TrainConfig, path: str | Path) -> None:
    import yaml

    from edgekd.io import write_text_atomic

    write_text_atomic(path, yaml.safe_dump(config_to_dict(cfg), sort_keys=False))


__all__ = [
    "TrainConfig", "KDConfig", "PSKDConfig", "LSSKDConfig", "DHOConfig", "DKDConfig", "DHKDConfig", "METHODS",
    "build_config", "config_from_dict", "config_to_dict", "save_config", "parse_set_options", "read_run_config",
    "merge_nested", "dotted_to_nested",
]
