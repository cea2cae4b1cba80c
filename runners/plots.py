"""Paper-style figures from results rows (matplotlib, Agg backend; PNG + PDF).

One colour and one marker per method, fixed across every figure (``METHOD_COLORS``,
``METHOD_MARKERS``). Every function takes a pandas DataFrame of ``status == ok`` rows (the
columns of ``runners.collect.load_rows``) and writes ``<out_dir>/<stem>.png`` and ``.pdf``,
returning the written paths. Nothing here runs a method.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

# Fixed method -> colour (tab10 / tab20 hues; exact is black). Unknown methods get grey shades.
METHOD_COLORS: dict[str, str] = {
    "exact": "#000000",
    "wildcat": "#d62728",
    "kdeformer": "#1f77b4",
    "performer": "#2ca02c",
    "scatterbrain": "#9467bd",
    "reformer": "#ff7f0e",
    "nystromformer": "#8c564b",
    "thinformer": "#e377c2",
    "hyperattention": "#17becf",
    "latte": "#bcbd22",
    "conv_basis": "#7f7f7f",
}
METHOD_MARKERS: dict[str, str] = {
    "exact": "*", "wildcat": "o", "kdeformer": "s", "performer": "^", "scatterbrain": "v", "reformer": "D",
    "nystromformer": "P", "thinformer": "X", "hyperattention": "<", "latte": ">", "conv_basis": "h",
}
METHOD_LABELS: dict[str, str] = {
    "exact": "Exact", "wildcat": "WildCat", "kdeformer": "KDEformer", "performer": "Performer",
    "scatterbrain": "ScatterBrain", "reformer": "Reformer", "nystromformer": "Nyströmformer",
    "thinformer": "Thinformer", "hyperattention": "HyperAttention", "latte": "LATTE", "conv_basis": "Conv-Basis",
}
AXIS_LABELS: dict[str, str] = {
    "rel_spec_error": "relative spectral-norm error ‖Ô−O‖₂/‖O‖₂",
    "rel_fro_error": "relative Frobenius error ‖Ô−O‖_F/‖O‖_F",
    "max_abs_error": "max |Ô−O|",
    "latency_ms": "latency (ms)",
    "peak_mem_mb": "peak memory (MB)",
    "n": "sequence length n (tokens)",
    "task.budget": "feature budget m",
    "speedup": "speed-up vs exact (×)",
    "top1": "top-1 accuracy (%)",
    "top5": "top-5 accuracy (%)",
    "fid": "FID",
    "is_mean": "Inception score",
    "ppl": "perplexity",
    "score": "score",
}

plt.rcParams.update({"font.size": 11, "axes.titlesize": 12, "legend.fontsize": 9, "figure.dpi": 100})


def color(method: str) -> str:
    return METHOD_COLORS.get(method, "#555555")


def marker(method: str) -> str:
    return METHOD_MARKERS.get(method, "o")


def label(method: str) -> str:
    return METHOD_LABELS.get(method, method)


def axis_label(col: str) -> str:
    return AXIS_LABELS.get(col, col)


def method_order(methods: Sequence[str]) -> list[str]:
    """Methods in the fixed colour-table order, unknown ones last (alphabetical)."""
    known = [m for m in METHOD_COLORS if m in set(methods)]
    return known + sorted(set(methods) - set(known))


def fit_loglog_slope(x: Sequence[float], y: Sequence[float]) -> tuple[float, float]:
    """Least-squares fit of log y = slope · log x + intercept over the finite positive points;
    returns (slope, intercept) (natural logs), NaNs when fewer than two distinct x remain."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    ok = np.isfinite(x) & np.isfinite(y) & (x > 0) & (y > 0)
    x, y = x[ok], y[ok]
    if len(np.unique(x)) < 2:
        return float("nan"), float("nan")
    slope, intercept = np.polyfit(np.log(x), np.log(y), 1)
    return float(slope), float(intercept)


def _save(fig, out_dir: Path, stem: str) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{stem}.png", out_dir / f"{stem}.pdf"]
    fig.tight_layout()
    fig.savefig(paths[0], dpi=150)
    fig.savefig(paths[1])
    plt.close(fig)
    return paths


def _agg(df: pd.DataFrame, x: str, y: str) -> pd.DataFrame:
    """Mean and sd of y over seeds (and any other repeats) at each x."""
    g = df[[x, y]].dropna().groupby(x)[y]
    return pd.DataFrame({"mean": g.mean(), "sd": g.std(ddof=1)}).reset_index().sort_values(x)


def metric_vs_x(df: pd.DataFrame, x: str, y: str, out_dir: Path, stem: str, *, title: str = "",
                logx: bool = True, logy: bool = True) -> list[Path]:
    """One line per method: mean of ``y`` over seeds at each ``x`` (error bars: sd)."""
    fig, ax = plt.subplots(figsize=(7.2, 4.2))
    for m in method_order(df["method"].unique()):
        a = _agg(df[df["method"] == m], x, y)
        if a.empty:
            continue
        ax.errorbar(a[x], a["mean"], yerr=a["sd"].fillna(0), color=color(m), marker=marker(m), label=label(m),
                    capsize=2, lw=1.5, ms=6)
    _finish(ax, x, y, title, logx, logy)
    return _save(fig, out_dir, stem)


def pareto(df: pd.DataFrame, y: str, out_dir: Path, stem: str, *, budget: str | None = None,
           title: str = "") -> list[Path]:
    """Error vs latency per method (one point per budget, joined in budget order); exact's
    latency from the same runs as a dashed vertical line."""
    fig, ax = plt.subplots(figsize=(7.2, 4.2))
    for m in method_order(df["method"].unique()):
        d = df[df["method"] == m]
        keys = [budget] if budget and budget in d else [c for c in ("n",) if c in d]
        g = d.groupby(keys, dropna=False)[["latency_ms", y]].mean().reset_index().dropna(subset=["latency_ms", y])
        if g.empty:
            continue
        ax.plot(g["latency_ms"], g[y], color=color(m), marker=marker(m), label=label(m), lw=1.5, ms=6)
    if "exact_latency_ms" in df and df["exact_latency_ms"].notna().any():
        ax.axvline(float(df["exact_latency_ms"].median()), color=color("exact"), ls="--", lw=1.2,
                   label=f"{label('exact')} ({df['exact_latency_ms'].median():.3g} ms)")
    _finish(ax, "latency_ms", y, title, True, True)
    return _save(fig, out_dir, stem)


def scaling(df: pd.DataFrame, y: str, out_dir: Path, stem: str, *, exact_col: str | None = None,
            title: str = "") -> tuple[list[Path], dict[str, float]]:
    """Log-log ``y`` vs n per method with the least-squares slope in the legend; exact from
    ``exact_col`` (e.g. ``exact_latency_ms``, averaged over the runs that timed it at each n).
    Returns the paths and {method: slope}."""
    fig, ax = plt.subplots(figsize=(8.0, 4.4))
    slopes: dict[str, float] = {}
    series: list[tuple[str, pd.DataFrame]] = []
    if exact_col and exact_col in df and df[exact_col].notna().any() and "exact" not in set(df["method"]):
        series.append(("exact", _agg(df.rename(columns={exact_col: "_y"}), "n", "_y").rename(columns={"_y": y})))
    for m in method_order(df["method"].unique()):
        series.append((m, _agg(df[df["method"] == m], "n", y)))
    for m, a in series:
        if a.empty:
            continue
        s, b = fit_loglog_slope(a["n"], a["mean"])
        slopes[m] = s
        ax.plot(a["n"], a["mean"], color=color(m), marker=marker(m), lw=1.5, ms=6,
                label=f"{label(m)} (slope {s:.2f})" if np.isfinite(s) else label(m))
        if np.isfinite(s):
            xs = np.array([a["n"].min(), a["n"].max()], dtype=float)
            ax.plot(xs, np.exp(b) * xs**s, color=color(m), ls=":", lw=0.8)
    _finish(ax, "n", y, title, True, True)
    ax.set_xscale("log", base=2)
    return _save(fig, out_dir, stem), slopes


def _finish(ax, x: str, y: str, title: str, logx: bool, logy: bool) -> None:
    if logx:
        ax.set_xscale("log")
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(axis_label(x))
    ax.set_ylabel(axis_label(y))
    if title:
        ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    handles, _ = ax.get_legend_handles_labels()
    if handles:  # outside the axes, right: never hides data
        ax.legend(frameon=False, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
