"""MMSA metrics on tiny arrays whose expected values are counted by hand below."""
import math

import numpy as np
import pytest
import torch

from msmix_ext.train.metrics import regression_metrics, weighted_f1


def pearson(a, b):
    """Plain-python Pearson correlation, independent of numpy."""
    n = len(a)
    ma, mb = sum(a) / n, sum(b) / n
    cov = sum((x - ma) * (y - mb) for x, y in zip(a, b))
    va = sum((x - ma) ** 2 for x in a)
    vb = sum((y - mb) ** 2 for y in b)
    return cov / math.sqrt(va * vb)


# MOSI case: six samples.
Y = [-2.4, -1.0, 0.0, 0.6, 2.6, 2.8]
P = [-1.6, 0.2, -0.3, 0.4, 1.7, 3.5]


def test_mosi_hand_counted():
    m = regression_metrics(np.array(P), np.array(Y), "mosi")
    assert set(m) == {"Has0_acc_2", "Has0_F1_score", "Non0_acc_2", "Non0_F1_score",
                      "Mult_acc_5", "Mult_acc_7", "MAE", "Corr"}
    # Has0: truth y>=0 = [F F T T T T], pred p>=0 = [F T F T T T]: idx 1, 2 wrong.
    assert m["Has0_acc_2"] == pytest.approx(4 / 6)
    # class F: support 2, tp 1 (idx0), fp 1 (idx2), fn 1 (idx1) -> F1 = 2/(2+1+1) = 1/2
    # class T: support 4, tp 3 (idx3,4,5), fp 1 (idx1), fn 1 (idx2) -> F1 = 6/8
    assert m["Has0_F1_score"] == pytest.approx((2 * 0.5 + 4 * 0.75) / 6)
    # Non0 drops idx2: truth y>0 = [F F T T T], pred p>0 = [F T T T T]: idx1 wrong.
    assert m["Non0_acc_2"] == pytest.approx(4 / 5)
    # class F: support 2, tp 1, fp 0, fn 1 -> 2/3; class T: support 3, tp 3, fp 1, fn 0 -> 6/7
    assert m["Non0_F1_score"] == pytest.approx((2 * (2 / 3) + 3 * (6 / 7)) / 5)
    # Acc7: p clipped to [-3,3] and rounded = [-2, 0, -0, 0, 2, 3];
    #       y rounded                        = [-2, -1, 0, 1, 3, 3]  -> idx 0, 2, 5 equal.
    assert m["Mult_acc_7"] == pytest.approx(3 / 6)
    # Acc5: p clipped to [-2,2], rounded = [-2, 0, -0, 0, 2, 2];
    #       y clipped, rounded         = [-2, -1, 0, 1, 2, 2]   -> idx 0, 2, 4, 5 equal.
    assert m["Mult_acc_5"] == pytest.approx(4 / 6)
    # |p - y| = 0.8, 1.2, 0.3, 0.2, 0.9, 0.7 (unclipped: 3.5 counts as 3.5).
    assert m["MAE"] == pytest.approx(4.1 / 6)
    assert m["Corr"] == pytest.approx(pearson(P, Y))


def test_mosei_equals_mosi_and_inputs_any_form():
    ref = regression_metrics(np.array(P), np.array(Y), "mosi")
    assert regression_metrics(P, Y, "MOSEI") == ref
    t = regression_metrics(torch.tensor(P, dtype=torch.float64).view(-1, 1),
                           torch.tensor(Y, dtype=torch.float64), "mosei")
    assert t == ref


def test_rounding_is_half_to_even():
    # np.round: 0.5 -> 0, 1.5 -> 2, 2.5 -> 2, -0.5 -> -0 (round-half-up would give 1, 2, 3, -1).
    y = [0.5, 1.5, 2.5, -0.5]
    p = [1.0, 2.0, 2.0, 0.0]
    m = regression_metrics(p, y, "mosi")
    assert m["Mult_acc_7"] == pytest.approx(3 / 4)  # idx1, idx2, idx3 agree


def test_clipping_at_three_and_two():
    p = [5.0, -4.0]
    y = [3.0, -2.2]
    m = regression_metrics(p, y, "mosi")
    # Acc7: p -> [3, -3], y -> [3, -2]: one match.  Acc5: p -> [2, -2], y -> [2, -2]: both.
    assert m["Mult_acc_7"] == pytest.approx(0.5)
    assert m["Mult_acc_5"] == pytest.approx(1.0)
    assert m["MAE"] == pytest.approx((2.0 + 1.8) / 2)  # MAE is unclipped


def test_all_labels_zero():
    m = regression_metrics([0.5, -0.5, 0.0], [0.0, 0.0, 0.0], "mosi")
    assert math.isnan(m["Non0_acc_2"]) and math.isnan(m["Non0_F1_score"])
    # Has0: truth all T, pred [T F T]; class T: support 3, tp 2, fp 0, fn 1 -> 4/5;
    # class F has no support -> weight 0.
    assert m["Has0_acc_2"] == pytest.approx(2 / 3)
    assert m["Has0_F1_score"] == pytest.approx(0.8)
    assert math.isnan(m["Corr"])  # constant labels
    assert m["MAE"] == pytest.approx(1.0 / 3)


def test_perfect_prediction():
    y = [-3.0, -1.0, 0.0, 2.0]
    m = regression_metrics(y, y, "mosi")
    for k in ("Has0_acc_2", "Has0_F1_score", "Non0_acc_2", "Non0_F1_score",
              "Mult_acc_5", "Mult_acc_7", "Corr"):
        assert m[k] == pytest.approx(1.0)
    assert m["MAE"] == 0.0


# SIMS case: eight samples.
YS = [-1.0, -0.5, 0.0, 0.05, 0.3, 0.9, 1.0, 0.1]
PS = [-1.4, -0.05, 0.15, -0.2, 0.75, 0.6, 1.2, 0.12]


def test_sims_hand_counted():
    m = regression_metrics(np.array(PS), np.array(YS), "sims")
    assert set(m) == {"Mult_acc_2", "Mult_acc_3", "Mult_acc_5", "F1_score", "MAE", "Corr"}
    pc = [-1.0, -0.05, 0.15, -0.2, 0.75, 0.6, 1.0, 0.12]  # p clipped to [-1, 1]
    # bins are closed on the right: (-1.01, 0], (0, 1.01]
    # y2 = [0 0 0 1 1 1 1 1], p2 = [0 0 1 0 1 1 1 1]: idx 2, 3 wrong
    assert m["Mult_acc_2"] == pytest.approx(6 / 8)
    # edges -0.1, 0.1: y3 = [0 0 1 1 2 2 2 1] (0.1 -> middle), p3 = [0 1 2 0 2 2 2 2]
    assert m["Mult_acc_3"] == pytest.approx(4 / 8)
    # edges -0.7, -0.1, 0.1, 0.7: y5 = [0 1 2 2 3 4 4 2], p5 = [0 2 3 1 4 3 4 3]
    assert m["Mult_acc_5"] == pytest.approx(2 / 8)
    # class 0: support 3, tp 2, fp 1 (idx3), fn 1 (idx2) -> 4/6
    # class 1: support 5, tp 4, fp 1 (idx2), fn 1 (idx3) -> 8/10
    assert m["F1_score"] == pytest.approx((3 * (4 / 6) + 5 * 0.8) / 8)
    # on clipped values: 0, .45, .15, .25, .45, .3, 0, .02
    assert m["MAE"] == pytest.approx(1.62 / 8)
    assert m["Corr"] == pytest.approx(pearson(pc, YS))


def test_sims_float32_threshold_like_mmsa():
    # In float32 (MMSA's dtype) the label 0.1 equals the edge 0.1 and falls in the middle
    # class; compared in float64 it would be above the edge.
    y = torch.tensor([0.1, 0.5])
    p = torch.tensor([0.05, 0.5])
    assert regression_metrics(p, y, "sims")["Mult_acc_3"] == 1.0
    y64 = y.double().numpy()
    assert regression_metrics(p.double().numpy(), y64, "sims")["Mult_acc_3"] == 0.5


def test_sims_clips_before_mae():
    m = regression_metrics([2.0, -3.0], [1.0, -0.5], "sims")
    assert m["MAE"] == pytest.approx((0.0 + 0.5) / 2)


def test_weighted_f1_direct():
    t = np.array([0, 0, 1, 1, 2, 2])
    p = np.array([0, 1, 1, 1, 2, 0])
    # class 0: sup 2, tp 1, fp 1, fn 1 -> 1/2; class 1: sup 2, tp 2, fp 1, fn 0 -> 4/5;
    # class 2: sup 2, tp 1, fp 0, fn 1 -> 2/3
    assert weighted_f1(t, p) == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)
    # a class that appears only in predictions has weight 0, but its fp still hurt others
    assert weighted_f1(np.array([1, 1]), np.array([1, 3])) == pytest.approx(2 / 3)


def test_ndigits_and_errors():
    m = regression_metrics(P, Y, "mosi", ndigits=4)
    assert m["MAE"] == round(4.1 / 6, 4)
    with pytest.raises(ValueError, match="kind"):
        regression_metrics(P, Y, "iemocap")
    with pytest.raises(ValueError, match="elements"):
        regression_metrics(P[:3], Y, "mosi")
    with pytest.raises(ValueError, match="empty"):
        regression_metrics([], [], "mosi")


# --- edge cases against MMSA's MetricsTop, written out by hand ---------------------------------
# MetricsTop (MOSI/MOSEI regression): Non0 keeps the samples with y != 0 and compares
# y > 0 with p > 0; Has0 compares y >= 0 with p >= 0; Mult_acc_7 / _5 clip both to
# [-3, 3] / [-2, 2] and compare np.round (half to even); MAE is unclipped.


def _mmsa_mosi_by_hand(p, y):
    """The MetricsTop definitions over python floats (accuracies and MAE); python's round,
    like np.round, rounds half to even."""
    def clip(x, b):
        return max(-b, min(b, x))

    non0 = [(pi > 0, yi > 0) for pi, yi in zip(p, y) if yi != 0]
    return {
        "Has0_acc_2": sum((pi >= 0) == (yi >= 0) for pi, yi in zip(p, y)) / len(y),
        "Non0_acc_2": sum(a == b for a, b in non0) / len(non0),
        "Mult_acc_7": sum(round(clip(pi, 3)) == round(clip(yi, 3)) for pi, yi in zip(p, y)) / len(y),
        "Mult_acc_5": sum(round(clip(pi, 2)) == round(clip(yi, 2)) for pi, yi in zip(p, y)) / len(y),
        "MAE": sum(abs(pi - yi) for pi, yi in zip(p, y)) / len(y),
    }


def _check_against_hand(p, y):
    m = regression_metrics(np.array(p), np.array(y), "mosi")
    for k, v in _mmsa_mosi_by_hand(p, y).items():
        assert m[k] == pytest.approx(v), k
    return m


def test_prediction_exactly_zero():
    # p = 0 is negative for Non0 (p > 0 is False) but positive for Has0 (p >= 0).
    m = _check_against_hand([0.0, 0.0, 0.0], [1.0, -1.0, 0.0])
    assert m["Non0_acc_2"] == pytest.approx(1 / 2)  # y = 0 dropped; 0 vs -1 right, 0 vs 1 wrong
    assert m["Has0_acc_2"] == pytest.approx(2 / 3)  # 0 vs 1 right, 0 vs -1 wrong, 0 vs 0 right
    # Non0 F1: truth [T, F], pred [F, F]; class F: support 1, tp 1, fp 1 -> 2/3; class T: tp 0 -> 0
    assert m["Non0_F1_score"] == pytest.approx((2 / 3) / 2)
    # a negative zero is still zero
    assert regression_metrics([-0.0], [2.0], "mosi")["Non0_acc_2"] == 0.0


def test_labels_outside_the_range_are_clipped_for_acc7_and_acc5_only():
    y = [3.6, -4.4, 2.6, -2.4]
    p = [3.0, -2.6, 3.4, -2.0]
    m = _check_against_hand(p, y)
    # acc7: y -> [3, -3, 3, -2] (2.6 rounds to 3), p -> [3, -3, 3, -2]: all four agree; without
    # the clip 3.6 -> 4 and -4.4 -> -4 would disagree with p
    assert m["Mult_acc_7"] == 1.0
    # acc5: y -> [2, -2, 2, -2], p -> [2, -2, 2, -2]
    assert m["Mult_acc_5"] == 1.0
    assert m["MAE"] == pytest.approx((0.6 + 1.8 + 0.8 + 0.4) / 4)


def test_ties_at_rounding_boundaries_round_half_to_even_after_clipping():
    # Values exactly on .5 (representable in binary): np.round sends 0.5 -> 0, 1.5 -> 2,
    # 2.5 -> 2, -1.5 -> -2, -2.5 -> -2; 3.5 clips to 3 first (acc7), 2.5 clips to 2 (acc5).
    y = [0.5, 1.5, 2.5, -1.5, -2.5, 3.5, 0.5]
    p = [0.0, 2.0, 2.0, -2.0, -2.0, 3.0, 1.0]
    m = _check_against_hand(p, y)
    assert m["Mult_acc_7"] == pytest.approx(6 / 7)  # only 0.5 vs 1.0 differs (0 vs 1)
    # acc5: y -> [0, 2, 2, -2, -2, 2, 0] (2.5 and 3.5 clip to 2), p -> [0, 2, 2, -2, -2, 2, 1]
    assert m["Mult_acc_5"] == pytest.approx(6 / 7)


def test_has0_and_non0_at_zero_labels():
    # y = 0 counts as positive in Has0 and is dropped from Non0.
    y = [0.0, 0.0, 1.0, -1.0]
    p = [0.5, -0.5, 1.0, 1.0]
    m = _check_against_hand(p, y)
    assert m["Has0_acc_2"] == pytest.approx(2 / 4)  # idx0 right, idx1 wrong, idx2 right, idx3 wrong
    assert m["Non0_acc_2"] == pytest.approx(1 / 2)
