"""The data of a training call: the splits it names, and the training subset of a run."""
from __future__ import annotations

import dataclasses
from typing import Any, Dict

import torch

from msmix_ext.train.config import SENTIMENT_RANGE, TrainConfig
from msmix_ext.train.data import DataError, MultimodalDataset, SyntheticConfig, load_mmsa_pickle, make_synthetic, standardize
from msmix_ext.train.progress import log

__all__ = ["load_data", "train_subset"]


def _synthetic_config(overrides: Dict[str, Any]) -> SyntheticConfig:
    def as_tuple(v: Any) -> Any:
        return tuple(as_tuple(x) for x in v) if isinstance(v, (list, tuple)) else v

    names = {f.name for f in dataclasses.fields(SyntheticConfig)}
    unknown = set(overrides) - names
    if unknown:
        raise ValueError(f"unknown SyntheticConfig fields {sorted(unknown)}")
    return SyntheticConfig(**{k: as_tuple(v) for k, v in overrides.items()})


def load_data(cfg: TrainConfig) -> Dict[str, MultimodalDataset]:
    """The train / valid / test splits ``cfg`` names (synthetic or an MMSA pickle), standardised."""
    if cfg.data == "synthetic":
        splits = make_synthetic(cfg.data_seed, _synthetic_config(cfg.synthetic))
    else:
        splits = load_mmsa_pickle(cfg.data)
    if cfg.standardize:
        try:
            splits = standardize(splits)
        except ValueError as e:  # e.g. a split with no valid token: the file is unusable
            raise DataError(f"{cfg.data}: {e}") from None
    bound = SENTIMENT_RANGE[cfg.dataset_kind]
    top = max(float(s.labels.abs().max()) for s in splits.values())
    if top > bound + 1e-6:
        log.warning("labels reach |y| = %.3g but dataset kind %r assumes |y| <= %g", top, cfg.dataset_kind, bound)
    return splits


def train_subset(train: MultimodalDataset, fraction: float, seed: int) -> MultimodalDataset:
    """A label-stratified ``fraction`` of ``train``, drawn from ``seed`` alone.

    ``n = max(2, round(fraction * N))`` samples: the samples sorted by label (ties by
    position) are cut into ``n`` consecutive strata of equal size (within one), and one
    sample is drawn uniformly from each, so the subset's labels follow the split's label
    quantiles.  Every augmentation of a seed trains on the same subset; ``fraction = 1``
    returns ``train`` itself.
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"train fraction must be in (0, 1], got {fraction}")
    if fraction == 1.0:
        return train
    total = len(train)
    size = min(total, max(2, round(fraction * total)))  # mixing pairs samples: at least two
    order = torch.argsort(train.labels.reshape(-1), stable=True)
    gen = torch.Generator().manual_seed(seed)
    picks = [stratum[int(torch.randint(len(stratum), (), generator=gen))]
             for stratum in torch.tensor_split(order, size)]
    return train.subset(torch.sort(torch.stack(picks)).values)
