"""Baseline mixup augmentations and MS-Mix ablations, in the API of :func:`fused_mix`.

Each returns a :class:`MixOutput` whose ``B + K`` rows feed the backbone and
whose ``lam_label`` / ``labels1`` / ``labels2`` feed :func:`msmix_objective`,
so a training loop swaps augmentations without other changes. The pair-based
ones reuse the fused mixing operator; their random draws come from torch's
global generator (``torch.manual_seed`` makes them reproducible).

- ``none``: the batch unchanged (K = 0).
- ``mixup`` (Zhang et al. 2018): pairs ``(b, perm(b))``, one Beta(alpha, alpha) ratio
  per pair shared by every modality and the label. ``manifold`` mixup is the same
  mix applied to a hidden layer chosen at random by the training loop.
- ``multimix`` (Venkataramanan et al. 2023): each mixed sample is a convex combination
  of the whole batch with Dirichlet(alpha) weights.
- ``msmix``: :func:`fused_mix`; ``msmix-no-sass`` draws the pairs uniformly instead of
  by similarity; ``msmix-no-sig`` uses ``lam = lam0`` for every modality;
  ``msmix-no-sal`` is ``msmix`` trained with SAL weight 0.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ._types import MixOutput
from .mixing import _check_labels, fused_mix, mix, seed_tensor
from .ratios import mix_ratios, stack_intensities

AUGMENTATIONS = ("none", "mixup", "manifold", "multimix", "msmix", "msmix-no-sass", "msmix-no-sig",
                 "msmix-no-sal")


def _beta(num: int, alpha: float, device) -> torch.Tensor:
    if not alpha > 0:
        raise ValueError(f"alpha must be > 0, got {alpha}")
    a = torch.tensor(float(alpha), device=device)
    return torch.distributions.Beta(a, a).sample((num,))


def random_pairs(batch: int, num_mix: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """``num_mix`` pairs ``i != j`` drawn uniformly (with replacement) from all ordered pairs."""
    if batch < 2:
        raise ValueError(f"pairing needs a batch of at least 2 samples, got B = {batch}")
    idx1 = torch.randint(batch, (num_mix,), device=device)
    idx2 = (idx1 + torch.randint(1, batch, (num_mix,), device=device)) % batch
    return idx1, idx2


def _pair_output(feats, labels, idx1, idx2, lam, lam_label, lam0) -> MixOutput:
    out_feats, out_labels = mix(feats, labels, idx1, idx2, lam, lam_label)
    return MixOutput(out_feats, out_labels, idx1, idx2, lam, lam_label, labels[idx1], labels[idx2], lam0)


def no_mix(feats: Sequence[torch.Tensor], labels: torch.Tensor) -> MixOutput:
    """The batch unchanged, as a :class:`MixOutput` with K = 0."""
    empty = torch.empty(0, dtype=torch.long, device=labels.device)
    none = labels.new_empty((0,))
    return MixOutput(list(feats), labels, empty, empty, labels.new_empty((len(feats), 0)), none,
                     labels[empty], labels[empty], none)


def mixup(feats: Sequence[torch.Tensor], labels: torch.Tensor, *, alpha: float = 2.0) -> MixOutput:
    """Input mixup: ``K = B`` pairs ``(b, perm(b))`` with one ratio shared by all modalities."""
    feats, batch = list(feats), labels.shape[0]
    idx1 = torch.arange(batch, device=labels.device)
    idx2 = torch.randperm(batch, device=labels.device)
    lam0 = _beta(batch, alpha, labels.device)
    lam = lam0.to(labels.dtype).expand(len(feats), batch)
    return _pair_output(feats, labels, idx1, idx2, lam, lam[0], lam0)


def multimix(feats: Sequence[torch.Tensor], labels: torch.Tensor, *, num_mix: int | None = None,
             alpha: float = 1.0) -> MixOutput:
    """MultiMix: mixed row ``k`` is ``sum_b w_kb x_b`` with ``w_k ~ Dirichlet(alpha 1_B)``.

    The mixed label ``sum_b w_kb y_b`` is returned as both ``labels1`` and ``labels2``
    (``lam_label = 1``), so :func:`msmix_objective` regresses it directly; ``idx1`` is
    each row's largest weight, ``lam`` that weight.
    """
    feats, batch = list(feats), labels.shape[0]
    num_mix = batch if num_mix is None else num_mix
    conc = torch.full((batch,), float(alpha), device=labels.device)
    weights = torch.distributions.Dirichlet(conc).sample((num_mix,))  # [K, B]
    out_feats = [torch.cat([f, torch.einsum("kb,b...->k...", weights.to(f.dtype), f)]) for f in feats]
    y = labels.reshape(batch, -1)
    mixed_y = (weights.to(y.dtype) @ y).reshape(num_mix, *labels.shape[1:])
    top = weights.max(dim=1)
    ones = labels.new_ones((num_mix,))
    return MixOutput(out_feats, torch.cat([labels, mixed_y]), top.indices, top.indices,
                     top.values.expand(len(feats), num_mix), ones, mixed_y, mixed_y, top.values)


def msmix_no_sass(feats: Sequence[torch.Tensor], labels: torch.Tensor, intensities: torch.Tensor, *,
                  num_mix: int | None = None, alpha: float = 2.0) -> MixOutput:
    """MS-Mix with uniformly random pairs instead of SASS; SIG ratios kept."""
    feats, batch = list(feats), labels.shape[0]
    num_mix = batch if num_mix is None else num_mix
    intensities = stack_intensities(intensities, len(feats), batch)
    idx1, idx2 = random_pairs(batch, num_mix, labels.device)
    lam0 = _beta(num_mix, alpha, labels.device)
    lam, lam_label = mix_ratios(intensities, idx1, idx2, lam0)
    return _pair_output(feats, labels, idx1, idx2, lam, lam_label, lam0)


def msmix_no_sig(feats: Sequence[torch.Tensor], labels: torch.Tensor, *, num_mix: int | None = None,
                 threshold: float = 0.4, alpha: float = 2.0) -> MixOutput:
    """MS-Mix with SASS pairs but ``lam = lam0`` for every modality (no SIG)."""
    feats, batch = list(feats), labels.shape[0]
    num_mix = batch if num_mix is None else num_mix
    # the same SASS draw as fused_mix (pairs and lam0 from one seed), without the SIG term
    idx1, idx2, lam0 = torch.ops.msmix.sass_select(feats, num_mix, float(threshold),
                                                   seed_tensor(device=feats[0].device), float(alpha))
    lam = lam0.to(labels.dtype).expand(len(feats), num_mix)
    return _pair_output(feats, labels, idx1, idx2, lam, lam[0], lam0)


def augment(name: str, feats: Sequence[torch.Tensor], labels: torch.Tensor,
            intensities: torch.Tensor | None = None, *, num_mix: int | None = None, alpha: float = 2.0,
            threshold: float = 0.4, pool: str = "local", group=None) -> MixOutput:
    """Dispatch by augmentation name (see :data:`AUGMENTATIONS`); ``manifold`` mixes like ``mixup``.

    ``pool`` / ``group`` go to :func:`fused_mix` (``msmix``, ``msmix-no-sal``); the other
    augmentations mix within the rank's own batch."""
    _check_labels(labels, feats[0].shape[0])
    if name == "none":
        return no_mix(feats, labels)
    if name in ("mixup", "manifold"):
        return mixup(feats, labels, alpha=alpha)
    if name == "multimix":
        return multimix(feats, labels, num_mix=num_mix, alpha=alpha)
    if name == "msmix-no-sig":
        return msmix_no_sig(feats, labels, num_mix=num_mix, threshold=threshold, alpha=alpha)
    if name in ("msmix", "msmix-no-sal", "msmix-no-sass"):
        if intensities is None:
            raise ValueError(f"augmentation {name!r} needs SIG intensities")
        if name == "msmix-no-sass":
            return msmix_no_sass(feats, labels, intensities, num_mix=num_mix, alpha=alpha)
        return fused_mix(feats, labels, intensities, num_mix=num_mix, threshold=threshold, alpha=alpha,
                         pool=pool, group=group)
    raise ValueError(f"unknown augmentation {name!r}; choose from {', '.join(AUGMENTATIONS)}")
