"""runners/performer_unbiased.py: FAVOR+'s kernel estimate on fixed bounded inputs (what claim P1 reads)."""
from __future__ import annotations

import pandas as pd
import pytest
import torch

from attnbench.runners import performer_unbiased as pu


def bounded(n=64, heads=2, radius=2.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(1, heads, n, 64, generator=g, dtype=torch.float64) for _ in range(3))
    q, k = (x / x.norm(dim=-1, keepdim=True) * radius for x in (q, k))
    return {"q": q, "k": k, "v": v, "scale": 64 ** -0.5}


def test_kernel_draws_average_to_the_kernel_and_spread_as_one_over_root_m():
    recs = pd.DataFrame(pu.measure(bounded(), (16, 64, 256), seeds=32))
    k = recs[recs["quantity"] == "kernel"]
    assert (k["rho"] <= 1.5).all()  # the mean of 32 draws is as close as an unbiased estimator's
    s = pu.slopes(recs.assign(input="bounded"))
    assert s.loc[s["quantity"] == "kernel", "per_draw_slope"].item() == pytest.approx(-0.5, abs=0.1)
    # the output (a ratio of estimates) at m = 256 is closer to exact than at m = 16
    o = recs[recs["quantity"] == "output"].set_index("m")["per_draw_rms"]
    assert o[256] < o[16] / 2


def test_a_biased_estimate_shows_in_rho(monkeypatch):
    """ρ detects a bias: kernel draws scaled by 1.2 (a 20 % bias) give ρ far above 1."""
    real = pu.kernel_draw
    monkeypatch.setattr(pu, "kernel_draw", lambda *a: 1.2 * real(*a))
    recs = pd.DataFrame(pu.measure(bounded(), (256,), seeds=32))
    assert recs.loc[recs["quantity"] == "kernel", "rho"].item() > 3


def test_kernel_draw_without_stabiliser_is_exp_of_the_scores_in_expectation():
    x = bounded(n=8, heads=1)
    est = torch.stack([pu.kernel_draw(x["q"], x["k"], x["scale"], 64, s) for s in range(400)]).mean(0)
    exact = torch.exp(x["scale"] * x["q"] @ x["k"].transpose(-1, -2))
    assert float((est - exact).norm() / exact.norm()) < 0.02
