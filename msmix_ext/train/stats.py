"""Paired statistics over seeds: each seed trains every augmentation from the same
initial weights, batch order and training subset, so per-seed differences are paired."""
from __future__ import annotations

import itertools
import math
from typing import Dict, Sequence

import numpy as np

__all__ = ["paired_difference", "sign_flip_pvalue", "t_quantile"]

_EXACT_LIMIT = 16  # 2**16 sign vectors; beyond, a seeded Monte-Carlo estimate
_MONTE_CARLO_DRAWS = 100_000


def _t_pdf(x: np.ndarray, df: int) -> np.ndarray:
    log_norm = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)
    return np.exp(log_norm - (df + 1) / 2 * np.log1p(x * x / df))


def _t_cdf(x: float, df: int) -> float:
    """Student t CDF for ``x >= 0``: 1/2 plus Simpson's rule of the density on ``[0, x]``."""
    grid = np.linspace(0.0, x, 4001)
    f = _t_pdf(grid, df)
    h = grid[1] - grid[0]
    return 0.5 + h / 3 * (f[0] + f[-1] + 4 * f[1:-1:2].sum() + 2 * f[2:-1:2].sum())


def t_quantile(p: float, df: int) -> float:
    """The ``p`` quantile (``p > 1/2``) of Student's t with ``df`` degrees of freedom, by bisection."""
    if not 0.5 < p < 1 or df < 1:
        raise ValueError(f"t_quantile needs 1/2 < p < 1 and df >= 1, got p={p}, df={df}")
    lo, hi = 0.0, 1.0
    while _t_cdf(hi, df) < p:
        hi *= 2
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if _t_cdf(mid, df) < p else (lo, mid)
    return (lo + hi) / 2


def sign_flip_pvalue(diffs: Sequence[float], seed: int = 0) -> float:
    """Two-sided p-value of the paired sign-flip permutation test of mean ``diffs`` = 0.

    The share of the ``2**n`` sign vectors ``s`` with ``|sum(s * d)| >= |sum(d)|`` (exact for
    ``n <= 16``; above, ``(1 + hits) / (1 + draws)`` over 100 000 vectors drawn from ``seed``).
    """
    d = np.asarray(diffs, dtype=np.float64)
    if d.size == 0:
        return float("nan")
    observed = abs(d.sum()) * (1 - 1e-12)  # ties count as extreme, despite rounding
    if d.size <= _EXACT_LIMIT:
        signs = np.array(list(itertools.product((1.0, -1.0), repeat=d.size)))
        return float(np.mean(np.abs(signs @ d) >= observed))
    signs = np.random.default_rng(seed).choice((1.0, -1.0), size=(_MONTE_CARLO_DRAWS, d.size))
    return float((1 + np.sum(np.abs(signs @ d) >= observed)) / (1 + _MONTE_CARLO_DRAWS))


def paired_difference(values: Sequence[float], baseline: Sequence[float]) -> Dict[str, float]:
    """Per-seed ``values - baseline`` (aligned by seed; a pair with a NaN is left out):
    ``mean``, the 95% t interval ``ci_low`` / ``ci_high``, the sign-flip ``p``, and ``n``."""
    d = np.asarray(values, dtype=np.float64) - np.asarray(baseline, dtype=np.float64)
    d = d[np.isfinite(d)]
    n = int(d.size)
    nan = float("nan")
    if n == 0:
        return {"mean": nan, "ci_low": nan, "ci_high": nan, "p": nan, "n": 0}
    mean = float(d.mean())
    half = t_quantile(0.975, n - 1) * float(d.std(ddof=1)) / math.sqrt(n) if n > 1 else nan
    return {"mean": mean, "ci_low": mean - half, "ci_high": mean + half, "p": sign_flip_pvalue(d), "n": n}
