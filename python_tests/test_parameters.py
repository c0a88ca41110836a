"""Every public parameter reaches the computation.

Each test picks inputs where the parameter changes the result and checks the result
against an independent computation (S' by hand, Beta moments, formulas written out),
so a parameter that is ignored, replaced by its default or passed to the wrong place
fails a test.
"""

from __future__ import annotations

import math

import pytest
import torch

import msmix_ext as mx

from conftest import requires_extension
from helpers import beta_variance, golomb_feats, golomb_similarity

pytestmark = requires_extension

B = 8  # the Golomb inputs' batch


def _valid_set(threshold):
    s = golomb_similarity()
    return {(i, j) for i in range(B) for j in range(B) if s[i, j] > threshold}


def _pairs(idx1, idx2):
    return list(zip(idx1.tolist(), idx2.tolist()))


# --- threshold ----------------------------------------------------------------------------------
# Thresholds between the distinct S' values of the Golomb inputs: V has 56, 30 and 12
# ordered pairs, and none of them is V at the default 0.4 (36 pairs).
THRESHOLDS = [0.01, 0.55, 0.915]


@pytest.mark.parametrize("threshold", THRESHOLDS)
def test_sass_select_threshold_decides_the_valid_pairs(threshold):
    valid = _valid_set(threshold)
    assert len(valid) >= 12 and valid != _valid_set(0.4)
    seen = set()
    for seed in range(150):
        pairs = _pairs(*mx.sass_select(golomb_feats(), 4, threshold, seed=seed))
        assert set(pairs) <= valid, f"a pair outside V({threshold}) was drawn"
        seen |= set(pairs)
    assert seen == valid, "the draws should reach every valid pair"


@pytest.mark.parametrize("threshold", THRESHOLDS)
def test_fused_mix_threshold_decides_the_valid_pairs(threshold):
    valid = _valid_set(threshold)
    seen = set()
    for seed in range(150):
        out = mx.fused_mix(golomb_feats(), torch.zeros(B, dtype=torch.float64), torch.zeros(2, B), num_mix=4,
                           threshold=threshold, seed=seed)
        seen |= set(_pairs(out.idx1, out.idx2))
    assert seen == valid


def test_msmix_module_threshold_num_mix_and_seed():
    torch.manual_seed(0)
    module = mx.MSMix([2, 2], num_heads=1, threshold=0.915, num_mix=5).double().train()
    labels = torch.linspace(-3, 3, B, dtype=torch.float64)
    seen = set()
    for seed in range(100):
        out, _ = module(golomb_feats(), labels, seed=seed)
        assert out.idx1.shape == (5,) and out.feats[0].shape == (B + 5, 2)
        seen |= set(_pairs(out.idx1, out.idx2))
    assert seen == _valid_set(0.915)
    a, _ = module(golomb_feats(), labels, seed=3)
    b, _ = module(golomb_feats(), labels, seed=3)
    assert _pairs(a.idx1, a.idx2) == _pairs(b.idx1, b.idx2) and torch.equal(a.lam0, b.lam0)


# --- alpha --------------------------------------------------------------------------------------

def _assert_beta_variance(lam0, alpha):
    # 4000 draws: the sample variance is within 10% of 1 / (4 (2 alpha + 1)) (its standard
    # error is under 2.5%); the nearest other alpha tested, or the default 2, is 40% away.
    assert lam0.double().var().item() == pytest.approx(beta_variance(alpha), rel=0.1)


@pytest.mark.parametrize("alpha", [0.3, 5.0])
def test_fused_mix_alpha_sets_the_beta_of_lam0(alpha):
    feats = [torch.randn(6, 3, generator=torch.Generator().manual_seed(1))]
    out = mx.fused_mix(feats, torch.zeros(6), torch.zeros(1, 6), num_mix=4000, alpha=alpha, seed=5)
    _assert_beta_variance(out.lam0, alpha)


@pytest.mark.parametrize("alpha", [0.3, 5.0])
def test_msmix_module_alpha(alpha):
    torch.manual_seed(0)
    module = mx.MSMix([3], num_heads=1, alpha=alpha, num_mix=4000).train()
    feats = [torch.randn(6, 3, generator=torch.Generator().manual_seed(1))]
    out, _ = module(feats, torch.linspace(-1, 1, 6), seed=5)
    _assert_beta_variance(out.lam0, alpha)


# --- num_mix ------------------------------------------------------------------------------------

@pytest.mark.parametrize("num_mix", [None, 1, 3, 19])
def test_fused_mix_num_mix_sets_k(num_mix):
    feats = golomb_feats()
    labels = torch.arange(B, dtype=torch.float64)
    out = mx.fused_mix(feats, labels, torch.zeros(2, B), num_mix=num_mix, threshold=0.2, seed=1)
    k = B if num_mix is None else num_mix
    assert out.idx1.shape == out.idx2.shape == out.lam0.shape == out.lam_label.shape == (k,)
    assert out.lam.shape == (2, k) and out.labels.shape == (B + k,)
    assert [f.shape[0] for f in out.feats] == [B + k, B + k]


def test_sass_select_num_mix_sets_k():
    for k in (1, 7, 30):
        idx1, idx2 = mx.sass_select(golomb_feats(), k, 0.2, seed=2)
        assert idx1.shape == idx2.shape == (k,)


# --- seed and generator -------------------------------------------------------------------------

def test_seed_int_and_tensor_agree_and_seeds_differ():
    feats = golomb_feats()
    draws = {}
    for seed in (0, 1, 2**40 + 7):
        a = mx.sass_select(feats, 6, 0.01, seed=seed)
        b = mx.sass_select(feats, 6, 0.01, seed=torch.tensor(seed))
        assert _pairs(*a) == _pairs(*b)
        draws[seed] = _pairs(*a)
    assert len({tuple(d) for d in draws.values()}) == 3
    # sass_select's default seed is 0
    assert _pairs(*mx.sass_select(feats, 6, 0.01)) == draws[0]


def _fused(**kw):
    return mx.fused_mix(golomb_feats(), torch.zeros(B, dtype=torch.float64), torch.zeros(2, B), num_mix=6,
                        threshold=0.01, **kw)


def test_generator_supplies_the_seed_and_leaves_the_global_generator_alone():
    torch.manual_seed(0)
    state = torch.get_rng_state()
    out = _fused(generator=torch.Generator().manual_seed(42))
    assert torch.equal(torch.get_rng_state(), state), "a generator call must not consume the global RNG"
    # design.md "Randomness": the call's seed is one int64 draw in [0, 2**63 - 1) from the generator
    seed = int(torch.randint(0, 2**63 - 1, (), generator=torch.Generator().manual_seed(42), dtype=torch.long))
    want = _fused(seed=seed)
    assert _pairs(out.idx1, out.idx2) == _pairs(want.idx1, want.idx2) and torch.equal(out.lam0, want.lam0)
    other = _fused(generator=torch.Generator().manual_seed(43))
    assert not torch.equal(other.lam0, out.lam0)


def test_explicit_seed_leaves_the_global_generator_alone_and_default_uses_it():
    torch.manual_seed(7)
    state = torch.get_rng_state()
    _fused(seed=3)
    assert torch.equal(torch.get_rng_state(), state)
    seed = int(torch.randint(0, 2**63 - 1, (), dtype=torch.long))
    torch.set_rng_state(state)
    a = _fused()
    assert torch.equal(a.lam0, _fused(seed=seed).lam0)


def test_seed_and_generator_together_are_refused():
    with pytest.raises(ValueError, match="seed or generator"):
        _fused(seed=1, generator=torch.Generator())


# --- intensities, labels ------------------------------------------------------------------------

def test_fused_mix_uses_the_given_intensities_and_labels():
    g = torch.Generator().manual_seed(9)
    intensities = torch.randn(2, B, generator=g, dtype=torch.float64)
    labels = torch.randn(B, generator=g, dtype=torch.float64)
    out = mx.fused_mix(golomb_feats(), labels, intensities, num_mix=7, threshold=0.2, seed=4)
    for k, (i, j) in enumerate(_pairs(out.idx1, out.idx2)):
        ratios = []
        for m in range(2):
            w = [abs(float(v)) for v in intensities[m]]
            w = [(v - min(w)) / (max(w) - min(w) + 1e-8) for v in w]
            ratios.append((float(out.lam0[k]) + (w[i] + 1e-8) / (w[i] + w[j] + 2e-8)) / 2)
        assert out.lam[:, k].tolist() == pytest.approx(ratios, rel=1e-12)
        lam_y = sum(ratios) / 2
        assert float(out.lam_label[k]) == pytest.approx(lam_y, rel=1e-12)
        assert float(out.labels[B + k]) == pytest.approx(lam_y * float(labels[i]) + (1 - lam_y) * float(labels[j]),
                                                         rel=1e-12, abs=1e-15)
        assert (float(out.labels1[k]), float(out.labels2[k])) == (float(labels[i]), float(labels[j]))
        for m, f in enumerate(golomb_feats()):
            torch.testing.assert_close(out.feats[m][B + k], ratios[m] * f[i] + (1 - ratios[m]) * f[j])


# --- SIG and SAL parameters ---------------------------------------------------------------------

def _sig_by_hand(p, x, heads, r):
    """design.md §1 for one pooled or sequence input, heads and R given explicitly."""
    if x.dim() == 2:
        x = x[:, None, :]
    width = -(-x.shape[-1] // heads) * heads
    h = torch.cat([x, x.new_zeros(*x.shape[:2], width - x.shape[-1])], dim=-1)
    q, k, v = (h @ p.qkv.weight.T + p.qkv.bias).split(width, dim=-1)
    dh = width // heads
    outs = []
    for head in range(heads):
        sl = slice(head * dh, (head + 1) * dh)
        att = torch.softmax(q[..., sl] @ k[..., sl].transpose(1, 2) / math.sqrt(dh), dim=-1)
        outs.append(att @ v[..., sl])
    y = h + torch.cat(outs, dim=-1) @ p.out.weight.T + p.out.bias
    y = torch.nn.functional.layer_norm(y, (width,), p.norm.weight, p.norm.bias, p.norm.eps)
    return r * torch.tanh(y.mean(1) @ p.head.weight[0] + p.head.bias[0])


def _sal_by_hand(intensities, labels, r, scale):
    n = len(labels)
    ey = [math.exp(abs(v) / r) for v in labels]
    p_y = [e / sum(ey) + 1e-8 for e in ey]
    total = 0.0
    for row in intensities:
        em = [math.exp(abs(v) / r) for v in row]
        p_m = [e / sum(em) + 1e-8 for e in em]
        total += sum(a * (math.log(a) - math.log(b)) for a, b in zip(p_y, p_m)) / n
    return scale * total


@pytest.mark.parametrize("heads,r,scale", [(1, 3.0, 1000.0), (3, 1.5, 2.0), (6, 0.5, 0.25)])
def test_msmix_passes_heads_max_intensity_and_sal_scale(heads, r, scale):
    torch.manual_seed(3)
    module = mx.MSMix([6, 5], num_heads=heads, max_intensity=r, sal_scale=scale).double().train()
    g = torch.Generator().manual_seed(4)
    feats = [torch.randn(7, 6, generator=g, dtype=torch.float64),
             torch.randn(7, 4, 5, generator=g, dtype=torch.float64)]
    labels = (torch.rand(7, generator=g, dtype=torch.float64) * 2 - 1) * r
    intensities = torch.stack([_sig_by_hand(p, f, heads, r) for p, f in zip(module.predictors, feats)])
    torch.testing.assert_close(module.intensities(feats), intensities)
    out, sal = module(feats, labels, seed=0)
    assert sal.item() == pytest.approx(_sal_by_hand(intensities.tolist(), labels.tolist(), r, scale), rel=1e-9)


@pytest.mark.parametrize("r,scale", [(2.0, 7.0), (0.5, 1.0)])
def test_sal_max_intensity_and_scale(r, scale):
    g = torch.Generator().manual_seed(5)
    intensities = torch.randn(2, 6, generator=g, dtype=torch.float64)
    labels = torch.randn(6, generator=g, dtype=torch.float64)
    got = mx.sentiment_alignment_loss(intensities, labels, max_intensity=r, scale=scale)
    assert got.item() == pytest.approx(_sal_by_hand(intensities.tolist(), labels.tolist(), r, scale), rel=1e-9)


# --- the objective ------------------------------------------------------------------------------

@pytest.mark.parametrize("clean", ["l1", "mse"])
@pytest.mark.parametrize("mix_weight,sal_weight", [(0.3, 2.0), (0.0, 0.0), (1.5, 0.1)])
def test_objective_weights_and_clean_loss(clean, mix_weight, sal_weight):
    g = torch.Generator().manual_seed(8)
    batch, k = 4, 3
    labels = torch.randn(batch, generator=g, dtype=torch.float64)
    pred = torch.randn(batch + k, generator=g, dtype=torch.float64) * 2
    idx1, idx2 = torch.tensor([0, 3, 1]), torch.tensor([2, 1, 0])
    lam = torch.tensor([0.1, 0.6, 0.75], dtype=torch.float64)
    out = mx.MixOutput([], labels, idx1, idx2, lam[None], lam, labels[idx1], labels[idx2], lam)
    sal = torch.tensor(1.25, dtype=torch.float64)
    got = mx.msmix_objective(pred, out, labels, sal, mix_weight=mix_weight, sal_weight=sal_weight, clean_loss=clean)
    p, y = pred.tolist(), labels.tolist()
    errors = [p[b] - y[b] for b in range(batch)]
    want = sum(abs(e) if clean == "l1" else e * e for e in errors) / batch
    mixed = [lam[n].item() * (p[batch + n] - y[idx1[n]]) ** 2 + (1 - lam[n].item()) * (p[batch + n] - y[idx2[n]]) ** 2
             for n in range(k)]
    want += mix_weight * sum(mixed) / k + sal_weight * 1.25
    assert got.item() == pytest.approx(want, rel=1e-12)


def test_objective_rejects_an_unknown_clean_loss():
    out = mx.MixOutput([], torch.zeros(2), torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long),
                       torch.zeros(1, 0), torch.zeros(0), torch.zeros(0), torch.zeros(0), torch.zeros(0))
    with pytest.raises(ValueError, match="clean_loss"):
        mx.msmix_objective(torch.zeros(2), out, torch.zeros(2), torch.zeros(()), clean_loss="huber")


def test_threshold_is_strict():
    # Identical samples: every S' is 0.5 (design.md §4.3). At threshold 0.5 no pair is
    # valid (S' > delta, strictly), so the fallback draws unordered pairs i < j only.
    feats = [torch.ones(4, 3)]
    for seed in range(20):
        idx1, idx2 = mx.sass_select(feats, 3, threshold=0.5, seed=seed)
        assert (idx1 < idx2).all()
        assert (idx1 * 4 + idx2).unique().numel() == 3
    # just below 0.5 all 12 ordered pairs are valid, so some i > j appear
    later = [mx.sass_select(feats, 3, threshold=0.4999, seed=seed) for seed in range(20)]
    assert any((i > j).any() for i, j in later)


def test_sig_dropout_only_in_training():
    torch.manual_seed(0)
    p = mx.IntensityPredictor(6, num_heads=2, dropout=0.9).double()
    x = torch.randn(5, 4, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(p.eval()(x), _sig_by_hand(p, x, 2, 3.0))
    assert not torch.allclose(p.train()(x), _sig_by_hand(p, x, 2, 3.0))


def test_intensities_as_a_sequence_of_tensors():
    # design.md Inputs: [M, B], or M tensors [B] (or [B, 1], as a head's output)
    intensities = torch.randn(2, B, generator=torch.Generator().manual_seed(10), dtype=torch.float64)
    labels = torch.zeros(B, dtype=torch.float64)
    want = mx.fused_mix(golomb_feats(), labels, intensities, num_mix=6, threshold=0.2, seed=1).lam
    for form in ([intensities[0], intensities[1]], [intensities[0, :, None], intensities[1, :, None]]):
        got = mx.fused_mix(golomb_feats(), labels, form, num_mix=6, threshold=0.2, seed=1).lam
        assert torch.equal(got, want)
    assert mx.sentiment_alignment_loss(list(intensities), labels) == mx.sentiment_alignment_loss(intensities, labels)
