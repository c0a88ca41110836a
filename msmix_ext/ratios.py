"""Mixing ratios from intensities (design.md §3 and 5), in plain torch.

A handful of elementwise ops over [M, B] and [M, K]: inductor fuses them into
one or two kernels, so they stay in Python (see bench/ for the measurement).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def stack_intensities(intensities: torch.Tensor | Sequence[torch.Tensor], num_modalities: int,
                      batch: int) -> torch.Tensor:
    """``intensities`` as one ``[M, B]`` tensor, with a clear error for any other shape."""
    if not isinstance(intensities, torch.Tensor):
        intensities = torch.stack([t.reshape(-1) if t.dim() == 2 and t.shape[-1] == 1 else t
                                   for t in intensities])
    if intensities.shape != (num_modalities, batch):
        raise ValueError(f"intensities must be [M, B] = [{num_modalities}, {batch}], "
                         f"got {list(intensities.shape)}")
    if not intensities.is_floating_point():
        raise TypeError(f"intensities must be floating, got {intensities.dtype}")
    return intensities


def intensity_weights(intensities: torch.Tensor) -> torch.Tensor:
    """design.md §3: ``w_m = |I_m|`` min-max normalised over the batch, ``[M, B]``."""
    w = intensities.abs()
    lo = w.amin(dim=1, keepdim=True)
    hi = w.amax(dim=1, keepdim=True)
    return (w - lo) / (hi - lo + 1e-8)


def mix_ratios(intensities: torch.Tensor, idx1: torch.Tensor, idx2: torch.Tensor,
               lam0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """design.md §5: per-modality ratios ``lam [M, K]`` and label ratios ``lam_label [K]``.

    ``lam[m, k] = (lam0[k] + (w[m, i_k] + 1e-8) / (w[m, i_k] + w[m, j_k] + 2e-8)) / 2``
    with ``w`` from :func:`intensity_weights`; ``lam_label = lam.mean(0)``. Differentiable
    in ``intensities [M, B]``; ``idx1``, ``idx2``, ``lam0`` are ``[K]``.
    """
    if intensities.dim() != 2:
        raise ValueError(f"intensities must be [M, B], got {list(intensities.shape)}")
    if not (idx1.shape == idx2.shape == lam0.shape and idx1.dim() == 1):
        raise ValueError(f"idx1, idx2 and lam0 must all be [K], got {list(idx1.shape)}, "
                         f"{list(idx2.shape)}, {list(lam0.shape)}")
    w = intensity_weights(intensities)
    w1, w2 = w.index_select(1, idx1), w.index_select(1, idx2)
    lam = (lam0.to(w.dtype) + (w1 + 1e-8) / (w1 + w2 + 2e-8)) / 2
    return lam, lam.mean(dim=0)
