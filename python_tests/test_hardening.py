"""Precision bounds, degenerate batches, determinism, leaks, threads and serialisation
(the properties over random shapes are in test_properties.py)."""

from __future__ import annotations

import io
import resource
import threading

import pytest
import torch

import msmix_ext as mx
from msmix_ext import reference as ref

from conftest import requires_extension
from helpers import make_feats

pytestmark = requires_extension


@pytest.mark.parametrize("dtype,eps", [(torch.float16, 2.0**-11), (torch.bfloat16, 2.0**-8)])
def test_low_precision_within_stated_bounds(device, dtype, eps):
    """mix computes in float32 and rounds once (the bound stated in msmix_ext.mix):
    |out - exact| <= eps * |exact| + 2^-22 * (|x_i| + |x_j|) + 2^-24, eps the unit
    roundoff (2^-11 fp16, 2^-8 bf16); the clean rows are copied bit for bit."""
    feats32 = make_feats([(64,), (8, 16)], 50, device=device)
    feats = [f.to(dtype) for f in feats32]
    labels, intensities = torch.randn(50, device=device), torch.randn(2, 50, device=device)
    out = mx.fused_mix(feats, labels, intensities, seed=3)
    exact = mx.fused_mix([f.float() for f in feats], labels, intensities, seed=3)
    assert torch.equal(out.idx1, exact.idx1)
    for f, o, e in zip(feats, out.feats, exact.feats):
        assert torch.equal(o[:50], f)
        x = f.float().abs()
        bound = eps * e[50:].abs() + 2.0**-22 * (x[out.idx1] + x[out.idx2]) + 2.0**-24
        assert ((o[50:].float() - e[50:]).abs() <= bound).all()
    # and the similarity is accumulated in float32 whatever the input dtype
    torch.testing.assert_close(mx.similarity(feats), ref.similarity([f.float() for f in feats]), rtol=1e-5, atol=1e-5)


def test_degenerate_batches(device):
    # B = 2 and K far above B(B-1)/2 = 1: every candidate once, then with replacement
    out = mx.fused_mix([torch.randn(2, 3, device=device)], torch.zeros(2, device=device),
                       torch.zeros(1, 2, device=device), num_mix=7, seed=0)
    assert (out.idx1 != out.idx2).all() and torch.isfinite(out.feats[0]).all()
    assert torch.isfinite(out.lam).all()
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
