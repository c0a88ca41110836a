"""Small CUDA workload for compute-sanitizer (run by bench/gpu_check.sh).

Every CUDA kernel of msmix_ext runs at least once, on both of its paths where
it has two (16-byte vectors and the scalar fallback; valid pairs and the
fallback draw, in one block and past it; one and several batches of
inverse-index entries), with sizes
small enough that memcheck and racecheck finish in seconds:

    compute-sanitizer --tool memcheck --error-exitcode 1 python3 bench/gpu_sanitize.py
    compute-sanitizer --tool racecheck --kernel-name kns=msmix --error-exitcode 1 python3 bench/gpu_sanitize.py

``--device cpu`` runs the same calls on the CPU kernels (bench/gpu_check.sh --dry-run), less
the non-finite features, which the CPU rejects where CUDA turns them into NaN similarities.
"""

from __future__ import annotations

import argparse

import torch

import msmix_ext as mx


def main() -> None:
    parser = argparse.ArgumentParser(description="Small workload for compute-sanitizer.")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    dev = torch.device(parser.parse_args().device)
    if dev.type == "cuda":
        assert torch.cuda.is_available(), "needs a CUDA device"
        assert mx.CUDA_COMPILED, "msmix_ext was built without its CUDA kernels"
    gen = torch.Generator(device=dev).manual_seed(0)

    def randn(*shape, dtype=torch.float32, grad=True):
        t = torch.randn(*shape, generator=gen, device=dev).to(dtype)
        return t.requires_grad_(grad)

    # 1. fused_mix, float32: vectorised (20, 3*8) and scalar (5) widths, [B] labels.
    batch = 12
    feats = [randn(batch, 20), randn(batch, 3, 8), randn(batch, 5)]
    labels = torch.rand(batch, generator=gen, device=dev) * 6 - 3
    intensities = randn(3, batch)
    out = mx.fused_mix(feats, labels, intensities, seed=1)
    (sum(f.sum() for f in out.feats) + out.labels.sum() + out.lam_label.sum()).backward()

    # 2. fused_mix, float16 and bfloat16, [B, 1] labels, fallback draw with
    #    replacement (threshold 0.99, K > B(B-1)/2), odd widths.
    for dtype in (torch.float16, torch.bfloat16):
        small = 5
        feats = [randn(small, 16, dtype=dtype), randn(small, 2, 7, dtype=dtype)]
        labels = (torch.rand(small, 1, generator=gen, device=dev) * 6 - 3).to(dtype)
        intensities = randn(2, small)
        out = mx.fused_mix(feats, labels, intensities, num_mix=25, threshold=0.99, seed=2)
        (sum(f.float().sum() for f in out.feats) + out.labels.float().sum()).backward()

    # 3. float64, seed on the device, deterministic mode (the same gather path).
    torch.use_deterministic_algorithms(True)
    try:
        feats = [randn(9, 6, dtype=torch.float64), randn(9, 4, 3, dtype=torch.float64)]
        labels = torch.randn(9, generator=gen, device=dev, dtype=torch.float64)
        intensities = randn(2, 9, dtype=torch.float64)
        seed = torch.tensor(7, device=dev)
        out = mx.fused_mix(feats, labels, intensities, seed=seed, num_mix=20)
        (sum(f.sum() for f in out.feats) + out.labels.sum()).backward()
    finally:
        torch.use_deterministic_algorithms(False)

    # 4. Many entries per source row (B = 3, K = 700): the backward stages a
    #    row's entries in several batches; lam in float64 for float32 data.
    feats = [randn(3, 9), randn(3, 32)]
    labels = torch.randn(3, generator=gen, device=dev)
    idx1 = torch.randint(0, 3, (700,), generator=gen, device=dev)
    idx2 = torch.randint(0, 3, (700,), generator=gen, device=dev)
    lam = torch.rand(2, 700, generator=gen, device=dev, dtype=torch.float64).requires_grad_()
    feats_out, labels_out = mx.mix(feats, labels, idx1, idx2, lam, lam.mean(0))
    (sum(f.sum() for f in feats_out) + labels_out.sum()).backward()

    # 5. Similarity over two 64-row tiles and split columns; NaN and Inf rows (CUDA only).
    feats = [randn(70, 300, grad=False), randn(70, 4, 5, grad=False)]
    s = mx.similarity(feats)
    assert torch.equal(s, s.T)
    if dev.type == "cuda":
        feats[0][3, 0] = float("nan")
        feats[1][10, 1, 1] = float("inf")
    idx1, idx2 = mx.sass_select(feats, 70, 0.4, seed=3)
    assert bool(((idx1 != idx2) & (idx1 >= 0) & (idx1 < 70) & (idx2 >= 0) & (idx2 < 70)).all())

    # 6. Tiny batch: B = 2, every candidate drawn with replacement.
    feats = [randn(2, 4, grad=False)]
    idx1, idx2 = mx.sass_select(feats, 9, 0.4, seed=4)
    assert bool((idx1 != idx2).all())

    # 7. B = 260, past the one-block draw: the sort path (valid and fallback draws)
    #    and the separate ratio kernel; then float64 intensities for float32
    #    features at a small batch (the ratio kernel after the one-block draw).
    feats = [randn(260, 24), randn(260, 2, 5)]
    labels = torch.randn(260, generator=gen, device=dev)
    for threshold in (0.4, 0.99):
        out = mx.fused_mix(feats, labels, randn(2, 260), threshold=threshold, num_mix=300, seed=5)
        (sum(f.sum() for f in out.feats) + out.labels.sum()).backward()
    out = mx.fused_mix([f[:12] for f in feats], labels[:12], randn(2, 12, dtype=torch.float64), seed=6)
    (sum(f.sum() for f in out.feats) + out.labels.sum()).backward()

    if dev.type == "cuda":
        torch.cuda.synchronize()
    print(f"gpu_sanitize: ok ({dev.type})")


if __name__ == "__main__":
    main()
