"""MSMix, the nn.Module a training loop calls, and the MS-Mix objective (design.md §7)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ._types import MixOutput
from .augment import no_mix
from .distributed import check_pool
from .mixing import fused_mix
from .sig import IntensityPredictor, sentiment_alignment_loss


class MSMix(nn.Module):
    """MS-Mix as a module: one SIG predictor per modality, SAL, and :func:`fused_mix`.

    Args:
        dims: the feature width D_m of each modality (M entries).
        num_heads, max_intensity: of every :class:`IntensityPredictor`.
        threshold, alpha, num_mix: of :func:`fused_mix` (num_mix None = B); checked where
            fused_mix uses them, so a bad value raises ValueError at the first training call.
        sal_scale: the ``scale`` of :func:`sentiment_alignment_loss`.
        pool, group: of :func:`fused_mix`: ``"global"`` selects and mixes pairs over the batch of
            every rank of ``group`` (SAL stays a loss of the rank's own batch).

    ``forward(feats, labels, masks=None) -> (MixOutput, sal)``: in training mode it
    mixes the batch (``[B + K, ...]`` outputs) and returns the SAL loss; in eval mode
    it passes the batch through (K = 0) with a zero SAL loss. ``masks`` are optional
    bool ``[B, T_m]`` padding masks (True = valid), one per modality (None entries
    allowed); :func:`msmix_ext.combine_masks` extends them to the combined rows.
    """

    def __init__(self, dims: Sequence[int], num_heads: int = 4, threshold: float = 0.4,
                 alpha: float = 2.0, max_intensity: float = 3.0, sal_scale: float = 1000.0,
                 num_mix: int | None = None, pool: str = "local", group=None):
        super().__init__()
        check_pool(pool)
        if len(dims) < 1:
            raise ValueError("dims must name at least one modality width")
        self.predictors = nn.ModuleList(IntensityPredictor(d, num_heads, max_intensity) for d in dims)
        self.threshold, self.alpha, self.num_mix = threshold, alpha, num_mix
        self.max_intensity, self.sal_scale = max_intensity, sal_scale
        self.pool, self.group = pool, group

    def intensities(self, feats: Sequence[torch.Tensor],
                    masks: Sequence[torch.Tensor | None] | None = None) -> torch.Tensor:
        """SIG intensities ``[M, B]``."""
        if len(feats) != len(self.predictors):
            raise ValueError(f"MSMix was built for {len(self.predictors)} modalities, got {len(feats)} feats")
        masks = [None] * len(feats) if masks is None else list(masks)
        if len(masks) != len(feats):
            raise ValueError(f"masks must hold one entry per modality ({len(feats)}), got {len(masks)}")
        return torch.stack([p(f, m) for p, f, m in zip(self.predictors, feats, masks)])

    def forward(self, feats: Sequence[torch.Tensor], labels: torch.Tensor,
                masks: Sequence[torch.Tensor | None] | None = None,
                seed: int | torch.Tensor | None = None) -> tuple[MixOutput, torch.Tensor]:
        feats = list(feats)
        if not self.training:
            return no_mix(feats, labels), labels.new_zeros(())
        intensities = self.intensities(feats, masks)
        sal = sentiment_alignment_loss(intensities, labels, self.max_intensity, self.sal_scale)
        out = fused_mix(feats, labels, intensities, num_mix=self.num_mix, threshold=self.threshold,
                        alpha=self.alpha, seed=seed, pool=self.pool, group=self.group)
        return out, sal


def msmix_objective(pred: torch.Tensor, out: MixOutput, labels: torch.Tensor, sal: torch.Tensor,
                    mix_weight: float = 0.7, sal_weight: float = 0.5, clean_loss: str = "l1") -> torch.Tensor:
    """The MS-Mix training objective (design.md §7).

    ``L = clean(pred[:B], y) + mix_weight * mean_k(lam_y,k (pred[B+k] - y[i_k])^2
    + (1 - lam_y,k) (pred[B+k] - y[j_k])^2) + sal_weight * sal``.

    Args:
        pred: ``[B + K]`` (or ``[B + K, 1]``) predictions on ``out.feats``.
        out: the :class:`MixOutput` the predictions were made on; labels: ``[B]`` or ``[B, 1]``.
        sal: the SAL loss. clean_loss: ``"l1"`` or ``"mse"``.
    """
    y = labels.reshape(-1)
    batch = y.shape[0]
    pred = pred.reshape(-1)
    if pred.shape[0] != batch + out.idx1.shape[0]:
        raise ValueError(f"pred must have B + K = {batch + out.idx1.shape[0]} rows, got {pred.shape[0]}")
    if clean_loss == "l1":
        loss = F.l1_loss(pred[:batch], y)
    elif clean_loss == "mse":
        loss = F.mse_loss(pred[:batch], y)
    else:
        raise ValueError(f"clean_loss must be 'l1' or 'mse', got {clean_loss!r}")
    if out.idx1.shape[0] > 0:
        mixed = pred[batch:]
        lam = out.lam_label.to(mixed.dtype)
        y1, y2 = out.labels1.reshape(-1), out.labels2.reshape(-1)
        loss = loss + mix_weight * (lam * (mixed - y1) ** 2 + (1 - lam) * (mixed - y2) ** 2).mean()
    return loss + sal_weight * sal
