"""Run configuration: frozen dataclasses, YAML via safe_load, unknown keys are an error.

Precedence: defaults < `--config FILE` < command-line options (including `--set key=value`).
Config keys are the CLI option names with underscores; method sections are nested
(`kd.temperature`, `lsskd.aux_ce_weight`, ...).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any, Optional, Tuple, get_type_hints

from edgekd.errors import ConfigError

METHODS = ("ce", "kd", "pskd", "lsskd", "dho")


@dataclass(frozen=True)
class KDConfig:
    """Hinton KD (Hinton et al. 2015): loss = ce_weight*CE + kd_weight*T^2*KL."""

    temperature: float = 4.0
    ce_weight: float = 0.1
    kd_weight: float = 0.9


@dataclass(frozen=True)
class PSKDConfig:
    """PS-KD (Kim et al. 2021): target = (1-a_t)*onehot + a_t*p_prev, a_t = alpha_T*epoch/E."""

    alpha_T: float = 0.8


@dataclass(frozen=True)
class LSSKDConfig:
    """LSSKD self-distillation with auxiliary classifiers (DESIGN.md section 3; edgekd.losses.lsskd).

    loss = main_ce_weight * CE(main, upright) + aux_ce_weight * sum_i CE(aux_i, joint 4*c+k)
         + layer_kd_weight * sum_pairs T^2 KL(deeper aux, detached || shallower aux)
         + ensemble_kd_weight * T^2 KL(mean rotation-marginalised aux logits, detached || main).
    The paper's weights are not public: the defaults (all 1, T=3, adjacent pairing, hsakd
    branches) follow HSAKD's unit weights and are measured in benchmarks/selfkd.py.
    """

    stages: Tuple[int, ...] = ()  # stage indices with an aux classifier; () = every stage but the last
    branch: str = "hsakd"  # hsakd (fresh copies of the later stages) | light (one conv block)
    temperature: float = 3.0
    main_ce_weight: float = 1.0
    aux_ce_weight: float = 1.0
    layer_kd_weight: float = 1.0
    ensemble_kd_weight: float = 1.0
    pairing: str = "adjacent"  # adjacent (stage i+1 teaches i) | deepest (last aux teaches all)
    progressive: bool = False  # PS-KD-style progressive targets on the main head
    alpha_T: float = 0.8  # final mixing weight of the progressive targets (used when progressive)


@dataclass(frozen=True)
class DHOConfig:
    """DHO dual-head distillation (DESIGN.md section 3)."""

    temperature: float = 2.0
    ce_weight: float = 0.5
    kd_weight: float = 0.5
    labeled_fraction: Optional[float] = None
    labeled_per_class: Optional[int] = None
    unlabeled_ratio: int = 1  # unlabeled images per labeled image in a batch
    normalized_kd_head: bool = False
    logit_scale: float = 16.0
    online_teacher: bool = False
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
    val_fraction: float = 0.1
    split_seed: int = 0
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    amp: str = "auto"  # auto (CUDA only) | on | off
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

    def validate(self) -> "TrainConfig":
        if self.method not in METHODS:
            raise ConfigError(f"unknown method {self.method!r}; choose one of {', '.join(METHODS)}")
        if self.optimizer not in ("sgd", "adamw"):
            raise ConfigError(f"unknown optimizer {self.optimizer!r}; choose sgd or adamw")
        if self.schedule not in ("cosine", "step", "constant"):
            raise ConfigError(f"unknown schedule {self.schedule!r}; choose cosine, step or constant")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"unknown device {self.device!r}; choose auto, cpu or cuda")
        if self.epochs < 1 or self.batch_size < 1:
            raise ConfigError("epochs and batch_size must be >= 1")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ConfigError("val_fraction must be in [0, 1)")
        return self


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


def parse_set_options(pairs: list[str]) -> dict:
    """Parse `--set key=value` options into a nested dict (values parsed as YAML scalars)."""
    import yaml

    flat = {}
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"--set expects key=value, got {pair!r}")
        key, raw = pair.split("=", 1)
        flat[key.strip()] = yaml.safe_load(raw) if raw.strip() else None
    return dotted_to_nested(flat)


def load_yaml(path: str | Path) -> dict:
    import yaml

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {p} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {p} must hold a mapping at the top level")
    return data


def build_config(config_file: Optional[str] = None, overrides: Optional[dict] = None) -> TrainConfig:
    """Defaults, then the YAML file, then command-line overrides (None values are ignored)."""
    cfg = TrainConfig()
    if config_file:
        cfg = _apply(cfg, load_yaml(config_file))
    if overrides:
        cfg = _apply(cfg, _drop_none(overrides))
    return cfg.validate()


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
    "TrainConfig", "KDConfig", "PSKDConfig", "LSSKDConfig", "DHOConfig", "METHODS",
    "build_config", "config_from_dict", "config_to_dict", "save_config", "parse_set_options",
]
