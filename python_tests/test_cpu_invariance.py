"""Nothing may depend on the CPU model or the thread count (docs/design.md, "Determinism"):
S' is exactly symmetric by construction, a degenerate batch takes the constant rule
whatever the rounding, 1 to 4 threads give the same S', pairs and mixed rows, and the CPU
kernels' row sums and Gram products follow one fixed order whichever SIMD version the
loader picked."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import math
from fractions import Fraction

import numpy as np

import pytest
import torch

import msmix_ext as mx
from msmix_ext import reference as ref

from conftest import DEVICES, requires_extension
from helpers import make_feats

pytestmark = requires_extension

# Odd batch sizes and widths, sequences, and rows wide enough for blocked GEMM paths.
SHAPES = {
    "tiny": (3, [(7,), (5, 3), (1,)]),
    "odd": (37, [(129,), (3, 17)]),
    "wide": (65, [(5000,)]),
    "seq": (130, [(20, 300), (50,)]),
    "b257": (257, [(1023,)]),
    "b513": (513, [(8, 100), (300,), (33,)]),
}
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


@pytest.mark.parametrize("name", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_similarity_is_exactly_symmetric(name, dtype):
    batch, shapes = SHAPES[name]
    feats = make_feats(shapes, batch, dtype=dtype, seed=batch)
    for s in (mx.similarity(feats), ref.similarity(feats)):
        assert torch.equal(s, s.T)
        assert (s.diagonal() == 0).all()
        off = s[~torch.eye(batch, dtype=torch.bool)]
        assert off.min() == 0 and off.max() == 1, "min-max normalised over the off-diagonal"


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_two_samples_give_one_half(device, dtype):
    # B = 2: one off-diagonal value, so the range is 0 and S' is 0.5, on every CPU.
    for seed in range(20):
        feats = make_feats([(13,), (4, 9)], 2, dtype=dtype, device=device, seed=seed)
        want = torch.tensor([[0.0, 0.5], [0.5, 0.0]], dtype=torch.float64)
        assert torch.equal(mx.similarity(feats).double().cpu(), want)
        assert torch.equal(ref.similarity([f.cpu() for f in feats]).double(), want)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_batch_pointing_one_way_takes_the_constant_rule(device, dtype):
    # Every sample is a positive multiple of one direction: every cosine is 1 up to rounding,
    # which differs between CPUs. Rounding must not decide S' in {0, 1}: it is 0.5 off the diagonal.
    g = torch.Generator().manual_seed(0)
    scale = torch.tensor([1.0, 2.0, 3.0, 0.5, 7.0, 1.1])
    feats = [(torch.randn(1, 300, generator=g) * scale[:, None]).to(device, dtype),
             (torch.randn(1, 5, 7, generator=g) * scale[:, None, None]).to(device, dtype)]
    want = torch.full((6, 6), 0.5).fill_diagonal_(0)
    assert torch.equal(mx.similarity(feats).float().cpu(), want)
    assert torch.equal(ref.similarity([f.cpu() for f in feats]), want)
    # the constant rule makes every pair valid at threshold 0.4: the draw covers many rows
    idx1, idx2 = mx.sass_select(feats, 30, 0.4, seed=1)
    assert (idx1 != idx2).all() and (idx1 * 6 + idx2).unique().numel() == 30


@pytest.fixture
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("name", SHAPES)
def test_thread_counts_agree_bitwise(name, restore_threads):
    # 3 and 4 threads (more than this machine may have): at B = 37 and 65 one at::mm
    # of MKL gave other last bits of S with 3 or 4 threads than with 1.
    batch, shapes = SHAPES[name]
    feats = make_feats(shapes, batch, dtype=torch.float32, seed=batch + 1)
    labels = torch.linspace(-3, 3, batch)
    intensities = torch.randn(len(shapes), batch, generator=torch.Generator().manual_seed(batch))
    results = []
    for threads in (1, 2, 3, 4):
        torch.set_num_threads(threads)
        out = mx.fused_mix(feats, labels, intensities, threshold=0.4, seed=11)
        results.append((mx.similarity(feats), out))
    s1, o1 = results[0]
    for threads, (s, o) in zip((2, 3, 4), results[1:]):
        assert torch.equal(s1, s), f"{threads} threads"
        for field in ("idx1", "idx2", "lam0", "lam", "labels"):
            assert torch.equal(getattr(o1, field), getattr(o, field)), (threads, field)
        for a, b in zip(o1.feats, o.feats):
            assert torch.equal(a, b), threads


LANES = 32  # csrc/cpu/row_loops.h kLanes


def lane_sum(terms: torch.Tensor) -> torch.Tensor:
    """csrc/cpu/row_loops.h lane_sum, one elementwise IEEE add at a time: lane l adds the
    terms c = l (mod 32) in order, then lanes are added pairwise (l += l + half)."""
    lanes = torch.zeros(LANES, dtype=terms.dtype)
    full = terms.numel() // LANES * LANES
    for c in range(0, full, LANES):
        lanes = lanes + terms[c:c + LANES]
    tail = terms[full:]
    lanes[:tail.numel()] = lanes[:tail.numel()] + tail
    half = LANES // 2
    while half:
        lanes[:half] = lanes[:half] + lanes[half:2 * half]
        half //= 2
    return lanes[0]


@pytest.mark.parametrize("width", [1, 31, 32, 33, 100, 1029])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
@pytest.mark.parametrize("broadcast", [False, True], ids=["dense", "expanded"])
def test_ratio_gradient_sums_in_the_documented_order(width, dtype, broadcast):
    # The ratio gradient <g, x_i - x_j> is a row sum: on any CPU (baseline or AVX2 clone)
    # it must equal the fixed lane order computed here op by op, bit for bit.
    batch, num_mix = 6, 5
    g = torch.Generator().manual_seed(width)
    x = torch.randn(batch, width, generator=g, dtype=torch.float64).to(dtype)
    grad_out = torch.randn(batch + num_mix, 1 if broadcast else width, generator=g, dtype=torch.float64).to(dtype)
    grad_out = grad_out.expand(batch + num_mix, width)
    idx1 = torch.tensor([0, 2, 4, 1, 5])
    idx2 = torch.tensor([3, 1, 0, 5, 2])
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    lam = torch.rand(1, num_mix, generator=g, dtype=torch.float64).to(acc)
    labels = torch.zeros(batch, dtype=dtype)
    _, _, grad_lam, _ = torch.ops.msmix.mix_backward(
        [grad_out], torch.zeros(batch + num_mix, dtype=dtype), [x], labels, idx1, idx2, lam, lam[0],
        [False, False, True, False])
    for k in range(num_mix):
        terms = grad_out[batch + k].to(acc) * (x[idx1[k]].to(acc) - x[idx2[k]].to(acc))
        assert torch.equal(grad_lam[0, k], lane_sum(terms)), f"k = {k}"


DOT_LANES = {torch.float32: 8, torch.float64: 4}  # csrc/cpu/row_loops.h kDotLanes


def dot_lanes(x: torch.Tensor) -> torch.Tensor:
    """csrc/cpu/row_loops.h's Gram products x_i . x_j, one elementwise IEEE op at a time:
    lane l adds the products of k = l (mod L) in order of k, then lanes add pairwise."""
    lanes_n = DOT_LANES[x.dtype]
    products = x[:, None, :] * x[None, :, :]
    lanes = torch.zeros(*products.shape[:2], lanes_n, dtype=x.dtype)
    full = x.shape[1] // lanes_n * lanes_n
    for k in range(0, full, lanes_n):
        lanes = lanes + products[..., k:k + lanes_n]
    tail = products[..., full:]
    lanes[..., :tail.shape[-1]] = lanes[..., :tail.shape[-1]] + tail
    half = lanes_n // 2
    while half:
        lanes[..., :half] = lanes[..., :half] + lanes[..., half:2 * half]
        half //= 2
    return lanes[..., 0]


MIN_TILED_BATCH = 96  # csrc/cpu/sass_kernel.cpp kMinTiledBatch


def fma32(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """fma(a, b, c) of float32 tensors, rounded once, without an FMA: a * b is exact in
    float64, the float64 sum p + c is made round-to-odd (TwoSum's error decides a step
    towards it when the sum's last bit is even), and round-to-odd with 53 >= 2 * 24 + 2
    bits rounds to float32 as the exact value would (Boldo and Melquiond, 2008)."""
    p = a.double() * b.double()
    c64 = c.double()
    s = p + c64
    bb = s - p
    err = (p - (s - bb)) + (c64 - bb)
    even = (s.view(torch.int64) & 1) == 0
    toward = torch.where(err > 0, torch.full_like(s, math.inf), torch.full_like(s, -math.inf))
    s = torch.where((err != 0) & even, torch.nextafter(s, toward), s)
    return s.float()


@functools.cache
def libm_fma():
    """The C library's fma (C requires it correctly rounded), loaded on first use."""
    fma = ctypes.CDLL(ctypes.util.find_library("m")).fma
    fma.restype = ctypes.c_double
    fma.argtypes = [ctypes.c_double] * 3
    return fma


def fma_chain_gram(x: torch.Tensor) -> torch.Tensor:
    """csrc/cpu/gram_tiles.h's Gram products from kMinTiledBatch rows: each x_i . x_j one
    chain fma(x_ik, x_jk, ...) over k in order from 0; upper triangle with the diagonal,
    the rest mirrored (S' reads only the strict upper triangle). float32 by fma32, float64
    by the C library's fma (correctly rounded, as C requires)."""
    batch, width = x.shape
    if x.dtype == torch.float32:
        acc = torch.zeros(batch, batch)
        for k in range(width):
            acc = fma32(x[:, k, None].expand(batch, batch), x[None, :, k].expand(batch, batch), acc)
        return acc.triu() + acc.triu(diagonal=1).T
    fma, rows = libm_fma(), x.tolist()
    out = torch.zeros(batch, batch, dtype=torch.float64)
    for i in range(batch):
        for j in range(i, batch):
            acc, xi, xj = 0.0, rows[i], rows[j]
            for k in range(width):
                acc = fma(xi[k], xj[k], acc)
            out[i, j] = out[j, i] = acc
    return out


def test_fma32_rounds_once():
    # Against exact rational arithmetic: random triples, and triples built so that the
    # float64 sum rounds onto a float32 halfway point the exact value is just below, where
    # rounding twice picks the even neighbour and rounding once must not:
    # (1 + 2^-23) + 2^-12 (1 + 2^-23) * 2^-12 (1 - 2^-23) = 1 + 2^-23 + 2^-24 - 2^-70.
    g = torch.Generator().manual_seed(3)
    a = torch.randn(4000, generator=g)
    b = torch.randn(4000, generator=g)
    c = torch.randn(4000, generator=g) * torch.exp2(torch.randint(-30, 30, (4000,), generator=g).float())
    u = 2.0 ** -23
    scales = torch.exp2(torch.arange(-20, 21, 5, dtype=torch.float32))
    for sign in (1.0, -1.0):
        a = torch.cat([a, sign * scales * 2.0 ** -12 * (1 + u)])
        b = torch.cat([b, torch.full_like(scales, 2.0 ** -12 * (1 - u))])
        c = torch.cat([c, sign * scales * (1 + u)])
    got = fma32(a, b, c)
    for ai, bi, ci, gi in zip(a.tolist(), b.tolist(), c.tolist(), got.tolist()):
        exact = Fraction(ai) * Fraction(bi) + Fraction(ci)
        below = np.nextafter(np.float32(gi), np.float32(-np.inf))
        above = np.nextafter(np.float32(gi), np.float32(np.inf))
        # gi is the float32 nearest the exact value (ties to even)
        assert abs(Fraction(gi) - exact) <= abs(Fraction(float(below)) - exact)
        assert abs(Fraction(gi) - exact) <= abs(Fraction(float(above)) - exact)


@pytest.mark.parametrize("modalities", [1, 2])
@pytest.mark.parametrize("batch,width", [(32, 64), (33, 67), (40, 1029), (100, 203), (32, 4133)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_similarity_sums_in_the_documented_order(batch, width, dtype, modalities):
    # Modalities of rows at least 2B wide take the Gram products of the unscaled rows
    # (design.md §4.2); on any CPU (baseline or AVX2 clone, any Gram-tile version) S' must
    # equal that formula evaluated op by op here, bit for bit:
    # S = (sum_m G_m,ij r_m,i r_m,j in order of m) / M, with G in lane order below 96 rows
    # and in fma chains from 96.
    # Two modalities share one parallel region of Gram products; width 4133 at B = 32 is
    # summed in k chunks (csrc/cpu/sass_kernel.cpp kChunkBytes) whose lanes wait in between.
    g = torch.Generator().manual_seed(width)
    xs = [torch.randn(batch, width, generator=g, dtype=torch.float64).to(dtype) for _ in range(modalities)]
    s = None
    for x in xs:
        gram = dot_lanes(x) if batch < MIN_TILED_BATCH else fma_chain_gram(x)
        # Correctly rounded square roots (torch.sqrt of float32 was not, in 16% of a test
        # here), then one IEEE division each.
        norm = torch.tensor([math.sqrt(v) for v in gram.diagonal().tolist()], dtype=torch.float64).to(dtype)
        inverse_norm = torch.ones_like(norm) / norm.clamp_min(1e-12)
        term = gram * inverse_norm[:, None] * inverse_norm[None, :]
        s = term if s is None else s + term
    s = s / modalities
    upper = torch.triu(torch.ones(batch, batch, dtype=torch.bool), diagonal=1)
    lo, hi = s[upper].min(), s[upper].max()
    expected = ((s - lo) / (hi - lo)).triu(diagonal=1)
    expected = expected + expected.T
    assert torch.equal(mx.similarity(xs), expected)
