"""The msmix operators under torch.autocast (docs/design.md, "Mixed precision"): a whole
MS-Mix training step in bfloat16 on the CPU (and float16/bfloat16 on CUDA), eager and
compiled, with the pairs those of the features cast to float32 up front."""

from __future__ import annotations

import pytest
import torch

import msmix_ext as mx

from conftest import DEVICES, requires_extension
from helpers import make_feats

pytestmark = requires_extension

# (device, autocast dtype): bfloat16 is the CPU's autocast dtype; CUDA trains in both.
AMP_CASES = [("cpu", torch.bfloat16)] + [("cuda", dt) for dt in (torch.float16, torch.bfloat16)
                                         if "cuda" in DEVICES]
AMP_IDS = [f"{d}-{str(dt).split('.')[-1]}" for d, dt in AMP_CASES]

WIDTHS = (12, 6, 4)


class TinyModel(torch.nn.Module):
    """Encoders -> MSMix -> a head, the shape of a real MS-Mix training loop."""

    def __init__(self):
        super().__init__()
        self.encoders = torch.nn.ModuleList([torch.nn.Linear(20, WIDTHS[0]), torch.nn.Linear(10, WIDTHS[1]),
                                             torch.nn.Linear(8, WIDTHS[2])])
        self.msmix = mx.MSMix(list(WIDTHS), num_heads=2)
        self.head = torch.nn.Linear(sum(WIDTHS), 1)

    def forward(self, raw, labels, seed):
        feats = [enc(x) for enc, x in zip(self.encoders, raw)]
        out, sal = self.msmix(feats, labels, seed=seed)
        pooled = torch.cat([out.feats[0].mean(1), out.feats[1].mean(1), out.feats[2]], dim=1)
        pred = self.head(pooled).squeeze(-1)
        return mx.msmix_objective(pred, out, labels, sal), out, feats


def _batch(device, batch=16):
    g = torch.Generator().manual_seed(0)
    raw = [torch.randn(batch, 5, 20, generator=g), torch.randn(batch, 3, 10, generator=g),
           torch.randn(batch, 8, generator=g)]
    labels = torch.rand(batch, generator=g) * 6 - 3
    return [x.to(device) for x in raw], labels.to(device)


def _amp_step(model, raw, labels, device, dtype, seed=3):
    with torch.autocast(device, dtype=dtype):
        loss, out, feats = model(raw, labels, seed)
    loss.backward()
    return loss, out, feats


def _assert_trained(model, loss, dtype):
    assert torch.isfinite(loss)
    groups = {"encoders": model.encoders, "SIG": model.msmix.predictors, "head": model.head}
    for name, module in groups.items():
        grads = [p.grad for p in module.parameters()]
        assert all(g is not None and torch.isfinite(g).all() for g in grads), name
        assert sum(float(g.abs().sum()) for g in grads) > 0, f"no gradient reached the {name}"


@pytest.mark.parametrize("device,dtype", AMP_CASES, ids=AMP_IDS)
def test_training_step_under_autocast(device, dtype):
    torch.manual_seed(0)
    model = TinyModel().to(device).train()
    raw, labels = _batch(device)
    loss, out, feats = _amp_step(model, raw, labels, device, dtype)
    assert all(f.dtype == dtype for f in feats), "the encoders ran under autocast"
    assert all(o.dtype == dtype for o in out.feats), "mix keeps the feature dtype"
    _assert_trained(model, loss, dtype)
    # The pairs and lam0 are those of the same features cast to float32 up front.
    cast = [f.detach().float() for f in feats]
    idx1, idx2, lam0 = torch.ops.msmix.sass_select(cast, out.idx1.numel(), 0.4, mx.seed_tensor(3), 2.0)
    assert torch.equal(out.idx1, idx1) and torch.equal(out.idx2, idx2)
    assert torch.equal(out.lam0, lam0) and out.lam0.dtype == torch.float32


@pytest.mark.parametrize("device,dtype", AMP_CASES, ids=AMP_IDS)
def test_compiled_training_step_under_autocast(device, dtype):
    torch.manual_seed(0)
    model = TinyModel().to(device).train()
    eager = TinyModel().to(device).train()
    eager.load_state_dict(model.state_dict())
    raw, labels = _batch(device)

    def step(raw, labels):
        with torch.autocast(device, dtype=dtype):
            return model(raw, labels, 3)

    loss, out, _ = torch.compile(step, fullgraph=True)(raw, labels)
    loss.backward()
    _assert_trained(model, loss, dtype)
    eager_loss, eager_out, _ = _amp_step(eager, raw, labels, device, dtype)
    assert torch.equal(out.idx1, eager_out.idx1) and torch.equal(out.idx2, eager_out.idx2)
    # Inductor keeps float32 intermediates where eager rounds to bfloat16: agree to bf16 precision.
    torch.testing.assert_close(loss, eager_loss, rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_similarity_under_autocast_reads_float32(device, dtype):
    # The GEMM inside the kernel must not be re-cast by autocast: S' equals the float32
    # computation bit for bit, for features given in half precision or in float32.
    for feats in (make_feats([(7, 5), (33,)], 24, dtype=dtype, device=device, seed=1),
                  make_feats([(7, 5), (33,)], 24, dtype=torch.float32, device=device, seed=1)):
        want = mx.similarity([f.float() for f in feats])
        with torch.autocast(device, dtype=dtype):
            got = mx.similarity(feats)
        assert got.dtype == torch.float32
        assert torch.equal(got, want)


@pytest.mark.parametrize("device", DEVICES)
def test_float64_features_stay_float64_under_autocast(device):
    feats = make_feats([(6,), (2, 3)], 10, dtype=torch.float64, device=device, seed=2)
    with torch.autocast(device, dtype=torch.bfloat16):
        s = mx.similarity(feats)
        idx1, idx2 = mx.sass_select(feats, 10, 0.4, seed=4)
    assert s.dtype == torch.float64 and torch.equal(s, mx.similarity(feats))
    want1, want2 = mx.sass_select(feats, 10, 0.4, seed=4)
    assert torch.equal(idx1, want1) and torch.equal(idx2, want2)


@pytest.mark.parametrize("device", DEVICES)
def test_mix_promotes_mixed_dtypes_to_the_widest(device):
    # An encoder under autocast (bfloat16) next to raw float32 features: one kernel dtype.
    g = torch.Generator().manual_seed(5)
    a64 = torch.randn(6, 4, 3, generator=g, dtype=torch.float64)
    b64 = torch.randn(6, 5, generator=g, dtype=torch.float64)
    a = a64.to(device, torch.bfloat16).requires_grad_()
    b = b64.to(device, torch.float32).requires_grad_()
    labels = torch.randn(6, device=device)
    idx1 = torch.tensor([0, 2, 5, 1], device=device)
    idx2 = torch.tensor([3, 1, 0, 4], device=device)
    lam = torch.rand(2, 4, generator=g).to(device)
    lam_label = lam.mean(0)
    with torch.autocast(device, dtype=torch.bfloat16):
        (fa, fb), _ = mx.mix([a, b], labels, idx1, idx2, lam, lam_label)
    assert fa.dtype == fb.dtype == torch.float32
    # Independent float64 oracle: the bfloat16 values of a, widened, mixed exactly.
    a_exact = a.detach().double().cpu()
    r = lam[0].double().cpu()[:, None, None]
    want = torch.cat([a_exact, r * a_exact[idx1.cpu()] + (1 - r) * a_exact[idx2.cpu()]])
    torch.testing.assert_close(fa.double().cpu(), want, rtol=2e-7, atol=1e-7)
    (fa.sum() + fb.sum()).backward()
    assert a.grad.dtype == torch.bfloat16 and b.grad.dtype == torch.float32
    # d sum / d a[b] = 1 + sum of the ratios with which row b entered the mixed rows.
    weight = torch.ones(6, dtype=torch.float64)
    weight.index_add_(0, idx1.cpu(), r.reshape(-1))
    weight.index_add_(0, idx2.cpu(), 1 - r.reshape(-1))
    torch.testing.assert_close(a.grad.double().cpu(), weight[:, None, None].expand(6, 4, 3),
                               rtol=2**-8, atol=0)
