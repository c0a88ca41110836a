"""The operators of design.md §4 and 6 against msmix_ext.reference and autograd."""

from __future__ import annotations

import pytest
import torch
from torch.library import opcheck

import msmix_ext as mx
from msmix_ext import reference as ref

from conftest import requires_extension
from helpers import chi_square_pvalue, clustered_feats, general_position_cases, make_feats, sass_decision

pytestmark = requires_extension

SHAPE_SETS = {
    "m1_pooled": [(7,)],
    "m2_mixed": [(5,), (3, 4)],
    "m3_seq": [(6, 8), (4, 3), (9, 2)],
    "m4_mixed": [(16,), (2, 5), (3,), (4, 4)],
}
TOL = {torch.float32: dict(rtol=1e-5, atol=1e-5), torch.float64: dict(rtol=1e-10, atol=1e-10),
       torch.float16: dict(rtol=1e-2, atol=2e-3), torch.bfloat16: dict(rtol=2e-2, atol=1e-2)}


def fixed_pairs(batch, num_mix, num_modalities, device, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    idx1 = torch.randint(batch, (num_mix,), generator=g)
    idx2 = (idx1 + 1 + torch.randint(batch - 1, (num_mix,), generator=g)) % batch
    lam = torch.rand(num_modalities, num_mix, generator=g, dtype=torch.float64)
    return idx1.to(device), idx2.to(device), lam.to(device, dtype), lam.mean(0).to(device, dtype)


# --- similarity -----------------------------------------------------------------------------

@pytest.mark.parametrize("shapes", SHAPE_SETS.values(), ids=SHAPE_SETS.keys())
@pytest.mark.parametrize("batch", [2, 3, 17, 128, 512])
@pytest.mark.parametrize("contiguous", [True, False])
def test_similarity_matches_reference(device, shapes, batch, contiguous):
    feats = make_feats(shapes, batch, device=device, contiguous=contiguous)
    torch.testing.assert_close(mx.similarity(feats), ref.similarity(feats), rtol=1e-5, atol=2e-6)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_similarity_low_and_double_precision(device, dtype):
    feats = make_feats(SHAPE_SETS["m3_seq"], 33, dtype=dtype, device=device)
    expected = ref.similarity([f.double() for f in feats])
    got = mx.similarity(feats)
    assert got.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    torch.testing.assert_close(got.double(), expected, rtol=0, atol=1e-10 if dtype == torch.float64 else 1e-5)


@pytest.mark.parametrize("batch", [511, 512, 600, 2049])
def test_similarity_of_blocked_gram(batch):
    # From 512 rows the CPU computes the Gram matrix's upper triangle in row blocks
    # (csrc/cpu/sass_kernel.cpp: 2 blocks at 512 and 600, 8 at 2049 with a short last
    # one); every block boundary and the mirrored lower triangle must match the float64
    # reference.
    feats = make_feats([(40,), (3, 7)], batch, dtype=torch.float64, seed=batch)
    torch.testing.assert_close(mx.similarity(feats), ref.similarity(feats), rtol=0, atol=1e-12)


# Rows at least 2M times wider than the batch is long: the CPU takes S
# from Gram products of the unscaled rows and their norms from the Gram diagonals
# (csrc/cpu/sass_kernel.cpp upper_similarity_from_raw_rows). Widths 240 + 300 + 100.
WIDE_SHAPES = [(6, 40), (300,), (2, 50)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("batch", [3, 16, 32, 47, 106])
@pytest.mark.parametrize("contiguous", [True, False])
def test_similarity_of_wide_rows(device, dtype, batch, contiguous):
    feats = make_feats(WIDE_SHAPES, batch, dtype=dtype, device=device, contiguous=contiguous, seed=batch)
    atol = 1e-12 if dtype == torch.float64 else 2e-6
    torch.testing.assert_close(mx.similarity(feats).double(), ref.similarity([f.double() for f in feats]),
                               rtol=0, atol=atol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("row_scale", ["zero", "tiny", "huge"])
def test_similarity_of_wide_rows_outside_the_gram_range(device, dtype, row_scale):
    # A row whose squared norm is zero, underflows (tiny) or overflows (huge) in the
    # dtype: the CPU then normalises the rows before the product (without that guard the
    # huge row's similarities come out NaN). The float64 reference sees the tiny and zero
    # rows as they are (a norm below 1e-12 is clamped: design.md §4.1); a huge row's
    # cosines are those of the unscaled row, as its squares overflow float64 as well.
    exponent = 160 if dtype == torch.float64 else 20
    scale = {"zero": 0.0, "tiny": 10.0 ** -exponent, "huge": 10.0 ** exponent}[row_scale]
    feats = make_feats(WIDE_SHAPES, 40, dtype=dtype, device=device, seed=1)
    scaled = [f.clone() for f in feats]
    scaled[1][3] *= scale
    expected = ref.similarity([f.double() for f in (feats if row_scale == "huge" else scaled)])
    atol = 1e-12 if dtype == torch.float64 else 2e-6
    torch.testing.assert_close(mx.similarity(scaled).double(), expected, rtol=0, atol=atol)


def test_similarity_by_hand():
    # Two modalities, three samples; cosine similarities written out by hand.
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    b = torch.tensor([[1.0], [1.0], [-1.0]])
    r = 2 ** -0.5
    s = torch.tensor([[1 + 1, 0 + 1, r - 1], [0 + 1, 1 + 1, r - 1], [r - 1, r - 1, 1 + 1]]) / 2
    off = s[~torch.eye(3, dtype=torch.bool)]
    expected = (s - off.min()) / (off.max() - off.min())
    expected.fill_diagonal_(0)
    torch.testing.assert_close(mx.similarity([a, b]), expected)


def test_similarity_constant_and_zero_rows(device):
    same = torch.ones(5, 3, device=device)
    expected = torch.full((5, 5), 0.5, device=device).fill_diagonal_(0)
    torch.testing.assert_close(mx.similarity([same]), expected)
    zeros = torch.zeros(4, 6, device=device)  # the 1e-12 guard: z = 0, S = 0, constant
    torch.testing.assert_close(mx.similarity([zeros]), torch.full((4, 4), 0.5, device=device).fill_diagonal_(0))


def test_similarity_does_not_overflow_large_values(device):
    feats = [torch.full((4, 8), 6e4, dtype=torch.float16, device=device), torch.randn(4, 3, device=device).half()]
    feats[0][1] *= -1
    s = mx.similarity(feats)
    assert torch.isfinite(s).all()
    torch.testing.assert_close(s, ref.similarity([f.double() for f in feats]).float(), rtol=1e-3, atol=1e-3)


# --- sass_select ------------------------------------------------------------------------------

def _check_pairs_valid(feats, idx1, idx2, num_mix, threshold):
    s = ref.similarity([f.double().cpu() for f in feats])
    batch = s.shape[0]
    i, j = idx1.cpu(), idx2.cpu()
    assert i.shape == j.shape == (num_mix,) and i.dtype == j.dtype == torch.long
    assert ((0 <= i) & (i < batch) & (0 <= j) & (j < batch)).all()
    assert (i != j).all(), "a sample was paired with itself"
    flat = i * batch + j
    valid = ref.valid_pairs(s, threshold)
    if valid.numel() >= num_mix:
        assert torch.isin(flat, valid).all(), "a pair outside V was drawn"
        assert flat.unique().numel() == num_mix, "V has enough pairs: draw without replacement"
    else:
        cand = ref.fallback_candidates(s, num_mix)
        assert torch.isin(flat, cand).all(), "a fallback pair outside the top candidates"
        distinct = min(num_mix, cand.numel())
        assert flat[:distinct].unique().numel() == distinct, "every candidate once before any repeat"
        if cand.numel() >= num_mix:
            assert flat.unique().numel() == num_mix


@pytest.mark.parametrize("shapes", SHAPE_SETS.values(), ids=SHAPE_SETS.keys())
@pytest.mark.parametrize("batch", [2, 3, 10, 64, 300])
@pytest.mark.parametrize("threshold", [0.0, 0.4, 0.9, 0.999])
def test_sass_pairs_are_valid(device, shapes, batch, threshold):
    feats = make_feats(shapes, batch, dtype=torch.float64, device=device, seed=batch)
    for num_mix in {1, batch, 3 * batch}:
        for seed in range(3):
            idx1, idx2 = mx.sass_select(feats, num_mix, threshold, seed=seed)
            assert idx1.device == feats[0].device
            _check_pairs_valid(feats, idx1, idx2, num_mix, threshold)


def test_sass_fallback_for_tiny_batches_never_pairs_a_sample_with_itself(device):
    feats = [torch.randn(2, 4, device=device)]
    idx1, idx2 = mx.sass_select(feats, 5, threshold=0.9, seed=1)  # B = 2: S' = 0.5 < 0.9
    assert (idx1 == 0).all() and (idx2 == 1).all()  # the one candidate, (0, 1), every time


def test_sass_fallback_when_too_few_pairs_are_valid(device):
    # Two tight clusters of 4: V holds the 2 * 4 * 3 = 24 within-cluster pairs, so K = 40
    # forces the fallback (top min(2K, 28) = 28 unordered pairs).
    feats = clustered_feats(8, [(6,)], clusters=2, noise=1e-3, device=device, dtype=torch.float64)
    assert ref.valid_pairs(ref.similarity([f.cpu() for f in feats]), 0.5).numel() == 24
    for seed in range(5):
        idx1, idx2 = mx.sass_select(feats, 40, threshold=0.5, seed=seed)
        _check_pairs_valid(feats, idx1, idx2, 40, 0.5)


@pytest.mark.parametrize("case", general_position_cases().keys())
def test_sass_pairs_in_general_position_do_not_depend_on_rounding(device, case):
    # The inputs test_cuda.py compares across devices: float32 and float64 round S' differently,
    # and still every decision of the draw (and so every pair) must come out the same.
    feats64, threshold, num_mix, draw = general_position_cases()[case]
    taken, margin = sass_decision(ref.similarity([f.float().double() for f in feats64]), threshold, num_mix)
    assert taken == draw and margin > 1e-3, (taken, margin)
    feats64 = [f.to(device) for f in feats64]
    for seed in range(3):
        want = mx.sass_select(feats64, num_mix, threshold, seed=seed)
        got = mx.sass_select([f.float() for f in feats64], num_mix, threshold, seed=seed)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
        _check_pairs_valid(feats64, *want, num_mix, threshold)


def test_sass_fallback_draw_is_uniform_over_candidates():
    feats = make_feats([(4,)], 9, seed=3)
    s = ref.similarity(feats)
    num_mix, draws = 5, 3000
    cand = ref.fallback_candidates(s, num_mix)  # 10 candidates
    assert ref.valid_pairs(s, 0.999).numel() < num_mix
    counts = torch.zeros(81, dtype=torch.long)
    for seed in range(draws):
        idx1, idx2 = mx.sass_select(feats, num_mix, 0.999, seed=seed)
        counts.index_add_(0, idx1 * 9 + idx2, torch.ones(num_mix, dtype=torch.long))
    assert counts.sum() == counts[cand].sum()
    # Without replacement from C: each candidate is in a call with probability K / |C|.
    # 15000 inclusions over 10 candidates: at a 1e-3 false-alarm rate this detects with
    # power > 0.99 a 10% tilt between the top and bottom half of C (e.g. keys that favour
    # the best-ranked candidates). The valid-pair draw and the tail: test_draws.py.
    assert chi_square_pvalue(counts[cand], draws * num_mix / cand.numel()) > 1e-3


def test_sass_seed_determinism(device):
    feats = make_feats(SHAPE_SETS["m3_seq"], 40, device=device)
    a = mx.sass_select(feats, 40, seed=7)
    b = mx.sass_select(feats, 40, seed=7)
    c = mx.sass_select(feats, 40, seed=8)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not (torch.equal(a[0], c[0]) and torch.equal(a[1], c[1]))
    d = mx.sass_select(feats, 40, seed=torch.tensor(7))
    assert torch.equal(a[0], d[0]) and torch.equal(a[1], d[1])


# --- mix ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("shapes", SHAPE_SETS.values(), ids=SHAPE_SETS.keys())
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("contiguous", [True, False])
@pytest.mark.parametrize("label_shape", [(), (1,)])
def test_mix_forward_backward_match_autograd(device, shapes, dtype, contiguous, label_shape):
    batch, num_mix = 13, 21
    feats = [f.requires_grad_() for f in make_feats(shapes, batch, dtype=dtype, device=device, contiguous=contiguous)]
    labels = torch.randn(batch, *label_shape, device=device, requires_grad=True)
    idx1, idx2, lam, lam_label = fixed_pairs(batch, num_mix, len(shapes), device)
    lam.requires_grad_()
    lam_label.requires_grad_()
    out_feats, out_labels = mx.mix(feats, labels, idx1, idx2, lam, lam_label)
    # The independent computation: autograd through the reference formula in float64.
    inputs = [*feats, labels, lam, lam_label]
    exact = [t.detach().double().requires_grad_() for t in inputs]
    m = len(feats)
    exp_feats, exp_labels = ref.mix(exact[:m], exact[m], idx1, idx2, exact[m + 1], exact[m + 2])
    for o, e in zip(out_feats, exp_feats):
        assert o.shape == e.shape and o.dtype == dtype
        torch.testing.assert_close(o.double(), e.detach(), **TOL[dtype])
    torch.testing.assert_close(out_labels.double(), exp_labels.detach(), **TOL[torch.float32])
    weights = [torch.randn(o.shape, dtype=torch.float64, device=device) for o in [*out_feats, out_labels]]
    got = torch.autograd.grad(sum((w.to(o.dtype) * o).sum() for w, o in zip(weights, [*out_feats, out_labels])), inputs)
    want = torch.autograd.grad(sum((w * o).sum() for w, o in zip(weights, [*exp_feats, exp_labels])), exact)
    # Low-precision gradients carry the rounding of the weights and of the result (8 or 11 bits).
    grad_tol = {torch.float16: dict(rtol=1e-2, atol=1e-2), torch.bfloat16: dict(rtol=2e-2, atol=6e-2)}
    for name, g, w in zip(["feats"] * m + ["labels", "lam", "lam_label"], got, want):
        tol = grad_tol.get(dtype, TOL[torch.float32]) if name in ("feats", "lam") else TOL[torch.float32]
        torch.testing.assert_close(g.double(), w, **tol, msg=lambda msg: f"gradient of {name}: {msg}")


def test_mix_only_requested_gradients(device):
    feats = make_feats([(4,), (2, 3)], 6, device=device)
    labels = torch.randn(6, device=device)
    idx1, idx2, lam, lam_label = fixed_pairs(6, 4, 2, device)
    lam.requires_grad_()
    out_feats, _ = mx.mix(feats, labels, idx1, idx2, lam, lam_label)
    (g,) = torch.autograd.grad(out_feats[1].sum(), [lam])
    want = (feats[1][idx1] - feats[1][idx2]).sum(dim=(1, 2))
    torch.testing.assert_close(g[1], want)
    torch.testing.assert_close(g[0], torch.zeros_like(g[0]))


def _gradient_layout(g: torch.Tensor, layout: str) -> torch.Tensor:
    """g's values in another memory layout (the kernels must not care)."""
    if layout == "contiguous":
        return g.contiguous()
    if layout == "expanded":  # the gradient of .sum(): one value, every stride 0
        return g.flatten()[:1].reshape((1,) * g.dim()).expand(g.shape)
    if layout == "row_expanded":  # one value per row (stride 0 along each row)
        return g.reshape(g.shape[0], -1)[:, :1].reshape((g.shape[0],) + (1,) * (g.dim() - 1)).expand(g.shape)
    if layout == "rows_of_larger":  # row stride larger than the row
        wide = torch.zeros(g.shape[0], 2 * g[0].numel(), dtype=g.dtype, device=g.device)
        wide[:, :g[0].numel()] = g.reshape(g.shape[0], -1)
        return wide[:, :g[0].numel()].view(g.shape)
    if layout == "every_other_column":  # row elements two apart
        wide = torch.zeros(g.shape[0], 2 * g[0].numel(), dtype=g.dtype, device=g.device)
        wide[:, ::2] = g.reshape(g.shape[0], -1)
        return wide[:, ::2].view(g.shape)
    if layout == "transposed":  # inner dimensions swapped: needs a copy
        return g.transpose(-1, -2).contiguous().transpose(-1, -2) if g.dim() >= 3 else g.t().contiguous().t()
    raise ValueError(layout)


@pytest.mark.parametrize("layout", [
    "expanded", "row_expanded", "rows_of_larger", "every_other_column", "transposed"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_mix_backward_reads_any_gradient_layout(device, layout, dtype):
    """A strided or expanded gradient (e.g. of ``loss = out.sum()``) is read in place where its
    strides allow and copied otherwise; either way the result is bitwise that of the same values
    laid out contiguously."""
    batch, num_mix = 9, 14
    feats = make_feats([(6,), (4, 5)], batch, dtype=dtype, device=device)
    labels = torch.randn(batch, 1, device=device, dtype=dtype)
    idx1, idx2, lam, lam_label = fixed_pairs(batch, num_mix, 2, device)
    outs = [torch.randn(batch + num_mix, *f.shape[1:], device=device, dtype=dtype) for f in [*feats, labels]]
    grads = [_gradient_layout(o, layout) for o in outs]
    if layout == "transposed":
        grads[0] = outs[0]  # a 2-D [N, 1]-wide transpose is contiguous anyway; keep the 3-D case
    mask = [True, True, True, True]
    got = torch.ops.msmix.mix_backward(grads[:2], grads[2], feats, labels, idx1, idx2, lam, lam_label, mask)
    want = torch.ops.msmix.mix_backward([g.contiguous() for g in grads[:2]], grads[2].contiguous(), feats,
                                        labels, idx1, idx2, lam, lam_label, mask)
    for name, a, b in zip(["grad_feats[0]", "grad_feats[1]"], got[0], want[0]):
        assert torch.equal(a, b), name
    for name, a, b in zip(["grad_labels", "grad_lam", "grad_lam_label"], got[1:], want[1:]):
        assert torch.equal(a, b), name
    # And the values are right: float64 autograd through the reference formula with the
    # same gradient values.
    inputs = [t.double().requires_grad_() for t in [*feats, labels, lam, lam_label]]
    ref_feats, ref_labels = ref.mix(inputs[:2], inputs[2], idx1, idx2, inputs[3], inputs[4])
    exact = torch.autograd.grad([*ref_feats, ref_labels], inputs, [g.double() for g in grads])
    # feats and labels gradients round to the data dtype; the ratio gradients are float32 (lam's).
    data_tol = TOL[dtype] if dtype != torch.bfloat16 else dict(rtol=2e-2, atol=6e-2)
    for name, a, e in zip(["grad_feats[0]", "grad_feats[1]", "grad_labels", "grad_lam", "grad_lam_label"],
                          [*got[0], *got[1:]], exact):
        tol = TOL[torch.float32] if name.startswith("grad_lam") else data_tol
        torch.testing.assert_close(a.double(), e, **tol, msg=lambda m: f"{name}: {m}")


def test_fused_mix_backward_of_a_sum_matches_ones(device):
    """``out.sum().backward()`` hands fused_mix expanded gradients; they give the gradients of
    an explicit all-ones weight, bitwise."""
    feats = make_feats([(8,), (3, 4)], 12, device=device)
    labels = torch.randn(12, device=device)
    intensities = torch.rand(2, 12, device=device)

    def grads(weighted: bool):
        fs = [f.clone().requires_grad_() for f in feats]
        inten = intensities.clone().requires_grad_()
        out = mx.fused_mix(fs, labels, inten, seed=3)
        tensors = [*out.feats, out.labels]
        loss = sum((torch.ones_like(t) * t).sum() if weighted else t.sum() for t in tensors)
        return torch.autograd.grad(loss, [*fs, inten])

    got = grads(False)
    for a, b in zip(got, grads(True)):
        assert torch.equal(a, b)
    # Independently: the gradient of the sum through the composed reference pipeline
    # (the same pairs and base ratios), in float64.
    out = mx.fused_mix(feats, labels, intensities, seed=3)
    fs = [f.double().requires_grad_() for f in feats]
    inten = intensities.double().requires_grad_()
    lam, lam_label = mx.mix_ratios(inten, out.idx1, out.idx2, out.lam0.double())
    ref_feats, ref_labels = ref.mix(fs, labels.double(), out.idx1, out.idx2, lam, lam_label)
    exact = torch.autograd.grad(sum(t.sum() for t in [*ref_feats, ref_labels]), [*fs, inten])
    for a, e in zip(got, exact):
        torch.testing.assert_close(a.double(), e, rtol=1e-5, atol=1e-5)


def test_mix_gradcheck(device):
    feats = [f.requires_grad_() for f in make_feats([(3,), (2, 2)], 5, dtype=torch.float64, device=device)]
    labels = torch.randn(5, 1, dtype=torch.float64, device=device, requires_grad=True)
    idx1, idx2, lam, lam_label = fixed_pairs(5, 7, 2, device, dtype=torch.float64)
    lam.requires_grad_()
    lam_label.requires_grad_()

    def fn(f0, f1, y, lam, lam_label):
        out, out_y = mx.mix([f0, f1], y, idx1, idx2, lam, lam_label)
        return (*out, out_y)

    assert torch.autograd.gradcheck(fn, (*feats, labels, lam, lam_label))


def test_mix_backward_is_deterministic(device):
    feats = [f.requires_grad_() for f in make_feats([(64,)], 50, device=device)]
    labels = torch.randn(50, device=device)
    idx1, idx2, lam, lam_label = fixed_pairs(50, 400, 1, device)
    grads = []
    with torch.autograd.set_grad_enabled(True):
        torch.use_deterministic_algorithms(True)
        try:
            for _ in range(3):
                out, _ = mx.mix(feats, labels, idx1, idx2, lam, lam_label)
                grads.append(torch.autograd.grad(out[0].pow(2).sum(), feats)[0])
        finally:
            torch.use_deterministic_algorithms(False)
    assert all(torch.equal(grads[0], g) for g in grads[1:])


# --- opcheck ---------------------------------------------------------------------------------------

def test_opcheck_all_ops(device):
    feats = make_feats([(5,), (3, 4)], 9, device=device)
    seed = torch.tensor(3)
    opcheck(torch.ops.msmix.similarity.default, (feats,))
    opcheck(torch.ops.msmix.sass_select.default, (feats, 6, 0.4, seed, 2.0))
    opcheck(torch.ops.msmix.sass_select.default, ([f.requires_grad_() for f in feats], 6, 0.4, seed, 2.0))
    for dtype in [torch.float32, torch.float64]:
        fs = [f.detach().to(dtype).requires_grad_() for f in feats]
        labels = torch.randn(9, device=device, dtype=dtype, requires_grad=True)
        idx1, idx2, lam, lam_label = fixed_pairs(9, 6, 2, device, dtype=dtype)
        opcheck(torch.ops.msmix.mix.default, (fs, labels, idx1, idx2, lam.requires_grad_(), lam_label.requires_grad_()))
        opcheck(torch.ops.msmix.mix.default, ([f.detach() for f in fs], labels.detach(), idx1, idx2, lam.detach(), lam_label.detach()))
        grads = [torch.randn(15, *f.shape[1:], device=device, dtype=dtype) for f in fs]
        opcheck(torch.ops.msmix.mix_backward.default,
                (grads, torch.randn(15, device=device, dtype=dtype), [f.detach() for f in fs], labels.detach(),
                 idx1, idx2, lam.detach(), lam_label.detach(), [True, True, True, True]))
        opcheck(torch.ops.msmix.mix_backward.default,
                (grads, torch.randn(15, device=device, dtype=dtype), [], labels.detach()[:0],
                 idx1, idx2, lam.detach(), lam_label.detach(), [True, False, False, False]))


# --- torch.compile ------------------------------------------------------------------------------------

@pytest.mark.parametrize("dynamic", [False, True])
def test_compile_fullgraph_matches_eager(device, dynamic):
    torch._dynamo.reset()

    def step(f0, f1, labels, lam_scale):
        idx1, idx2 = mx.sass_select([f0, f1], 12, 0.3, seed=5)
        lam = torch.sigmoid(lam_scale)[:, None].expand(2, 12)
        out, out_y = mx.mix([f0, f1], labels, idx1, idx2, lam, lam.mean(0))
        return out[0].square().sum() + out[1].sum() + out_y.sum(), idx1, idx2

    compiled = torch.compile(step, fullgraph=True, dynamic=dynamic)
    for batch in ([10, 14] if dynamic else [10]):
        f0, f1 = (f.requires_grad_() for f in make_feats([(4,), (3, 2)], batch, device=device))
        labels = torch.randn(batch, device=device)
        scale = torch.randn(2, device=device, requires_grad=True)
        loss, i1, i2 = step(f0, f1, labels, scale)
        closs, ci1, ci2 = compiled(f0, f1, labels, scale)
        assert torch.equal(i1, ci1) and torch.equal(i2, ci2)
        torch.testing.assert_close(closs, loss)
        g = torch.autograd.grad(loss, [f0, f1, scale])
        cg = torch.autograd.grad(closs, [f0, f1, scale])
        for a, b in zip(g, cg):
            torch.testing.assert_close(a, b)
