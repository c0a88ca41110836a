"""Nothing may depend on the CPU model or the thread count (docs/design.md, "Determinism"):
S' is exactly symmetric by construction, a degenerate batch takes the constant rule
whatever the rounding, and 1 and 2 threads give the same S', pairs and mixed rows."""

from __future__ import annotations

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
def test_one_and_two_threads_agree_bitwise(name, restore_threads):
    batch, shapes = SHAPES[name]
    feats = make_feats(shapes, batch, dtype=torch.float32, seed=batch + 1)
    labels = torch.linspace(-3, 3, batch)
    intensities = torch.randn(len(shapes), batch, generator=torch.Generator().manual_seed(batch))
    results = []
    for threads in (1, 2):
        torch.set_num_threads(threads)
        out = mx.fused_mix(feats, labels, intensities, threshold=0.4, seed=11)
        results.append((mx.similarity(feats), out))
    (s1, o1), (s2, o2) = results
    assert torch.equal(s1, s2)
    for field in ("idx1", "idx2", "lam0", "lam", "labels"):
        assert torch.equal(getattr(o1, field), getattr(o2, field)), field
    for a, b in zip(o1.feats, o2.feats):
        assert torch.equal(a, b)
