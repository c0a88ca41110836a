"""msmix::fused_mix, the one-operator MS-Mix call, against the public building blocks it fuses."""

from __future__ import annotations

import pytest
import torch
from torch.library import opcheck

import msmix_ext as mx
from msmix_ext import MixOutput

from conftest import requires_extension
from helpers import make_feats

pytestmark = requires_extension

SHAPES = {"pooled": [(16,), (16,), (16,)], "mixed": [(5,), (3, 4)], "one": [(7,)]}


def composed(feats, labels, intensities, num_mix, threshold, seed, alpha):
    """The same call built from sass_select, mix_ratios and mix."""
    idx1, idx2, lam0 = torch.ops.msmix.sass_select(feats, num_mix, threshold, seed, alpha)
    lam, lam_label = mx.mix_ratios(intensities, idx1, idx2, lam0)
    out_feats, out_labels = mx.mix(feats, labels, idx1, idx2, lam, lam_label)
    return MixOutput(out_feats, out_labels, idx1, idx2, lam, lam_label, labels[idx1], labels[idx2], lam0)


def inputs(shapes, batch, dtype, device, label_shape=(), seed=0, requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    feats = make_feats(shapes, batch, dtype=dtype, device=device, seed=seed)
    labels = (torch.rand((batch, *label_shape), generator=g) * 6 - 3).to(device, dtype)
    intensities = (3 * torch.tanh(torch.randn(len(shapes), batch, generator=g))).to(device, dtype)
    if requires_grad:
        feats = [f.detach().requires_grad_() for f in feats]
        labels.requires_grad_()
        intensities.requires_grad_()
    return feats, labels, intensities


def every_output_loss(out):
    """Touches every differentiable output, each with its own weight."""
    loss = sum(((k + 1) * f * f).sum() for k, f in enumerate(out.feats))
    loss = loss + (out.labels ** 2).sum() + (out.lam * out.lam).sum() + (3 * out.lam_label).sum()
    return loss + (out.labels1 * out.labels2).sum() + out.labels1.sum()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shapes", SHAPES.values(), ids=SHAPES.keys())
@pytest.mark.parametrize("num_mix", [1, 9, 40])
def test_forward_bitwise_equals_building_blocks(device, dtype, shapes, num_mix):
    feats, labels, intensities = inputs(shapes, 12, dtype, device)
    seed = torch.tensor(7)
    got = mx.fused_mix(feats, labels, intensities, num_mix=num_mix, seed=seed)
    want = composed(feats, labels, intensities, num_mix, 0.4, seed, 2.0)
    _assert_outputs_equal(got, want)


def _assert_outputs_equal(got, want):
    for name, a, b in zip(MixOutput._fields, got, want):
        for x, y in zip(a, b) if name == "feats" else [(a, b)]:
            assert x.dtype == y.dtype and x.shape == y.shape, name
            assert torch.equal(x, y), name


@pytest.mark.parametrize("layout", ["[B, 1]", "[B] strided", "[B] float64"])
def test_picked_labels_of_any_layout_equal_index_select(device, layout):
    # labels1 and labels2 are copied row by row with the ratios, not by index_select.
    feats, labels, intensities = inputs(SHAPES["mixed"], 12, torch.float32, device, label_shape=(2,))
    if layout == "[B, 1]":
        labels = labels[:, :1].contiguous()
    elif layout == "[B] strided":
        labels = labels[:, 1]
    else:
        labels = labels[:, 0].double()
    seed = torch.tensor(5)
    got = mx.fused_mix(feats, labels, intensities, num_mix=20, seed=seed)
    _assert_outputs_equal(got, composed(feats, labels, intensities, 20, 0.4, seed, 2.0))


def test_intensities_in_another_dtype_bitwise(device):
    feats, labels, _ = inputs(SHAPES["pooled"], 10, torch.float32, device)
    intensities = torch.rand(3, 10, dtype=torch.float64, device=device)
    got = mx.fused_mix(feats, labels, intensities, seed=3)
    want = composed(feats, labels, intensities, 10, 0.4, torch.tensor(3), 2.0)
    assert got.lam.dtype == torch.float64
    assert torch.equal(got.lam, want.lam) and torch.equal(got.lam_label, want.lam_label)
    assert all(torch.equal(a, b) for a, b in zip(got.feats, want.feats))


def test_tied_intensities_bitwise(device):
    # Equal magnitudes (min = max: the 1e-8 guard) and ties at the min and the max.
    feats, labels, _ = inputs(SHAPES["mixed"], 8, torch.float32, device)
    intensities = torch.tensor([[2.0, -2.0, 2.0, 2.0, -2.0, 2.0, 2.0, 2.0],
                                [0.0, 1.0, -1.0, 0.5, 0.0, 1.0, 0.25, -0.5]], device=device)
    got = mx.fused_mix(feats, labels, intensities, seed=4)
    want = composed(feats, labels, intensities, 8, 0.4, torch.tensor(4), 2.0)
    assert torch.equal(got.lam, want.lam) and torch.equal(got.lam_label, want.lam_label)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("label_shape", [(), (1,)])
def test_gradients_equal_building_blocks(device, dtype, label_shape):
    """Feature gradients are bitwise those of the composed call (the same mix_backward kernel).
    The labels' and intensities' gradients sum the same terms in another order (autograd adds
    the contributions of mix, index_select and mean in an order of its own), so they agree to a
    few ulps of their largest entry: 8 eps relative."""
    batch = 12
    feats, labels, intensities = inputs(SHAPES["mixed"], batch, dtype, device, label_shape, requires_grad=True)
    seed = torch.tensor(11)
    leaves = [*feats, labels, intensities]
    got = torch.autograd.grad(every_output_loss(mx.fused_mix(feats, labels, intensities, seed=seed)), leaves)
    want = torch.autograd.grad(every_output_loss(composed(feats, labels, intensities, batch, 0.4, seed, 2.0)),
                               leaves)
    for a, b in zip(got[:len(feats)], want[:len(feats)]):
        assert torch.equal(a, b)
    eps = torch.finfo(dtype).eps
    for a, b in zip(got[len(feats):], want[len(feats):]):
        assert a.dtype == b.dtype and a.shape == b.shape
        torch.testing.assert_close(a, b, rtol=0, atol=8 * eps * b.abs().max().item())


PARTIAL_LOSSES = {
    "feats0": lambda out: (out.feats[0] ** 2).sum(),
    "labels1": lambda out: (out.labels1 * 2).sum(),
    "lam": lambda out: (out.lam ** 2).sum() + out.feats[1].sum(),
    "labels_and_lam_label": lambda out: (out.labels ** 2).sum() + out.lam_label.sum(),
}


@pytest.mark.parametrize("loss", PARTIAL_LOSSES.values(), ids=PARTIAL_LOSSES.keys())
def test_gradients_of_a_loss_that_reads_some_outputs(device, loss):
    """The outputs a loss does not read get no gradient tensor at all (undefined, not zeros);
    the gradients must still be those of the composed call."""
    feats, labels, intensities = inputs(SHAPES["mixed"], 10, torch.float64, device, requires_grad=True)
    seed = torch.tensor(4)
    leaves = [*feats, labels, intensities]
    got = torch.autograd.grad(loss(mx.fused_mix(feats, labels, intensities, seed=seed)), leaves, allow_unused=True)
    want = torch.autograd.grad(loss(composed(feats, labels, intensities, 10, 0.4, seed, 2.0)), leaves,
                               allow_unused=True)
    for a, b, leaf in zip(got, want, leaves):
        a = torch.zeros_like(leaf) if a is None else a
        b = torch.zeros_like(leaf) if b is None else b
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_backward_op_takes_absent_gradients_as_zero(device):
    feats, labels, intensities = inputs(SHAPES["mixed"], 8, torch.float64, device)
    out = torch.ops.msmix.fused_mix(feats, labels, intensities, 6, 0.4, torch.tensor(2), 2.0)
    feats_out, labels_out, idx1, idx2, lam, lam_label = out[0], out[1], out[2], out[3], out[4], out[5]
    grads = [torch.randn_like(t) for t in feats_out]
    grad_labels = torch.randn_like(labels_out)
    mask = [True, True, True]
    absent = torch.ops.msmix.fused_mix_backward(grads, grad_labels, None, None, None, None, feats, labels,
                                                intensities, idx1, idx2, lam, lam_label, mask)
    zeros = torch.ops.msmix.fused_mix_backward(grads, grad_labels, torch.zeros_like(lam), torch.zeros_like(lam_label),
                                               torch.zeros(6, dtype=labels.dtype, device=device),
                                               torch.zeros(6, dtype=labels.dtype, device=device), feats, labels,
                                               intensities, idx1, idx2, lam, lam_label, mask)
    for a, b in zip(absent[0], zeros[0]):
        assert torch.equal(a, b)
    assert torch.equal(absent[1], zeros[1]) and torch.equal(absent[2], zeros[2])


def test_gradients_against_finite_differences():
    feats, labels, intensities = inputs(SHAPES["mixed"], 6, torch.float64, "cpu", requires_grad=True)
    seed = torch.tensor(5)

    def fn(*args):
        *f, y, i = args
        return every_output_loss(mx.fused_mix(list(f), y, i, seed=seed))

    assert torch.autograd.gradcheck(fn, (*feats, labels, intensities))


def test_only_requested_gradients(device):
    feats, labels, intensities = inputs(SHAPES["pooled"], 9, torch.float32, device)
    feats[1].requires_grad_()
    out = mx.fused_mix(feats, labels, intensities, seed=2)
    out.feats[1].sum().backward()
    assert feats[1].grad is not None and feats[0].grad is None
    intensities.requires_grad_()
    out = mx.fused_mix(feats, labels, intensities, seed=2)
    (out.lam_label.sum() + out.feats[0].sum()).backward()  # reaches the intensities through lam
    assert intensities.grad is not None and labels.grad is None


def test_second_order_gradient_is_refused():
    feats, labels, intensities = inputs(SHAPES["one"], 6, torch.float64, "cpu", requires_grad=True)
    out = mx.fused_mix(feats, labels, intensities, seed=1)
    (g,) = torch.autograd.grad(out.feats[0].pow(2).sum(), feats[0], create_graph=True)
    with pytest.raises(RuntimeError, match="derivative for msmix::fused_mix_backward is not implemented"):
        g.sum().backward()


def test_opcheck(device):
    feats, labels, intensities = inputs(SHAPES["mixed"], 8, torch.float32, device, requires_grad=True)
    opcheck(torch.ops.msmix.fused_mix.default, (feats, labels, intensities, 5, 0.4, torch.tensor(3), 2.0))


def test_compile_fullgraph_dynamic_matches_eager():
    feats, labels, intensities = inputs(SHAPES["mixed"], 10, torch.float32, "cpu", requires_grad=True)

    def step(f, y, i, seed):
        return every_output_loss(mx.fused_mix(f, y, i, seed=seed))

    compiled = torch.compile(step, fullgraph=True, dynamic=True)
    for batch in (10, 13):
        f, y, i = inputs(SHAPES["mixed"], batch, torch.float32, "cpu", seed=batch, requires_grad=True)
        seed = torch.tensor(batch)
        want = torch.autograd.grad(step(f, y, i, seed), [*f, y, i])
        got = torch.autograd.grad(compiled(f, y, i, seed), [*f, y, i])
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_autocast_mix_keeps_feature_dtype():
    feats, labels, intensities = inputs(SHAPES["mixed"], 10, torch.float32, "cpu")
    half = [feats[0].bfloat16(), feats[1]]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = mx.fused_mix(half, labels, intensities, seed=6)
    # the widest dtype of the modalities (float32) for the mixing, pairs from the float32 features
    want = composed([f.float() for f in half], labels, intensities, 10, 0.4, torch.tensor(6), 2.0)
    assert all(f.dtype == torch.float32 for f in got.feats)
    assert torch.equal(got.idx1, want.idx1) and torch.equal(got.idx2, want.idx2)
    assert all(torch.equal(a, b) for a, b in zip(got.feats, want.feats))


def test_deterministic():
    feats, labels, intensities = inputs(SHAPES["pooled"], 32, torch.float32, "cpu", requires_grad=True)
    runs = []
    for _ in range(2):
        out = mx.fused_mix(feats, labels, intensities, seed=9)
        runs.append([*out.feats, out.lam, *torch.autograd.grad(every_output_loss(out), [*feats, labels, intensities])])
    assert all(torch.equal(a, b) for a, b in zip(*runs))


@pytest.mark.parametrize("bad, match", [
    (lambda i: i[:, :-1], r"fused_mix: intensities must be \[M, B\] = \[2, 8\]"),
    (lambda i: i.long(), "fused_mix: intensities must be float32, float64, float16 or bfloat16"),
])
def test_op_errors_name_the_argument(bad, match):
    feats, labels, intensities = inputs(SHAPES["mixed"], 8, torch.float32, "cpu")
    with pytest.raises(RuntimeError, match=match):
        torch.ops.msmix.fused_mix(feats, labels, bad(intensities), 4, 0.4, torch.tensor(0), 2.0)


def test_large_batch_draw_is_the_k_smallest_keys():
    """The bounded per-thread top-K of the pair draw keeps exactly the K smallest priority keys:
    at B = 300 (several thread chunks) the pairs equal those a full sort of the valid pairs'
    keys would give, computed here from S' and the same keys via the fallback-free path at K = all."""
    feats = make_feats([(6,), (4, 2)], 300, seed=3)
    seed = torch.tensor(123)
    all_pairs = torch.ops.msmix.sass_select(feats, 4000, 0.4, seed, 2.0)
    few = torch.ops.msmix.sass_select(feats, 50, 0.4, seed, 2.0)
    # Keys ascend along the draw, so the first 50 of a longer draw are the 50-pair draw.
    assert torch.equal(all_pairs[0][:50], few[0]) and torch.equal(all_pairs[1][:50], few[1])
    s = mx.similarity(feats)
    assert bool((s[all_pairs[0], all_pairs[1]] > 0.4).all())
    assert len(set(zip(all_pairs[0].tolist(), all_pairs[1].tolist()))) == 4000
