"""Sync-freedom and CUDA-graph checks of msmix_ext on a GPU (run by bench/gpu_check.sh).

1. torch.cuda.set_sync_debug_mode("error") around the msmix operators alone
   (sass_select, mix, mix_backward), then around a whole fused_mix forward and
   backward: any host synchronisation raises.
2. A training step (backbone + MSMix + msmix_objective + SGD step) captured in
   one CUDA graph and replayed with new data and a new device-side seed: each
   replay must draw the pairs an eager sass_select draws for the same inputs
   and seed (the kernels read the seed at replay time, not at capture time),
   and the loss must stay finite.
"""

from __future__ import annotations

import traceback

import torch
from torch import nn

import msmix_ext as mx

DEV = torch.device("cuda")
DIMS = (16, 8, 12)


def sync_free_ops() -> None:
    gen = torch.Generator(device=DEV).manual_seed(0)
    feats = [torch.randn(24, d, device=DEV, generator=gen, requires_grad=True) for d in DIMS]
    labels = torch.randn(24, device=DEV, generator=gen, requires_grad=True)
    seed = torch.tensor(5, device=DEV)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        idx1, idx2, lam0 = torch.ops.msmix.sass_select(feats, 24, 0.4, seed, 2.0)
        lam = torch.stack([lam0, 1 - lam0, lam0 * 0.5]).requires_grad_()
        lam_label = lam.mean(0)
        feats_out, labels_out = torch.ops.msmix.mix(feats, labels, idx1, idx2, lam, lam_label)
        (sum(f.sum() for f in feats_out) + labels_out.sum()).backward()
        s = torch.ops.msmix.similarity([f.detach() for f in feats])
        # a CPU seed is read on the host: no sync either
        torch.ops.msmix.sass_select(feats, 24, 0.4, torch.tensor(6), 2.0)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()
    assert bool((idx1 != idx2).all()) and s.shape == (24, 24)
    print("sync-free: msmix operators ok")


def sync_free_fused_mix() -> None:
    gen = torch.Generator(device=DEV).manual_seed(1)
    feats = [torch.randn(24, d, device=DEV, generator=gen, requires_grad=True) for d in DIMS]
    labels = torch.rand(24, device=DEV, generator=gen) * 6 - 3
    intensities = torch.randn(len(DIMS), 24, device=DEV, generator=gen, requires_grad=True)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = mx.fused_mix(feats, labels, intensities)  # seed drawn on the device
        loss = sum(f.square().sum() for f in out.feats) + (out.lam_label * out.labels1).sum()
        loss.backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()
    print("sync-free: fused_mix forward + backward ok")


class Backbone(nn.Module):
    def __init__(self, dims) -> None:
        super().__init__()
        self.proj = nn.ModuleList(nn.Linear(d, 32) for d in dims)
        self.head = nn.Sequential(nn.ReLU(), nn.Linear(32, 1))

    def forward(self, feats):
        return self.head(sum(p(f) for p, f in zip(self.proj, feats))).squeeze(-1)


def graph_capture() -> None:
    torch.manual_seed(0)
    batch = 32
    mixer = mx.MSMix(DIMS, num_heads=2).to(DEV).train()
    model = Backbone(DIMS).to(DEV)
    opt = torch.optim.SGD(list(mixer.parameters()) + list(model.parameters()), lr=1e-3)
    static_feats = [torch.randn(batch, d, device=DEV) for d in DIMS]
    static_labels = torch.rand(batch, device=DEV) * 6 - 3
    static_seed = torch.zeros((), dtype=torch.long, device=DEV)

    def step():
        out, sal = mixer(static_feats, static_labels, seed=static_seed)
        loss = mx.msmix_objective(model(out.feats), out, static_labels, sal)
        loss.backward()
        opt.step()
        return loss, out.idx1, out.idx2

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up outside the graph, as capture requires
        for _ in range(3):
            opt.zero_grad(set_to_none=True)
            step()
    torch.cuda.current_stream().wait_stream(side)

    graph = torch.cuda.CUDAGraph()
    opt.zero_grad(set_to_none=True)
    with torch.cuda.graph(graph):
        static_loss, static_idx1, static_idx2 = step()

    losses, distinct = [], set()
    for replay in range(6):
        for f in static_feats:
            f.copy_(torch.randn_like(f))
        static_labels.copy_(torch.rand_like(static_labels) * 6 - 3)
        static_seed.fill_(1000 + replay)
        graph.replay()
        torch.cuda.synchronize()
        idx1, idx2, _ = torch.ops.msmix.sass_select(static_feats, batch, mixer.threshold, static_seed,
                                                    mixer.alpha)
        assert torch.equal(idx1, static_idx1) and torch.equal(idx2, static_idx2), (
            f"replay {replay}: the graph drew other pairs than an eager call with the same seed")
        assert bool(torch.isfinite(static_loss)), f"replay {replay}: loss {static_loss}"
        losses.append(float(static_loss.detach()))
        distinct.add(tuple(static_idx1.tolist()))
    assert len(distinct) > 1, "every replay drew the same pairs: the seed was frozen at capture"
    print("cuda graph: training step captured and replayed, losses", [round(x, 4) for x in losses])


def main() -> None:
    assert torch.cuda.is_available() and mx.CUDA_COMPILED
    failed = False
    for check in (sync_free_ops, sync_free_fused_mix, graph_capture):
        try:
            check()
        except Exception:  # report every check, then fail
            failed = True
            print(f"{check.__name__}: FAILED")
            traceback.print_exc()
    if failed:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
