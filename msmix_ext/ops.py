"""The torch.ops.msmix operators: one thin wrapper per operator and their fake
(meta) kernels.

The schemas are declared in csrc/msmix.cpp and the kernels registered per
device in csrc/cpu and csrc/cuda (fused_mix: csrc/fused.cpp); autograd is C++
at the Autograd key, with backwards that are operators themselves
(msmix::mix_backward, msmix::fused_mix_backward) so that compiled graphs can
trace them. This module adds what torch.compile needs: shape-only fake
kernels. The wrappers take exactly the schema's arguments and check nothing:
the kernels validate (csrc/checks.h).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ._build import HAS_EXTENSION


def similarity(feats: Sequence[torch.Tensor]) -> torch.Tensor:
    return torch.ops.msmix.similarity(feats)


def sass_select(feats: Sequence[torch.Tensor], num_mix: int, threshold: float, seed: torch.Tensor,
                alpha: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(idx1, idx2, lam0)``."""
    return torch.ops.msmix.sass_select(feats, num_mix, threshold, seed, alpha)


def mix(feats: Sequence[torch.Tensor], labels: torch.Tensor, idx1: torch.Tensor, idx2: torch.Tensor,
        lam: torch.Tensor, lam_label: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
    """``(feats_out, labels_out)``."""
    return torch.ops.msmix.mix(feats, labels, idx1, idx2, lam, lam_label)


def fused_mix(feats: Sequence[torch.Tensor], labels: torch.Tensor, intensities: torch.Tensor, num_mix: int,
              threshold: float, seed: torch.Tensor, alpha: float):
    """``(feats_out, labels_out, idx1, idx2, lam, lam_label, lam0, labels1, labels2)``."""
    return torch.ops.msmix.fused_mix(feats, labels, intensities, num_mix, threshold, seed, alpha)


def _accumulate_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _mixed_like(t: torch.Tensor, num_mix) -> torch.Tensor:
    return t.new_empty((t.shape[0] + num_mix, *t.shape[1:]))


def _fake_similarity(feats: Sequence[torch.Tensor]) -> torch.Tensor:
    batch = feats[0].shape[0]
    return feats[0].new_empty((batch, batch), dtype=_accumulate_dtype(feats[0].dtype))


def _fake_sass_select(feats, num_mix, threshold, seed, alpha):
    torch._check(num_mix >= 1, lambda: f"sass_select: num_mix must be >= 1, got {num_mix}")
    idx = feats[0].new_empty((num_mix,), dtype=torch.long)
    lam0 = feats[0].new_empty((num_mix,), dtype=_accumulate_dtype(feats[0].dtype))
    return idx, torch.empty_like(idx), lam0


def _fake_mix(feats, labels, idx1, idx2, lam, lam_label):
    num_mix = idx1.shape[0]
    return [_mixed_like(f, num_mix) for f in feats], _mixed_like(labels, num_mix)


def _fake_mix_backward(grad_feats_out, grad_labels_out, feats, labels, idx1, idx2, lam, lam_label,
                       output_mask):
    need_feats, need_labels, need_lam, need_lam_label = output_mask
    num_mix = idx1.shape[0]

    def unmixed(g: torch.Tensor) -> torch.Tensor:
        return g.new_empty((g.shape[0] - num_mix, *g.shape[1:]))

    grad_feats = [unmixed(g) for g in grad_feats_out] if need_feats else []
    grad_labels = unmixed(grad_labels_out) if need_labels else grad_labels_out.new_empty((0,))
    grad_lam = lam.new_empty(tuple(lam.shape) if need_lam else (0, 0))
    grad_lam_label = lam_label.new_empty(tuple(lam_label.shape) if need_lam_label else (0,))
    return grad_feats, grad_labels, grad_lam, grad_lam_label


def _fake_fused_mix(feats, labels, intensities, num_mix, threshold, seed, alpha):
    idx1, idx2, lam0 = _fake_sass_select(feats, num_mix, threshold, seed, alpha)
    feats_out, labels_out = _fake_mix(feats, labels, idx1, idx2, None, None)
    lam = intensities.new_empty((intensities.shape[0], num_mix))
    picked = labels.new_empty((num_mix, *labels.shape[1:]))
    return (feats_out, labels_out, idx1, idx2, lam, intensities.new_empty((num_mix,)), lam0, picked,
            torch.empty_like(picked))


def _fake_fused_mix_backward(grad_feats_out, grad_labels_out, grad_lam, grad_lam_label, grad_labels1,
                             grad_labels2, feats, labels, intensities, idx1, idx2, lam, lam_label,
                             output_mask):
    need_feats, need_labels, need_intensities = output_mask
    grad_feats, grad_labels, _, _ = _fake_mix_backward(grad_feats_out, grad_labels_out, feats, labels, idx1,
                                                       idx2, lam, lam_label, [need_feats, need_labels, False,
                                                                              False])
    grad_intensities = intensities.new_empty(tuple(intensities.shape) if need_intensities else (0,))
    return grad_feats, grad_labels, grad_intensities


if HAS_EXTENSION:
    torch.library.register_fake("msmix::similarity")(_fake_similarity)
    torch.library.register_fake("msmix::sass_select")(_fake_sass_select)
    torch.library.register_fake("msmix::mix")(_fake_mix)
    torch.library.register_fake("msmix::mix_backward")(_fake_mix_backward)
    # Autograd is in C++ at the Autograd key: mix (csrc/autograd/mix_autograd.cpp), fused_mix
    # (csrc/fused.cpp); similarity, mix_backward and fused_mix_backward have no derivative
    # (csrc/msmix.cpp).
    torch.library.register_fake("msmix::fused_mix")(_fake_fused_mix)
    torch.library.register_fake("msmix::fused_mix_backward")(_fake_fused_mix_backward)
