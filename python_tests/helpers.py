"""Input builders and independent computations shared by the tests."""

from __future__ import annotations

import math

import torch


def make_feats(shapes, batch, dtype=torch.float32, device="cpu", contiguous=True, seed=0):
    """Modality features [B, *shape]; non-contiguous ones are every other column of a wider tensor."""
    g = torch.Generator().manual_seed(seed)
    feats = []
    for shape in shapes:
        full = torch.randn(batch, *shape[:-1], 2 * shape[-1], generator=g, dtype=torch.float64)
        full = full.to(device=device, dtype=dtype)
        feats.append(full[..., ::2] if not contiguous else full[..., : shape[-1]].contiguous())
    return feats


def clustered_feats(batch, shapes, clusters=4, noise=0.05, seed=0, dtype=torch.float32, device="cpu"):
    """Features around a few cluster centres: similarities well separated from mid thresholds."""
    g = torch.Generator().manual_seed(seed)
    assign = torch.arange(batch) % clusters
    feats = []
    for shape in shapes:
        centres = torch.randn(clusters, *shape, generator=g, dtype=torch.float64)
        f = centres[assign] + noise * torch.randn(batch, *shape, generator=g, dtype=torch.float64)
        feats.append(f.to(dtype=dtype, device=device))
    return feats


def chi_square_pvalue(counts: torch.Tensor, expected: float) -> float:
    """Upper tail of the chi-square statistic of `counts` against a uniform `expected`,
    by the Wilson-Hilferty normal approximation (accurate for dof >= 3)."""
    stat = float(((counts.double() - expected) ** 2 / expected).sum())
    dof = counts.numel() - 1
    z = ((stat / dof) ** (1 / 3) - (1 - 2 / (9 * dof))) / math.sqrt(2 / (9 * dof))
    return 0.5 * math.erfc(z / math.sqrt(2))
