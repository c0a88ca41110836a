"""Baselines and MS-Mix ablations (msmix_ext.augment, design.md §7), each against the
property that defines it, and the training runner's use of them."""

from __future__ import annotations

import pytest
import torch

import msmix_ext as mx
from msmix_ext import augment as aug
from msmix_ext.train import runner

from conftest import requires_extension
from helpers import beta_variance, chi_square_pvalue, golomb_feats, golomb_similarity

pytestmark = requires_extension

B = 8


def _labels():
    return torch.linspace(-3, 3, B, dtype=torch.float64)


# --- msmix-no-sass ------------------------------------------------------------------------------

def test_random_pairs_are_uniform_over_ordered_pairs_and_never_self_pairs():
    torch.manual_seed(0)
    batch, draws = 6, 15000
    idx1, idx2 = aug.random_pairs(batch, draws)
    assert (idx1 != idx2).all(), "a sample was paired with itself"
    counts = torch.bincount(idx1 * batch + idx2, minlength=batch * batch).reshape(batch, batch)
    off = ~torch.eye(batch, dtype=torch.bool)
    # 15000 draws over the 30 ordered pairs: at a 1e-3 false-alarm rate this detects with
    # power > 0.99 a 10% tilt between two halves of the pairs, or one pair never drawn.
    assert chi_square_pvalue(counts[off], draws / 30) > 1e-3


def test_no_sass_pairs_ignore_similarity_and_keep_sig_ratios():
    torch.manual_seed(1)
    intensities = torch.randn(2, B, dtype=torch.float64)
    sass_pairs = {(i, j) for i in range(B) for j in range(B) if golomb_similarity()[i, j] > 0.915}
    seen = set()
    for _ in range(60):
        out = aug.augment("msmix-no-sass", golomb_feats(), _labels(), intensities, threshold=0.915)
        pairs = set(zip(out.idx1.tolist(), out.idx2.tolist()))
        assert all(i != j for i, j in pairs)
        seen |= pairs
        # SIG ratios kept: §5 by hand
        w = intensities.abs()
        w = (w - w.min(1, keepdim=True).values) / (w.max(1, keepdim=True).values - w.min(1, keepdim=True).values + 1e-8)
        i, j = out.idx1, out.idx2
        want = (out.lam0.double() + (w[:, i] + 1e-8) / (w[:, i] + w[:, j] + 2e-8)) / 2
        torch.testing.assert_close(out.lam, want)
    assert seen - sass_pairs, "no-SASS must also draw pairs that SASS would reject"
    assert len(seen) == B * (B - 1)


# --- msmix-no-sig -------------------------------------------------------------------------------

def test_no_sig_ratios_equal_lam0_for_every_modality():
    torch.manual_seed(2)
    for _ in range(10):
        out = aug.augment("msmix-no-sig", golomb_feats(), _labels(), threshold=0.915)
        assert torch.equal(out.lam, out.lam0.to(out.lam.dtype).expand(2, B))
        assert torch.equal(out.lam_label, out.lam0.to(out.lam.dtype))
        i, j, lam = out.idx1, out.idx2, out.lam0.double()
        for m, f in enumerate(golomb_feats()):
            r = lam.reshape(-1, *[1] * (f.dim() - 1))
            torch.testing.assert_close(out.feats[m][B:], r * f[i] + (1 - r) * f[j])
        torch.testing.assert_close(out.labels[B:], lam * _labels()[i] + (1 - lam) * _labels()[j])
        # SASS kept: every pair is valid at the given threshold
        assert (golomb_similarity()[i, j] > 0.915).all()


def test_no_sig_alpha_reaches_lam0():
    torch.manual_seed(3)
    feats = [torch.randn(6, 3, generator=torch.Generator().manual_seed(1))]
    for alpha in (0.3, 5.0):
        out = aug.augment("msmix-no-sig", feats, torch.zeros(6), num_mix=4000, alpha=alpha)
        assert out.lam0.double().var().item() == pytest.approx(beta_variance(alpha), rel=0.1)


# --- mixup and manifold mixup -------------------------------------------------------------------

@pytest.mark.parametrize("name", ["mixup", "manifold"])
def test_mixup_label_maths(name):
    torch.manual_seed(4)
    feats = [torch.randn(B, 3, dtype=torch.float64), torch.randn(B, 2, 4, dtype=torch.float64)]
    y = _labels()
    out = aug.augment(name, feats, y)
    assert out.idx1.tolist() == list(range(B)) and sorted(out.idx2.tolist()) == list(range(B))
    lam = out.lam0.double()
    for k in range(B):
        i, j, l = k, int(out.idx2[k]), float(lam[k])
        assert float(out.labels[B + k]) == pytest.approx(l * float(y[i]) + (1 - l) * float(y[j]), rel=1e-12, abs=1e-12)
        for m, f in enumerate(feats):  # one ratio shared by every modality
            torch.testing.assert_close(out.feats[m][B + k], l * f[i] + (1 - l) * f[j])
    assert torch.equal(out.lam_label.double(), lam) and torch.equal(out.lam.double(), lam.expand(2, B))


def test_mixup_alpha_reaches_lam():
    torch.manual_seed(5)
    for alpha in (0.3, 5.0):
        lam = torch.cat([aug.augment("mixup", [torch.zeros(500, 1)], torch.zeros(500), alpha=alpha).lam0
                         for _ in range(8)])
        assert lam.double().var().item() == pytest.approx(beta_variance(alpha), rel=0.1)


# --- MultiMix -----------------------------------------------------------------------------------

def test_multimix_rows_and_labels_are_the_dirichlet_combinations():
    # Identity features: mixed row k of the first modality *is* its weight vector w_k.
    torch.manual_seed(6)
    batch, k = 5, 7
    eye = torch.eye(batch, dtype=torch.float64)
    other = torch.randn(batch, 3, 2, dtype=torch.float64)
    y = torch.tensor([-2.0, -0.5, 0.0, 1.0, 3.0], dtype=torch.float64)
    out = aug.augment("multimix", [eye, other], y, num_mix=k, alpha=0.7)
    w = out.feats[0][batch:]
    assert (w >= 0).all() and torch.allclose(w.sum(1), torch.ones(k, dtype=torch.float64))
    mixed_y = [sum(float(w[n, b]) * float(y[b]) for b in range(batch)) for n in range(k)]
    assert out.labels[batch:].tolist() == pytest.approx(mixed_y, rel=1e-12)
    assert out.labels1.tolist() == out.labels2.tolist() == pytest.approx(mixed_y, rel=1e-12)
    torch.testing.assert_close(out.feats[1][batch:], torch.einsum("kb,bij->kij", w, other))
    assert out.lam_label.tolist() == [1.0] * k
    assert out.idx1.tolist() == w.argmax(1).tolist() and torch.equal(out.lam[0].double(), w.max(1).values)
    # and so the objective regresses each mixed row on its own mixed label
    pred = torch.randn(batch + k, dtype=torch.float64)
    loss = mx.msmix_objective(pred, out, y, torch.zeros(()), mix_weight=1.0, sal_weight=0.0)
    want = (pred[:batch] - y).abs().mean() + sum((float(pred[batch + n]) - mixed_y[n]) ** 2 for n in range(k)) / k
    assert loss.item() == pytest.approx(float(want), rel=1e-12)


def test_multimix_alpha_sets_the_dirichlet():
    # Dirichlet(alpha 1_B): each weight has mean 1 / B and variance (B - 1) / (B^2 (B alpha + 1)).
    torch.manual_seed(7)
    batch = 4
    for alpha in (0.2, 3.0):
        w = aug.augment("multimix", [torch.eye(batch)], torch.zeros(batch), num_mix=5000, alpha=alpha).feats[0][batch:]
        var = (batch - 1) / (batch**2 * (batch * alpha + 1))
        assert w.double().mean(0).tolist() == pytest.approx([1 / batch] * batch, abs=0.025)  # 5 standard errors
        assert w.double().var(0).mean().item() == pytest.approx(var, rel=0.1)


def test_none_is_the_batch_unchanged():
    feats, y = [torch.randn(4, 2)], torch.randn(4)
    out = aug.augment("none", feats, y)
    assert out.feats[0] is feats[0] and out.labels is y and out.idx1.numel() == 0


# --- the training runner's use of them ----------------------------------------------------------

class _Batch:
    def __init__(self, g):
        self.text = torch.randn(8, 5, 16, generator=g)
        self.audio = torch.randn(8, 6, 5, generator=g)
        self.vision = torch.randn(8, 7, 20, generator=g)
        self.labels = torch.rand(8, generator=g) * 6 - 3
        self.masks = [None, None, None]


def _step_loss(augmentation, **cfg_kw):
    cfg = runner.TrainConfig(**cfg_kw)
    model, msmix = runner.build_run("late_fusion", augmentation, 0, (16, 5, 20), cfg)
    torch.manual_seed(11)  # the same augmentation draw for every call
    return runner.train_step(model, msmix, _Batch(torch.Generator().manual_seed(0)), augmentation, cfg).item()


def test_runner_no_sal_ignores_sal_weight_and_msmix_does_not():
    assert _step_loss("msmix-no-sal", sal_weight=0.5) == _step_loss("msmix-no-sal", sal_weight=50.0)
    assert _step_loss("msmix", sal_weight=0.5) != _step_loss("msmix", sal_weight=50.0)
    # with no SAL, msmix-no-sal is exactly msmix at SAL weight 0
    assert _step_loss("msmix-no-sal") == _step_loss("msmix", sal_weight=0.0)


@pytest.mark.parametrize("augmentation", ["msmix", "msmix-no-sass", "msmix-no-sig", "msmix-no-sal", "mixup",
                                          "manifold", "multimix"])
def test_runner_passes_its_config_to_the_augmentation_and_the_objective(monkeypatch, augmentation):
    seen = {}
    real_augment, real_objective = runner.augment, runner.msmix_objective

    def spy_augment(name, *args, **kw):
        seen.setdefault("augment", []).append((name, kw))
        return real_augment(name, *args, **kw)

    def spy_objective(*args, **kw):
        seen["objective"] = (args, kw)
        return real_objective(*args, **kw)

    monkeypatch.setattr(runner, "augment", spy_augment)
    monkeypatch.setattr(runner, "msmix_objective", spy_objective)
    cfg = dict(threshold=0.123, alpha=0.77, mix_weight=0.31, sal_weight=0.9, sal_scale=3.5, sig_heads=2)
    _step_loss(augmentation, **cfg)
    ((name, kw),) = seen["augment"]
    assert name == ("mixup" if augmentation == "manifold" else augmentation)
    assert kw["alpha"] == 0.77
    if augmentation.startswith("msmix"):
        assert kw["threshold"] == 0.123
    args, kw = seen["objective"]
    weights = dict(zip(["mix_weight", "sal_weight", "clean_loss"], args[4:]), **kw)
    sal_weight = 0.9 if augmentation in ("msmix", "msmix-no-sass") else 0.0
    assert (weights["mix_weight"], weights["sal_weight"], weights["clean_loss"]) == (0.31, sal_weight, "l1")


def test_runner_builds_sig_from_its_config():
    cfg = runner.TrainConfig(threshold=0.2, alpha=3.0, sal_scale=7.0, sig_heads=2, dataset_kind="sims")
    _, msmix = runner.build_run("late_fusion", "msmix", 0, (16, 5, 20), cfg)
    assert (msmix.threshold, msmix.alpha, msmix.sal_scale, msmix.max_intensity) == (0.2, 3.0, 7.0, 1.0)
    assert all(p.num_heads == 2 and p.max_intensity == 1.0 for p in msmix.predictors)
    for name in ("none", "mixup", "manifold", "multimix", "msmix-no-sig"):
        assert runner.build_run("late_fusion", name, 0, (16, 5, 20), cfg)[1] is None


# --- augment() passes num_mix, alpha and threshold to every variant ---------------------------

@pytest.mark.parametrize("name", ["msmix", "msmix-no-sal", "msmix-no-sig", "msmix-no-sass", "multimix"])
def test_augment_passes_num_mix(name):
    out = aug.augment(name, golomb_feats(), _labels(), torch.zeros(2, B, dtype=torch.float64), num_mix=5)
    assert out.idx1.shape == (5,) and out.labels.shape == (B + 5,)
    assert aug.augment(name, golomb_feats(), _labels(), torch.zeros(2, B)).idx1.shape == (B,)


@pytest.mark.parametrize("name", ["msmix", "msmix-no-sal", "msmix-no-sig"])
def test_augment_passes_threshold_to_sass(name):
    valid = {(i, j) for i in range(B) for j in range(B) if golomb_similarity()[i, j] > 0.915}
    seen = set()
    for _ in range(60):
        out = aug.augment(name, golomb_feats(), _labels(), torch.zeros(2, B), num_mix=4, threshold=0.915)
        seen |= set(zip(out.idx1.tolist(), out.idx2.tolist()))
    assert seen == valid


@pytest.mark.parametrize("name", ["msmix", "msmix-no-sal", "msmix-no-sass"])
def test_augment_passes_alpha(name):
    feats = [torch.randn(6, 3, generator=torch.Generator().manual_seed(1))]
    for alpha in (0.3, 5.0):
        out = aug.augment(name, feats, torch.zeros(6), torch.zeros(1, 6), num_mix=4000, alpha=alpha)
        assert out.lam0.double().var().item() == pytest.approx(beta_variance(alpha), rel=0.1)


def test_augment_rejects_unknown_names_and_missing_intensities():
    with pytest.raises(ValueError, match="unknown augmentation"):
        aug.augment("cutmix", golomb_feats(), _labels())
    for name in ("msmix", "msmix-no-sal", "msmix-no-sass"):
        with pytest.raises(ValueError, match="needs SIG intensities"):
            aug.augment(name, golomb_feats(), _labels())
