"""Backbones with a feature stage (where MS-Mix mixes) and a head.

See :class:`~msmix_ext.models.common.MultimodalRegressor` for the protocol.
``late_fusion`` and ``cross_modal`` are small CPU-trainable models written here; neither
normalises its raw inputs: feed features z-scored per dimension
(:func:`msmix_ext.train.data.standardize`).  ``tfn``, ``lmf`` and ``mult`` wrap MMSA's
own classes (:mod:`msmix_ext.models.mmsa`, needs ``pip install msmix_ext[mmsa]``);
MMSA is imported only when one of them is built.
"""
from typing import Any, Sequence

from .common import MultimodalRegressor
from .cross_modal import CrossModalTransformer
from .late_fusion import LateFusion

__all__ = ["ALL_BACKBONES", "BACKBONES", "CrossModalTransformer", "LateFusion", "MMSA_BACKBONES", "MODELS",
           "MultimodalRegressor", "build_model"]

MODELS = {"late_fusion": LateFusion, "cross_modal": CrossModalTransformer}
"""The backbones written here (no dependency beyond torch)."""

BACKBONES = tuple(MODELS)
"""The default backbones of the training command."""

MMSA_BACKBONES = ("tfn", "lmf", "mult")
"""MMSA 2.2.1's TFN, LMF and MulT, wrapped by :mod:`msmix_ext.models.mmsa`."""

ALL_BACKBONES = BACKBONES + MMSA_BACKBONES


def build_model(name: str, input_dims: Sequence[int], **kwargs: Any) -> MultimodalRegressor:
    """Construct a backbone by name (one of :data:`ALL_BACKBONES`) for inputs of widths ``input_dims``."""
    if name in MODELS:
        return MODELS[name](input_dims, **kwargs)
    if name in MMSA_BACKBONES:
        from . import mmsa  # imports MMSA (slow, optional): only when asked for

        return mmsa.build(name, input_dims, **kwargs)
    raise ValueError(f"unknown model {name!r}; choose from {', '.join(ALL_BACKBONES)}")
