"""Baseline mixup augmentations and MS-Mix ablations: one registry, :data:`REGISTRY`.

Each :class:`Augmentation` states how it mixes (its ``mix`` function, in the API of
:func:`msmix_ext.fused_mix`, and where: the feature stage or a hidden layer of the head)
and what it adds to the loss (the mixed-sample term, and SAL or not). A training loop
reads these fields and never tests augmentation names.

Every ``mix`` returns a :class:`MixOutput` whose ``B + K`` rows feed the backbone and
whose ``lam_label`` / ``labels1`` / ``labels2`` feed :func:`msmix_ext.msmix_objective`.
Random draws come from torch's global generator (``torch.manual_seed`` makes them
reproducible). Only the public ``msmix_ext`` API is used here.

- ``none``: the batch unchanged (K = 0).
- ``mixup`` (Zhang et al. 2018): pairs ``(b, perm(b))``, one Beta(alpha, alpha) ratio
  per pair shared by every modality and the label. ``manifold`` mixup is the same
  mix applied to a hidden layer of the head drawn uniformly per batch.
- ``multimix`` (Venkataramanan et al. 2023): each mixed sample is a convex combination
  of the whole batch with Dirichlet(alpha) weights.
- ``msmix``: :func:`msmix_ext.fused_mix` (SASS pairs, SIG ratios) plus SAL;
  ``msmix-no-sass`` draws the pairs uniformly instead of by similarity;
  ``msmix-no-sig`` uses ``lam = lam0`` for every modality (no SIG, so no SAL);
  ``msmix-no-sal`` is ``msmix`` without the SAL term.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

# Public names of msmix_ext, imported from their modules because msmix_ext.module imports this one.
from ._types import MixOutput
from .mixing import fused_mix, mix, sass_select, seed_tensor
from .ratios import mix_ratios, stack_intensities

__all__ = ["AUGMENTATIONS", "Augmentation", "REGISTRY", "augment", "get", "mixup", "msmix_no_sass", "msmix_no_sig",
           "multimix", "no_mix", "random_pairs"]


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


def msmix_no_sass(feats: Sequence[torch.Tensor], labels: torch.Tensor, intensities, *,
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
    """MS-Mix with SASS pairs but ``lam = lam0 ~ Beta(alpha, alpha)`` for every modality (no SIG)."""
    feats, batch = list(feats), labels.shape[0]
    num_mix = batch if num_mix is None else num_mix
    idx1, idx2 = sass_select(feats, num_mix, threshold, seed=seed_tensor(device=feats[0].device))
    lam0 = _beta(num_mix, alpha, labels.device)
    lam = lam0.to(labels.dtype).expand(len(feats), num_mix)
    return _pair_output(feats, labels, idx1, idx2, lam, lam[0], lam0)


# --- the registry ------------------------------------------------------------------------------

MixFunction = Callable[..., MixOutput]
"""``(feats, labels, intensities, *, num_mix, alpha, threshold, pool, group) -> MixOutput``."""


@dataclass(frozen=True)
class Augmentation:
    """What one augmentation does to a training step.

    Attributes:
        name: the CLI name.
        mix: how it mixes (see :data:`MixFunction`); ``intensities`` is ``None`` unless ``uses_sig``.
        at_hidden_layer: mix a hidden layer of the head drawn uniformly per batch (Manifold
            Mixup) instead of the feature stage's outputs.
        uses_sig: needs SIG intensities, so the trainer builds :class:`msmix_ext.MSMix`.
        adds_sal: the loss adds SAL (weighted by the SAL weight) to the clean and mixed terms.
        pools_across_ranks: under torchrun, honours ``pool="global"`` (else mixes within the rank).
    """

    name: str
    mix: MixFunction
    at_hidden_layer: bool = False
    uses_sig: bool = False
    adds_sal: bool = False
    pools_across_ranks: bool = False


def _fused(feats, labels, intensities, *, num_mix, alpha, threshold, pool, group) -> MixOutput:
    return fused_mix(feats, labels, intensities, num_mix=num_mix, threshold=threshold, alpha=alpha,
                     pool=pool, group=group)


REGISTRY: dict[str, Augmentation] = {a.name: a for a in (
    Augmentation("none", lambda feats, labels, intensities, **kw: no_mix(feats, labels)),
    Augmentation("mixup", lambda feats, labels, intensities, *, alpha, **kw: mixup(feats, labels, alpha=alpha)),
    Augmentation("manifold", lambda feats, labels, intensities, *, alpha, **kw: mixup(feats, labels, alpha=alpha),
                 at_hidden_layer=True),
    Augmentation("multimix", lambda feats, labels, intensities, *, num_mix, alpha, **kw:
                 multimix(feats, labels, num_mix=num_mix, alpha=alpha)),
    Augmentation("msmix", _fused, uses_sig=True, adds_sal=True, pools_across_ranks=True),
    Augmentation("msmix-no-sass", lambda feats, labels, intensities, *, num_mix, alpha, **kw:
                 msmix_no_sass(feats, labels, intensities, num_mix=num_mix, alpha=alpha),
                 uses_sig=True, adds_sal=True),
    Augmentation("msmix-no-sig", lambda feats, labels, intensities, *, num_mix, alpha, threshold, **kw:
                 msmix_no_sig(feats, labels, num_mix=num_mix, threshold=threshold, alpha=alpha)),
    Augmentation("msmix-no-sal", _fused, uses_sig=True, pools_across_ranks=True),
)}

AUGMENTATIONS = tuple(REGISTRY)


def get(name: str) -> Augmentation:
    """The registry entry of ``name``; a ``ValueError`` lists the choices for any other name."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown augmentation {name!r}; choose from {', '.join(AUGMENTATIONS)}") from None


def augment(name: str, feats: Sequence[torch.Tensor], labels: torch.Tensor, intensities=None, *,
            num_mix: int | None = None, alpha: float = 2.0, threshold: float = 0.4, pool: str = "local",
            group=None) -> MixOutput:
    """Mix ``feats`` / ``labels`` as the augmentation ``name`` does (``manifold`` mixes like ``mixup``).

    ``intensities`` (``[M, B]``) is required by the SIG augmentations; ``pool`` / ``group``
    reach :func:`fused_mix` for those with ``pools_across_ranks``, the others mix within
    the rank's own batch."""
    entry = get(name)
    feats = list(feats)
    if labels.dim() == 0 or labels.shape[0] != feats[0].shape[0] or not (
            labels.dim() == 1 or (labels.dim() == 2 and labels.shape[1] == 1)):
        raise ValueError(f"labels must be [B] or [B, 1] with B = {feats[0].shape[0]}, got {list(labels.shape)}")
    if entry.uses_sig and intensities is None:
        raise ValueError(f"augmentation {name!r} needs SIG intensities")
    return entry.mix(feats, labels, intensities if entry.uses_sig else None, num_mix=num_mix, alpha=alpha,
                     threshold=threshold, pool=pool if entry.pools_across_ranks else "local", group=group)
