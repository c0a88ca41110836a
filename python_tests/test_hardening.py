"""Properties over random shapes, precision bounds, degenerate batches, determinism,
leaks, threads and serialisation."""

from __future__ import annotations

import io
import resource
import threading

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import msmix_ext as mx
from msmix_ext import reference as ref

from conftest import DEVICES, requires_extension
from helpers import make_feats

pytestmark = requires_extension

# Pairs whose S' lies within this margin of the threshold may differ between
# the fused float32 similarity and the reference's (different summation order).
MARGIN = 1e-4


# Unit roundoff of each output dtype, and of the dtype mix computes in (design.md §6,
# msmix_ext.mix): |out - exact| <= u_out |exact| + 4 u_acc (|x_i| + |x_j|), plus 2^-25
# (half the spacing of float16 subnormals, where the relative bound does not hold).
ROUNDOFF = {torch.float64: (2.0**-53, 2.0**-53), torch.float32: (2.0**-24, 2.0**-24),
            torch.float16: (2.0**-11, 2.0**-24), torch.bfloat16: (2.0**-8, 2.0**-24)}


def assert_mixed_rows_within_bound(out, feats, batch):
    """The mixed rows against a float64 oracle from the same inputs, idx and ratios."""
    for m, (o, f) in enumerate(zip(out.feats, feats)):
        u_out, u_acc = ROUNDOFF[f.dtype]
        x = f.double()
        r = out.lam[m].double().reshape(-1, *[1] * (f.dim() - 1))
        exact = r * x[out.idx1] + (1 - r) * x[out.idx2]
        bound = u_out * exact.abs() + 4 * u_acc * (x[out.idx1].abs() + x[out.idx2].abs()) + 2.0**-25
        err = (o[batch:].double() - exact).abs()
        assert (err <= bound).all(), f"modality {m}: error {float((err - bound).max()):.3g} above the bound"
        assert torch.equal(o[:batch], f), "the clean rows are copied bit for bit"


@st.composite
def mix_cases(draw):
    num_modalities = draw(st.integers(1, 5))
    batch = draw(st.integers(2, 300))
    shapes = [draw(st.one_of(st.tuples(st.integers(1, 12)), st.tuples(st.integers(1, 5), st.integers(1, 6))))
              for _ in range(num_modalities)]
    return dict(
        shapes=shapes, batch=batch, num_mix=draw(st.integers(1, 4 * batch)),
        dtype=draw(st.sampled_from([torch.float32, torch.float64, torch.float16, torch.bfloat16])),
        threshold=draw(st.floats(0.0, 0.99)), alpha=draw(st.floats(0.05, 8.0)),
        contiguous=draw(st.booleans()), seed=draw(st.integers(0, 2**63 - 1)),
        device=draw(st.sampled_from(DEVICES)),
    )


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(mix_cases())
def test_fused_mix_properties(case):
    batch, num_mix, dtype, device = case["batch"], case["num_mix"], case["dtype"], case["device"]
    feats = make_feats(case["shapes"], batch, dtype=dtype, device=device, contiguous=case["contiguous"],
                       seed=case["seed"] % 1000)
    g = torch.Generator().manual_seed(case["seed"])
    labels = (torch.rand(batch, generator=g) * 6 - 3).to(device)
    intensities = torch.randn(len(feats), batch, generator=g).to(device)
    out = mx.fused_mix(feats, labels, intensities, num_mix=num_mix, threshold=case["threshold"],
                       alpha=case["alpha"], seed=case["seed"])
    # pairs are valid
    i, j = out.idx1.cpu(), out.idx2.cpu()
    assert i.shape == j.shape == (num_mix,) and (i != j).all()
    assert ((i >= 0) & (i < batch) & (j >= 0) & (j < batch)).all()
    s = ref.similarity([f.double().cpu() for f in feats])
    off = ~torch.eye(batch, dtype=torch.bool)
    sure_valid = int(((s > case["threshold"] + MARGIN) & off).sum())
    maybe_valid = int(((s > case["threshold"] - MARGIN) & off).sum())
    if sure_valid >= num_mix:  # drawn from V without replacement
        assert (s[i, j] > case["threshold"] - MARGIN).all()
        assert (i * batch + j).unique().numel() == num_mix
    elif maybe_valid < num_mix:  # the fallback: the most similar unordered pairs
        kth = s[torch.triu(torch.ones(batch, batch, dtype=torch.bool), 1)].sort(descending=True).values
        floor = kth[min(2 * num_mix, kth.numel()) - 1]
        assert (i < j).all() and (s[i, j] >= floor - MARGIN).all()
    # ratios and labels against the independent reference, rows against a float64 oracle
    want = ref.fused_mix(feats, labels, intensities, idx1=out.idx1, idx2=out.idx2, lam0=out.lam0)
    torch.testing.assert_close(out.lam, want.lam)
    torch.testing.assert_close(out.labels, want.labels)
    for o, f in zip(out.feats, feats):
        assert o.shape == (batch + num_mix, *f.shape[1:]) and o.dtype == dtype
    assert_mixed_rows_within_bound(out, feats, batch)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_within_stated_bounds(device, dtype):
    """mix computes in float32 and rounds once: the bound stated in msmix_ext.mix holds
    against a float64 oracle, and the similarity is accumulated in float32."""
    g = torch.Generator().manual_seed(3)
    feats = [f.to(dtype) for f in make_feats([(64,), (8, 16)], 50, device=device)]
    # wide magnitudes, so that both the relative and the absolute term of the bound matter
    feats[0] = (feats[0].float() * torch.logspace(-6, 4, 64, device=device)).to(dtype)
    labels, intensities = torch.randn(50, generator=g).to(device), torch.randn(2, 50, generator=g).to(device)
    out = mx.fused_mix(feats, labels, intensities, seed=3)
    assert_mixed_rows_within_bound(out, feats, 50)
    torch.testing.assert_close(mx.similarity(feats), ref.similarity([f.float() for f in feats]), rtol=1e-5, atol=1e-5)


def test_degenerate_batches(device):
    # B = 2 and K far above B(B-1)/2 = 1: every candidate once, then with replacement
    out = mx.fused_mix([torch.randn(2, 3, device=device)], torch.zeros(2, device=device),
                       torch.zeros(1, 2, device=device), num_mix=7, seed=0)
    assert out.idx1.tolist() == [0] * 7 and out.idx2.tolist() == [1] * 7  # the one candidate pair
    assert torch.isfinite(out.feats[0]).all() and torch.isfinite(out.lam).all()
    # zero rows and all labels zero: finite everything, SAL well defined
    module = mx.MSMix([4, 3], num_heads=2).to(device).train()
    feats = [torch.zeros(5, 4, device=device), torch.zeros(5, 2, 3, device=device)]
    out, sal = module(feats, torch.zeros(5, device=device), seed=1)
    assert torch.isfinite(sal) and all(torch.isfinite(o).all() for o in out.feats)
    # all pairs below the threshold: the fallback still returns K distinct valid pairs
    feats = make_feats([(6,)], 10, device=device)
    idx1, idx2 = mx.sass_select(feats, 12, threshold=0.999, seed=2)
    assert (idx1 != idx2).all() and (idx1 * 10 + idx2).unique().numel() == 12


def _fwd_bwd(device, seed=4):
    feats = [f.requires_grad_() for f in make_feats([(16,), (4, 8)], 40, device=device)]
    g = torch.Generator().manual_seed(seed)
    labels = torch.randn(40, generator=g).to(device).requires_grad_()
    intensities = torch.randn(2, 40, generator=g).to(device).requires_grad_()
    out = mx.fused_mix(feats, labels, intensities, num_mix=80, seed=seed)
    loss = sum((o * torch.arange(o.numel(), device=device).reshape(o.shape).sin()).sum() for o in out.feats)
    grads = torch.autograd.grad(loss + out.labels.square().sum(), [*feats, labels, intensities])
    return [o.detach() for o in out.feats], grads


def test_deterministic_algorithms_give_bitwise_identical_results(device):
    torch.use_deterministic_algorithms(True)
    try:
        runs = [_fwd_bwd(device) for _ in range(3)]
    finally:
        torch.use_deterministic_algorithms(False)
    for outs, grads in runs[1:]:
        assert all(torch.equal(a, b) for a, b in zip(outs, runs[0][0]))
        assert all(torch.equal(a, b) for a, b in zip(grads, runs[0][1]))


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def test_no_leak_over_10000_calls(device):
    feats = [f.requires_grad_() for f in make_feats([(8,), (3, 4)], 16, device=device)]
    labels, intensities = torch.randn(16, device=device), torch.randn(2, 16, device=device, requires_grad=True)

    def call(seed):
        out = mx.fused_mix(feats, labels, intensities, seed=seed)
        (out.feats[0].sum() + out.feats[1].sum()).backward()

    for seed in range(500):  # warm up allocator caches
        call(seed)
    if device == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
    rss = _rss_mb()
    for seed in range(10_000):
        call(seed)
    growth = _rss_mb() - rss
    assert growth < 20, f"RSS grew by {growth:.1f} MB over 10,000 calls"
    if device == "cuda":
        torch.cuda.synchronize()
        assert torch.cuda.memory_allocated() == base


def test_threads_match_serial_calls(device):
    seeds = [11, 22, 33, 44]
    serial = [_fwd_bwd(device, s) for s in seeds]
    results: dict[int, object] = {}
    errors = []

    def worker(k):
        try:
            for _ in range(5):
                results[k] = _fwd_bwd(device, seeds[k])
        except Exception as e:  # surfaced below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for k in range(4):
        for a, b in zip([*serial[k][0], *serial[k][1]], [*results[k][0], *results[k][1]]):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


class _Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.msmix = mx.MSMix([4, 3], num_heads=2)
        self.head = torch.nn.Linear(7, 1)

    def forward(self, a, b, labels):
        out, sal = self.msmix([a, b], labels, seed=torch.tensor(5))
        return self.head(torch.cat([out.feats[0], out.feats[1].mean(1)], 1)).squeeze(-1), sal


def test_state_dict_and_save_load_round_trip():
    torch.manual_seed(0)
    net = _Net().train()
    a, b, y = torch.randn(6, 4), torch.randn(6, 2, 3), torch.randn(6)
    clone = _Net().train()
    clone.load_state_dict(net.state_dict())
    buffer = io.BytesIO()
    torch.save(net, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False).train()
    for other in (clone, loaded):
        for x, z in zip(net(a, b, y), other(a, b, y)):
            torch.testing.assert_close(x, z)


def test_torch_export_of_a_module_calling_fused_mix():
    net = _Net().train()
    args = (torch.randn(6, 4), torch.randn(6, 2, 3), torch.randn(6))
    exported = torch.export.export(net, args)
    assert any("msmix" in str(n.target) for n in exported.graph.nodes)
    for x, z in zip(net(*args), exported.module()(*args)):
        torch.testing.assert_close(x, z)
