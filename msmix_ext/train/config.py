"""The configuration of a training call (:class:`TrainConfig`) and the constants it refers to."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Tuple

import torch

from msmix_ext import augment as augmentations
from msmix_ext.models import ALL_BACKBONES, BACKBONES
from msmix_ext.train.metrics import DATASET_KINDS

__all__ = ["ALL_BACKBONES", "BACKBONES", "SENTIMENT_RANGE", "TrainConfig", "lower_is_better", "parse_fractions",
           "parse_seeds"]

SENTIMENT_RANGE = {"mosi": 3.0, "mosei": 3.0, "sims": 1.0}
"""R, the label bound, per dataset kind (also SIG's output bound)."""

_TUPLE_FIELDS = ("backbones", "augmentations", "seeds", "train_fractions")


@dataclass
class TrainConfig:
    """Everything a call of :func:`~msmix_ext.train.runner.run` depends on (stored in the JSON and checkpoints).

    ``synthetic`` overrides :class:`~msmix_ext.train.data.SyntheticConfig` fields (e.g.
    ``{"split_sizes": [60, 20, 20]}``) when ``data == "synthetic"``.  ``threads`` > 0 sets
    ``torch.set_num_threads`` for the call (restored afterwards); 0 keeps torch's setting.
    ``jobs``: worker processes that train runs side by side (:mod:`~msmix_ext.train.parallel`;
    0 = one per usable core's worth of ``threads``; the CLI's default); the records do not
    depend on it.  ``min_steps``: a run trains at least this many optimizer steps (more epochs
    than ``epochs`` for a small train fraction).
    ``backbone_options`` maps a backbone name to keyword arguments of its constructor (e.g.
    ``{"mult": {"reduced": false}}``, see :mod:`msmix_ext.models.mmsa`).
    ``train_fractions``: each run trains on a stratified subset of this fraction of the
    training split (:func:`~msmix_ext.train.inputs.train_subset`), the same subset for every
    augmentation at a given seed.
    ``main_metric`` selects the model on the validation split and is the figure's
    metric (lower is better for ``MAE``, higher for every other metric).
    """

    data: str = "synthetic"
    dataset_kind: str = "mosi"
    data_seed: int = 0
    synthetic: Dict[str, Any] = field(default_factory=dict)
    standardize: bool = True
    backbones: Tuple[str, ...] = BACKBONES
    backbone_options: Dict[str, Dict[str, Any]] = field(default_factory=dict)
    augmentations: Tuple[str, ...] = ("none", "mixup", "msmix")
    seeds: Tuple[int, ...] = (0, 1, 2)
    train_fractions: Tuple[float, ...] = (1.0,)
    epochs: int = 15
    min_steps: int = 0
    batch_size: int = 32
    eval_batch_size: int = 256
    lr: float = 1e-3
    device: str = "cpu"
    compile: bool = False
    threads: int = 1
    jobs: int = 1
    mix_weight: float = 0.7
    sal_weight: float = 0.5
    sal_scale: float = 1000.0
    threshold: float = 0.4
    alpha: float = 2.0
    pool: str = "local"
    sig_heads: int = 4
    main_metric: str = "MAE"
    out: Optional[str] = None
    save: bool = False
    plot: bool = True
    quiet: bool = False

    def validate(self) -> None:
        """Raise ``ValueError`` for unusable values (names are checked against the registries)."""
        if self.dataset_kind not in DATASET_KINDS:
            raise ValueError(f"dataset_kind must be one of {DATASET_KINDS}, got {self.dataset_kind!r}")
        if not self.backbones:
            raise ValueError("no backbone given")
        for b in self.backbones:
            if b not in ALL_BACKBONES:
                raise ValueError(f"unknown backbone {b!r}; choose from {', '.join(ALL_BACKBONES)}")
        for b, options in self.backbone_options.items():
            if not isinstance(options, dict):
                raise ValueError(f"backbone_options[{b!r}] must be a dict of constructor options, got {options!r}")
            if b not in self.backbones:
                raise ValueError(f"backbone_options names {b!r}, which is not among the backbones {list(self.backbones)}")
        if not self.augmentations:
            raise ValueError("no augmentation given")
        for a in self.augmentations:
            augmentations.get(a)  # raises for an unknown name, listing the choices
        if not self.seeds:
            raise ValueError("no seed given")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds repeat: {list(self.seeds)}")
        if any(s < 0 for s in self.seeds):
            raise ValueError(f"seeds must be >= 0, got {list(self.seeds)}")
        if not self.train_fractions:
            raise ValueError("no train fraction given")
        if any(not 0 < f <= 1 for f in self.train_fractions):
            raise ValueError(f"train fractions must be in (0, 1], got {list(self.train_fractions)}")
        if len(set(self.train_fractions)) != len(self.train_fractions):
            raise ValueError(f"train fractions repeat: {list(self.train_fractions)}")
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        if self.min_steps < 0:
            raise ValueError(f"min_steps must be >= 0, got {self.min_steps}")
        if self.batch_size < 2:
            raise ValueError(f"batch_size must be >= 2 (mixing pairs samples), got {self.batch_size}")
        if self.eval_batch_size < 1:
            raise ValueError(f"eval_batch_size must be >= 1, got {self.eval_batch_size}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if not self.alpha > 0:
            raise ValueError(f"alpha must be > 0, got {self.alpha}")
        if not 0 <= self.threshold < 1:
            raise ValueError(f"threshold must be in [0, 1), got {self.threshold}")
        if self.pool not in ("local", "global"):
            raise ValueError(f"pool must be 'local' or 'global', got {self.pool!r}")
        if self.threads < 0:
            raise ValueError(f"threads must be >= 0, got {self.threads}")
        if self.jobs < 0:
            raise ValueError(f"jobs must be >= 0, got {self.jobs}")
        if self.device not in ("cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ValueError(f"device must be cpu or cuda, got {self.device!r}")
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError("device cuda requested but torch.cuda.is_available() is False")

    def to_dict(self) -> Dict[str, Any]:
        d = dataclasses.asdict(self)
        for k in _TUPLE_FIELDS:
            d[k] = list(d[k])
        return d

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "TrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in d.items() if k in names}
        for k in _TUPLE_FIELDS:
            if k in kw:
                kw[k] = tuple(kw[k])
        return cls(**kw)


# --------------------------------------------------------------------------- helpers


def parse_seeds(text: str) -> Tuple[int, ...]:
    """``"42"`` -> ``(42,)``; ``"0,4,7"`` or ``"7,"`` -> those seeds (``--num-seeds`` gives a count)."""
    parts = [s.strip() for s in text.split(",")]
    if parts and not parts[-1]:
        parts.pop()  # a trailing comma
    try:
        return tuple(int(s) for s in parts)
    except ValueError:
        raise ValueError(f"--seeds must be a seed or a comma list of seeds (e.g. 42 or 0,1,2), got {text!r}") from None


def lower_is_better(metric: str) -> bool:
    return metric == "MAE"


def parse_fractions(text: str) -> Tuple[float, ...]:
    """``"0.1,0.25,1.0"`` -> ``(0.1, 0.25, 1.0)`` (range checked by :meth:`TrainConfig.validate`)."""
    try:
        return tuple(float(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise ValueError(f"--train-fraction must be a comma list of fractions in (0, 1] (e.g. 0.1,0.25,1.0), "
                         f"got {text!r}") from None


def lower_is_better(metric: str) -> bool:
    return metric == "MAE"
