"""Typed run configuration: YAML files and `key=value` overrides, loaded into dataclasses.

Every key is checked: an unknown key or a value of the wrong type is a ConfigError that
lists the valid keys, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from launchers.registry import LAUNCHER_NAMES
from launchers.typed_options import SectionError, coerce, typed_section
from lfads_lightning.errors import ConfigError

RECON_DISTRIBUTIONS = ("poisson", "gaussian", "gamma", "zig", "mse")


@dataclass
class DataConfig:
    """Where the trials come from and how they are batched."""

    # One HDF5 file per recording session (see docs/data-format.md).
    paths: list[str] = field(default_factory=lambda: ["lorenz.h5"])
    # If set and a file in `paths` does not exist, generate it with this synthetic generator.
    synth: str | None = "lorenz"
    synth_seed: int = 0
    batch_size: int = 100
    # Sample validation: fraction of encoder entries hidden from training and scored on validation.
    sv_rate: float = 0.0
    sv_seed: int = 0


@dataclass
class ModelConfig:
    """Architecture and priors (names follow the LFADS papers)."""

    ic_enc_dim: int = 64
    ci_enc_dim: int = 64
    ci_lag: int = 1
    con_dim: int = 64
    co_dim: int = 4
    ic_dim: int = 64
    gen_dim: int = 100
    fac_dim: int = 40
    # 0: the encoders see the neurons directly (one session only); >0: per-session linear readin.
    readin_dim: int = 0
    readin_pca_init: bool = False
    readin_freeze: bool = False
    variational: bool = True
    recon: str = "poisson"
    cell_clip: float = 5.0
    ic_post_var_min: float = 1e-4
    ic_prior_var: float = 0.1
    co_prior_tau: float = 10.0
    co_prior_nvar: float = 0.1
    dropout_rate: float = 0.3
    cd_rate: float = 0.3
    # Temporal shift (training only): each trial moved by round(N(0, std)) bins, at most max.
    temporal_shift_std: float = 0.0
    temporal_shift_max: int = 6
    # Spike jitter (training only, count data): each spike moved by round(N(0, std)) bins.
    spike_jitter_std: float = 0.0
    # Zero-inflated gamma: smallest non-zero value an event can take (data units).
    zig_min_value: float = 0.1
    # Fused sequence kernels (lfads_lightning/model/fused.py) with hand-written backward; false runs
    # the reference per-bin autograd implementation of the same equations.
    fast_path: bool = True


@dataclass
class LossConfig:
    """Weights of the loss terms and their linear ramps (in epochs)."""

    loss_scale: float = 1e4
    kl_ic_scale: float = 1e-4
    kl_co_scale: float = 1e-4
    l2_gen_scale: float = 1e-4
    l2_con_scale: float = 1e-4
    l2_ic_enc_scale: float = 0.0
    l2_ci_enc_scale: float = 0.0
    kl_start_epoch: int = 0
    kl_increase_epoch: int = 80
    l2_start_epoch: int = 0
    l2_increase_epoch: int = 80


@dataclass
class TrainConfig:
    """Optimiser, stopping and hardware."""

    max_epochs: int = 400
    lr: float = 4e-3
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.0
    grad_clip: float = 200.0
    lr_scheduler: bool = False
    lr_factor: float = 0.95
    lr_patience: int = 6
    lr_min: float = 1e-5
    early_stopping: bool = True
    patience: int = 25
    # Epochs before early stopping may act; None waits for the KL and L2 ramps to finish.
    burn_in: int | None = None
    seed: int = 0
    # Torch intra-op threads; 0 lets the launcher decide (locally: 1, see docs/usage.md).
    threads: int = 0
    accelerator: str = "auto"
    progress_bar: bool = True


@dataclass
class OutputConfig:
    """Posterior sampling after training, and figures."""

    dir: str = "lfads_output"
    n_samples: int = 50
    figures: bool = True


@dataclass
class TrackingConfig:
    """MLflow: the URI defaults to $MLFLOW_TRACKING_URI, else sqlite:///./mlflow.db."""

    uri: str | None = None
    experiment: str = "lfads"
    run_name: str | None = None


@dataclass
class LfadsConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)


# --------------------------------------------------------------------------- loading


def from_dict(cls: type, data: dict[str, Any] | None, prefix: str = "") -> Any:
    """Build dataclass `cls` from a nested dict, rejecting unknown keys and wrong types."""
    try:
        return typed_section(cls, data, prefix)
    except SectionError as err:
        raise ConfigError(str(err)) from None


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dict -> {'model.gen_dim': 100, ...} (MLflow params are flat)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not key=value (e.g. model.gen_dim=64)")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override {text!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return key_path(key), value


def key_path(key: str) -> list[str]:
    """The one parser of dotted config keys: 'train.lr' -> ['train', 'lr']."""
    parts = key.strip().split(".")
    if not all(parts):
        raise ConfigError(f"config key {key!r} has an empty part (e.g. model.gen_dim)")
    return parts


def set_fields(cfg: LfadsConfig, values: dict[str, Any]) -> LfadsConfig:
    """A copy of `cfg` with each 'section.key' field set, typed (and checked) as the field."""
    sections: dict[str, Any] = {}
    for key, value in values.items():
        section, *rest = key_path(key)
        target = getattr(cfg, section, None)
        if len(rest) != 1 or not dataclasses.is_dataclass(target) or not hasattr(target, rest[0]):
            raise ConfigError(f"{key!r} is not a 'section.key' field of the config")
        target = sections.setdefault(section, dataclasses.replace(target))
        try:
            value = coerce(value, typing.get_type_hints(type(target))[rest[0]], key)
        except SectionError as err:
            raise ConfigError(str(err)) from None
        setattr(target, rest[0], value)
    return dataclasses.replace(cfg, **sections)


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Merge `a.b=value` strings into a nested dict (values parsed as YAML scalars)."""
    for text in overrides:
        path, value = parse_override(text)
        node = raw
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {text!r}: '{part}' is not a section")
            node = child
        node[path[-1]] = value
    return raw


class _UniqueKeyLoader(yaml.SafeLoader):
    """safe_load semantics, but a key given twice in one mapping is an error (PyYAML keeps the
    last one silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if key in seen:
                raise ConfigError(
                    f"duplicate key '{key}' at lines {seen[key]} and {line} of "
                    f"{self.name}; keep only one of them"
                )
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def safe_load_unique(text: str, name: str = "<config>") -> Any:
    """yaml.safe_load that refuses duplicate keys (the error names the key and both lines)."""
    loader = _UniqueKeyLoader(text)
    loader.name = name
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if path.is_dir():
        raise ConfigError(
            f"config path {path} is a directory; pass the path of a YAML file such as configs/lorenz.yaml"
        )
    if not path.is_file():
        raise ConfigError(
            f"config file not found: {path}; pass the path of a YAML file such as configs/lorenz.yaml"
        )
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(
            f"config file {path} is not a text file (byte {err.start} is not UTF-8); pass a YAML "
            f"config such as configs/lorenz.yaml"
        ) from None
    except OSError as err:
        raise ConfigError(
            f"config file {path} cannot be read ({err.strerror or err}); check its permissions"
        ) from None
    if "\x00" in text:
        raise ConfigError(
            f"config file {path} is not a text file (it holds NUL bytes); pass a YAML config "
            f"such as configs/lorenz.yaml"
        )
    try:
        raw = safe_load_unique(text, str(path))
    except yaml.constructor.ConstructorError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(
            f"config file {path}{where}: {err.problem}; only plain YAML (mappings, lists, "
            f"numbers, strings) is allowed"
        ) from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"config file {path} is not valid YAML{where}; fix its syntax") from None
    if raw is None:
        raise ConfigError(
            f"config file {path} is empty; write at least one section (see configs/lorenz.yaml), "
            f"or give overrides without a config file"
        )
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {path} must hold a mapping of sections (data, model, ...)")
    return raw


def validate(cfg: LfadsConfig) -> LfadsConfig:
    """Value checks that types alone cannot express."""
    m, t, d = cfg.model, cfg.train, cfg.data
    if m.recon not in RECON_DISTRIBUTIONS:
        raise ConfigError(
            f"model.recon: {m.recon!r} is not one of {', '.join(RECON_DISTRIBUTIONS)}"
        )
    for name in ("ic_enc_dim", "ic_dim", "gen_dim", "fac_dim"):
        if getattr(m, name) <= 0:
            raise ConfigError(f"model.{name} must be > 0, got {getattr(m, name)}")
    for name in ("ci_enc_dim", "con_dim", "co_dim", "readin_dim", "ci_lag"):
        if getattr(m, name) < 0:
            raise ConfigError(f"model.{name} must be >= 0, got {getattr(m, name)}")
    for name in ("dropout_rate", "cd_rate"):
        if not 0.0 <= getattr(m, name) < 1.0:
            raise ConfigError(f"model.{name} must be in [0, 1), got {getattr(m, name)}")
    if not 0.0 <= d.sv_rate < 1.0:
        raise ConfigError(f"data.sv_rate must be in [0, 1), got {d.sv_rate}")
    if d.batch_size <= 0:
        raise ConfigError(f"data.batch_size must be > 0, got {d.batch_size}")
    if not d.paths:
        raise ConfigError("data.paths is empty; list at least one HDF5 file")
    synths = ("lorenz", "lorenz-sparse", "chaotic-rnn")
    if d.synth is not None and d.synth not in synths:
        raise ConfigError(f"data.synth: {d.synth!r} is not one of {', '.join(synths)} (or null)")
    if min(m.temporal_shift_std, m.temporal_shift_max, m.spike_jitter_std) < 0:
        raise ConfigError("model.temporal_shift_std/_max and spike_jitter_std must be >= 0")
    if m.temporal_shift_std > 0 and d.sv_rate > 0:
        raise ConfigError(
            "model.temporal_shift_std > 0 would move sample-validation entries into view; "
            "set data.sv_rate=0 or model.temporal_shift_std=0"
        )
    if m.spike_jitter_std > 0 and (d.sv_rate > 0 or m.recon != "poisson"):
        raise ConfigError(
            "model.spike_jitter_std > 0 moves spike counts: it needs model.recon=poisson and "
            "data.sv_rate=0; set those or model.spike_jitter_std=0"
        )
    if m.cell_clip <= 0 or m.ic_prior_var <= 0 or m.co_prior_tau <= 0 or m.co_prior_nvar <= 0:
        raise ConfigError(
            "model.cell_clip, ic_prior_var, co_prior_tau and co_prior_nvar must be > 0"
        )
    if t.lr <= 0 or t.max_epochs <= 0:
        raise ConfigError("train.lr and train.max_epochs must be > 0")
    if cfg.output.n_samples <= 0:
        raise ConfigError(f"output.n_samples must be > 0, got {cfg.output.n_samples}")
    return cfg


# Sections a config file may carry for the launchers (one per launcher name, from the launcher
# registry); each backend validates its own section.
LAUNCHER_SECTIONS = LAUNCHER_NAMES


def pop_launcher_sections(raw: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Remove the launcher sections from a raw config and return them ({name: options})."""
    sections: dict[str, dict[str, Any]] = {}
    for name in LAUNCHER_SECTIONS:
        value = raw.pop(name, None)
        if value is None:
            continue
        if not isinstance(value, dict):
            raise ConfigError(
                f"config section '{name}' must be a mapping of launcher options, got {value!r}"
            )
        sections[name] = value
    return sections


def load_launcher_sections(
    path: str | Path | None = None, overrides: list[str] | None = None
) -> dict[str, dict[str, Any]]:
    """The launcher sections of a config file after overrides (e.g. `slurm.partition=gpu`)."""
    raw = read_yaml(path) if path is not None else {}
    return pop_launcher_sections(apply_overrides(raw, overrides or []))


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> LfadsConfig:
    """Defaults < YAML file < overrides; validated."""
    raw = read_yaml(path) if path is not None else {}
    raw = apply_overrides(raw, overrides or [])
    raw.pop("pbt", None)  # a PBT config file also works for a single fit (`lfads pbt` reads it)
    pop_launcher_sections(raw)  # read by the launcher (load_launcher_sections)
    return validate(from_dict(LfadsConfig, raw))


def config_from_dict(raw: dict[str, Any]) -> LfadsConfig:
    return validate(from_dict(LfadsConfig, raw))


def dump_yaml(cfg: LfadsConfig) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def job_paths(cfg: LfadsConfig) -> dict[str, str]:
    """Host paths a worker job reads ("ro": data files) or writes ("rw": outputs), for launchers
    whose jobs have their own filesystem (a container mounts them)."""
    return {**{p: "ro" for p in cfg.data.paths}, cfg.output.dir: "rw"}
