"""Regression metrics for multimodal sentiment analysis, as the MMSA toolkit defines them.

These follow ``MetricsTop`` in thuiar/MMSA (``src/MMSA/utils/metricsTop.py``,
``__eval_mosei_regression`` / ``__eval_mosi_regression`` / ``__eval_sims_regression``)
definition for definition; only accuracy and weighted F1 are re-implemented in numpy
instead of calling scikit-learn.

CMU-MOSI / CMU-MOSEI (labels in [-3, 3]), on the flattened, *unclipped* predictions
``p`` and labels ``y``:

- ``Has0_acc_2``, ``Has0_F1_score``: binary classes ``y >= 0`` vs ``p >= 0`` (zero
  counts as positive); accuracy and support-weighted F1.
- ``Non0_acc_2``, ``Non0_F1_score``: the same on the samples with ``y != 0`` only,
  classes ``y > 0`` vs ``p > 0``.
- ``Mult_acc_7``: ``p`` and ``y`` clipped to [-3, 3], rounded with ``np.round``
  (round half to even), fraction equal.  ``Mult_acc_5``: the same with [-2, 2].
- ``MAE``: ``mean(|p - y|)``.  ``Corr``: Pearson correlation (``np.corrcoef``).

CH-SIMS (labels in [-1, 1]): ``p`` and ``y`` are first clipped to [-1, 1] (MAE and
Corr use the clipped values), then binned with intervals closed on the right:

- 2 classes: edges (-1.01, 0.0, 1.01) -> [-1, 0], (0, 1]
- 3 classes: edges (-1.01, -0.1, 0.1, 1.01)
- 5 classes: edges (-1.01, -0.7, -0.1, 0.1, 0.7, 1.01)

``Mult_acc_k`` is the fraction of equal bins, ``F1_score`` the weighted F1 of the
2-class bins.

Comparisons happen in the inputs' own floating dtype (a float32 label of 0.1 equals
the threshold 0.1 in float32, as in MMSA, which works on float32 arrays).

Where this module differs from MMSA: MMSA rounds the MOSI/MOSEI results to 4
decimals (pass ``ndigits=4`` to do the same; the default keeps full precision); and
where MMSA would fail or warn, it returns NaN: ``Non0_*`` when every label is zero
(MMSA raises an IndexError there) and ``Corr`` when either input is constant.
"""
from __future__ import annotations

import warnings
from typing import Dict, Optional, Sequence, Union

import numpy as np
import torch

ArrayLike = Union[np.ndarray, torch.Tensor, Sequence[float]]

__all__ = ["regression_metrics", "accuracy", "weighted_f1", "multiclass_acc", "DATASET_KINDS"]

DATASET_KINDS = ("mosi", "mosei", "sims")

_SIMS_EDGES = {
    2: (-1.01, 0.0, 1.01),
    3: (-1.01, -0.1, 0.1, 1.01),
    5: (-1.01, -0.7, -0.1, 0.1, 0.7, 1.01),
}


def _to_numpy(x: ArrayLike, name: str) -> np.ndarray:
    """Flatten ``x`` to a 1-D floating numpy array, keeping float32/float64 as they are."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        if x.dtype == torch.bfloat16:  # numpy has no bfloat16
            x = x.float()
        x = x.numpy()
    x = np.asarray(x).reshape(-1)
    if not np.issubdtype(x.dtype, np.floating):
        x = x.astype(np.float64)
    if x.size == 0:
        raise ValueError(f"{name} is empty")
    return x


def accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Fraction of positions where ``y_true == y_pred`` (sklearn ``accuracy_score``)."""
    return float(np.mean(y_true == y_pred))


def weighted_f1(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Support-weighted mean of per-class F1 (sklearn ``f1_score(average="weighted")``).

    Classes are the union of the values in both arrays; a class with no true samples
    has weight 0, and a class with no true positives has F1 0.
    """
    total = 0.0
    for c in np.union1d(y_true, y_pred):
        t = y_true == c
        p = y_pred == c
        tp = np.sum(t & p)
        fp = np.sum(~t & p)
        fn = np.sum(t & ~p)
        # 2tp / (2tp + fp + fn) equals 2PR / (P + R), and is 0 when tp == 0 as in sklearn.
        f1 = 2.0 * tp / (2.0 * tp + fp + fn)
        total += f1 * (tp + fn)
    return float(total / y_true.size)


def multiclass_acc(y_pred: np.ndarray, y_true: np.ndarray) -> float:
    """Fraction of positions where ``np.round`` (half to even) of both agree."""
    return float(np.sum(np.round(y_pred) == np.round(y_true)) / float(len(y_true)))


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    """``np.corrcoef(a, b)[0, 1]``, NaN (without warnings) for constant or 1-sample input."""
    with warnings.catch_warnings(), np.errstate(divide="ignore", invalid="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(np.corrcoef(a, b)[0][1])


def _bin(x: np.ndarray, edges: Sequence[float]) -> np.ndarray:
    """Class index ``i`` for ``edges[i] < x <= edges[i + 1]``, as floats (MMSA's in-place binning)."""
    out = x.copy()
    for i in range(len(edges) - 1):
        out[np.logical_and(x > edges[i], x <= edges[i + 1])] = i
    return out


def _mosei_metrics(p: np.ndarray, y: np.ndarray) -> Dict[str, float]:
    non_zero = y != 0
    if non_zero.any():
        nz_true = y[non_zero] > 0
        nz_pred = p[non_zero] > 0
        non0_acc, non0_f1 = accuracy(nz_true, nz_pred), weighted_f1(nz_true, nz_pred)
    else:
        non0_acc = non0_f1 = float("nan")
    has0_true = y >= 0
    has0_pred = p >= 0
    return {
        "Has0_acc_2": accuracy(has0_true, has0_pred),
        "Has0_F1_score": weighted_f1(has0_true, has0_pred),
        "Non0_acc_2": non0_acc,
        "Non0_F1_score": non0_f1,
        "Mult_acc_5": multiclass_acc(np.clip(p, -2.0, 2.0), np.clip(y, -2.0, 2.0)),
        "Mult_acc_7": multiclass_acc(np.clip(p, -3.0, 3.0), np.clip(y, -3.0, 3.0)),
        "MAE": float(np.mean(np.absolute(p - y))),
        "Corr": _pearson(p, y),
    }


def _sims_metrics(p: np.ndarray, y: np.ndarray) -> Dict[str, float]:
    p = np.clip(p, -1.0, 1.0)
    y = np.clip(y, -1.0, 1.0)
    bins = {k: (_bin(p, e), _bin(y, e)) for k, e in _SIMS_EDGES.items()}
    return {
        "Mult_acc_2": multiclass_acc(*bins[2]),
        "Mult_acc_3": multiclass_acc(*bins[3]),
        "Mult_acc_5": multiclass_acc(*bins[5]),
        "F1_score": weighted_f1(bins[2][1], bins[2][0]),
        "MAE": float(np.mean(np.absolute(p - y))),
        "Corr": _pearson(p, y),
    }


def regression_metrics(
    pred: ArrayLike, labels: ArrayLike, kind: str, ndigits: Optional[int] = None
) -> Dict[str, float]:
    """MMSA regression metrics.

    Args:
        pred: predictions, any shape with ``N`` elements (flattened), numpy or torch.
        labels: regression labels, ``N`` elements.
        kind: ``"mosi"`` or ``"mosei"`` (same metrics) or ``"sims"``; case-insensitive.
        ndigits: round every value to this many decimals (MMSA uses 4 for MOSI/MOSEI);
            ``None`` keeps full precision.

    Returns:
        ``{"Has0_acc_2", "Has0_F1_score", "Non0_acc_2", "Non0_F1_score", "Mult_acc_5",
        "Mult_acc_7", "MAE", "Corr"}`` for MOSI/MOSEI, ``{"Mult_acc_2", "Mult_acc_3",
        "Mult_acc_5", "F1_score", "MAE", "Corr"}`` for SIMS; python floats.
    """
    kind_l = kind.lower()
    if kind_l not in DATASET_KINDS:
        raise ValueError(f"kind must be one of {DATASET_KINDS}, got {kind!r}")
    p = _to_numpy(pred, "pred")
    y = _to_numpy(labels, "labels")
    if p.shape != y.shape:
        raise ValueError(f"pred has {p.size} elements but labels has {y.size}")
    out = _sims_metrics(p, y) if kind_l == "sims" else _mosei_metrics(p, y)
    if ndigits is not None:
        out = {k: round(v, ndigits) for k, v in out.items()}
    return out
