"""SIG, the sentiment intensity predictor (design.md §1), and SAL, its alignment loss (design.md §2)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

# The authors' reference projects very wide inputs before attention.
_PROJECT_ABOVE = 2000
_PROJECTED_WIDTH = 1024


def check_mask(mask: torch.Tensor | None, batch: int, tokens: int, name: str = "mask") -> None:
    """A padding mask must be bool ``[B, T]`` (True = valid) and keep a token in every row."""
    if mask is None:
        return
    if mask.dtype != torch.bool:
        raise TypeError(f"{name} must be a bool tensor (True = valid token), got {mask.dtype}")
    if mask.shape != (batch, tokens):
        raise ValueError(f"{name} must be [B, T] = [{batch}, {tokens}], got {list(mask.shape)}")
    # Data-dependent, so checked in eager mode only; compiled code would get NaN rows.
    if not torch.compiler.is_compiling() and not bool(mask.any(dim=1).all()):
        empty = torch.nonzero(~mask.any(dim=1)).flatten()[:5].tolist()
        raise ValueError(f"{name} pads out every token of samples {empty}; each sample needs a valid token")


class IntensityPredictor(nn.Module):
    """SIG for one modality: ``I = R * tanh(linear(meanpool(LayerNorm(x + MHSA(x)))))``.

    Args:
        dim: the modality's feature width D. Widths above 2000 are first projected to
            1024 (as the authors' reference does); the width is then zero-padded to a
            multiple of ``num_heads``, so any D and head count work.
        num_heads: attention heads.
        max_intensity: R, the bound of the output range ``(-R, R)``.
        dropout: attention dropout (training only).

    Input ``x``: ``[B, D]`` (one token) or ``[B, T, D]``; ``mask``: optional bool ``[B, T]``,
    True for valid tokens: padded tokens are neither attended to nor pooled.
    Output: ``[B]`` intensities.
    """

    def __init__(self, dim: int, num_heads: int = 4, max_intensity: float = 3.0, dropout: float = 0.0):
        super().__init__()
        if dim < 1 or num_heads < 1:
            raise ValueError(f"dim and num_heads must be >= 1, got dim={dim}, num_heads={num_heads}")
        if not max_intensity > 0:
            raise ValueError(f"max_intensity must be > 0, got {max_intensity}")
        self.dim, self.num_heads, self.max_intensity, self.dropout = dim, num_heads, float(max_intensity), dropout
        self.project = nn.Linear(dim, _PROJECTED_WIDTH) if dim > _PROJECT_ABOVE else None
        width = _PROJECTED_WIDTH if self.project is not None else dim
        self.width = -(-width // num_heads) * num_heads
        self.pad = self.width - width
        self.qkv = nn.Linear(self.width, 3 * self.width)
        self.out = nn.Linear(self.width, self.width)
        self.norm = nn.LayerNorm(self.width)
        self.head = nn.Linear(self.width, 1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if x.dim() == 2:
            x = x.unsqueeze(1)
        if x.dim() != 3 or x.shape[-1] != self.dim:
            raise ValueError(f"IntensityPredictor(dim={self.dim}) takes [B, {self.dim}] or "
                             f"[B, T, {self.dim}], got {list(x.shape)}")
        batch, tokens, _ = x.shape
        check_mask(mask, batch, tokens)
        if self.project is not None:
            x = self.project(x)
        if self.pad:
            x = F.pad(x, (0, self.pad))
        q, k, v = self.qkv(x).view(batch, tokens, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        attn_mask = None if mask is None else mask[:, None, None, :]
        attended = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, dropout_p=self.dropout if self.training else 0.0)
        h = self.norm(x + self.out(attended.transpose(1, 2).reshape(batch, tokens, self.width)))
        if mask is None:
            pooled = h.mean(dim=1)
        else:
            weights = mask.to(h.dtype).unsqueeze(-1)
            pooled = (h * weights).sum(dim=1) / weights.sum(dim=1)
        return self.max_intensity * torch.tanh(self.head(pooled).squeeze(-1))


def sentiment_alignment_loss(intensities: torch.Tensor | Sequence[torch.Tensor], labels: torch.Tensor,
                             max_intensity: float = 3.0, scale: float = 1000.0) -> torch.Tensor:
    """SAL (design.md §2): ``scale * sum_m KL(p_y || p_m) / B`` over the batch.

    ``p_y = softmax_b(|y_b| / R) + 1e-8`` and ``p_m = softmax_b(|I_m,b| / R) + 1e-8``.

    Args:
        intensities: ``[M, B]`` (or M tensors ``[B]``); labels ``[B]`` or ``[B, 1]``.
        max_intensity: R. scale: the loss weight inside SAL (1000 in the reference).
    Returns:
        a scalar tensor.
    """
    if not max_intensity > 0:
        raise ValueError(f"max_intensity must be > 0, got {max_intensity}")
    if not isinstance(intensities, torch.Tensor):
        intensities = torch.stack(list(intensities))
    y = labels.reshape(-1)
    if intensities.dim() != 2 or intensities.shape[1] != y.shape[0]:
        raise ValueError(f"intensities must be [M, B] with B = {y.shape[0]} (the labels' batch), "
                         f"got {list(intensities.shape)}")
    p_y = torch.softmax(y.abs() / max_intensity, dim=0) + 1e-8
    p_m = torch.softmax(intensities.abs() / max_intensity, dim=1) + 1e-8
    kl = (p_y * (p_y.log() - p_m.log())).sum(dim=1) / y.shape[0]
    return scale * kl.sum()
