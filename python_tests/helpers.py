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


def features_with_cosines(cosines, shapes, seed=0):
    """float64 features, one per shape in `shapes` (each of at least B elements), whose rows have
    exactly the cosine similarities `cosines` ([B, B], positive definite, unit diagonal), so that
    S = cosines: the rows of its Cholesky factor, carried into each modality's width by a random
    isometry and scaled by random positive factors (neither changes a cosine)."""
    g = torch.Generator().manual_seed(seed)
    batch = cosines.shape[0]
    rows = torch.linalg.cholesky(cosines)  # rows[i] . rows[j] = cosines[i, j]
    feats = []
    for shape in shapes:
        width = math.prod(shape)
        assert width >= batch, f"a modality of {width} elements cannot hold {batch} independent rows"
        isometry, _ = torch.linalg.qr(torch.randn(width, batch, generator=g, dtype=torch.float64))
        scale = 0.5 + 4 * torch.rand(batch, 1, generator=g, dtype=torch.float64)
        feats.append((scale * rows @ isometry.T).reshape(batch, *shape))
    return feats


def arranged_cosines(values, seed=0):
    """A [B, B] cosine matrix whose B(B-1)/2 off-diagonal entries are `values` in a random
    arrangement. |values| < 1 / (B - 1) keeps it diagonally dominant, hence positive definite."""
    values = torch.as_tensor(values, dtype=torch.float64)
    batch = round((1 + math.sqrt(1 + 8 * values.numel())) / 2)
    assert batch * (batch - 1) // 2 == values.numel(), "need B(B-1)/2 values"
    assert values.abs().max() * (batch - 1) < 1, "values too large for a positive definite matrix"
    g = torch.Generator().manual_seed(seed)
    i, j = torch.triu_indices(batch, batch, 1)
    cosines = torch.eye(batch, dtype=torch.float64)
    cosines[i, j] = values[torch.randperm(values.numel(), generator=g)]
    cosines[j, i] = cosines[i, j]
    return cosines


def sass_decision(s, threshold, num_mix):
    """Which draw SASS makes from S' ([B, B], float64) and how far S' is from changing the pairs:
    ("valid" | "fallback" | "fallback with replacement", margin). The margin is the smallest gap
    at a decision point: between any off-diagonal S' and the threshold; in the fallback, between the
    last candidate kept and the first left out, and, when candidates are drawn again by their rank,
    between every two neighbours in the S' order of the unordered pairs."""
    batch = s.shape[0]
    off = ~torch.eye(batch, dtype=torch.bool)
    margin = float((s[off] - threshold).abs().min())
    if int((s[off] > threshold).sum()) >= num_mix:
        return "valid", margin
    i, j = torch.triu_indices(batch, batch, 1)
    ranked = s[i, j].sort(descending=True).values
    kept = min(2 * num_mix, ranked.numel())
    if kept < ranked.numel():
        margin = min(margin, float(ranked[kept - 1] - ranked[kept]))
    if num_mix <= kept:
        return "fallback", margin
    return "fallback with replacement", min(margin, float((ranked[:-1] - ranked[1:]).min()))


def general_position_cases():
    """SASS inputs whose pairs cannot depend on how S' is rounded: name -> (float64 feats,
    threshold, K, the draw taken). Every decision point lies at least 1e-3 from S' (checked by
    the tests with sass_decision), far beyond float32 rounding (about 1e-6 here)."""
    # B = 12: the 66 unordered pairs evenly spread, S' = k / 65 for k = 0..65.
    small = features_with_cosines(arranged_cosines(torch.linspace(-0.08, 0.08, 66, dtype=torch.float64), seed=1),
                                  [(16,), (3, 8)], seed=2)
    # B = 96 (several Gram tiles, CUDA's one-block draw): three bands of unordered pairs,
    # S' in [0, 0.6] (4340 pairs), [0.7, 0.85] (200) and [0.95, 1] (20).
    c = 0.9 / 95
    bands = torch.cat([torch.linspace(lo * c, hi * c, n, dtype=torch.float64)
                       for lo, hi, n in [(-1, 0.2, 4340), (0.4, 0.7, 200), (0.9, 1, 20)]])
    large = features_with_cosines(arranged_cosines(bands, seed=3), [(128,), (4, 30), (100,)], seed=4)
    # B = 300 (beyond CUDA's one-block draw, so the sort path): the same three bands.
    c = 0.9 / 299
    bands = torch.cat([torch.linspace(lo * c, hi * c, n, dtype=torch.float64)
                       for lo, hi, n in [(-1, 0.2, 44230), (0.4, 0.7, 600), (0.9, 1, 20)]])
    larger = features_with_cosines(arranged_cosines(bands, seed=5), [(320,), (4, 80), (300,)], seed=6)
    return {
        # 2 * 33 pairs above 0.5 (= 32.5 / 65): K = 40 drawn from V
        "B=12 valid": (small, 0.5, 40, "valid"),
        # 2 * 7 pairs above 0.9 < K = 20: the top 40 of the 66 candidates
        "B=12 fallback": (small, 0.9, 20, "fallback"),
        # K = 100 > 66: every candidate once, then 34 drawn again by S' rank
        "B=12 with replacement": (small, 0.995, 100, "fallback with replacement"),
        "B=96 valid": (large, 0.65, 96, "valid"),
        # 2 * 20 pairs above 0.9 < K = 110: the top 220 candidates are exactly the top two bands
        "B=96 fallback": (large, 0.9, 110, "fallback"),
        "B=300 valid": (larger, 0.65, 300, "valid"),
        # 2 * 20 pairs above 0.9 < K = 310: the top 620 candidates are exactly the top two bands
        "B=300 fallback": (larger, 0.9, 310, "fallback"),
    }
