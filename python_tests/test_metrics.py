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
