"""msmix_ext: MS-Mix (Zhu et al., arXiv 2510.11579) as fused C++/CUDA PyTorch operators.

``fused_mix`` runs SASS pair selection, intensity-guided ratios and per-modality
mixing in one call; ``MSMix`` wraps it with the SIG predictors and the SAL loss.
``msmix_ext.reference`` is the same method in plain PyTorch.
"""

from ._build import CUDA_COMPILED, HAS_EXTENSION
from ._types import MixOutput
from .mixing import combine_masks, fused_mix, mix, sass_select, seed_tensor, similarity
from .module import MSMix, msmix_objective
from .ratios import intensity_weights, mix_ratios
from .sig import IntensityPredictor, sentiment_alignment_loss

__version__ = "0.1.0"

__all__ = [
    "CUDA_COMPILED", "HAS_EXTENSION", "IntensityPredictor", "MSMix", "MixOutput", "combine_masks",
    "fused_mix", "intensity_weights", "mix", "mix_ratios", "msmix_objective", "sass_select",
    "seed_tensor", "sentiment_alignment_loss", "similarity",
]
