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


# An optimal 8-mark Golomb ruler: the 28 differences of two marks are distinct (1..34).
GOLOMB_MARKS = [0, 1, 4, 9, 15, 22, 32, 34]
GOLOMB_STEP = math.pi / 34  # angle differences in (0, pi]: cos is strictly decreasing over them


def golomb_feats(device="cpu", dtype=torch.float64):
    """Two modalities, [8, 2] and [8, 3, 2]: one unit vector per sample at angle STEP * mark,
    so every pair of samples has its own S' (see :func:`golomb_similarity`)."""
    angles = torch.tensor(GOLOMB_MARKS, dtype=torch.float64) * GOLOMB_STEP
    unit = torch.stack([angles.cos(), angles.sin()], dim=1)
    return [unit.to(device, dtype), unit[:, None, :].expand(8, 3, 2).contiguous().to(device, dtype)]


def golomb_similarity():
    """S' of :func:`golomb_feats` by hand: S_ij = cos(STEP * (mark_i - mark_j)), min-max over i != j.
    Its 28 distinct values are at least 2e-3 apart."""
    s = [[math.cos(GOLOMB_STEP * (a - b)) for b in GOLOMB_MARKS] for a in GOLOMB_MARKS]
    off = [s[i][j] for i in range(8) for j in range(8) if i != j]
    lo, hi = min(off), max(off)
    return torch.tensor([[0.0 if i == j else (s[i][j] - lo) / (hi - lo) for j in range(8)] for i in range(8)],
                        dtype=torch.float64)


def beta_variance(alpha):
    """Var of Beta(alpha, alpha): 1 / (4 (2 alpha + 1))."""
    return 1 / (4 * (2 * alpha + 1))
