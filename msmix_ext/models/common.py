"""Pieces shared by the backbones: the two-stage model protocol, masked pooling, attention."""
from __future__ import annotations

from typing import Callable, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["MixFn", "MultimodalRegressor", "check_masks", "masked_mean", "MultiHeadAttention", "FeedForward"]

MixFn = Callable[[List[Tensor]], Sequence[Tensor]]
"""Maps the list of hidden tensors at one layer (each ``[B, ...]``) to a list of the same
length; the batch size may change (MS-Mix returns ``B + K`` rows), later layers follow."""


def masked_mean(x: Tensor, mask: Optional[Tensor]) -> Tensor:
    """Mean over the valid tokens.

    Args:
        x: ``[B, L, D]``.
        mask: ``[B, L]`` bool, True = valid, or ``None`` (all valid).

    Returns:
        ``[B, D]``; a row without valid tokens gives zeros.  Padded values never
        contribute, even if they are NaN or infinite.
    """
    if mask is None:
        return x.mean(dim=1)
    m = mask.unsqueeze(-1)
    total = torch.where(m, x, torch.zeros((), dtype=x.dtype, device=x.device)).sum(dim=1)
    return total / m.sum(dim=1).clamp_min(1).to(x.dtype)


class MultiHeadAttention(nn.Module):
    """Multi-head attention of ``query [B, Q, d]`` over ``context [B, L, d]`` (no masking,
    no attention dropout)."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"dim ({dim}) must be divisible by num_heads ({num_heads})")
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, query: Tensor, context: Tensor) -> Tensor:
        """-> ``[B, Q, d]``."""
        b, nq, d = query.shape
        h = self.num_heads
        q = self.q(query).view(b, nq, h, d // h).transpose(1, 2)  # [B, H, Q, dh]
        k, v = self.kv(context).view(b, context.shape[1], 2, h, d // h).permute(2, 0, 3, 1, 4).unbind(0)
        ctx = F.scaled_dot_product_attention(q, k, v)
        return self.out(ctx.transpose(1, 2).reshape(b, nq, d))


class FeedForward(nn.Sequential):
    """``Linear(d, 2d) -> GELU -> Dropout -> Linear(2d, d)`` on the last dimension."""

    def __init__(self, dim: int, dropout: float = 0.0) -> None:
        super().__init__(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(2 * dim, dim))


class MultimodalRegressor(nn.Module):
    """Two-stage text/audio/vision regressor.

    ``features(text, audio, vision, masks)`` is the feature stage: one tensor per modality,
    pooled ``[B, D]`` or token ``[B, T, D]`` with every token valid, so a mixup
    augmentation (MS-Mix, plain Mixup) can mix them and change the batch size.
    ``head(feats, masks, mix_fn, mix_layer)`` maps them to a prediction ``[B]``.
    Manifold Mixup hooks in through ``mix_fn`` at ``mix_layer`` in
    ``0 .. hidden_layers``: 0 is the head's input (the feature list), ``i >= 1`` the
    hidden representation list after the head's ``i``-th layer.

    Subclasses set ``hidden_layers`` and ``feature_dims`` (``D`` of each feature tensor)
    and implement ``features``, ``_head_step`` and ``_readout``.
    """

    hidden_layers: int
    feature_dims: Tuple[int, ...]

    def features(
        self, text: Tensor, audio: Tensor, vision: Tensor, masks: Optional[Sequence[Optional[Tensor]]] = None
    ) -> List[Tensor]:
        raise NotImplementedError

    def _head_step(self, layer: int, hidden: List[Tensor]) -> List[Tensor]:
        """Head layer ``layer`` (``1 .. hidden_layers``): hidden list in, hidden list out."""
        raise NotImplementedError

    def _readout(self, hidden: List[Tensor]) -> Tensor:
        """Last hidden list -> predictions ``[B]``."""
        raise NotImplementedError

    def head(
        self,
        feats: Sequence[Tensor],
        masks: Optional[Sequence[Optional[Tensor]]] = None,
        mix_fn: Optional[MixFn] = None,
        mix_layer: Optional[int] = None,
    ) -> Tensor:
        """Predict from feature-stage outputs.

        Args:
            feats: the list ``features`` returned, possibly mixed (any batch size).
            masks: accepted for interface compatibility; the built-in models' feature
                tensors have no padding, so it must be ``None`` or all ``None``.
            mix_fn: applied to the hidden list at ``mix_layer`` (Manifold Mixup).
            mix_layer: ``0 .. hidden_layers``; required with ``mix_fn``.

        Returns:
            ``[B']`` predictions, ``B'`` the batch size after any mixing.
        """
        if masks is not None and any(m is not None for m in masks):
            raise ValueError("feature-stage tensors carry no padding; pass masks=None to head()")
        if (mix_fn is None) != (mix_layer is None):
            raise ValueError("mix_fn and mix_layer must be given together")
        if mix_layer is not None and not 0 <= mix_layer <= self.hidden_layers:
            raise ValueError(f"mix_layer must be in 0..{self.hidden_layers}, got {mix_layer}")
        hidden = list(feats)
        if len(hidden) != len(self.feature_dims):
            raise ValueError(f"expected {len(self.feature_dims)} feature tensors, got {len(hidden)}")
        for layer in range(self.hidden_layers + 1):
            if layer > 0:
                hidden = self._head_step(layer, hidden)
            if mix_fn is not None and layer == mix_layer:
                width = len(hidden)
                hidden = list(mix_fn(hidden))
                if len(hidden) != width:
                    raise ValueError(f"mix_fn returned {len(hidden)} tensors, expected {width}")
        return self._readout(hidden)

    def forward(
        self, text: Tensor, audio: Tensor, vision: Tensor, masks: Optional[Sequence[Optional[Tensor]]] = None
    ) -> Tensor:
        """``head(features(...))``: predictions ``[B]``."""
        return self.head(self.features(text, audio, vision, masks))


def check_masks(masks: Optional[Sequence[Optional[Tensor]]], inputs: Sequence[Tensor]) -> List[Optional[Tensor]]:
    """``masks`` as a list with one entry per input, shapes checked against ``[B, L]``."""
    if masks is None:
        return [None] * len(inputs)
    masks = list(masks)
    if len(masks) != len(inputs):
        raise ValueError(f"masks must hold {len(inputs)} entries (None allowed), got {len(masks)}")
    for i, (m, x) in enumerate(zip(masks, inputs)):
        if m is not None and (m.dtype != torch.bool or tuple(m.shape) != tuple(x.shape[:2])):
            raise ValueError(
                f"mask {i} must be bool {tuple(x.shape[:2])}, got {m.dtype} {tuple(m.shape)}"
            )
    return masks
