"""Performer's estimator, checked on fixed inputs: is FAVOR+ unbiased, and does its error fall as 1/√m?

``attnbench performer_unbiased [--out-dir DIR] [--seeds 64] [--features 16 32 ... 1024] [--n 512]``

FAVOR+ (Choromanski et al., ICLR 2021) estimates the softmax kernel exp(scale·q·k) by φ(q)·φ(k) with
positive orthogonal random features (Lemma 1: unbiased; error variance ∝ 1/m for m features). On fixed
q, k, v (no redraw of the inputs) and for every m, ``--seeds`` independent draws of the features give:

- ``kernel``: Â = φ(Q)φ(K)ᵀ against A = exp(scale·QKᵀ), with the suite's features
  (``methods.performer.draw_orthogonal_features`` and ``softmax_kernel_features`` without stabiliser
  or eps: the estimator the lemma is about);
- ``output``: the attention output of the suite's method (``performer``, eps = 0, features redrawn
  per seed; bidirectional) against exact softmax attention. A ratio of two unbiased estimates, so
  biased by O(1/m) by construction; the paper calls it nearly unbiased.

Per (input, quantity, m): the per-draw relative Frobenius error (per head, averaged over heads; its
mean and root-mean-square over the draws), the error of the mean of the S draws, and
ρ = (error of the mean)·√S / (rms per-draw error). For an unbiased estimator E‖mean − A‖² =
E‖Â − A‖²/S, so ρ ≈ 1 at every m; a bias b adds S·b²/E‖Â − A‖² under the root, so ρ grows with S
and, for a bias that falls more slowly than the spread, as m grows. Slopes: least squares of log error
on log m (per-draw rms and mean of S draws; −0.5 for an unbiased estimator with 1/m variance).

Inputs (float64, batch 1): ``bounded`` rows of norm 2 and 4 (WildCat's bounded-input setting, 4
heads, d = 64, scale 1/8, v Gaussian) and SmolLM2-135M layer 10 (9 heads, the model's scale), first
n tokens of the local text. Writes ``performer_unbiased.csv`` (one line per input × quantity × m, with
the run's device, torch version and git commit), ``performer_unbiased.md`` and
``figures/performer_unbiased.png|pdf``. Seconds to minutes on one CPU thread; no timing.
"""
from __future__ import annotations

import argparse
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from attnbench import methods
from attnbench.methods.performer import draw_orthogonal_features, softmax_kernel_features
from attnbench.runners import plots
from attnbench.runners.run import device_name, provenance

FEATURES = (16, 32, 64, 128, 256, 512, 1024)
INPUTS = (("bounded", {"radius": 2.0, "heads": 4}), ("bounded", {"radius": 4.0, "heads": 4}),
          ("smollm2", {"layer": 10, "heads": 9}))
RHO_MAX = 1.5        # no detectable bias: the error of the mean of S draws within 1.5x the unbiased prediction


def inputs(source: str, knobs: dict[str, Any], n: int) -> tuple[str, dict[str, Any]]:
    """(label, q/k/v/scale in float64) of one input setting (``tasks.datasets.sources.make_qkv``)."""
    from attnbench.tasks.datasets.sources import make_qkv

    cfg = {"source": source, "batch": 1, "head_dim": 64, **knobs}
    qkv = make_qkv(cfg, n, 0, torch.device("cpu"), torch.float64)
    qkv.setdefault("scale", 64 ** -0.5)
    label = f"bounded, radius {knobs['radius']:g}" if source == "bounded" else f"SmolLM2 layer {knobs['layer']}"
    return label, qkv


def rel_errors(est: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Per-head relative Frobenius error ‖est − ref‖ / ‖ref‖ (over the last two dims), shape (B·H,)."""
    diff = (est - ref).flatten(-2).norm(dim=-1)
    return (diff / ref.flatten(-2).norm(dim=-1)).flatten()


def kernel_draw(q: torch.Tensor, k: torch.Tensor, scale: float, m: int, seed: int) -> torch.Tensor:
    """Â = φ(Q)φ(K)ᵀ with fresh orthogonal features (seeded), no stabiliser, no eps: the unbiased estimator."""
    g = torch.Generator().manual_seed(seed)
    proj = draw_orthogonal_features(m, q.shape[-1], g, q.device, dtype=q.dtype)
    qf = softmax_kernel_features(q, proj, scale, is_query=True, eps=0.0, stabilize=False)
    kf = softmax_kernel_features(k, proj, scale, is_query=False, eps=0.0, stabilize=False)
    return qf @ kf.transpose(-1, -2)


def output_draw(method, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, seed: int) -> torch.Tensor:
    """The suite's Performer output (``method``: eps = 0, bidirectional) for the features of ``seed``."""
    method.reseed(seed)
    return method(q, k, v, causal=False, scale=scale)


def measure(qkv: dict[str, Any], features: tuple[int, ...], seeds: int) -> list[dict[str, Any]]:
    """Per quantity and m: per-draw errors, the error of the mean of the draws, and ρ (module docstring)."""
    q, k, v, scale = qkv["q"], qkv["k"], qkv["v"], float(qkv["scale"])
    exact = {"kernel": torch.exp(scale * q @ k.transpose(-1, -2)),
             "output": torch.nn.functional.scaled_dot_product_attention(q, k, v, scale=scale)}
    recs = []
    for m in features:
        method = methods.build("performer", nb_features=m, eps=0.0, redraw=True)
        for quantity, draw in (("kernel", lambda s: kernel_draw(q, k, scale, m, s)),
                               ("output", lambda s: output_draw(method, q, k, v, scale, s))):
            ref, total, per = exact[quantity], torch.zeros_like(exact[quantity]), []
            for s in range(seeds):
                est = draw(s)
                per.append(rel_errors(est, ref))
                total += est
            per_draw = torch.stack(per)  # (seeds, heads)
            rms = per_draw.pow(2).mean(0).sqrt()  # per head
            mean_err = rel_errors(total / seeds, ref)
            recs.append({"quantity": quantity, "m": m, "seeds": seeds,
                         "per_draw_error": float(per_draw.mean()), "per_draw_rms": float(rms.mean()),
                         "mean_of_draws_error": float(mean_err.mean()),
                         "rho": float(mean_err.mean() * seeds ** 0.5 / rms.mean())})
    return recs


def slopes(d: pd.DataFrame) -> pd.DataFrame:
    """Per input and quantity: log-log slopes in m of the per-draw rms error and of the error of the mean."""
    recs = []
    for (label, quantity), g in d.groupby(["input", "quantity"], sort=False):
        recs.append({"input": label, "quantity": quantity,
                     "per_draw_slope": plots.fit_loglog_slope(g["m"], g["per_draw_rms"])[0],
                     "mean_of_draws_slope": plots.fit_loglog_slope(g["m"], g["mean_of_draws_error"])[0],
                     "rho_max": float(g["rho"].max()), "m_min": int(g["m"].min()), "m_max": int(g["m"].max())})
    return pd.DataFrame(recs)


def markdown(d: pd.DataFrame, s: pd.DataFrame, argv: list[str]) -> str:
    r0 = d.iloc[0]
    lines = [
        "# Performer (FAVOR+): unbiased, with error falling as 1/√m?",
        "",
        f"Command: `attnbench performer_unbiased {' '.join(argv)}`".rstrip() + " (claim P1 of "
        "[claims.md](claims.md) reads the CSV). Fixed inputs, n = "
        f"{int(r0['n']):,}, float64, {int(r0['seeds'])} independent feature draws per m (seeds 0–{int(r0['seeds']) - 1}); "
        f"{r0['device']}, torch {r0['torch_version']}, commit {r0['git_commit']}.",
        "",
        "Kernel: the softmax kernel exp(scale·q·k) estimated by φ(Q)φ(K)ᵀ (positive orthogonal features, no "
        "stabiliser, no eps: the paper's unbiased estimator). Output: the suite's `performer` (eps = 0, bidirectional), "
        "a ratio of two estimates and so biased at O(1/m). Errors: relative Frobenius norm per head, averaged over "
        "heads. ρ = error of the mean of the S draws × √S ÷ rms per-draw error: ≈ 1 when the estimator is unbiased, "
        f"larger with a bias (rule threshold {RHO_MAX}).",
        "",
        "## Slopes in m (least squares, log-log; −0.5 = 1/√m)",
        "",
        "| input | quantity | per-draw rms error | error of the mean of S draws | largest ρ | m |",
        "|---|---|---|---|---|---|",
    ]
    for _, r in s.iterrows():
        lines.append(f"| {r['input']} | {r['quantity']} | {r['per_draw_slope']:.3f} | {r['mean_of_draws_slope']:.3f} | "
                     f"{r['rho_max']:.2f} | {r['m_min']}–{r['m_max']} |")
    lines += ["", "## Every point", "", "| input | quantity | m | per-draw error (mean) | per-draw rms | error of the "
              "mean | ρ |", "|---|---|---|---|---|---|---|"]
    for _, r in d.iterrows():
        lines.append(f"| {r['input']} | {r['quantity']} | {int(r['m'])} | {r['per_draw_error']:.4g} | "
                     f"{r['per_draw_rms']:.4g} | {r['mean_of_draws_error']:.4g} | {r['rho']:.2f} |")
    return "\n".join(lines) + "\n"


def figure(d: pd.DataFrame, out_dir: Path, subtitle: str) -> list[Path]:
    import matplotlib.pyplot as plt

    quantities = list(dict.fromkeys(d["quantity"]))
    fig, axes = plt.subplots(1, len(quantities), figsize=(6.2 * len(quantities), 4.6), layout="constrained",
                             squeeze=False)
    fig.suptitle("Performer (FAVOR+): relative error vs random features m, per draw and for the mean of the draws",
                 x=0.01, ha="left", fontweight="bold")
    hues = list(plots.OKABE_ITO.values())[1:]
    for ax, quantity in zip(axes[0], quantities):
        g = d[d["quantity"] == quantity]
        for i, (label, h) in enumerate(g.groupby("input", sort=False)):
            c = hues[i % len(hues)]
            ax.plot(h["m"], h["per_draw_rms"], "-o", color=c, ms=4, label=f"{label}: per draw (rms)")
            ax.plot(h["m"], h["mean_of_draws_error"], "--s", color=c, ms=4, label=f"{label}: mean of the draws")
        m = np.array(sorted(g["m"].unique()), float)
        top = float(g["per_draw_rms"].max())
        ax.plot(m, top * (m / m[0]) ** -0.5, ":", color="#777777", label="slope −1/2")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(m, [str(int(x)) for x in m])
        ax.xaxis.set_minor_locator(plt.NullLocator())
        ax.set_xlabel("random features m")
        ax.set_ylabel("relative Frobenius error")
        ax.set_title("\n".join(textwrap.wrap(f"{quantity}: " + ("φ(Q)φ(K)ᵀ vs exp(scale·QKᵀ)" if quantity == "kernel"
                                                                  else "attention output vs exact") + "; " + subtitle, 90)),
                     loc="left", fontsize=8, color="#333333")
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=6.5)
    return plots._save(fig, out_dir, "performer_unbiased")


def run(n: int, features: tuple[int, ...], seeds: int) -> pd.DataFrame:
    recs = []
    meta = {"n": n, "dtype": "float64", "device": device_name(torch.device("cpu")), **provenance()}
    for source, knobs in INPUTS:
        label, qkv = inputs(source, knobs, n)
        for r in measure(qkv, features, seeds):
            recs.append({"input": label, "source": source, **{f"input.{k}": v for k, v in knobs.items()}, **r, **meta})
    return pd.DataFrame(recs)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(prog="attnbench performer_unbiased", description=__doc__.splitlines()[0])
    ap.add_argument("--out-dir", default="results/reports/performer_unbiased",
                    help="where the CSV, page and figures/ go (the committed copies: --out-dir results)")
    ap.add_argument("--n", type=int, default=512, help="tokens (queries = keys) per input (default 512)")
    ap.add_argument("--features", type=int, nargs="+", default=list(FEATURES), help="values of m")
    ap.add_argument("--seeds", type=int, default=64, help="independent feature draws per m (default 64)")
    args = ap.parse_args(argv)
    if args.n < 2 or args.seeds < 2 or min(args.features) < 1:
        ap.error("--n and --seeds must be at least 2 and every --features value at least 1")
    torch.set_num_threads(1)
    out = Path(args.out_dir)
    d = run(args.n, tuple(sorted(set(args.features))), args.seeds)
    s = slopes(d)
    out.mkdir(parents=True, exist_ok=True)
    d.to_csv(out / "performer_unbiased.csv", index=False, float_format="%.6g")
    (out / "performer_unbiased.md").write_text(markdown(d, s, argv))
    sub = f"n = {args.n}, {args.seeds} draws, float64"
    paths = [out / "performer_unbiased.csv", out / "performer_unbiased.md"] + figure(d, out / "figures", sub)
    print(s.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print("wrote " + ", ".join(map(str, paths)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
