"""fused_mix properties over random shapes, dtypes, thresholds and devices (hypothesis;
the module skips where hypothesis is not installed)."""

from __future__ import annotations

import pytest
import torch

import msmix_ext as mx
from msmix_ext import reference as ref

from conftest import DEVICES, requires_extension
from helpers import make_feats

pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

pytestmark = requires_extension

# Pairs whose S' lies within this margin of the threshold may differ between
# the fused float32 similarity and the reference's (different summation order).
MARGIN = 1e-4


@st.composite
def mix_cases(draw):
    num_modalities = draw(st.integers(1, 5))
    batch = draw(st.integers(2, 300))
    shapes = [draw(st.one_of(st.tuples(st.integers(1, 12)), st.tuples(st.integers(1, 5), st.integers(1, 6))))
              for _ in range(num_modalities)]
    return dict(
        shapes=shapes, batch=batch, num_mix=draw(st.integers(1, 4 * batch)),
        dtype=draw(st.sampled_from([torch.float32, torch.float64, torch.float16, torch.bfloat16])),
        threshold=draw(st.floats(0.0, 0.99)), alpha=draw(st.floats(0.05, 8.0)),
        contiguous=draw(st.booleans()), masked=draw(st.booleans()), seed=draw(st.integers(0, 2**63 - 1)),
        device=draw(st.sampled_from(DEVICES)),
    )


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(mix_cases())
def test_fused_mix_properties(case):
    batch, num_mix, dtype, device = case["batch"], case["num_mix"], case["dtype"], case["device"]
    feats = make_feats(case["shapes"], batch, dtype=dtype, device=device, contiguous=case["contiguous"],
                       seed=case["seed"] % 1000)
    labels = torch.rand(batch, device=device) * 6 - 3
    intensities = torch.randn(len(feats), batch, device=device)
    out = mx.fused_mix(feats, labels, intensities, num_mix=num_mix, threshold=case["threshold"],
                       alpha=case["alpha"], seed=case["seed"])
    # pairs are valid
    i, j = out.idx1.cpu(), out.idx2.cpu()
    assert i.shape == j.shape == (num_mix,) and (i != j).all()
    assert ((i >= 0) & (i < batch) & (j >= 0) & (j < batch)).all()
    s = ref.similarity([f.float().cpu() for f in feats])
    off = ~torch.eye(batch, dtype=torch.bool)
    sure_valid = int(((s > case["threshold"] + MARGIN) & off).sum())
    maybe_valid = int(((s > case["threshold"] - MARGIN) & off).sum())
    if sure_valid >= num_mix:  # drawn from V without replacement
        assert (s[i, j] > case["threshold"] - MARGIN).all()
        assert (i * batch + j).unique().numel() == num_mix
    elif maybe_valid < num_mix:  # the fallback: the most similar unordered pairs
        kth = s[torch.triu(torch.ones(batch, batch, dtype=torch.bool), 1)].sort(descending=True).values
        floor = kth[min(2 * num_mix, kth.numel()) - 1]
        assert (s[i, j] >= floor - MARGIN).all()
    # outputs agree with the reference for these pairs and lam0, and are finite
    want = ref.fused_mix(feats, labels, intensities, idx1=out.idx1, idx2=out.idx2, lam0=out.lam0)
    assert ((out.lam0 >= 0) & (out.lam0 <= 1)).all()
    torch.testing.assert_close(out.lam, want.lam)
    torch.testing.assert_close(out.labels, want.labels)
    tol = {torch.float16: dict(rtol=2e-3, atol=2e-3), torch.bfloat16: dict(rtol=1.6e-2, atol=1.6e-2)}.get(dtype)
    for o, w, f in zip(out.feats, want.feats, feats):
        assert o.shape == (batch + num_mix, *f.shape[1:]) and o.dtype == dtype
        assert torch.isfinite(o).all()
        torch.testing.assert_close(o, w, **(tol or {}))
