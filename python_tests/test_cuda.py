"""CUDA-only properties: same pairs as the CPU, no host syncs, CUDA graphs, compile with
reduce-overhead. Every other test also runs on CUDA through the `device` fixture."""

from __future__ import annotations

import pytest
import torch

import msmix_ext as mx
from msmix_ext import reference as ref

from helpers import general_position_cases, make_feats, sass_decision

pytestmark = pytest.mark.skipif(not (torch.cuda.is_available() and mx.CUDA_COMPILED),
                                reason="needs a GPU and the CUDA kernels")

GENERAL_POSITION = general_position_cases()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", GENERAL_POSITION.keys())
def test_sass_pairs_identical_across_devices(case, dtype):
    # The devices round S' differently in its last bits, so the pairs are compared only where
    # no decision of the draw lies near S' (general_position_cases; checked here first).
    feats64, threshold, num_mix, draw = GENERAL_POSITION[case]
    feats = [f.to(dtype) for f in feats64]
    taken, margin = sass_decision(ref.similarity([f.double() for f in feats]), threshold, num_mix)
    assert taken == draw and margin > 1e-3, (taken, margin)
    for seed in range(4):
        cpu = torch.ops.msmix.sass_select(feats, num_mix, threshold, torch.tensor(seed), 2.0)
        gpu = torch.ops.msmix.sass_select([f.cuda() for f in feats], num_mix, threshold,
                                          torch.tensor(seed, device="cuda"), 2.0)
        assert torch.equal(cpu[0], gpu[0].cpu()) and torch.equal(cpu[1], gpu[1].cpu())
        torch.testing.assert_close(cpu[2], gpu[2].cpu(), rtol=1e-6, atol=1e-7)


def _cuda_kernels(run):
    run()  # warm-up
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        run()
        torch.cuda.synchronize()
    return [e.name for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]


@pytest.mark.parametrize("batch", [64, 256])
def test_fused_mix_launches(batch):
    # Forward, B <= 256: row normalisation, Gram, the drawing block (pairs, ratios, picked
    # labels), mix. Backward, dense output gradients, K <= 2048: the inverse-index block,
    # the source-gradient gather, the ratio gradients, the intensities' gradient.
    feats = [f.requires_grad_() for f in make_feats([(32,), (8, 16), (4, 5)], batch, device="cuda")]
    labels = torch.randn(batch, device="cuda")
    intensities = torch.randn(3, batch, device="cuda", requires_grad=True)
    forward = _cuda_kernels(lambda: mx.fused_mix(feats, labels, intensities, seed=1))
    assert len(forward) == 4, forward
    out = mx.fused_mix(feats, labels, intensities, seed=1)
    outputs = [*out.feats, out.labels]
    grads = [torch.randn_like(t) for t in outputs]
    backward = _cuda_kernels(lambda: torch.autograd.grad(outputs, [*feats, intensities], grads, retain_graph=True))
    assert len(backward) == 4, backward


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
        feats = [h, h.tanh()]
        out, sal = msmix(feats, y, seed=seed)
        pred = head(torch.cat(out.feats, 1)).squeeze(-1)
        loss = mx.msmix_objective(pred, out, y, sal)
        loss.backward()
        opt.step()
        return loss, feats, out.idx1, out.idx2

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        loss, feats, idx1, idx2 = step()
    drawn = set()
    for s in [1, 2, 1, 3]:
        seed.fill_(s)
        graph.replay()
        # opt.step() moves the encoder at every replay, so the features (and S') change too:
        # compare with an eager draw on the features this replay used, with its seed.
        want1, want2, _ = torch.ops.msmix.sass_select([f.detach() for f in feats], 32, msmix.threshold,
                                                      seed, msmix.alpha)
        assert torch.equal(idx1, want1) and torch.equal(idx2, want2), f"replay with seed {s}"
        assert torch.isfinite(loss)
        drawn.add(tuple(idx1.tolist()))
    assert len(drawn) > 1, "every replay drew the same pairs: the seed was frozen at capture"


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


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("width", [1, 3, 8, 9, 1029])
def test_mix_matches_cpu_bit_for_bit(dtype, width):
    g = torch.Generator().manual_seed(width)
    feats = [torch.randn(7, width, generator=g).to(dtype), torch.randn(7, 3, width, generator=g).to(dtype)[:, :, :]]
    labels = torch.randn(7, 1, generator=g)
    idx1, idx2 = torch.randint(7, (30,), generator=g), torch.randint(7, (30,), generator=g)
    lam = torch.rand(2, 30, generator=g)
    cpu = mx.mix(feats, labels, idx1, idx2, lam, lam.mean(0))
    gpu = mx.mix([f.cuda() for f in feats], labels.cuda(), idx1.cuda(), idx2.cuda(), lam.cuda(), lam.mean(0).cuda())
    for a, b in zip([*cpu[0], cpu[1]], [*gpu[0], gpu[1]]):
        assert torch.equal(a, b.cpu())
    grads = [torch.randn(o.shape, generator=g).to(o.dtype) for o in [*cpu[0], cpu[1]]]
    mask = [True, True, True, True]
    want = torch.ops.msmix.mix_backward(grads[:2], grads[2], feats, labels, idx1, idx2, lam, lam.mean(0), mask)
    got = torch.ops.msmix.mix_backward([t.cuda() for t in grads[:2]], grads[2].cuda(), [f.cuda() for f in feats],
                                       labels.cuda(), idx1.cuda(), idx2.cuda(), lam.cuda(), lam.mean(0).cuda(), mask)
    for a, b in zip(want[0], got[0]):
        assert torch.equal(a, b.cpu())
    assert torch.equal(want[1], got[1].cpu())
    torch.testing.assert_close(want[2], got[2].cpu(), rtol=1e-4, atol=1e-4)


def test_out_of_range_index_is_a_device_assert():
    import subprocess
    import sys
    code = ("import torch, msmix_ext as mx\n"
            "f = [torch.randn(4, 3, device='cuda')]\n"
            "i = torch.tensor([0, 9], device='cuda')\n"
            "mx.mix(f, torch.randn(4, device='cuda'), i, i.flip(0), torch.rand(1, 2, device='cuda'), torch.rand(2, device='cuda'))\n"
            "torch.cuda.synchronize()\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "assert" in (result.stderr + result.stdout).lower()
