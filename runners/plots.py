"""Paper-style figures from results rows (matplotlib, Agg backend; PNG + PDF).

Every method has one fixed style in every figure: an Okabe–Ito colour (colour-blind safe), a
line style and a marker (``METHOD_STYLES``); with 7 usable Okabe–Ito hues, the (colour, line
style, marker) triple keeps all 11 methods apart. Every axis kind has one tick style
(``axis_kind``): n and budgets on log₂ axes with power-of-two ticks (``1k 2k 4k …``), latency,
memory, errors and speed-ups on log₁₀ axes with plain-number ticks, accuracy-like metrics linear.

Each figure has a title that names the measurement and a subtitle with the setup (passed in by
``runners.report``); spreads are drawn only where the rows carry them: p10–p90 latency bands,
95 % speed-up intervals (``speedup_lo``/``speedup_hi``), ± sd over seeds when there are several.
Every function takes a pandas DataFrame of ``status == ok`` rows (the columns of
``runners.collect.load_rows``), writes ``<out_dir>/<stem>.png`` and ``.pdf`` and returns the
written paths. Nothing here runs a method.
"""
from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker as mticker  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

# Okabe & Ito (2008), "Color Universal Design". Yellow is left out: too pale on white.
OKABE_ITO: dict[str, str] = {
    "black": "#000000", "orange": "#E69F00", "sky_blue": "#56B4E9", "bluish_green": "#009E73",
    "yellow": "#F0E442", "blue": "#0072B2", "vermillion": "#D55E00", "reddish_purple": "#CC79A7",
}
# method -> (Okabe–Ito colour, line style, marker); the order is the legend / table order.
METHOD_STYLES: dict[str, tuple[str, str, str]] = {
    "exact": ("black", "-", "*"),
    "wildcat": ("vermillion", "-", "o"),
    "kdeformer": ("blue", "-", "s"),
    "performer": ("bluish_green", "-", "^"),
    "scatterbrain": ("reddish_purple", "-", "v"),
    "reformer": ("orange", "-", "D"),
    "nystromformer": ("sky_blue", "-", "P"),
    "thinformer": ("reddish_purple", "--", "X"),
    "hyperattention": ("orange", "--", "<"),
    "latte": ("sky_blue", "--", ">"),
    "conv_basis": ("bluish_green", "--", "h"),
}
METHOD_COLORS: dict[str, str] = {m: OKABE_ITO[c] for m, (c, _, _) in METHOD_STYLES.items()}
METHOD_MARKERS: dict[str, str] = {m: mk for m, (_, _, mk) in METHOD_STYLES.items()}
METHOD_LINESTYLES: dict[str, str] = {m: ls for m, (_, ls, _) in METHOD_STYLES.items()}
UNKNOWN_COLOR, UNKNOWN_LINESTYLE = "#777777", ":"
METHOD_LABELS: dict[str, str] = {
    "exact": "Exact", "wildcat": "WildCat", "kdeformer": "KDEformer", "performer": "Performer",
    "scatterbrain": "ScatterBrain", "reformer": "Reformer", "nystromformer": "Nyströmformer",
    "thinformer": "Thinformer", "hyperattention": "HyperAttention", "latte": "LATTE", "conv_basis": "Conv-Basis",
}
AXIS_LABELS: dict[str, str] = {
    "rel_spec_error": "relative spectral-norm error ‖Ô−O‖₂/‖O‖₂",
    "rel_fro_error": "relative Frobenius error ‖Ô−O‖_F/‖O‖_F",
    "max_abs_error": "max |Ô−O|",
    "latency_ms": "latency per call (ms, median)",
    "peak_mem_mb": "peak memory above start (MiB)",
    "n": "sequence length n (tokens)",
    "task.budget": "feature budget m",
    "preset.budget": "feature budget m",
    "budget": "feature budget m",
    "speedup": "speed-up vs exact (×)",
    "top1": "top-1 accuracy (%)",
    "top5": "top-5 accuracy (%)",
    "fid": "FID",
    "is_mean": "Inception score",
    "ppl": "perplexity",
    "ppl_ratio": "perplexity / untouched model's perplexity (×)",
    "top1_agreement": "next-token top-1 agreement with the untouched model (%)",
    "score": "score",
}
# Column -> axis kind; one tick style per kind (see _style_axis).
AXIS_KINDS: dict[str, str] = {
    "n": "n", "task.budget": "budget", "preset.budget": "budget", "budget": "budget",
    "latency_ms": "log", "exact_latency_ms": "log", "peak_mem_mb": "log", "exact_peak_mem_mb": "log",
    "rel_spec_error": "log", "rel_fro_error": "log", "max_abs_error": "log", "speedup": "log", "ppl_ratio": "log",
}
BAND_ALPHA = 0.18

plt.rcParams.update({"font.size": 10, "axes.titlesize": 8.5, "legend.fontsize": 8.5, "figure.dpi": 100,
                     "figure.titlesize": 12})


def color(method: str) -> str:
    return METHOD_COLORS.get(method, UNKNOWN_COLOR)


def marker(method: str) -> str:
    return METHOD_MARKERS.get(method, "o")


def linestyle(method: str) -> str:
    return METHOD_LINESTYLES.get(method, UNKNOWN_LINESTYLE)


def style(method: str) -> dict:
    """Keyword arguments of ``ax.plot`` that draw ``method`` in its fixed style."""
    return {"color": color(method), "ls": linestyle(method), "marker": marker(method), "lw": 1.5, "ms": 6,
            "mec": "white" if method != "exact" else "black", "mew": 0.6}


def label(method: str) -> str:
    return METHOD_LABELS.get(method, method)


def axis_label(col: str) -> str:
    return AXIS_LABELS.get(col, col)


def axis_kind(col: str) -> str:
    """``n`` (log₂, 1k 2k …), ``budget`` (log₂, 64 128 …), ``log`` (log₁₀, plain numbers) or ``linear``."""
    return AXIS_KINDS.get(col, "linear")


def method_order(methods: Sequence[str]) -> list[str]:
    """Methods in the fixed style-table order, unknown ones last (alphabetical)."""
    known = [m for m in METHOD_STYLES if m in set(methods)]
    return known + sorted(set(methods) - set(known))


def dense_scores_mb(n: Sequence[float] | np.ndarray, batch_heads: float, bytes_per_entry: int = 4) -> np.ndarray:
    """Size (MiB) of the dense n×n score matrix of ``batch_heads`` (batch · heads) attention
    maps: batch · heads · n² · 4 bytes in fp32."""
    n = np.asarray(n, dtype=float)
    return batch_heads * n**2 * bytes_per_entry / 2**20


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


# ---------------------------------------------------------------------------------------- helpers

def _new(title: str, subtitle: str, size: tuple[float, float] = (8.4, 4.6)):
    fig, ax = plt.subplots(figsize=size, layout="constrained")
    if title:
        fig.suptitle("\n".join(textwrap.wrap(title, 95)), x=0.02, ha="left", fontweight="bold")
    if subtitle:
        ax.set_title("\n".join(textwrap.wrap(subtitle, 125)), loc="left", color="#333333")
    return fig, ax


def _save(fig, out_dir: Path, stem: str) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{stem}.png", out_dir / f"{stem}.pdf"]
    fig.savefig(paths[0], dpi=150)
    fig.savefig(paths[1])
    plt.close(fig)
    return paths


def _num(s: pd.Series) -> pd.Series:
    return pd.to_numeric(s, errors="coerce")


def _agg(df: pd.DataFrame, x: str, y: str, lo: str | None = None, hi: str | None = None) -> pd.DataFrame:
    """At each x: mean, sd (over seeds / repeats; NaN with one), count of y; and the mean of the
    ``lo`` / ``hi`` columns (a per-row interval, e.g. p10 / p90) when given and present."""
    cols = [x, y] + [c for c in (lo, hi) if c and c in df]
    d = df[cols].copy()
    for c in cols:
        d[c] = _num(d[c])
    d = d.dropna(subset=[x, y])
    g = d.groupby(x)
    out = pd.DataFrame({"mean": g[y].mean(), "sd": g[y].std(ddof=1), "count": g[y].size()})
    out["lo"] = g[lo].mean() if lo and lo in d else np.nan
    out["hi"] = g[hi].mean() if hi and hi in d else np.nan
    return out.reset_index().sort_values(x)


def _has_spread(a: pd.DataFrame, col: str = "sd") -> bool:
    return bool((a[col].fillna(0) > 0).any())


def _band(ax, x, lo, hi, method: str) -> bool:
    lo, hi = np.asarray(lo, dtype=float), np.asarray(hi, dtype=float)
    ok = np.isfinite(lo) & np.isfinite(hi)
    if not ok.any() or not (hi[ok] > lo[ok]).any():
        return False
    ax.fill_between(np.asarray(x, dtype=float)[ok], lo[ok], hi[ok], color=color(method), alpha=BAND_ALPHA, lw=0)
    return True


def _sd_bars(ax, x, a: pd.DataFrame, method: str, horizontal: bool = False) -> bool:
    """± sd error bars (no legend entry), only where there is a spread to show."""
    if not _has_spread(a):
        return False
    kw = {"xerr" if horizontal else "yerr": a["sd"].fillna(0).to_numpy()}
    xs, ys = (a["mean"], x) if horizontal else (x, a["mean"])
    ax.errorbar(xs, ys, fmt="none", ecolor=color(method), elinewidth=1.0, capsize=2.5, **kw)
    return True


def _interval_bars(ax, x, y, lo, hi, method: str, horizontal: bool) -> bool:
    """Bars from lo to hi around the value (an interval, not symmetric); nothing if absent."""
    v = np.asarray(x if horizontal else y, dtype=float)
    lo, hi = np.asarray(lo, dtype=float), np.asarray(hi, dtype=float)
    ok = np.isfinite(lo) & np.isfinite(hi) & np.isfinite(v)
    if not ok.any() or not (hi[ok] > lo[ok]).any():
        return False
    err = np.vstack([np.clip(v - lo, 0, None), np.clip(hi - v, 0, None)])
    err[:, ~ok] = 0
    kw = {"xerr": err} if horizontal else {"yerr": err}
    ax.errorbar(np.asarray(x, dtype=float), np.asarray(y, dtype=float), fmt="none", ecolor=color(method),
                elinewidth=1.0, capsize=2.5, alpha=0.8, **kw)
    return True


def _pow2_label(v: float, kind: str) -> str:
    if kind == "n" and v >= 1024:
        return f"{v / 1024:g}k"
    return f"{v:g}"


def _plain(v: float, _pos=None) -> str:
    """Tick labels as plain numbers: 0.2, 1, 50, 1000, 20000."""
    if v <= 0 or not np.isfinite(v):
        return ""
    if v >= 1 and abs(v - round(v)) < 1e-9 * v:
        return f"{v:.0f}"
    return f"{v:.3g}"


def fmt_ms(v: float) -> str:
    return f"{v / 1000:.3g} s" if v >= 1000 else f"{v:.3g} ms"


def _style_axis(ax, which: str, col: str) -> None:
    """One tick style per axis kind (see ``axis_kind``)."""
    kind = axis_kind(col)
    axis = ax.xaxis if which == "x" else ax.yaxis
    set_scale = ax.set_xscale if which == "x" else ax.set_yscale
    if kind in ("n", "budget"):
        set_scale("log", base=2)
        lo, hi = ax.get_xlim() if which == "x" else ax.get_ylim()
        ticks = [2.0**k for k in range(int(np.floor(np.log2(max(lo, 1e-9)))), int(np.ceil(np.log2(hi))) + 1)
                 if lo <= 2.0**k <= hi]
        if len(ticks) > 9:  # keep every other power of two
            ticks = ticks[::2]
        axis.set_major_locator(mticker.FixedLocator(ticks))
        axis.set_major_formatter(mticker.FuncFormatter(lambda v, _p, k=kind: _pow2_label(v, k)))
        axis.set_minor_locator(mticker.NullLocator())
    elif kind == "log":
        set_scale("log")
        lo, hi = ax.get_xlim() if which == "x" else ax.get_ylim()
        axis.set_major_locator(mticker.LogLocator(base=10))
        axis.set_major_formatter(mticker.FuncFormatter(_plain))
        axis.set_minor_locator(mticker.LogLocator(base=10, subs=(2, 3, 4, 5, 6, 7, 8, 9)))
        if lo > 0 and np.log10(hi / lo) < 1.3:  # under ~one decade: label 2 and 5 as well
            axis.set_minor_formatter(mticker.FuncFormatter(
                lambda v, _p: _plain(v) if round(v / 10 ** np.floor(np.log10(v)), 6) in (2, 5) else ""))
        else:
            axis.set_minor_formatter(mticker.NullFormatter())


def _finish(ax, x: str, y: str, extra_handles: list | None = None, legend_title: str | None = None) -> None:
    ax.set_xlabel(axis_label(x))
    ax.set_ylabel(axis_label(y))
    _style_axis(ax, "x", x)
    _style_axis(ax, "y", y)
    ax.grid(True, which="major", alpha=0.35)
    ax.grid(True, which="minor", alpha=0.12)
    handles, labels = ax.get_legend_handles_labels()
    for h in extra_handles or []:
        handles.append(h)
        labels.append(h.get_label())
    if handles:  # outside the axes, right: never hides data
        ax.legend(handles, labels, frameon=False, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0,
                  title=legend_title, title_fontsize=8.5, alignment="left")


def _note(ax, parts: list[str]) -> None:
    """A 'how to read' line under the axes (what bars and bands mean)."""
    if parts:
        ax.annotate("\n".join(textwrap.wrap("; ".join(parts), 120)), xy=(0, 0), xycoords="axes fraction", xytext=(0, -36),
                    textcoords="offset points", fontsize=7.5, color="#444444", va="top")


def _seed_note(df: pd.DataFrame) -> str:
    k = df["seed"].nunique() if "seed" in df else 1
    return f"bars: ± sd over {k} seeds" if k > 1 else ""


# ---------------------------------------------------------------------------------------- figures

def metric_vs_x(df: pd.DataFrame, x: str, y: str, out_dir: Path, stem: str, *, title: str = "",
                subtitle: str = "", logx: bool | None = None, logy: bool | None = None) -> list[Path]:
    """One line per method: mean of ``y`` over seeds at each ``x``; ± sd bars when several seeds;
    when ``x`` is ``speedup`` and the rows carry ``speedup_lo``/``speedup_hi``, the 95 % interval as
    horizontal bars. (``logx``/``logy`` are ignored: the axis kind decides the scale.)"""
    fig, ax = _new(title, subtitle)
    notes = set()
    for m in method_order(df["method"].unique()):
        d = df[df["method"] == m]
        a = _agg(d, x, y)
        if a.empty:
            continue
        ax.plot(a[x], a["mean"], label=label(m), **style(m))
        if _sd_bars(ax, a[x], a, m):
            notes.add(_seed_note(d))
        if x == "speedup" and {"speedup_lo", "speedup_hi"} <= set(d.columns):
            b = _agg(d, y, "speedup", "speedup_lo", "speedup_hi")  # interval per y value
            if _interval_bars(ax, b["mean"], b[y], b["lo"], b["hi"], m, horizontal=True):
                notes.add("horizontal bars: 95 % bootstrap interval of the speed-up")
    _finish(ax, x, y)
    _note(ax, sorted(n for n in notes if n))
    return _save(fig, out_dir, stem)


def pareto(df: pd.DataFrame, y: str, out_dir: Path, stem: str, *, budget: str | None = None,
           title: str = "", subtitle: str = "") -> list[Path]:
    """Error vs latency, one point per budget with the budget written beside it, joined (thin)
    in budget order; p10–p90 latency as horizontal bars; exact's median latency from the same
    runs as a dashed vertical line."""
    fig, ax = _new(title, subtitle)
    notes = set()
    for m in method_order(df["method"].unique()):
        d = df[df["method"] == m].copy()
        keys = [budget] if budget and budget in d else [c for c in ("n",) if c in d]
        cols = [c for c in ("latency_ms", "latency_p10_ms", "latency_p90_ms", y) if c in d]
        for c in cols + keys:
            d[c] = _num(d[c])
        g = d.groupby(keys, dropna=False)[cols].mean().reset_index().dropna(subset=["latency_ms", y])
        if g.empty:
            continue
        st = style(m)
        ax.plot(g["latency_ms"], g[y], label=label(m), **{**st, "lw": 1.0, "alpha": 0.9})
        if {"latency_p10_ms", "latency_p90_ms"} <= set(g.columns):
            if _interval_bars(ax, g["latency_ms"], g[y], g["latency_p10_ms"], g["latency_p90_ms"], m, horizontal=True):
                notes.add("horizontal bars: p10–p90 of the timed calls")
        if keys:
            for _, r in g.iterrows():
                ax.annotate(_pow2_label(r[keys[0]], axis_kind(keys[0])) if pd.notna(r[keys[0]]) else "",
                            (r["latency_ms"], r[y]), xytext=(4, 3), textcoords="offset points", fontsize=7,
                            color=color(m))
    extra = []
    if "exact_latency_ms" in df and _num(df["exact_latency_ms"]).notna().any():
        med = float(_num(df["exact_latency_ms"]).median())
        ax.axvline(med, color=color("exact"), ls="--", lw=1.2, label=f"{label('exact')} ({fmt_ms(med)}, error 0)")
    if budget:
        notes.add(f"numbers at the points: {axis_label(budget)}; points of a method joined in budget order")
    _finish(ax, "latency_ms", y, extra)
    _note(ax, sorted(notes))
    return _save(fig, out_dir, stem)


def scaling(df: pd.DataFrame, y: str, out_dir: Path, stem: str, *, exact_col: str | None = None,
            title: str = "", subtitle: str = "", dense_reference: bool = False) -> tuple[list[Path], dict[str, float]]:
    """Log-log ``y`` vs n per method, least-squares slope in the legend; exact from ``exact_col``
    (e.g. ``exact_latency_ms``, averaged over the runs that timed it at each n). Latency: p10–p90
    bands. ``dense_reference``: the dense n×n fp32 score matrices (batch·heads·n²·4 bytes) as a
    dashed grey line (memory plots). Returns the paths and {method: slope}."""
    fig, ax = _new(title, subtitle)
    slopes: dict[str, float] = {}
    series: list[tuple[str, pd.DataFrame]] = []

    def band_cols(col: str) -> tuple[str | None, str | None]:
        if col.endswith("latency_ms"):
            p = col[: -len("latency_ms")]
            return f"{p}latency_p10_ms", f"{p}latency_p90_ms"
        return None, None

    if exact_col and exact_col in df and _num(df[exact_col]).notna().any() and "exact" not in set(df["method"]):
        lo, hi = band_cols(exact_col)
        series.append(("exact", _agg(df, "n", exact_col, lo, hi)))
    for m in method_order(df["method"].unique()):
        series.append((m, _agg(df[df["method"] == m], "n", y, *band_cols(y))))
    notes = set()
    for m, a in series:
        if a.empty:
            continue
        s, _ = fit_loglog_slope(a["n"], a["mean"])
        slopes[m] = s
        name = label(m) + (" (SDPA)" if m == "exact" and exact_col else "")
        ax.plot(a["n"], a["mean"], label=f"{name}, slope {s:.2f}" if np.isfinite(s) else name, **style(m))
        if _band(ax, a["n"], a["lo"], a["hi"], m):
            notes.add("shaded: p10–p90 of the timed calls")
        if _sd_bars(ax, a["n"], a, m):
            notes.add(_seed_note(df))
    extra = []
    if dense_reference:
        bh = _batch_heads(df)
        if bh:
            ns = np.sort(_num(df["n"]).dropna().unique())
            ax.plot(ns, dense_scores_mb(ns, bh), color="#888888", ls="--", lw=1.3,
                    label=f"dense n×n scores (fp32, {bh:g}·n²·4 B)")
            notes.add(f"grey dashed: the n×n fp32 score matrices of batch·heads = {bh:g} maps, which a flash-style "
                      "exact kernel never holds")
    _finish(ax, "n", y, extra)
    _note(ax, sorted(n for n in notes if n) + (["slope: least-squares fit of log y on log n"] if slopes else []))
    return _save(fig, out_dir, stem), slopes


def _batch_heads(df: pd.DataFrame) -> float | None:
    """batch · heads of the rows (their median), None when the rows do not say."""
    if "heads" not in df or _num(df["heads"]).isna().all():
        return None
    b = _num(df["batch"]).fillna(1) if "batch" in df else pd.Series(1.0, index=df.index)
    bh = (b * _num(df["heads"])).dropna()
    return float(bh.median()) if len(bh) else None


def speedup_vs_n(df: pd.DataFrame, out_dir: Path, stem: str, *, title: str = "", subtitle: str = "") -> list[Path]:
    """Speed-up vs exact per method against n; 95 % bootstrap intervals (``speedup_lo``/``_hi``)
    as bands when the rows carry them; a dotted line at 1 (parity)."""
    fig, ax = _new(title, subtitle)
    notes = set()
    for m in method_order(df["method"].unique()):
        d = df[df["method"] == m]
        a = _agg(d, "n", "speedup", "speedup_lo", "speedup_hi")
        if a.empty:
            continue
        ax.plot(a["n"], a["mean"], label=label(m), **style(m))
        if _band(ax, a["n"], a["lo"], a["hi"], m):
            notes.add("shaded: 95 % bootstrap interval of the speed-up")
        elif _sd_bars(ax, a["n"], a, m):
            notes.add(_seed_note(d))
    ax.axhline(1.0, color="#888888", ls=":", lw=1.0, label="parity with exact")
    _finish(ax, "n", "speedup")
    _note(ax, sorted(n for n in notes if n))
    return _save(fig, out_dir, stem)


# KV-cache presses (``task=kv_cache``): label (the ``press`` row column less "Press") -> style.
PRESS_STYLES: dict[str, tuple[str, str, str]] = {
    "none": ("black", ":", "*"),
    "WildCat": ("vermillion", "-", "o"),
    "WildCat (middle)": ("vermillion", ":", "o"),  # the official convention (task.ratio_of=middle)
    "Uniform": ("sky_blue", "-", "s"),
    "SnapKV": ("blue", "-", "^"),
    "StreamingLLM": ("bluish_green", "-", "v"),
    "Knorm": ("orange", "--", "D"),
    "ExpectedAttention": ("reddish_purple", "--", "P"),
    "TOVA": ("black", "--", "X"),
}


def press_order(presses: Sequence[str]) -> list[str]:
    known = [p for p in PRESS_STYLES if p in set(presses)]
    return known + sorted(set(presses) - set(known))


def press_style(press: str) -> dict:
    c, ls, mk = PRESS_STYLES.get(press, (None, UNKNOWN_LINESTYLE, "o"))
    return {"color": OKABE_ITO[c] if c else UNKNOWN_COLOR, "ls": ls, "marker": mk, "lw": 1.5,
            "ms": 9 if mk == "*" else 6, "mec": "white" if press != "none" else "black", "mew": 0.6}


def kv_vs_kept(table: pd.DataFrame, panels: Sequence[tuple[str, str]], out_dir: Path, stem: str, *,
               title: str = "", subtitle: str = "", chance: float | None = None) -> list[Path]:
    """KV-cache presses: one panel per (column, y label) of ``panels`` against ``kept_fraction``,
    one line per ``press`` (rows of ``table``: press, kept_fraction, the panel columns). The
    uncompressed cache (``none``) is a star at its kept fraction and a dotted horizontal line;
    ``chance`` (in % of a ``score`` panel) a grey dashed line. Perplexity panels are log-scaled
    when they span more than a factor 3."""
    panels = [(c, lab) for c, lab in panels if c in table and _num(table[c]).notna().any()]
    if not panels:
        return []
    cols = 2 if len(panels) == 4 else len(panels)
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols + 1.8, 3.6 * rows + 0.8), layout="constrained",
                             squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    if title:
        fig.suptitle("\n".join(textwrap.wrap(title, 110)), x=0.02, ha="left", fontweight="bold")
    if subtitle:
        fig.supxlabel("\n".join(textwrap.wrap(subtitle, 150)), fontsize=7.5, color="#333333", x=0.02, ha="left")
    for ax, (col, ylab) in zip(axes.flat, panels):
        for press in press_order(table["press"].unique()):
            d = table[table["press"] == press].assign(_x=lambda t: _num(t["kept_fraction"]), _y=lambda t: _num(t[col]))
            d = d.dropna(subset=["_x", "_y"]).sort_values("_x")
            if d.empty:
                continue
            ax.plot(d["_x"], d["_y"], label=press, **press_style(press))
            if press == "none":
                ax.axhline(float(d["_y"].iloc[0]), color="#000000", ls=":", lw=0.9)
        if chance is not None and col == "score":
            ax.axhline(chance, color="#888888", ls="--", lw=1.0, label=f"chance ({chance:g} %)")
        y = _num(table[col]).dropna()
        if col in ("ppl", "answer_nll") and len(y) and y.min() > 0 and y.max() / y.min() > 3:
            ax.set_yscale("log")
            ax.yaxis.set_major_formatter(mticker.FuncFormatter(_plain))
            ax.yaxis.set_minor_formatter(mticker.FuncFormatter(_plain))
        ax.set_xlabel("kept fraction of the KV cache")
        ax.set_ylabel(ylab)
        ax.grid(True, which="major", alpha=0.35)
    seen: dict[str, Any] = {}
    for ax in axes.flat[:len(panels)]:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            seen.setdefault(lab, h)
    axes[0][-1].legend(list(seen.values()), list(seen), frameon=False, loc="upper left", bbox_to_anchor=(1.01, 1.0),
                       borderaxespad=0.0)
    return _save(fig, out_dir, stem)


def legend_proxy(method: str) -> Line2D:
    """A legend handle in ``method``'s style (for figures that build their own legend)."""
    return Line2D([], [], label=label(method), **style(method))


def band_proxy(text: str) -> Patch:
    return Patch(color="#888888", alpha=BAND_ALPHA, label=text)
