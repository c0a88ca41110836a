"""CUDA-only properties: same pairs as the CPU, no host syncs, CUDA graphs, compile with
reduce-overhead. Every other test also runs on CUDA through the `device` fixture."""

from __future__ import annotations

import pytest
import torch

import msmix_ext as mx

from helpers import clustered_feats, make_feats

pytestmark = pytest.mark.skipif(not (torch.cuda.is_available() and mx.CUDA_COMPILED),
                                reason="needs a GPU and the CUDA kernels")


def test_sass_pairs_identical_across_devices():
    feats = clustered_feats(96, [(8,), (4, 6), (5,)], clusters=6, noise=0.02, seed=5)
    for threshold, num_mix in [(0.4, 96), (0.4, 5000), (0.0, 300), (0.999, 50)]:
        for seed in range(4):
            cpu = torch.ops.msmix.sass_select(feats, num_mix, threshold, torch.tensor(seed), 2.0)
            gpu = torch.ops.msmix.sass_select([f.cuda() for f in feats], num_mix, threshold,
                                              torch.tensor(seed, device="cuda"), 2.0)
            assert torch.equal(cpu[0], gpu[0].cpu()) and torch.equal(cpu[1], gpu[1].cpu())
            torch.testing.assert_close(cpu[2], gpu[2].cpu(), rtol=1e-6, atol=1e-7)


def test_fused_mix_forward_and_backward_never_sync():
    feats = [f.requires_grad_() for f in make_feats([(32,), (8, 16), (4, 5)], 64, device="cuda")]
    labels = torch.randn(64, device="cuda")
    intensities = torch.randn(3, 64, device="cuda", requires_grad=True)
    mx.fused_mix(feats, labels, intensities)  # warm up lazy initialisation
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = mx.fused_mix(feats, labels, intensities)
        loss = sum(o.square().sum() for o in out.feats) + out.labels.sum()
        loss.backward()
        torch.use_deterministic_algorithms(True)
        out = mx.fused_mix(feats, labels, intensities)
        sum(o.sum() for o in out.feats).backward()
    finally:
        torch.use_deterministic_algorithms(False)
        torch.cuda.set_sync_debug_mode(0)


def test_training_step_replays_in_a_cuda_graph():
    torch.manual_seed(0)
    enc = torch.nn.Linear(16, 16).cuda()
    msmix = mx.MSMix([16, 16], num_heads=2).cuda()
    head = torch.nn.Linear(32, 1).cuda()
    params = [*enc.parameters(), *msmix.parameters(), *head.parameters()]
    opt = torch.optim.SGD(params, lr=1e-3)
    x = torch.randn(32, 16, device="cuda")
    y = torch.randn(32, device="cuda")
    seed = torch.zeros((), dtype=torch.long, device="cuda")

    def step():
        opt.zero_grad(set_to_none=False)
        h = enc(x)
        out, sal = msmix([h, h.tanh()], y, seed=seed)
        pred = head(torch.cat(out.feats, 1)).squeeze(-1)
        loss = mx.msmix_objective(pred, out, y, sal)
        loss.backward()
        opt.step()
        return loss, out.idx1

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        loss, idx1 = step()
    pairs = []
    for s in [1, 2, 1]:
        seed.fill_(s)
        graph.replay()
        pairs.append(idx1.clone())
    torch.cuda.synchronize()
    assert torch.isfinite(loss)
    assert torch.equal(pairs[0], pairs[2]) and not torch.equal(pairs[0], pairs[1])


def test_compile_reduce_overhead_matches_eager():
    torch._dynamo.reset()
    feats = make_feats([(8,), (4, 6)], 24, device="cuda")
    labels, intensities = torch.randn(24, device="cuda"), torch.randn(2, 24, device="cuda")

    def f(a, b, y, i, seed):
        out = mx.fused_mix([a, b], y, i, seed=seed)
        return out.feats[0].sum() + out.feats[1].sum() + out.labels.sum(), out.idx1

    compiled = torch.compile(f, mode="reduce-overhead", fullgraph=True)
    seed = torch.tensor(7, device="cuda")
    for _ in range(3):
        got = compiled(*feats, labels, intensities, seed)
    want = f(*feats, labels, intensities, seed)
    torch.testing.assert_close(got[0], want[0])
    assert torch.equal(got[1], want[1])
