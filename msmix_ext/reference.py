"""MS-Mix in plain, vectorised PyTorch: the contract (docs/design.md) written as directly as possible.

The tests compare the fused operators against this module, the benchmarks
time it as the baseline, and it runs where the extension could not be built.
Its random draws come from torch's generators (``torch.randperm`` over the
valid pairs, ``torch.distributions.Beta`` for ``lam0``),
so they differ from the fused ops' Philox draws; pass ``idx1``, ``idx2`` and
``lam0`` to :func:`fused_mix` to reproduce a fused call exactly.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ._types import MixOutput


def degenerate_similarity_range(dtype: torch.dtype) -> float:
    """The off-diagonal range of S at or below which S' is 0.5 everywhere (design.md §4.3):
    1e-8 in float64, 2^-16 in float32, where S carries ~1e-7 of rounding noise."""
    return 1e-8 if dtype == torch.float64 else 2.0**-16


def similarity(feats: Sequence[torch.Tensor]) -> torch.Tensor:
    """S' of design.md §4.1-4.3, ``[B, B]``, in float64 for float64 input and float32 otherwise."""
    acc = torch.float64 if feats[0].dtype == torch.float64 else torch.float32
    batch = feats[0].shape[0]
    z = [F.normalize(f.reshape(batch, -1).to(acc), dim=1, eps=1e-12) for f in feats]
    s = sum(zm @ zm.T for zm in z) / len(feats)
    # A GEMM need not round S_ij and S_ji alike (it does not on some CPUs); mirror the
    # upper triangle so that S' is exactly symmetric and B = 2 takes the constant rule.
    s = torch.triu(s) + torch.triu(s, diagonal=1).T
    off = ~torch.eye(batch, dtype=torch.bool, device=s.device)
    lo, hi = s[off].min(), s[off].max()
    s = torch.full_like(s, 0.5) if hi - lo <= degenerate_similarity_range(acc) else (s - lo) / (hi - lo)
    return s.masked_fill(~off, 0.0)


def valid_pairs(s: torch.Tensor, threshold: float) -> torch.Tensor:
    """Flat indices ``i * B + j`` of V = {i != j, S'_ij > threshold}, ascending."""
    off = ~torch.eye(s.shape[0], dtype=torch.bool, device=s.device)
    return torch.nonzero(((s > threshold) & off).reshape(-1)).reshape(-1)


def fallback_candidates(s: torch.Tensor, num_mix: int) -> torch.Tensor:
    """Flat indices of the ``min(2K, B(B-1)/2)`` pairs i < j with the largest S',
    ties broken by the smaller flat index, best first."""
    batch = s.shape[0]
    i, j = torch.triu_indices(batch, batch, offset=1, device=s.device)
    flat = i * batch + j  # ascending, so a stable sort keeps ties in flat order
    order = torch.sort(s[i, j], descending=True, stable=True).indices
    return flat[order[: min(2 * num_mix, flat.numel())]]


def sass_select(feats: Sequence[torch.Tensor], num_mix: int, threshold: float = 0.4,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """design.md §4: ``num_mix`` pairs ``(idx1, idx2)``, int64 ``[K]`` each."""
    s = similarity(feats)
    batch = s.shape[0]
    valid = valid_pairs(s, threshold)
    if valid.numel() >= num_mix:
        chosen = valid[torch.randperm(valid.numel(), generator=generator, device="cpu")[:num_mix]
                       .to(valid.device)]
    else:
        cand = fallback_candidates(s, num_mix)
        pick = torch.randperm(cand.numel(), generator=generator, device="cpu")[:num_mix]
        extra = torch.randint(cand.numel(), (num_mix - pick.numel(),), generator=generator, device="cpu")
        chosen = cand[torch.cat([pick, extra]).to(cand.device)]
    return chosen // batch, chosen % batch


def sample_lam0(num_mix: int, alpha: float, dtype: torch.dtype = torch.float32,
                device: torch.device | str = "cpu") -> torch.Tensor:
    """``lam0 ~ Beta(alpha, alpha)``, ``[K]``, from torch's global generator."""
    concentration = torch.tensor(float(alpha), dtype=torch.float64, device=device)
    beta = torch.distributions.Beta(concentration, concentration)
    return beta.sample((num_mix,)).to(dtype)


def mix_ratios(intensities: torch.Tensor, idx1: torch.Tensor, idx2: torch.Tensor,
               lam0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """design.md §3 and 5, written out apart from ``msmix_ext.ratios`` so that the tests
    compare two computations: ``lam [M, K]`` and ``lam_label [K]``."""
    w = intensities.abs()
    w = (w - w.min(dim=1, keepdim=True).values) / (w.max(dim=1, keepdim=True).values
                                                  - w.min(dim=1, keepdim=True).values + 1e-8)
    guided = (w[:, idx1] + 1e-8) / (w[:, idx1] + w[:, idx2] + 2e-8)
    lam = (lam0.to(w.dtype)[None, :] + guided) / 2
    return lam, lam.sum(dim=0) / lam.shape[0]


def mix(feats: Sequence[torch.Tensor], labels: torch.Tensor, idx1: torch.Tensor, idx2: torch.Tensor,
        lam: torch.Tensor, lam_label: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
    """design.md §6: ``cat(f_m, lam_m * f_m[idx1] + (1 - lam_m) * f_m[idx2])`` for every m, and labels."""

    def mix_one(x: torch.Tensor, ratio: torch.Tensor) -> torch.Tensor:
        r = ratio.to(x.dtype).reshape(-1, *([1] * (x.dim() - 1)))
        return torch.cat([x, r * x[idx1] + (1 - r) * x[idx2]])

    return [mix_one(f, lam[m]) for m, f in enumerate(feats)], mix_one(labels, lam_label)


def fused_mix(feats: Sequence[torch.Tensor], labels: torch.Tensor,
              intensities: torch.Tensor | Sequence[torch.Tensor], *, num_mix: int | None = None,
              threshold: float = 0.4, alpha: float = 2.0, generator: torch.Generator | None = None,
              idx1: torch.Tensor | None = None, idx2: torch.Tensor | None = None,
              lam0: torch.Tensor | None = None) -> MixOutput:
    """The whole pipeline (design.md §3-6). Pairs and ``lam0`` are drawn unless given."""
    batch = feats[0].shape[0]
    num_mix = batch if num_mix is None else num_mix
    if not isinstance(intensities, torch.Tensor):
        intensities = torch.stack([t.reshape(-1) for t in intensities])
    if idx1 is None or idx2 is None:
        idx1, idx2 = sass_select(feats, num_mix, threshold, generator)
    if lam0 is None:
        lam0 = sample_lam0(idx1.numel(), alpha, device=intensities.device)
    lam, lam_label = mix_ratios(intensities, idx1, idx2, lam0)
    out_feats, out_labels = mix(feats, labels, idx1, idx2, lam, lam_label)
    return MixOutput(out_feats, out_labels, idx1, idx2, lam, lam_label, labels[idx1], labels[idx2], lam0)
