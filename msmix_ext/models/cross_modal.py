"""Cross-modal transformer backbone (MulT/ALMT-like), small enough for CPU training."""
from __future__ import annotations

import math
from typing import List, Optional, Sequence

import torch
from torch import Tensor, nn

from .common import FeedForward, MultiHeadAttention, MultimodalRegressor, check_masks

__all__ = ["CrossModalTransformer", "TokenPool", "CrossModalBlock"]


class TokenPool(nn.Module):
    """Compress a padded sequence of raw tokens to ``T`` tokens with learnable queries
    (as ALMT's learnable tokens / a Perceiver latent array).

    ``x [B, L, D_in]``, ``mask [B, L]`` -> ``[B, T, d]``.  Multi-head attention of the
    queries ``Q = Linear(queries)`` over keys ``W_k x`` and values ``W_v x + b_v`` (a key
    bias would cancel in the softmax), output projection, then ``h = queries + attn``
    and ``h + FFN(LN(h))``.  Padded tokens get weight 0; a row with no valid token
    attends to nothing (its attention output is the projection's bias).  No positional
    encoding: the pool is order-invariant over the valid tokens.

    The attention is evaluated in an equal, cheaper order that never forms per-token
    keys or values (the sequences are long, ``T`` is small):
    ``q . (W_k x) = (W_k^T q) . x`` and ``sum_l w_l (W_v x_l + b_v) = W_v (sum_l w_l x_l) + b_v sum_l w_l``.
    """

    def __init__(self, in_dim: int, dim: int, num_tokens: int, num_heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"dim ({dim}) must be divisible by num_heads ({num_heads})")
        self.num_heads = num_heads
        self.queries = nn.Parameter(torch.randn(num_tokens, dim))
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(in_dim, dim, bias=False)
        self.v = nn.Linear(in_dim, dim)
        self.out = nn.Linear(dim, dim)
        self.norm_ff = nn.LayerNorm(dim)
        self.ff = FeedForward(dim, dropout)

    def forward(self, x: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        b, _, din = x.shape
        t, d = self.queries.shape
        h, dh = self.num_heads, d // self.num_heads
        q = self.q(self.queries).view(t, h, dh)
        # Per (head, query) direction in input space: scores = x @ u, [B, L, H*T].
        u = torch.einsum("thc,hcd->dht", q, self.k.weight.view(h, dh, din)).reshape(din, h * t)
        scores = x @ (u / math.sqrt(dh))
        if mask is None:
            weights = scores.softmax(dim=1)
        else:
            keep = mask.unsqueeze(-1)
            scores = scores.masked_fill(~keep, torch.finfo(scores.dtype).min)
            # Padded tokens already get weight 0 unless the whole row is padding;
            # the product zeroes that case too.
            weights = scores.softmax(dim=1) * keep
        pooled = (weights.transpose(1, 2) @ x).view(b, h, t, din)  # weighted raw tokens
        values = torch.einsum("bhtd,hcd->bthc", pooled, self.v.weight.view(h, dh, din))
        mass = weights.sum(dim=1).view(b, h, t).transpose(1, 2).unsqueeze(-1)  # 1, or 0 for an empty row
        attn = self.out((values + self.v.bias.view(h, dh) * mass).reshape(b, t, d))
        hidden = self.queries + attn
        return hidden + self.ff(self.norm_ff(hidden))


class CrossModalBlock(nn.Module):
    """Each modality's tokens attend to the other modalities' tokens, then an FFN (pre-norm).

    Input and output: ``M`` tensors ``[B, T, d]``.  With a single modality it attends
    to itself.
    """

    def __init__(self, dim: int, num_modalities: int, num_heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm_attn = nn.ModuleList(nn.LayerNorm(dim) for _ in range(num_modalities))
        self.attn = nn.ModuleList(MultiHeadAttention(dim, num_heads) for _ in range(num_modalities))
        self.norm_ff = nn.ModuleList(nn.LayerNorm(dim) for _ in range(num_modalities))
        self.ff = nn.ModuleList(FeedForward(dim, dropout) for _ in range(num_modalities))
        self.drop = nn.Dropout(dropout)

    def forward(self, hidden: List[Tensor]) -> List[Tensor]:
        normed = [norm(h) for norm, h in zip(self.norm_attn, hidden)]
        out = []
        for m, h in enumerate(hidden):
            others = [normed[j] for j in range(len(hidden)) if j != m] or [normed[m]]
            h = h + self.drop(self.attn[m](normed[m], torch.cat(others, dim=1)))
            out.append(h + self.drop(self.ff[m](self.norm_ff[m](h))))
        return out


class CrossModalTransformer(MultimodalRegressor):
    """Projection + token pooling per modality; cross-modal attention blocks in the head.

    Feature stage: modality ``m`` ``[B, L_m, D_m]`` -> :class:`TokenPool` (attention from
    ``num_tokens`` learnable queries, keys and values linear in the raw tokens) ->
    ``[B, num_tokens, d_model]`` (fixed, padding-free, so features of different samples
    can be mixed token by token).
    Head: ``num_blocks`` :class:`CrossModalBlock` layers (the Manifold-Mixup layers,
    ``hidden_layers = num_blocks``), then mean over tokens, concatenation ``[B, M * d]``,
    ``LayerNorm -> Linear(M * d, d) -> ReLU -> Dropout -> Linear(d, 1)`` -> ``[B]``.

    Args:
        input_dims: ``(D_t, D_a, D_v)``.
        d_model: common width.
        num_tokens: tokens kept per modality (``T``).
        num_heads: attention heads (must divide ``d_model``).
        num_blocks: cross-modal blocks in the head.
        dropout: dropout probability.
    """

    def __init__(
        self,
        input_dims: Sequence[int],
        d_model: int = 32,
        num_tokens: int = 4,
        num_heads: int = 4,
        num_blocks: int = 2,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        n_mod = len(input_dims)
        self.hidden_layers = num_blocks
        self.feature_dims = tuple(d_model for _ in input_dims)
        self.pool = nn.ModuleList(TokenPool(d, d_model, num_tokens, num_heads, dropout) for d in input_dims)
        self.blocks = nn.ModuleList(CrossModalBlock(d_model, n_mod, num_heads, dropout) for _ in range(num_blocks))
        self.out = nn.Sequential(
            nn.LayerNorm(n_mod * d_model),
            nn.Linear(n_mod * d_model, d_model),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(d_model, 1),
        )

    def features(
        self, text: Tensor, audio: Tensor, vision: Tensor, masks: Optional[Sequence[Optional[Tensor]]] = None
    ) -> List[Tensor]:
        """``M`` token features ``[B, num_tokens, d_model]``; padded tokens are ignored."""
        inputs = [text, audio, vision]
        masks = check_masks(masks, inputs)
        out = []
        for pool, x, m in zip(self.pool, inputs, masks):
            if m is not None:
                # Zero padding first so that even NaN/inf padding cannot reach the values
                # (attention weight 0 times NaN would still be NaN).
                x = x.masked_fill(~m.unsqueeze(-1), 0.0)
            out.append(pool(x, m))
        return out

    def _head_step(self, layer: int, hidden: List[Tensor]) -> List[Tensor]:
        return self.blocks[layer - 1](hidden)

    def _readout(self, hidden: List[Tensor]) -> Tensor:
        return self.out(torch.cat([h.mean(dim=1) for h in hidden], dim=-1)).squeeze(-1)
