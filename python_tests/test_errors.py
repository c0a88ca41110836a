"""Every bad input fails with a message that names the argument and the expectation."""

from __future__ import annotations

import re

import pytest
import torch

import msmix_ext as mx

from conftest import requires_extension

pytestmark = requires_extension


def _feats():
    return [torch.randn(6, 4), torch.randn(6, 2, 3)]


def _mix_args(**override):
    args = dict(feats=_feats(), labels=torch.randn(6), idx1=torch.tensor([0, 1, 2]), idx2=torch.tensor([3, 4, 5]),
                lam=torch.rand(2, 3), lam_label=torch.rand(3))
    args.update(override)
    return args


SASS_CASES = {
    "B < 2": (dict(feats=[torch.randn(1, 4)]), r"at least 2 samples to pair, got B = 1"),
    "batch sizes disagree": (dict(feats=[torch.randn(6, 4), torch.randn(5, 3)]), r"feats\[1\] must have batch size 6 \(that of feats\[0\]\), got 5"),
    "M = 0": (dict(feats=[]), r"at least one modality, got M = 0"),
    "NaN": (dict(feats=[torch.randn(6, 4), torch.tensor(float("nan")).expand(6, 3).clone()]), r"feats\[1\] contains NaN or Inf"),
    "Inf": (dict(feats=[torch.full((6, 4), float("inf"))]), r"feats\[0\] contains NaN or Inf"),
    "num_mix < 1": (dict(num_mix=0), r"num_mix must be >= 1, got 0"),
    "threshold < 0": (dict(threshold=-0.1), r"threshold must be in \[0, 1\), got -0.1"),
    "threshold >= 1": (dict(threshold=1.0), r"threshold must be in \[0, 1\), got 1"),
    "integer feats": (dict(feats=[torch.ones(6, 4, dtype=torch.long)]), r"feats\[0\] must be float32, float64, float16 or bfloat16, got Long"),
    "mixed dtypes": (dict(feats=[torch.randn(6, 4), torch.randn(6, 4).double()]), r"feats\[1\] has dtype Double but feats\[0\] has Float"),
    "4-D feats": (dict(feats=[torch.randn(6, 2, 2, 2)]), r"feats\[0\] must be \[B, D\] or \[B, T, D\], got 4 dimensions"),
    "seed out of range": (dict(seed=2**64), r"seed must be in \[0, 2\*\*63 - 1\]"),
    "seed negative": (dict(seed=-5), r"seed must be in \[0, 2\*\*63 - 1\]"),
    "seed float": (dict(seed=1.5), r"seed must be an int or an int64 tensor"),
    "single tensor": (dict(feats=torch.randn(6, 4)), r"feats must be a sequence of M tensors"),
}


@pytest.mark.parametrize("case", SASS_CASES.keys())
def test_sass_select_errors(case):
    override, message = SASS_CASES[case]
    args = dict(feats=_feats(), num_mix=4, threshold=0.4, seed=0)
    args.update(override)
    with pytest.raises((RuntimeError, ValueError, TypeError), match=message):
        mx.sass_select(**args)


def test_sass_select_refuses_a_batch_beyond_the_sort_limit(device):
    # 46341^2 > 2^31 - 1, the most one CUDA sort holds; both devices refuse it before allocating
    # anything quadratic in B (these feats take 185 KB, S' would take 8.6 GB).
    feats = [torch.zeros(46341, 1, device=device)]
    message = (r"{}: batch size B = 46341 is too large; B must be <= 46340 because the CUDA kernel "
               r"sorts all B\*B ordered pairs in one sort of at most 2\^31 - 1 elements")
    with pytest.raises(RuntimeError, match=message.format("sass_select")):
        torch.ops.msmix.sass_select(feats, 4, 0.4, torch.tensor(0), 2.0)
    with pytest.raises(RuntimeError, match=message.format("fused_mix")):
        mx.fused_mix(feats, torch.zeros(46341, device=device), torch.zeros(1, 46341, device=device), num_mix=4)


def test_similarity_errors():
    with pytest.raises(RuntimeError, match=r"similarity: needs a batch of at least 2 samples to pair, got B = 1"):
        mx.similarity([torch.randn(1, 3)])
    with pytest.raises(RuntimeError, match=r"similarity: feats\[0\] must be float32"):
        mx.similarity([torch.ones(3, 3, dtype=torch.int32)])


MIX_CASES = {
    "lam shape": (dict(lam=torch.rand(3, 3)), r"lam must be \[M, K\] = \[2, 3\], got \[3, 3\]"),
    "lam_label shape": (dict(lam_label=torch.rand(4)), r"lam_label must be \[K\] = \[3\], got \[4\]"),
    "idx2 length": (dict(idx2=torch.tensor([0, 1])), r"idx2 must be \[K\] with K = 3, got \[2\]"),
    "idx dtype": (dict(idx1=torch.tensor([0, 1, 2], dtype=torch.int32)), r"idx1 must be int64, got Int"),
    "index out of range": (dict(idx1=torch.tensor([0, 6, 2])), r"idx1\[1\] = 6 is out of range for a batch of B = 6"),
    "negative index": (dict(idx2=torch.tensor([0, -1, 2])), r"idx2\[1\] = -1 is out of range"),
    "labels batch": (dict(labels=torch.randn(5)), r"labels must be \[B\] or \[B, ...\] with B = 6, got \[5\]"),
    "integer labels": (dict(labels=torch.ones(6, dtype=torch.long)), r"labels must be a floating tensor, got Long"),
    "lam dtypes differ": (dict(lam_label=torch.rand(3).double()), r"lam_label has dtype Double but lam has Float"),
    "integer lam": (dict(lam=torch.ones(2, 3, dtype=torch.long)), r"lam must be floating, got Long"),
    "batch sizes disagree": (dict(feats=[torch.randn(6, 4), torch.randn(7, 3)]), r"feats\[1\] must have batch size 6"),
    "M = 0": (dict(feats=[], lam=torch.rand(0, 3)), r"at least one modality, got M = 0"),
    "mixed dtypes": (dict(feats=[torch.randn(6, 4), torch.randn(6, 3).half()]), r"feats\[1\] has dtype Half but feats\[0\] has Float"),
    "non-floating feats": (dict(feats=[torch.ones(6, 4, dtype=torch.int64), torch.ones(6, 3, dtype=torch.int64)]), r"feats\[0\] must be float32"),
}


@pytest.mark.parametrize("case", MIX_CASES.keys())
def test_mix_errors(case):
    override, message = MIX_CASES[case]
    with pytest.raises((RuntimeError, ValueError), match=message):
        mx.mix(**_mix_args(**override))


def test_mixed_devices_error():
    if not torch.cuda.is_available():
        pytest.skip("needs a second device")
    with pytest.raises(RuntimeError, match=r"all tensors must be on one device"):
        mx.mix(**_mix_args(lam=torch.rand(2, 3, device="cuda")))


def test_similarity_backward_is_refused_clearly():
    feats = [torch.randn(5, 3, requires_grad=True)]
    s = mx.similarity(feats)
    with pytest.raises(RuntimeError, match=r"derivative for msmix::similarity is not implemented"):
        s.sum().backward()


def test_sass_select_accepts_features_that_require_grad():
    feats = [f.requires_grad_() for f in _feats()]
    idx1, idx2 = mx.sass_select(feats, 4)
    assert not idx1.requires_grad and idx1.dtype == torch.long


def test_second_derivative_through_mix_is_refused_clearly():
    feats = [torch.randn(6, 4, requires_grad=True)]
    lam = torch.rand(1, 3, requires_grad=True)
    out, _ = mx.mix(feats, torch.randn(6), torch.tensor([0, 1, 2]), torch.tensor([3, 4, 5]), lam, lam[0])
    (g,) = torch.autograd.grad(out[0].square().sum(), lam, create_graph=True)
    with pytest.raises(RuntimeError, match=r"derivative for msmix::mix_backward is not implemented"):
        torch.autograd.grad(g.sum(), feats)


def test_similarity_nan_error_names_similarity():
    with pytest.raises(RuntimeError, match=r"^similarity: feats\[0\] contains NaN or Inf"):
        mx.similarity([torch.full((3, 2), float("nan"))])


@pytest.mark.parametrize("intensities,idx1,idx2,lam0,message", [
    (torch.rand(6), [0, 1], [2, 3], [0.5, 0.5], r"intensities must be \[M, B\], got \[6\]"),
    (torch.rand(2, 6), [0, 1, 2], [2, 3], [0.5, 0.5, 0.5], r"idx1, idx2 and lam0 must all be \[K\], got \[3\], \[2\], \[3\]"),
    (torch.rand(2, 6), [0, 1], [2, 3], [0.5], r"must all be \[K\], got \[2\], \[2\], \[1\]"),
    (torch.rand(2, 6), [[0, 1]], [[2, 3]], [[0.5, 0.5]], r"must all be \[K\], got \[1, 2\]"),
])
def test_mix_ratios_errors(intensities, idx1, idx2, lam0, message):
    with pytest.raises(ValueError, match=message):
        mx.mix_ratios(intensities, torch.tensor(idx1), torch.tensor(idx2), torch.tensor(lam0))


def test_integer_intensities_are_refused():
    with pytest.raises(TypeError, match=r"intensities must be floating, got torch.int64"):
        mx.fused_mix(_feats(), torch.randn(6), torch.ones(2, 6, dtype=torch.long))


@pytest.mark.parametrize("labels, message", [
    (torch.randn(2), r"fused_mix: labels must be \[B\] or \[B, \.\.\.\] with B = 6, got \[2\]"),
    (torch.ones(6, dtype=torch.long), r"fused_mix: labels must be a floating tensor, got Long"),
])
def test_fused_op_checks_labels_before_reading_them(labels, message):
    # The op copies labels[idx1] with the ratios, before the mixing kernel would check them.
    with pytest.raises(RuntimeError, match=message):
        torch.ops.msmix.fused_mix(_feats(), labels, torch.rand(2, 6), 4, 0.4, torch.tensor(0), 2.0)


def test_msmix_constructor_errors():
    with pytest.raises(ValueError, match=r"^dims must name at least one modality width$"):
        mx.MSMix(dims=[])


@pytest.mark.parametrize("kwargs,message", [
    (dict(alpha=0.0), r"^fused_mix: alpha must be > 0, got 0$"),
    (dict(threshold=1.0), r"^fused_mix: threshold must be in \[0, 1\), got 1$"),
    (dict(threshold=-0.01), r"^fused_mix: threshold must be in \[0, 1\), got -0.01$"),
    (dict(num_mix=0), r"^fused_mix: num_mix must be >= 1, got 0$"),
])
def test_msmix_parameters_are_checked_once_by_the_operator(kwargs, message):
    # alpha, threshold and num_mix are checked by the operator alone (csrc/checks.h); MSMix
    # passes them through, so its error is the operator's, as a ValueError.
    module = mx.MSMix([4, 3], **kwargs).train()
    with pytest.raises(ValueError, match=message):
        module(_feats(), torch.randn(6))
    with pytest.raises(ValueError, match=message):
        mx.fused_mix(_feats(), torch.randn(6), torch.rand(2, 6), **kwargs)


def test_msmix_accepts_threshold_zero():
    assert mx.MSMix([4], threshold=0.0).threshold == 0.0


def test_msmix_modality_count_errors():
    module = mx.MSMix([4, 3])
    with pytest.raises(ValueError, match=r"MSMix was built for 2 modalities, got 1 feats"):
        module.intensities([torch.randn(6, 4)])
    with pytest.raises(ValueError, match=r"masks must hold one entry per modality \(2\), got 1"):
        module.intensities(_feats(), [None])


def test_objective_row_count_error():
    out = mx.fused_mix(_feats(), torch.randn(6), torch.randn(2, 6), num_mix=4, seed=0)
    with pytest.raises(ValueError, match=r"pred must have B \+ K = 10 rows, got 9"):
        mx.msmix_objective(torch.zeros(9), out, torch.randn(6), torch.zeros(()))


def test_intensity_predictor_argument_errors():
    for kwargs in (dict(dim=0), dict(dim=4, num_heads=0)):
        with pytest.raises(ValueError, match=r"dim and num_heads must be >= 1"):
            mx.IntensityPredictor(**kwargs)
    assert mx.IntensityPredictor(1, num_heads=1)(torch.randn(3, 1)).shape == (3,)  # D = 1 is fine
    p = mx.IntensityPredictor(4, num_heads=2)
    # a pooled input is reported as the one-token sequence it becomes
    for shape, shown in (((3, 5), "[3, 1, 5]"), ((3, 2, 5), "[3, 2, 5]"), ((3, 2, 2, 4), "[3, 2, 2, 4]")):
        with pytest.raises(ValueError, match=r"IntensityPredictor\(dim=4\) takes \[B, 4\] or \[B, T, 4\], got "
                                             + re.escape(shown)):
            p(torch.randn(*shape))


def test_empty_mask_rows_are_listed_up_to_five():
    mask = torch.ones(8, 2, dtype=torch.bool)
    mask[1:8] = False  # seven samples without a valid token
    with pytest.raises(ValueError, match=r"pads out every token of samples \[1, 2, 3, 4, 5\];"):
        mx.IntensityPredictor(3, num_heads=1)(torch.randn(8, 2, 3), mask)


def test_sal_argument_errors():
    with pytest.raises(ValueError, match=r"max_intensity must be > 0, got 0.0"):
        mx.sentiment_alignment_loss(torch.randn(2, 5), torch.randn(5), max_intensity=0.0)
    with pytest.raises(ValueError, match=r"intensities must be \[M, B\] with B = 5 \(the labels' batch\), got \[2, 6\]"):
        mx.sentiment_alignment_loss(torch.randn(2, 6), torch.randn(5))
    with pytest.raises(ValueError, match=r"got \[10\]"):
        mx.sentiment_alignment_loss(torch.randn(10), torch.randn(5))


def test_fused_mix_without_modalities():
    with pytest.raises(ValueError, match=r"^feats must hold at least one modality, got M = 0$"):
        mx.fused_mix([], torch.randn(6), torch.randn(0, 6))
