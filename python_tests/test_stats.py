"""Paired statistics (msmix_ext.train.stats, report.paired) against hand computations."""
import math

import pytest

from msmix_ext.train import report, stats


def test_t_quantiles_match_the_tables():
    # 97.5% quantiles of Student's t (any statistics table)
    for df, q in ((1, 12.7062), (2, 4.3027), (4, 2.7764), (9, 2.2622), (30, 2.0423)):
        assert stats.t_quantile(0.975, df) == pytest.approx(q, abs=1e-4)


def test_sign_flip_pvalue_by_enumeration():
    # d = (1, 2, 3): the 8 sign vectors give |sums| 6, 4, 2, 0, 0, 2, 4, 6; two reach 6.
    assert stats.sign_flip_pvalue([1.0, 2.0, 3.0]) == 2 / 8
    # d = (1, -1): sums 0, 2, -2, 0 against |0|: every vector is as extreme.
    assert stats.sign_flip_pvalue([1.0, -1.0]) == 1.0
    # ten positive differences: only all-plus and all-minus reach the observed sum.
    assert stats.sign_flip_pvalue([0.5] * 10) == 2 / 1024


def test_paired_difference_by_hand():
    got = stats.paired_difference([3.0, 5.0, 7.0], [2.0, 3.0, 4.0])  # d = 1, 2, 3
    half = 4.302653 * 1.0 / math.sqrt(3)  # t(0.975, 2) * sd / sqrt(n), sd = 1
    assert got["mean"] == pytest.approx(2.0)
    assert (got["ci_low"], got["ci_high"]) == pytest.approx((2 - half, 2 + half), abs=1e-5)
    assert got["p"] == 0.25 and got["n"] == 3


def test_paired_difference_drops_nan_pairs_and_handles_one_seed():
    got = stats.paired_difference([1.0, float("nan"), 2.0], [0.0, 1.0, 1.0])
    assert got["n"] == 2 and got["mean"] == 1.0 and got["ci_low"] == got["ci_high"] == 1.0
    one = stats.paired_difference([1.5], [1.0])
    assert one["n"] == 1 and one["mean"] == 0.5 and math.isnan(one["ci_low"]) and one["p"] == 1.0


def _run(backbone, aug, seed, mae, fraction=1.0):
    return {"backbone": backbone, "augmentation": aug, "seed": seed, "train_fraction": fraction,
            "test_metrics": {"MAE": mae, "Corr": 0.5, "Has0_acc_2": 0.7}}


def test_report_pairs_by_seed_within_backbone_and_fraction():
    runs = [_run("lf", "none", 0, 1.0), _run("lf", "none", 1, 2.0), _run("lf", "none", 2, 3.0),
            _run("lf", "msmix", 2, 2.0), _run("lf", "msmix", 0, 0.5), _run("lf", "msmix", 1, 1.0),
            _run("lf", "none", 0, 9.0, fraction=0.5), _run("lf", "msmix", 0, 8.0, fraction=0.5)]
    pairs = report.paired(runs)
    full = pairs["1"]["lf"]["none"]["msmix"]
    assert full["MAE"]["mean"] == pytest.approx(-2.5 / 3)  # per seed: -0.5, -1.0, -1.0
    assert full["MAE"]["p"] == 2 / 8 and full["Corr"]["mean"] == 0.0
    assert pairs["0.5"]["lf"]["none"]["msmix"]["MAE"]["mean"] == -1.0
    assert "mixup" not in pairs["1"]["lf"]  # no mixup runs: no comparison with it
    with_mixup = report.paired(runs + [_run("lf", "mixup", s, 1.0) for s in (0, 1, 2)])["1"]["lf"]
    assert set(with_mixup["none"]) == {"mixup", "msmix"} and set(with_mixup["mixup"]) == {"msmix"}
    text = report.format_paired(pairs)
    assert text.startswith("paired:") and "-0.8333" in text and "p=0.25" in text
