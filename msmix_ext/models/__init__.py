"""Small CPU-trainable backbones with a feature stage (where MS-Mix mixes) and a head.

See :class:`~msmix_ext.models.common.MultimodalRegressor` for the protocol.  Neither
model normalises its raw inputs: feed features z-scored per dimension
(:func:`msmix_ext.train.data.standardize`).
"""
from typing import Any, Sequence

from .common import MultimodalRegressor
from .cross_modal import CrossModalTransformer
from .late_fusion import LateFusion

__all__ = ["CrossModalTransformer", "LateFusion", "MultimodalRegressor", "build_model", "MODELS"]

MODELS = {"late_fusion": LateFusion, "cross_modal": CrossModalTransformer}


def build_model(name: str, input_dims: Sequence[int], **kwargs: Any) -> MultimodalRegressor:
    """Construct a backbone by name (``"late_fusion"`` or ``"cross_modal"``)."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose from {sorted(MODELS)}")
    return MODELS[name](input_dims, **kwargs)
