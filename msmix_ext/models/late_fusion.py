"""Late-fusion backbone: per-modality pooled encoders, concatenation, MLP head (LF-DNN/TFN-like)."""
from __future__ import annotations

from typing import List, Optional, Sequence

import torch
from torch import Tensor, nn

from .common import MultimodalRegressor, check_masks, masked_mean

__all__ = ["LateFusion"]


class LateFusion(MultimodalRegressor):
    """Masked mean pool + MLP per modality, then an MLP on the concatenation.

    Feature stage: modality ``m`` ``[B, L_m, D_m]`` -> masked mean over valid tokens
    ``[B, D_m]`` -> ``Linear(D_m, hidden) -> ReLU -> Dropout -> Linear(hidden, hidden) -> ReLU``
    -> ``[B, hidden]``.  Head: concatenation ``[B, M * hidden]`` ->
    layer 1 ``Linear -> ReLU -> Dropout`` ``[B, fusion_hidden]`` ->
    layer 2 ``Linear -> ReLU -> Dropout`` ``[B, fusion_hidden]`` -> ``Linear`` -> ``[B]``.
    ``hidden_layers = 2``; at layers 1 and 2 the hidden list holds one tensor.

    Args:
        input_dims: ``(D_t, D_a, D_v)``.
        hidden: width of each modality's feature vector.
        fusion_hidden: width of the head's hidden layers.
        dropout: dropout probability.
    """

    hidden_layers = 2

    def __init__(
        self, input_dims: Sequence[int], hidden: int = 64, fusion_hidden: int = 64, dropout: float = 0.1
    ) -> None:
        super().__init__()
        self.feature_dims = tuple(hidden for _ in input_dims)
        self.encoders = nn.ModuleList(
            nn.Sequential(
                nn.Linear(d, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, hidden), nn.ReLU()
            )
            for d in input_dims
        )
        self.fuse = nn.ModuleList([
            nn.Sequential(nn.Linear(hidden * len(input_dims), fusion_hidden), nn.ReLU(), nn.Dropout(dropout)),
            nn.Sequential(nn.Linear(fusion_hidden, fusion_hidden), nn.ReLU(), nn.Dropout(dropout)),
        ])
        self.out = nn.Linear(fusion_hidden, 1)

    def features(
        self, text: Tensor, audio: Tensor, vision: Tensor, masks: Optional[Sequence[Optional[Tensor]]] = None
    ) -> List[Tensor]:
        """``M`` pooled features ``[B, hidden]``; padded tokens are ignored."""
        inputs = [text, audio, vision]
        masks = check_masks(masks, inputs)
        return [enc(masked_mean(x, m)) for enc, x, m in zip(self.encoders, inputs, masks)]

    def _head_step(self, layer: int, hidden: List[Tensor]) -> List[Tensor]:
        # Layer 1 fuses the modality list into one tensor; layer 2 refines it.
        x = hidden[0] if layer > 1 else torch.cat(hidden, dim=-1)
        return [self.fuse[layer - 1](x)]

    def _readout(self, hidden: List[Tensor]) -> Tensor:
        return self.out(hidden[0]).squeeze(-1)
