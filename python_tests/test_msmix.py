"""SIG, SAL, mixing ratios, fused_mix, MSMix and the objective (design.md §1-3, 5, 7) against
hand-written float64 computations."""

from __future__ import annotations

import math

import pytest
import torch

import msmix_ext as mx
from msmix_ext import reference as ref

from conftest import requires_extension
from helpers import clustered_feats, make_feats


# --- SIG -------------------------------------------------------------------------------------------

def _sig_by_hand(p: mx.IntensityPredictor, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """design.md §1 written out with explicit loops over samples and heads."""
    if x.dim() == 2:
        x = x[:, None, :]
    out = []
    for b in range(x.shape[0]):
        h = x[b]
        if p.project is not None:
            h = h @ p.project.weight.T + p.project.bias
        h = torch.cat([h, h.new_zeros(h.shape[0], p.pad)], dim=1)
        qkv = h @ p.qkv.weight.T + p.qkv.bias
        q, k, v = qkv.split(p.width, dim=1)
        dh = p.width // p.num_heads
        valid = torch.ones(h.shape[0], dtype=torch.bool) if mask is None else mask[b]
        heads = []
        for head in range(p.num_heads):
            sl = slice(head * dh, (head + 1) * dh)
            scores = q[:, sl] @ k[:, sl].T / math.sqrt(dh)
            scores = scores.masked_fill(~valid[None, :], float("-inf"))
            heads.append(torch.softmax(scores, dim=1) @ v[:, sl])
        a = torch.cat(heads, dim=1) @ p.out.weight.T + p.out.bias
        r = h + a
        mu, var = r.mean(1, keepdim=True), r.var(1, unbiased=False, keepdim=True)
        r = (r - mu) / torch.sqrt(var + p.norm.eps) * p.norm.weight + p.norm.bias
        pooled = r[valid].mean(0)
        out.append(p.max_intensity * torch.tanh(pooled @ p.head.weight[0] + p.head.bias[0]))
    return torch.stack(out)


@pytest.mark.parametrize("dim,heads,tokens", [(8, 4, None), (5, 4, 6), (12, 3, 4), (2100, 4, 3), (7, 1, 5)])
@pytest.mark.parametrize("masked", [False, True])
def test_sig_matches_hand_computation(dim, heads, tokens, masked):
    torch.manual_seed(0)
    p = mx.IntensityPredictor(dim, num_heads=heads, max_intensity=3.0).double().eval()
    batch = 4
    x = torch.randn(batch, dim, dtype=torch.float64) if tokens is None else torch.randn(batch, tokens, dim, dtype=torch.float64)
    mask = None
    if masked and tokens is not None:
        lengths = torch.tensor([tokens, 1, tokens - 1, 2])
        mask = torch.arange(tokens)[None, :] < lengths[:, None]
    got = p(x, mask)
    assert got.shape == (batch,)
    # design.md §1: widths above 2000 are projected to 1024 first (the hand computation uses p.project)
    assert (p.project is not None) == (dim > 2000)
    torch.testing.assert_close(got, _sig_by_hand(p, x, mask))


def test_sig_projects_widths_above_2000_only():
    assert mx.IntensityPredictor(2000).project is None
    wide = mx.IntensityPredictor(2001, num_heads=3)
    assert (wide.project.in_features, wide.project.out_features, wide.width) == (2001, 1024, 1026)


def test_sig_ignores_padded_tokens():
    torch.manual_seed(1)
    p = mx.IntensityPredictor(6, num_heads=2).eval()
    x = torch.randn(3, 5, 6)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]], dtype=torch.bool)
    y = x.clone()
    y[~mask] = 100 * torch.randn(int((~mask).sum()), 6)
    torch.testing.assert_close(p(x, mask), p(y, mask))


def test_sig_under_autocast():
    p = mx.IntensityPredictor(10, num_heads=4)
    x = torch.randn(5, 3, 10)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = p(x)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.float(), p(x), atol=0.1, rtol=0.05)


# --- SAL -------------------------------------------------------------------------------------------

def _sal_by_hand(intensities, labels, r, scale):
    batch = labels.numel()
    y = [abs(float(v)) / r for v in labels.reshape(-1)]
    p_y = [math.exp(v) / sum(math.exp(u) for u in y) + 1e-8 for v in y]
    total = 0.0
    for row in intensities.tolist():
        q = [abs(v) / r for v in row]
        p_m = [math.exp(v) / sum(math.exp(u) for u in q) + 1e-8 for v in q]
        total += sum(a * (math.log(a) - math.log(b)) for a, b in zip(p_y, p_m)) / batch
    return scale * total


@pytest.mark.parametrize("r,scale", [(3.0, 1000.0), (1.0, 1.0)])
def test_sal_matches_hand_computation(r, scale):
    g = torch.Generator().manual_seed(2)
    intensities = (torch.rand(3, 7, generator=g, dtype=torch.float64) * 2 - 1) * r
    labels = (torch.rand(7, 1, generator=g, dtype=torch.float64) * 2 - 1) * r
    got = mx.sentiment_alignment_loss(intensities, labels, max_intensity=r, scale=scale)
    assert got.item() == pytest.approx(_sal_by_hand(intensities, labels, r, scale), rel=1e-9)
    # and it equals the reference code's F.kl_div(log q, p, reduction="batchmean") form
    p_y = torch.softmax(labels.reshape(-1).abs() / r, 0) + 1e-8
    kl = sum(torch.nn.functional.kl_div((torch.softmax(i.abs() / r, 0) + 1e-8).log(), p_y, reduction="batchmean")
             for i in intensities)
    torch.testing.assert_close(got, scale * kl)


def test_sal_gradient_matches_finite_differences():
    g = torch.Generator().manual_seed(3)
    intensities = torch.randn(2, 6, generator=g, dtype=torch.float64, requires_grad=True)
    labels = torch.randn(6, generator=g, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda i: mx.sentiment_alignment_loss(i, labels, 2.0, 10.0), (intensities,))


def test_sal_with_all_zero_labels_is_finite():
    intensities = torch.randn(2, 5, requires_grad=True)
    loss = mx.sentiment_alignment_loss(intensities, torch.zeros(5))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(intensities.grad).all()
    assert loss.item() == pytest.approx(_sal_by_hand(intensities.detach(), torch.zeros(5), 3.0, 1000.0), rel=1e-5)


# --- mixing ratios ------------------------------------------------------------------------------

def _ratios_by_hand(intensities, idx1, idx2, lam0):
    lam = []
    for row in intensities.tolist():
        w = [abs(v) for v in row]
        lo, hi = min(w), max(w)
        w = [(v - lo) / (hi - lo + 1e-8) for v in w]
        lam.append([(l0 + (w[i] + 1e-8) / (w[i] + w[j] + 2e-8)) / 2 for i, j, l0 in zip(idx1.tolist(), idx2.tolist(), lam0.tolist())])
    lam = torch.tensor(lam, dtype=torch.float64)
    return lam, lam.mean(0)


def test_mix_ratios_match_hand_computation():
    g = torch.Generator().manual_seed(3)
    intensities = torch.randn(3, 9, generator=g, dtype=torch.float64)
    idx1, idx2 = torch.randint(9, (12,), generator=g), torch.randint(9, (12,), generator=g)
    lam0 = torch.rand(12, generator=g, dtype=torch.float64)
    lam, lam_label = mx.mix_ratios(intensities, idx1, idx2, lam0)
    want, want_label = _ratios_by_hand(intensities, idx1, idx2, lam0)
    torch.testing.assert_close(lam, want)
    torch.testing.assert_close(lam_label, want_label)


def test_mix_ratios_guards_for_equal_intensities():
    intensities = torch.full((2, 4), 1.5, dtype=torch.float64)  # w = 0 everywhere: the 1e-8 guards
    lam0 = torch.tensor([0.1, 0.9], dtype=torch.float64)
    lam, lam_label = mx.mix_ratios(intensities, torch.tensor([0, 1]), torch.tensor([2, 3]), lam0)
    torch.testing.assert_close(lam, ((lam0 + 0.5) / 2).expand(2, 2))
    torch.testing.assert_close(lam_label, (lam0 + 0.5) / 2)


# --- fused_mix ------------------------------------------------------------------------------------

@requires_extension
@pytest.mark.parametrize("shapes", [[(6,), (3, 4)], [(5,), (4, 3), (7,)], [(2, 3), (3,), (4, 2), (6,)]],
                         ids=["m2", "m3", "m4"])
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("label_shape", [(), (1,)])
def test_fused_mix_matches_reference_pipeline(device, shapes, masked, label_shape):
    torch.manual_seed(4)
    batch = 24
    # float64: the SIG path amplifies float32 rounding through the min-max of design.md §3
    feats = [f.requires_grad_() for f in make_feats(shapes, batch, dtype=torch.float64, device=device, seed=7)]
    labels = torch.rand(batch, *label_shape, device=device, dtype=torch.float64) * 6 - 3
    masks = [None] * len(shapes)
    if masked:
        masks = [None if len(s) == 1 else torch.arange(s[0], device=device)[None, :] < torch.randint(1, s[0] + 1, (batch, 1), device=device)
                 for s in shapes]
    module = mx.MSMix([s[-1] for s in shapes], num_heads=2).to(device, torch.float64).train()
    out, sal = module(feats, labels, masks, seed=123)
    intensities = module.intensities(feats, masks)
    want = ref.fused_mix(feats, labels, intensities, idx1=out.idx1, idx2=out.idx2, lam0=out.lam0)
    v = ref.valid_pairs(ref.similarity([f.detach() for f in feats]), 0.4)
    assert torch.isin(out.idx1 * batch + out.idx2, v).all()
    for name in ["labels", "lam", "lam_label", "labels1", "labels2"]:
        torch.testing.assert_close(getattr(out, name), getattr(want, name), msg=name)
    for o, w in zip(out.feats, want.feats):
        assert o.shape == (2 * batch, *w.shape[1:])
        torch.testing.assert_close(o, w)
    ref_sal = torch.tensor(_sal_by_hand(intensities.detach(), labels, 3.0, 1000.0), dtype=torch.float64)
    torch.testing.assert_close(sal, ref_sal.to(device))
    # gradients of a mixed loss agree too, down to the SIG parameters
    loss = sum((o.float() ** 2).mean() for o in out.feats) + out.labels.square().mean()
    ref_loss = sum((o.float() ** 2).mean() for o in want.feats) + want.labels.square().mean()
    params = [*feats, *module.parameters()]
    for a, b in zip(torch.autograd.grad(loss, params), torch.autograd.grad(ref_loss, params)):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
    combined = mx.combine_masks(masks, out)
    for m, c in zip(masks, combined):
        if m is not None:
            assert torch.equal(c[batch:], m[out.idx1] | m[out.idx2])


@requires_extension
def test_fused_mix_gradcheck_with_pairs_fixed(device):
    # Clustered features: every S' lies far from the threshold, so the pairs stay
    # fixed under gradcheck's perturbations while fused_mix is differentiated whole.
    feats = [f.requires_grad_() for f in clustered_feats(6, [(3,), (2, 2)], clusters=2, noise=0.05, seed=1,
                                                          dtype=torch.float64, device=device)]
    labels = torch.randn(6, dtype=torch.float64, device=device, requires_grad=True)
    intensities = torch.randn(2, 6, dtype=torch.float64, device=device, requires_grad=True)

    def fn(f0, f1, y, i):
        out = mx.fused_mix([f0, f1], y, i, num_mix=8, threshold=0.4, seed=9)
        return (*out.feats, out.labels)

    first = mx.fused_mix(feats, labels, intensities, num_mix=8, seed=9)
    assert (first.idx1 % 2 == first.idx2 % 2).all(), "pairs should stay within a cluster"
    assert torch.autograd.gradcheck(fn, (*feats, labels, intensities))


@requires_extension
def test_fused_mix_identical_samples_use_the_constant_rule():
    feats = [torch.ones(6, 4), torch.ones(6, 2, 3)]
    out = mx.fused_mix(feats, torch.zeros(6), torch.ones(2, 6), seed=0)  # S' = 0.5 > 0.4: all pairs valid
    assert (out.idx1 != out.idx2).all()
    assert (out.idx1 * 6 + out.idx2).unique().numel() == 6
    torch.testing.assert_close(out.lam, ((out.lam0 + 0.5) / 2).expand(2, 6))


@requires_extension
def test_fused_mix_seed_from_torch_generator():
    feats = make_feats([(4,), (3,)], 10)
    labels, intensities = torch.randn(10), torch.randn(2, 10)
    torch.manual_seed(5)
    a = mx.fused_mix(feats, labels, intensities)
    torch.manual_seed(5)
    b = mx.fused_mix(feats, labels, intensities)
    assert torch.equal(a.idx1, b.idx1) and torch.equal(a.lam0, b.lam0)


# --- MSMix, objective ------------------------------------------------------------------------------------

@requires_extension
def test_gradients_reach_every_sig_parameter_from_both_losses():
    torch.manual_seed(6)
    module = mx.MSMix([5, 4], num_heads=2).train()
    feats = [torch.randn(8, 5), torch.randn(8, 3, 4)]
    labels = torch.rand(8) * 6 - 3
    out, sal = module(feats, labels, seed=1)
    for name, loss in [("SAL", sal), ("mixed", sum(o.square().sum() for o in out.feats) + out.labels.sum())]:
        grads = torch.autograd.grad(loss, list(module.parameters()), allow_unused=True, retain_graph=True)
        for (pname, _), g in zip(module.named_parameters(), grads):
            assert g is not None and g.abs().sum() > 0, f"{pname} gets no gradient from the {name} loss"


def test_msmix_objective_matches_hand_computation():
    g = torch.Generator().manual_seed(7)
    batch, num_mix = 5, 3
    labels = torch.randn(batch, generator=g, dtype=torch.float64)
    pred = torch.randn(batch + num_mix, generator=g, dtype=torch.float64)
    idx1, idx2 = torch.tensor([0, 2, 4]), torch.tensor([1, 3, 0])
    lam_label = torch.tensor([0.2, 0.5, 0.9], dtype=torch.float64)
    out = mx.MixOutput([], labels, idx1, idx2, lam_label[None], lam_label, labels[idx1], labels[idx2], lam_label)
    sal = torch.tensor(0.25, dtype=torch.float64)
    for clean in ["l1", "mse"]:
        got = mx.msmix_objective(pred, out, labels, sal, mix_weight=0.7, sal_weight=0.5, clean_loss=clean)
        err = [float(p - y) for p, y in zip(pred[:batch], labels)]
        want = sum(abs(e) if clean == "l1" else e * e for e in err) / batch
        mixed = sum(float(lam_label[k]) * float(pred[batch + k] - labels[idx1[k]]) ** 2
                    + (1 - float(lam_label[k])) * float(pred[batch + k] - labels[idx2[k]]) ** 2 for k in range(num_mix))
        want += 0.7 * mixed / num_mix + 0.5 * 0.25
        assert got.item() == pytest.approx(want, rel=1e-12)


@requires_extension
def test_msmix_eval_mode_passes_the_batch_through():
    module = mx.MSMix([4]).eval()
    feats, labels = [torch.randn(6, 4)], torch.randn(6)
    out, sal = module(feats, labels)
    assert out.feats[0] is feats[0] and out.labels is labels and out.idx1.numel() == 0 and sal.item() == 0
    pred = torch.randn(6)
    assert mx.msmix_objective(pred, out, labels, sal).item() == pytest.approx((pred - labels).abs().mean().item())


class _TinyModel(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.enc = torch.nn.ModuleList([torch.nn.Linear(6, 8), torch.nn.Linear(4, 8)])
        self.msmix = mx.MSMix([8, 8], num_heads=2)
        self.head = torch.nn.Sequential(torch.nn.Linear(16, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))

    def forward(self, x0, x1, labels):
        feats = [self.enc[0](x0), self.enc[1](x1).relu()]
        out, sal = self.msmix(feats, labels)
        pooled = torch.cat([out.feats[0], out.feats[1].mean(1)], dim=1)
        return mx.msmix_objective(self.head(pooled), out, labels, sal)


@requires_extension
def test_training_step_compiles_without_graph_breaks_and_matches_eager():
    import torch._dynamo.utils as dynamo_utils
    import torch._inductor.config as inductor_config

    torch._dynamo.reset()
    dynamo_utils.counters.clear()
    torch.manual_seed(8)
    eager = _TinyModel()
    compiled_model = _TinyModel()
    compiled_model.load_state_dict(eager.state_dict())
    opt_e = torch.optim.SGD(eager.parameters(), lr=1e-3)
    opt_c = torch.optim.SGD(compiled_model.parameters(), lr=1e-3)
    step = torch.compile(compiled_model, fullgraph=True)
    x0, x1, labels = torch.randn(16, 6), torch.randn(16, 5, 4), torch.rand(16) * 6 - 3
    with inductor_config.patch(fallback_random=True):  # the seed draw matches eager's (design.md, "Randomness")
        for i in range(3):
            torch.manual_seed(100 + i)
            loss_e = eager(x0, x1, labels)
            torch.manual_seed(100 + i)
            loss_c = step(x0, x1, labels)
            torch.testing.assert_close(loss_c, loss_e, rtol=1e-4, atol=1e-4)
            for opt, loss in [(opt_e, loss_e), (opt_c, loss_c)]:
                opt.zero_grad()
                loss.backward()
                opt.step()
    assert not dynamo_utils.counters["graph_break"], dict(dynamo_utils.counters["graph_break"])
    for a, b in zip(eager.parameters(), compiled_model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


# --- errors ----------------------------------------------------------------------------------------

@requires_extension
@pytest.mark.parametrize("call,message", [
    (lambda f, y, i: mx.fused_mix(f, y, i[:, :5]), r"intensities must be \[M, B\] = \[2, 6\]"),
    (lambda f, y, i: mx.fused_mix(f, y, i[:1]), r"intensities must be \[M, B\]"),
    (lambda f, y, i: mx.fused_mix(f, y[:, None, None], i), r"labels must be \[B\] or \[B, 1\]"),
    (lambda f, y, i: mx.fused_mix(f, y[:4], i), r"labels must be \[B\] or \[B, 1\] with B = 6"),
    (lambda f, y, i: mx.fused_mix(f, y, i, alpha=0.0), r"alpha must be > 0"),
    (lambda f, y, i: mx.fused_mix(f, y, i, seed=-1), r"seed must be in \[0, 2\*\*63 - 1\]"),
    (lambda f, y, i: mx.fused_mix(f, y, i, seed=2**63), r"seed must be in"),
    (lambda f, y, i: mx.IntensityPredictor(4, max_intensity=0.0), r"max_intensity must be > 0"),
    (lambda f, y, i: mx.sentiment_alignment_loss(i, y, max_intensity=-1.0), r"max_intensity must be > 0"),
    (lambda f, y, i: mx.MSMix([4, 3])(f, y, masks=[None, torch.ones(6, 2)]), r"mask must be a bool tensor"),
    (lambda f, y, i: mx.MSMix([4, 3])(f, y, masks=[None, torch.ones(6, 3, dtype=torch.bool)]), r"mask must be \[B, T\] = \[6, 2\]"),
    (lambda f, y, i: mx.MSMix([4, 3])(f, y, masks=[None, torch.tensor([[1, 0]] * 5 + [[0, 0]], dtype=torch.bool)]),
     r"pads out every token of samples \[5\]"),
    (lambda f, y, i: mx.MSMix([4, 3], alpha=-1.0)(f, y), r"alpha must be > 0"),
])
def test_clear_errors(call, message):
    feats = [torch.randn(6, 4), torch.randn(6, 2, 3)]
    with pytest.raises((ValueError, TypeError, RuntimeError), match=message):
        call(feats, torch.randn(6), torch.randn(2, 6))
