"""The fused operators' Python API: SASS, mixing, and the whole MS-Mix call."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist

from . import ops as _ops
from ._build import require_extension
from ._types import MixOutput
from .distributed import check_pool, fold_rank, global_fused_mix, process_group_active
from .ratios import stack_intensities

_SEED_LIMIT = 2**63 - 1


def _feature_list(feats: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    if isinstance(feats, torch.Tensor):
        raise TypeError("feats must be a sequence of M tensors (one per modality), got a single tensor")
    return list(feats)


def seed_tensor(seed: int | torch.Tensor | None = None, generator: torch.Generator | None = None,
                device: torch.device | str = "cpu") -> torch.Tensor:
    """The int64 seed tensor of one call.

    An explicit ``seed`` (an int in ``[0, 2**63 - 1]`` or a one-element int64 tensor)
    wins; otherwise a seed is drawn from ``generator`` or from torch's default
    generator on ``device``, so ``torch.manual_seed`` makes runs reproducible. The
    seed stays a tensor so that the kernels read it without a host sync.
    """
    if seed is not None and generator is not None:
        raise ValueError("pass seed or generator, not both")
    if isinstance(seed, torch.Tensor):
        if seed.dtype != torch.long or seed.numel() != 1:
            raise ValueError(f"seed must be a one-element int64 tensor, got {seed.dtype} {list(seed.shape)}")
        return seed if seed.dim() == 0 else seed.reshape(())
    if seed is not None:
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"seed must be an int or an int64 tensor, got {type(seed).__name__}")
        if not 0 <= seed <= _SEED_LIMIT:
            raise ValueError(f"seed must be in [0, 2**63 - 1], got {seed}")
        return torch.tensor(seed, dtype=torch.long)
    if generator is not None:
        device = generator.device
    return torch.randint(0, _SEED_LIMIT, (), generator=generator, dtype=torch.long, device=device)


def similarity(feats: Sequence[torch.Tensor]) -> torch.Tensor:
    """SASS similarity S' (design.md §4.1-4.3).

    Args:
        feats: M tensors ``[B, D_m]`` or ``[B, T_m, D_m]``.
    Returns:
        ``[B, B]``: the mean over modalities of the cosine similarities of the flattened
        rows, min-max normalised over the off-diagonal, with a zero diagonal
        (0.5 everywhere off the diagonal when all similarities are equal). float64
        for float64 features, float32 otherwise. NaN or Inf features raise on the CPU;
        on CUDA their rows and columns of S' are NaN (no host-synchronising check).
        Not differentiable (a backward pass through it raises);
        :func:`msmix_ext.reference.similarity` is.
    """
    require_extension()
    return _ops.similarity(_feature_list(feats))


def sass_select(feats: Sequence[torch.Tensor], num_mix: int, threshold: float = 0.4,
                seed: int | torch.Tensor = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Sentiment-aware sample selection (design.md §4): ``num_mix`` pairs of similar samples.

    Pairs are drawn uniformly without replacement from the ordered pairs ``(i, j)``,
    ``i != j``, with ``S'_ij > threshold``; when fewer than ``num_mix`` exist, from the
    ``min(2K, B(B-1)/2)`` most similar unordered pairs instead. The draw is a pure
    function of the inputs and ``seed``; CPU and CUDA make the same draw from the same
    S' (last-bit differences in S' can flip a pair lying at the threshold).
    NaN or Inf features raise on the CPU; on CUDA (where a check would need a host
    sync) such a sample's similarities are NaN, so it is never drawn as a valid pair.

    Returns:
        ``(idx1, idx2)``, int64 ``[num_mix]`` each, on the features' device.
    """
    require_extension()
    feats = _feature_list(feats)
    idx1, idx2, _ = _ops.sass_select(feats, num_mix, float(threshold), seed_tensor(seed), 2.0)
    return idx1, idx2


def mix(feats: Sequence[torch.Tensor], labels: torch.Tensor, idx1: torch.Tensor, idx2: torch.Tensor,
        lam: torch.Tensor, lam_label: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Fused per-modality mixing (design.md §6), differentiable in feats, labels, lam, lam_label.

    Args:
        feats: M tensors ``[B, ...]``; labels ``[B]`` or ``[B, ...]``.
        idx1, idx2: int64 ``[K]``, values in ``[0, B)``.
        lam: ``[M, K]``, the weight of ``idx1`` per modality; lam_label ``[K]``.
    Returns:
        ``([cat(f_m, lam_m * f_m[idx1] + (1 - lam_m) * f_m[idx2]) for m], mixed labels)``,
        each ``[B + K, ...]``, written by one kernel per tensor.

    Precision: rows are mixed in float32 (float64 for float64 input) and rounded once, so
    for float16/bfloat16 inputs ``|out - exact| <= eps * |exact| + 2^-22 * (|x_i| + |x_j|)``
    elementwise, ``eps`` = 2^-11 (float16) or 2^-8 (bfloat16); the clean rows are exact copies.
    """
    require_extension()
    feats_out, labels_out = _ops.mix(_feature_list(feats), labels, idx1, idx2, lam, lam_label)
    return list(feats_out), labels_out


def _check_labels(labels: torch.Tensor, batch: int) -> None:
    if labels.dim() == 0 or labels.shape[0] != batch or not (
            labels.dim() == 1 or (labels.dim() == 2 and labels.shape[1] == 1)):
        raise ValueError(f"labels must be [B] or [B, 1] with B = {batch}, got {list(labels.shape)}")


def fused_mix(feats: Sequence[torch.Tensor], labels: torch.Tensor,
              intensities: torch.Tensor | Sequence[torch.Tensor], *, num_mix: int | None = None,
              threshold: float = 0.4, alpha: float = 2.0, seed: int | torch.Tensor | None = None,
              generator: torch.Generator | None = None, pool: str = "local", group=None) -> MixOutput:
    """MS-Mix on one batch: SASS pairs, intensity-guided ratios, fused mixing (design.md §3-6).

    Args:
        feats: M tensors ``[B, D_m]`` or ``[B, T_m, D_m]`` (one dtype and device).
        labels: ``[B]`` or ``[B, 1]`` regression targets.
        intensities: ``[M, B]`` (or M tensors ``[B]``), e.g. from :class:`IntensityPredictor`;
            gradients flow back into them through the ratios.
        num_mix: K, the number of mixed samples (default B).
        threshold: SASS similarity threshold in ``[0, 1)``.
        alpha: Beta(alpha, alpha) parameter of the base ratio, > 0.
        seed / generator: the call's randomness; by default a seed is drawn from torch's
            generator on the features' device. Under an initialised process group a drawn
            seed is folded with the rank, so ranks seeded alike draw differently; an
            explicit ``seed`` is used as given.
        pool: ``"local"`` mixes this process's batch. ``"global"`` (under torch.distributed,
            equal B on every rank of ``group``) gives the result of ``fused_mix`` on the
            concatenation of the ranks' batches in rank order with ``num_mix = world * K``
            and one seed (rank 0's when drawn; pass an explicit seed alike on every rank):
            this rank's clean rows, then its K mixed rows of that result; ``idx1`` / ``idx2``
            index the concatenated batch. Gradients reach every rank's feats, labels and
            intensities, and the ranks' losses summed have the one-process gradients (see
            :mod:`msmix_ext.distributed`). Without a process group it equals ``"local"``.
        group: the process group of ``pool="global"`` (default: the world).
    Returns:
        :class:`MixOutput` with combined ``feats`` / ``labels`` (``[B + K, ...]``), ``idx1``,
        ``idx2``, ``lam [M, K]``, ``lam_label [K]``, ``labels1``, ``labels2``, ``lam0``.
    """
    require_extension()
    check_pool(pool)
    feats = _feature_list(feats)
    if not feats:
        raise ValueError("feats must hold at least one modality, got M = 0")
    batch = feats[0].shape[0]
    _check_labels(labels, batch)
    num_mix = batch if num_mix is None else num_mix
    intensities = stack_intensities(intensities, len(feats), batch)
    seed_drawn = seed is None
    seed = seed_tensor(seed, generator, feats[0].device)
    distributed = process_group_active()
    if distributed and pool == "global":
        return global_fused_mix(feats, labels, intensities, num_mix=num_mix, threshold=threshold, seed=seed,
                                seed_drawn=seed_drawn, alpha=alpha, group=group)
    if distributed and seed_drawn:
        seed = fold_rank(seed, dist.get_rank())
    feats_out, labels_out, idx1, idx2, lam, lam_label, lam0, labels1, labels2 = _ops.fused_mix(
        feats, labels, intensities, num_mix, float(threshold), seed, float(alpha))
    return MixOutput(list(feats_out), labels_out, idx1, idx2, lam, lam_label, labels1, labels2, lam0)


def combine_masks(masks: Sequence[torch.Tensor | None], out: MixOutput) -> list[torch.Tensor | None]:
    """Padding masks ``[B, T_m]`` (True = valid) extended to the ``B + K`` combined rows:
    a mixed token is valid where either source token is."""
    return [None if m is None else torch.cat([m, m[out.idx1] | m[out.idx2]]) for m in masks]
