"""Result type shared by the fused and the reference pipelines."""

from __future__ import annotations

from typing import NamedTuple

import torch


class MixOutput(NamedTuple):
    """What one MS-Mix call returns (design.md §6). B clean rows come first, K mixed rows after.

    Attributes:
        feats: combined features, modality m shaped ``[B + K, *feats[m].shape[1:]]``.
        labels: combined labels, ``[B + K]`` (or ``[B + K, 1]`` for ``[B, 1]`` labels).
        idx1, idx2: int64 ``[K]``, the two source samples of each mixed sample.
        lam: ``[M, K]`` per-modality ratios (the weight of ``idx1``).
        lam_label: ``[K]`` label ratios, ``lam.mean(0)``.
        labels1, labels2: ``labels[idx1]``, ``labels[idx2]``.
        lam0: ``[K]`` the Beta(alpha, alpha) base ratios the call drew.
    """

    feats: list[torch.Tensor]
    labels: torch.Tensor
    idx1: torch.Tensor
    idx2: torch.Tensor
    lam: torch.Tensor
    lam_label: torch.Tensor
    labels1: torch.Tensor
    labels2: torch.Tensor
    lam0: torch.Tensor
