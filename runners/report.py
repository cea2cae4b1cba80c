"""Paper-style table and figures for one experiment, from saved rows only (never reruns).

``attnbench report --experiment NAME [--results-dir results] [--out-dir DIR] [--force]``
reads the rows of conf/experiment/NAME.yaml's current grid (its sweep's methods × its ``task.n``
× the other swept knobs, e.g. budgets and seeds), the latest run of each config, prints the grid
coverage ("8/8 methods × 7/7 n = 56/56 configs") and writes, by default under the untracked
``<results-dir>/reports/<NAME>/`` (files tracked by git are never replaced without ``--force``):

- ``<NAME>_table.csv`` and ``<NAME>_table.md``: one line per method and the knobs that vary
  (method knobs folded into a ``knobs`` column, varying task columns such as ``n`` or
  ``task.budget`` as their own columns), every metric as mean and sd over seeds, plus derived
  columns: ``speedup`` (exact_latency_ms / latency_ms of the same run), ``is_degradation_pct``
  = (IS_exact − IS)/IS_exact·100 and ``fid_degradation_pct`` = max(0, FID − FID_exact)/FID_exact·100
  (exact matched by seed and the varying task columns; then averaged over seeds), and, when n
  varies, ``latency_slope`` / ``mem_slope`` (least squares on log-log over all n) and
  ``latency_slope_large_n`` (over n ≥ LARGE_N = 4096 only, where fixed costs no longer hide the
  growth); exact's in ``<NAME>_slopes.csv``; the markdown starts with the setup and coverage;
- ``figures/<NAME>_*.png|pdf``: error vs budget, error vs latency (budget written at each point),
  log-log latency (p10–p90 bands), memory (with the dense n×n score matrix as reference),
  speed-up (95 % intervals) and error vs n, accuracy / FID / IS vs speed-up, as the columns allow;
  each titled with its measurement and subtitled with the setup;
- KV-cache experiments (rows with ``task.press``, e.g. ``kv_compare``): ``<NAME>_kv_table.csv``, one
  line per press and compression ratio with the kept fraction and each dataset's score side by
  side (ppl, recall score, digit accuracy, answer NLL), also under the markdown table, and
  ``figures/<NAME>_kv_vs_kept.png|pdf`` (those metrics vs kept fraction, one line per press)
  instead of the figures above.

``attnbench report --card METHOD`` writes a method card instead (``runners/card.py``).

An unknown NAME exits with status 2 and the list of experiments (``glove_error`` and
``smollm2_error`` name the same experiment: rows under either name are read); a refused
overwrite exits with status 3. Rows with status=error are listed (method, knobs, message) at
the end of the markdown.
"""
from __future__ import annotations

import argparse
import json
import math
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from attnbench.runners import plots
from attnbench.runners.collect import load_rows

from attnbench.runners.grid import (ALIASES, CONF_DIR, PROJECT_ROOT, TIME_COLUMNS, Grid, UnknownExperiment, _canon,  # noqa: F401
                          apply_grid, experiment_names, load_grid, resolve_experiment, row_times)

METRICS = [
    "rel_spec_error", "rel_fro_error", "max_abs_error", "latency_ms", "latency_p10_ms", "latency_p90_ms",
    "exact_latency_ms", "speedup", "speedup_lo", "speedup_hi",
    "peak_mem_mb", "exact_peak_mem_mb", "top1", "top5", "fid", "is_mean", "is_std", "ppl", "exact_ppl", "ppl_increase",
    "score",
    "digit_accuracy", "answer_nll", "kept_fraction", "is_degradation_pct", "fid_degradation_pct",
    "grad_rel_fro_error", "grad_q_rel_error", "grad_k_rel_error", "grad_v_rel_error",  # task.timed=backward
]
EXTRA_SUFFIXES = ("_speedup", "_latency_ms", "_peak_mem_mb", "agreement")  # task-specific metric columns kept too
ROW_AXES = ["n", "batch", "heads", "causal"]  # row columns that become group keys when they vary
BUDGET_COLUMNS = ["task.budget", "preset.budget", "budget"]
ERROR_COLUMNS = ["rel_spec_error", "rel_fro_error"]
LARGE_N = 4096  # latency_slope_large_n fits n >= LARGE_N only
SKIP_TASK = {"task.n", "task.cache_dir", "task.glove_path", "task.checkpoint", "task.data_root"}


# per-line provenance carried into an experiment's table CSV (joined distinct values)
PROVENANCE = ("git_commit", "method_version")


def _num(s: pd.Series) -> pd.Series:
    return pd.to_numeric(s, errors="coerce")


def _varies(s: pd.Series) -> bool:
    return s.map(lambda v: json.dumps(v, default=str) if not _isnull(v) else None).nunique(dropna=True) > 1


def _isnull(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def select(df: pd.DataFrame, experiment: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(ok rows, error rows) of ``experiment``."""
    d = df[df["experiment"] == experiment] if "experiment" in df else df.iloc[0:0]
    return d[d["status"] == "ok"].copy(), d[d["status"] != "ok"].copy()


def task_keys(df: pd.DataFrame) -> list[str]:
    """Row axes and ``task.*`` / ``preset.*`` columns whose value varies across the experiment's rows."""
    keys = [c for c in ROW_AXES if c in df and _varies(df[c])]
    keys += sorted(c for c in df.columns
                   if c.startswith(("task.", "preset.")) and c not in SKIP_TASK and _varies(df[c]))
    return keys


def knob_string(df: pd.DataFrame) -> pd.Series:
    """Per row, 'k=v, ...' of the method knobs that vary among that method's rows."""
    out = pd.Series("", index=df.index, dtype=object)
    for m, d in df.groupby("method"):
        cols = [c for c in d.columns if c.startswith("method.") and c != "method.preset"
                and d[c].notna().any() and (_varies(d[c]) or d[c].isna().any())]  # set vs unset counts
        out.loc[d.index] = d[cols].apply(
            lambda r: ", ".join(f"{c[len('method.'):]}={_fmt_knob(r[c])}" for c in cols if not _isnull(r[c])), axis=1
        ) if cols else ""
    return out


def _fmt_knob(v: Any) -> str:
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)


def add_derived(df: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Per-row speed-up (same run), and IS / FID degradation against the exact row with the
    same seed and task keys."""
    df = df.copy()
    for c in ("latency_ms", "exact_latency_ms", "speedup", "fid", "is_mean"):
        if c in df:
            df[c] = _num(df[c])
    if "exact_latency_ms" in df and "latency_ms" in df:
        sp = df["exact_latency_ms"] / df["latency_ms"]
        df["speedup"] = df["speedup"].where(df["speedup"].notna(), sp) if "speedup" in df else sp
    for col, new in (("is_mean", "is_degradation_pct"), ("fid", "fid_degradation_pct")):
        if col not in df or not df[col].notna().any():
            continue
        match = ["seed"] + [k for k in keys if k in df]
        ex = df[df["method"] == "exact"][match + [col]].dropna(subset=[col])
        ex = ex.groupby(match, dropna=False)[col].mean().rename("_exact").reset_index()
        ref = df[match].merge(ex, on=match, how="left")["_exact"].to_numpy()
        if col == "is_mean":
            df[new] = (ref - df[col].to_numpy()) / ref * 100
        else:
            df[new] = np.maximum(0.0, df[col].to_numpy() - ref) / ref * 100
    return df


def metric_columns(df: pd.DataFrame) -> list[str]:
    cols = [c for c in METRICS if c in df and _num(df[c]).notna().any()]
    cols += sorted(c for c in df.columns if c.endswith(EXTRA_SUFFIXES) and c not in cols
                   and not c.startswith(("method.", "task.")) and _num(df[c]).notna().any())
    return cols


def build_table(rows: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(table, slopes) from the ok rows of one experiment. ``table`` has one line per
    (method, knobs, task keys): ``n_seeds``, ``<metric>_mean``, ``<metric>_sd``; when ``n``
    varies, ``latency_slope`` and ``mem_slope`` per (method, knobs). ``slopes`` lists the
    slopes, exact's included (from exact_latency_ms / exact_peak_mem_mb)."""
    keys = task_keys(rows)
    df = add_derived(rows, keys)
    df["knobs"] = knob_string(df)
    metrics = metric_columns(df)
    for c in metrics:
        df[c] = _num(df[c])
    group = ["method", "knobs"] + keys
    g = df.groupby(group, dropna=False, sort=False)
    table = g.size().rename("n_seeds").to_frame()
    table["n_seeds"] = g["seed"].nunique()
    for c in metrics:
        table[f"{c}_mean"] = g[c].mean()
        table[f"{c}_sd"] = g[c].std(ddof=1)
    for c in PROVENANCE:  # where each line was measured (the site shows it per point; the markdown leaves it out)
        if c in df:
            table[c] = g[c].agg(lambda s: ";".join(sorted({str(v) for v in s.dropna()})))
    if "load_avg_1m" in df:
        table["load_avg_1m_max"] = g["load_avg_1m"].agg(lambda s: _num(s).max())
    table = table.reset_index()
    slopes = pd.DataFrame(columns=["method", "knobs", "latency_slope", "latency_slope_large_n", "mem_slope",
                                   "n_min", "n_max", "points", "speedup_n", "speedup"])
    if "n" in keys:
        recs = []
        for (m, kn), d in table.groupby(["method", "knobs"], sort=False):
            recs.append(_slope_rec(m, kn, d, "latency_ms_mean", "peak_mem_mb_mean"))
        if ("exact" not in set(table["method"]) and "exact_latency_ms_mean" in table
                and table["exact_latency_ms_mean"].notna().any()):  # exact timed inside the other runs
            ex = table.groupby("n")[[c for c in ("exact_latency_ms_mean", "exact_peak_mem_mb_mean") if c in table]].mean()
            recs.append(_slope_rec("exact", "", ex.reset_index(), "exact_latency_ms_mean", "exact_peak_mem_mb_mean"))
        slopes = pd.DataFrame(recs)
        table = table.merge(slopes[["method", "knobs", "latency_slope", "latency_slope_large_n", "mem_slope"]],
                            on=["method", "knobs"], how="left")
    order = {m: i for i, m in enumerate(plots.method_order(table["method"].unique()))}
    table["_o"] = table["method"].map(order)
    for k in keys:  # numeric sort of numeric keys
        table[f"_{k}"] = _num(table[k]) if _num(table[k]).notna().all() else table[k].astype(str)
    table = table.sort_values(["_o"] + [f"_{k}" for k in keys] + ["knobs"], kind="stable")
    table = table.drop(columns=[c for c in table.columns if c.startswith("_")]).reset_index(drop=True)
    return table, slopes


def _slope_rec(method: str, knobs: str, d: pd.DataFrame, lat: str, mem: str) -> dict[str, Any]:
    n = _num(d["n"])
    lat_s, _ = plots.fit_loglog_slope(n, d[lat]) if lat in d else (float("nan"), 0)
    mem_s, _ = plots.fit_loglog_slope(n, d[mem]) if mem in d else (float("nan"), 0)
    ok = d[lat].notna() if lat in d else n.notna()
    large = (n >= LARGE_N) & ok
    lat_l = plots.fit_loglog_slope(n[large], d[lat][large])[0] if lat in d and large.sum() >= 2 else float("nan")
    rec = {"method": method, "knobs": knobs, "latency_slope": lat_s, "latency_slope_large_n": lat_l, "mem_slope": mem_s,
           "n_min": int(n[ok].min()), "n_max": int(n[ok].max()), "points": int(ok.sum())}
    if "speedup_mean" in d and d["speedup_mean"].notna().any():  # ratio to exact at the largest n that has one
        last = d[d["speedup_mean"].notna()].assign(_n=n).sort_values("_n").iloc[-1]
        rec.update(speedup_n=int(last["_n"]), speedup=float(last["speedup_mean"]))
    return rec


def _fmt(v: float) -> str:
    if v is None or not np.isfinite(v):
        return ""
    if float(v).is_integer() and abs(v) < 1e15:
        return str(int(v))
    return f"{v:.4g}"


def to_markdown(table: pd.DataFrame) -> str:
    """Markdown table: metric columns as 'mean ± sd' (sd left out with one seed); provenance columns
    (commit, load, method version) stay in the CSV only (the page's setup line names them)."""
    metrics = [c[:-5] for c in table.columns if c.endswith("_mean")]
    fixed = [c for c in table.columns if not c.endswith(("_mean", "_sd")) and c not in (*PROVENANCE, "load_avg_1m_max")]
    head = fixed + metrics
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for _, r in table.iterrows():
        cells = [_fmt(r[c]) if isinstance(r[c], (float, np.floating)) else str(r[c]) for c in fixed]
        for m in metrics:
            mu, sd = r[f"{m}_mean"], r.get(f"{m}_sd")
            cell = _fmt(mu)
            if cell and sd is not None and np.isfinite(sd):
                cell += f" ± {_fmt(sd)}"
            cells.append(cell)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------ KV-cache presses

KV_METRICS = [("ppl", "perplexity (ppl)"), ("score", "score (recall: multiple-choice accuracy, %)"),
              ("digit_accuracy", "recall: digit accuracy (%)"), ("answer_nll", "recall: answer NLL per token")]


def is_kv(rows: pd.DataFrame) -> bool:
    """Rows of the KV-cache task (a press per row)."""
    return ("task.press" in rows and "kept_fraction" in rows and "press" in rows
            and bool(rows["task.press"].notna().any()))  # rows of other tasks carry the column empty


def press_label(rows: pd.DataFrame) -> pd.Series:
    """The press of each row, readable: the ``press`` class less "Press" (``none`` for none;
    a suite method's ``MethodPress`` by the method's name), `` (middle)`` added for the official
    WildCat convention (``task.ratio_of=middle``: the ratio of the tokens between sink and window)."""
    def one(r):
        p = str(r["press"])
        p = str(r["method"]) if p == "MethodPress" else p[:-len("Press")] if p.endswith("Press") and p != "Press" else p
        middle = r.get("task.ratio_of") == "middle" and r["press"] in ("WildCatPress", "UniformPress", "BalanceKVPress",
                                                                       "MethodPress")
        return f"{p} (middle)" if middle else p
    return rows.apply(one, axis=1) if len(rows) else pd.Series(dtype=object)


def kv_table(rows: pd.DataFrame) -> pd.DataFrame:
    """One line per (press, compression ratio[, n]): mean kept fraction over all its rows and, per
    metric of ``KV_METRICS``, the mean over the rows that have it (``ppl`` from the ppl rows,
    ``score`` / ``digit_accuracy`` / ``answer_nll`` from the recall or needle rows, averaged over seeds)."""
    df = rows.assign(press=press_label(rows), compression_ratio=_num(rows["task.compression_ratio"]))
    group = ["press", "compression_ratio"] + (["n"] if "n" in df and _varies(df["n"]) else [])
    cols = ["kept_fraction"] + [c for c, _ in KV_METRICS if c in df and _num(df[c]).notna().any()]
    for c in cols:
        df[c] = _num(df[c])
    t = df.groupby(group, dropna=False, sort=False)[cols].mean().reset_index()
    if "task.dataset" in df:
        t["datasets"] = [" ".join(sorted(map(str, d["task.dataset"].dropna().unique())))
                         for _, d in df.groupby(group, dropna=False, sort=False)]
    order = {p: i for i, p in enumerate(plots.press_order(t["press"].unique()))}
    return (t.assign(_o=t["press"].map(order)).sort_values(["_o", "compression_ratio"], kind="stable")
            .drop(columns="_o").reset_index(drop=True))


def kv_figures(rows: pd.DataFrame, name: str, out_dir: Path, subtitle: str) -> list[Path]:
    t = kv_table(rows)
    chance = _num(rows["chance"]).dropna().unique() if "chance" in rows else []
    return plots.kv_vs_kept(t, KV_METRICS, out_dir, f"{name}_kv_vs_kept", subtitle=subtitle,
                            chance=float(chance[0]) if len(chance) == 1 else None,
                            title="KV-cache presses: held-out perplexity and needle recall vs the fraction of the "
                                  "prefill cache kept")


# ------------------------------------------------------------------------------ experiments, grid

class OverwriteRefused(FileExistsError):
    """A report file would replace a file tracked by git (and ``force`` was not given)."""


# ------------------------------------------------------------------------------ titles and setup

SOURCE_LABELS = {"smollm2": "SmolLM2-135M attention inputs", "glove": "GloVe twitter-100d vectors (Q = K)",
                 "gaussian": "Gaussian q, k, v"}
ERROR_NAMES = {"rel_spec_error": "spectral-norm", "rel_fro_error": "Frobenius-norm"}


def _first(df: pd.DataFrame, *cols: str) -> pd.Series | None:
    for c in cols:
        if c in df and df[c].notna().any():
            return df[c]
    return None


def _distinct(s: pd.Series | None) -> list[str]:
    if s is None:
        return []
    vals = [_fmt_knob(v) if not isinstance(v, float) or not math.isnan(v) else None for v in s.dropna()]
    return sorted({v for v in vals if v is not None}, key=lambda v: (len(v), v))


def _span(vals: list[str], fmt=lambda v: v) -> str:
    """'a' for one value, 'a–b' for a numeric range, 'a / b / c' otherwise."""
    if len(vals) == 1:
        return fmt(vals[0])
    nums = pd.to_numeric(pd.Series(vals), errors="coerce")
    if nums.notna().all():
        return f"{fmt(_fmt_knob(float(nums.min())))}–{fmt(_fmt_knob(float(nums.max())))}"
    return " / ".join(fmt(v) for v in vals)


def _kilo(v: str) -> str:
    x = pd.to_numeric(v, errors="coerce")
    return f"{x / 1024:g}k" if pd.notna(x) and x >= 1024 and x % 1024 == 0 else v


def data_label(rows: pd.DataFrame) -> str:
    """What the attention inputs are (from the ``source`` / ``task.source`` column)."""
    out = []
    for src in _distinct(_first(rows, "source", "task.source")):
        text = SOURCE_LABELS.get(src, src)
        if src == "smollm2":
            layers = _distinct(_first(rows, "task.layer"))
            text += f" (layer {_span(layers)})" if layers else ""
        out.append(text)
    return " / ".join(out)


def setup_line(rows: pd.DataFrame, experiment: str, coverage: str | None = None) -> str:
    """One line of the setup the rows share (values that differ are listed): data, n, batch,
    heads, head dim, dtype, budget, masking, device, threads, seeds, commit."""
    parts = []
    data = data_label(rows)
    if data:
        parts.append(data)
    n = _distinct(_first(rows, "n"))
    if n:
        parts.append(f"n = {_span(n, _kilo)}")
    shape = []
    for col, fmt in (("batch", "batch {}"), ("heads", "{} heads"), ("head_dim", "d = {}")):
        v = _distinct(_first(rows, col, f"task.{col}"))
        if v:
            shape.append(fmt.format(_span(v)) if v != ["1"] or col != "heads" else "1 head")
    if shape:
        parts.append(" × ".join(shape))
    dt = _distinct(_first(rows, "dtype", "task.dtype"))
    if dt:
        parts.append(_span(dt))
    budget = _first(rows, *BUDGET_COLUMNS)
    if budget is not None and len(_distinct(budget)) == 1:
        parts.append(f"budget m = {_distinct(budget)[0]}")
    elif budget is None:
        preset = [p for p in _distinct(_first(rows, "preset", "method.preset")) if p != "none"]
        m = re.search(r"_[bm](\d+)$", preset[0]) if len(preset) == 1 else None
        if m:
            parts.append(f"budget {m.group(1)} (preset {preset[0]})")
        elif preset:
            parts.append(f"preset {_span(preset)}")
    causal = _distinct(_first(rows, "causal", "task.causal"))
    if causal:
        parts.append(" / ".join("causal" if c.lower() == "true" else "bidirectional" for c in causal))
    dev = _distinct(_first(rows, "device"))
    if dev:
        parts.append(_span(dev))
    threads = _distinct(_first(rows, "num_threads"))
    if threads and not any("thread" in d for d in dev):
        parts.append(f"{_span(threads)} threads")
    seeds = _distinct(_first(rows, "seed"))
    if seeds:
        parts.append(f"{len(seeds)} seed{'s' if len(seeds) > 1 else ''}")
    commits = _distinct(_first(rows, "git_commit"))
    if commits:
        parts.append(f"commit {commits[0]}" if len(commits) == 1 else f"{len(commits)} commits")
    parts.append(f"experiment {experiment}" + (f" ({coverage})" if coverage else ""))
    return " · ".join(parts)


# ------------------------------------------------------------------------------ figures

def figures(rows: pd.DataFrame, name: str, out_dir: Path, subtitle: str | None = None) -> list[Path]:
    """Every figure the experiment's columns allow (see module docstring), each titled with its
    measurement and subtitled with the setup (``setup_line``)."""
    keys = task_keys(rows)
    df = add_derived(rows, keys)
    for c in metric_columns(df) + [c for c in ("latency_p10_ms", "latency_p90_ms", "exact_latency_p10_ms",
                                               "exact_latency_p90_ms", "batch", "heads") if c in df]:
        df[c] = _num(df[c])
    sub = setup_line(rows, name) if subtitle is None else subtitle
    if is_kv(df):
        return kv_figures(df, name, out_dir, sub)
    if "attn_speedup" in df and "exact_ppl" in df and df["exact_ppl"].notna().any():  # task=lm
        return lm_figures(df, name, out_dir, sub)
    paths: list[Path] = []
    budget = next((c for c in BUDGET_COLUMNS if c in df and _varies(df[c])), None)
    if budget:
        df[budget] = _num(df[budget])
    err = [c for c in ERROR_COLUMNS if c in df and df[c].notna().any()]
    approx = df[df["method"] != "exact"]
    for e in err:
        tag = "spec" if e == "rel_spec_error" else "fro"
        what = f"Relative {ERROR_NAMES[e]} error of the attention output"
        if budget:
            paths += plots.metric_vs_x(approx, budget, e, out_dir, f"{name}_error_{tag}_vs_budget",
                                       title=f"{what} vs feature budget", subtitle=sub)
        if "latency_ms" in df and df["latency_ms"].notna().any() and (budget or "n" not in keys):
            paths += plots.pareto(approx, e, out_dir, f"{name}_error_{tag}_vs_latency", budget=budget,
                                  title=f"{what} vs latency", subtitle=sub)
    if "n" in keys:
        df["n"] = _num(df["n"])
        if df["latency_ms"].notna().any():
            p, _ = plots.scaling(df, "latency_ms", out_dir, f"{name}_latency_vs_n", exact_col="exact_latency_ms",
                                 title="Latency of one attention call vs sequence length", subtitle=sub)
            paths += p
        if "peak_mem_mb" in df and df["peak_mem_mb"].notna().any():
            p, _ = plots.scaling(df, "peak_mem_mb", out_dir, f"{name}_memory_vs_n", exact_col="exact_peak_mem_mb",
                                 title="Peak memory of one attention call vs sequence length", subtitle=sub,
                                 dense_reference=True)
            paths += p
        if "speedup" in df and approx["speedup"].notna().any():
            paths += plots.speedup_vs_n(approx, out_dir, f"{name}_speedup_vs_n",
                                        title="Speed-up over exact attention vs sequence length", subtitle=sub)
        for e in err[:1]:
            paths += plots.metric_vs_x(approx, "n", e, out_dir, f"{name}_error_vs_n", subtitle=sub,
                                       title=f"Relative {ERROR_NAMES[e]} error of the attention output "
                                             "vs sequence length")
    if "speedup" in df and df["speedup"].notna().any():
        for y in ("top1", "fid", "is_mean", "ppl", "score"):
            if y in df and df[y].notna().any():
                paths += plots.metric_vs_x(df, "speedup", y, out_dir, f"{name}_{y}_vs_speedup", subtitle=sub,
                                           title=f"{plots.axis_label(y)[:1].upper() + plots.axis_label(y)[1:]} "
                                                 f"vs attention speed-up")
    return paths


def lm_figures(df: pd.DataFrame, name: str, out_dir: Path, sub: str) -> list[Path]:
    """task=lm: per context length, the perplexity ratio to the untouched model and the next-token
    agreement against the paired speed-up of the swapped attention calls (horizontal bars: its
    95 % interval); one line per method through its budgets."""
    paths: list[Path] = []
    d = df[df["method"] != "exact"].copy()
    for c in ("ppl", "exact_ppl", "top1_agreement", "attn_speedup", "attn_speedup_lo", "attn_speedup_hi", "n"):
        d[c] = _num(d[c])
    d["ppl_ratio"] = d["ppl"] / d["exact_ppl"]
    d["speedup"], d["speedup_lo"], d["speedup_hi"] = d["attn_speedup"], d["attn_speedup_lo"], d["attn_speedup_hi"]
    for n, g in d.groupby("n"):
        tag = f"{int(n)}"
        paths += plots.metric_vs_x(g, "speedup", "ppl_ratio", out_dir, f"{name}_ppl_vs_speedup_n{tag}", subtitle=sub,
                                   title=f"Perplexity ratio to the untouched model vs attention speed-up, "
                                         f"{int(n):,} tokens")
        paths += plots.metric_vs_x(g, "speedup", "top1_agreement", out_dir, f"{name}_agreement_vs_speedup_n{tag}",
                                   subtitle=sub, title=f"Next-token agreement vs attention speed-up, {int(n):,} tokens")
    return paths


# ------------------------------------------------------------------------------ writing

def tracked_by_git(paths: list[Path]) -> list[Path]:
    """Those of ``paths`` that git tracks (in the index of the repository holding them). Outside a
    git checkout, or without git, nothing is tracked."""
    paths = [Path(p).resolve() for p in paths]
    if not paths:
        return []
    anchor = paths[0].parent
    while not anchor.exists() and anchor != anchor.parent:
        anchor = anchor.parent
    try:
        top = subprocess.run(["git", "-C", str(anchor), "rev-parse", "--show-toplevel"],
                             capture_output=True, text=True, timeout=30)
        if top.returncode != 0:
            return []
        root = Path(top.stdout.strip()).resolve()
        rel = {}
        for p in paths:
            try:
                rel[p] = p.relative_to(root).as_posix()
            except ValueError:
                continue
        if not rel:
            return []
        out = subprocess.run(["git", "--literal-pathspecs", "-C", str(root), "ls-files", "-z", "--", *rel.values()],
                             capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return []
    tracked = set(out.stdout.split("\0")) - {""} if out.returncode == 0 else set()
    return [p for p, r in rel.items() if r in tracked]


def default_out_dir(results_dir: str | Path, experiment: str) -> Path:
    return Path(results_dir) / "reports" / experiment


def report(results_dir: str | Path, experiment: str, out_dir: str | Path | None = None,
           rows: pd.DataFrame | None = None, *, conf_dir: str | Path = CONF_DIR, force: bool = False,
           use_grid: bool = True) -> dict[str, Any]:
    """Write the table (csv, md), slopes and figures of ``experiment`` under ``out_dir`` (default
    ``<results_dir>/reports/<experiment>/``); returns what was written and the grid coverage.

    Only the rows of the experiment's current grid count (``load_grid``; ``use_grid=False``: all
    rows of the experiment, e.g. an ad-hoc ``experiment_name`` without a config), the latest of
    each config. Everything is rendered first; if any file to write is tracked by git, nothing
    is written and ``OverwriteRefused`` is raised unless ``force``."""
    try:
        cfg_name, names = resolve_experiment(experiment, conf_dir)
        grid = load_grid(cfg_name, conf_dir) if use_grid else None
    except UnknownExperiment:
        if use_grid:
            raise
        cfg_name, names, grid = experiment, [experiment], None
    out = Path(out_dir) if out_dir is not None else default_out_dir(results_dir, cfg_name)
    all_rows = load_rows(results_dir) if rows is None else rows.copy()
    if "status" not in all_rows:
        all_rows["status"] = "ok"
    mine = all_rows[all_rows["experiment"].isin(names)] if "experiment" in all_rows else all_rows.iloc[0:0]
    if grid is not None:
        files_dir = results_dir if rows is None or (Path(results_dir) / "runs").is_dir() else None
        sel = apply_grid(mine, grid, row_times(mine, files_dir))
        ok, bad = sel.ok.copy(), sel.errors.copy()
        coverage = sel.coverage
        dropped = f"{sel.superseded} superseded by later runs, {sel.outside} outside the grid"
    else:
        ok, bad = select(mine.assign(experiment=cfg_name), cfg_name)
        coverage, dropped, sel = "no grid filter", "", None
    if ok.empty:
        hint = (f"; the grid ({' × '.join(a.label for a in grid.axes)}) matched none of the "
                f"{len(mine)} rows" if grid is not None and len(mine) else "")
        raise SystemExit(f"no ok rows with experiment={experiment!r} under {results_dir}/runs "
                         f"({len(bad)} error rows){hint}; run: python run.py -m +experiment={experiment}")
    ok = _coalesce_budget(ok)
    table, slopes = build_table(ok)
    setup = setup_line(ok, cfg_name)
    with tempfile.TemporaryDirectory(prefix=f"attnbench-report-{cfg_name}-") as tmp:
        stage = Path(tmp)
        written = [stage / f"{cfg_name}_table.csv", stage / f"{cfg_name}_table.md"]
        table.to_csv(written[0], index=False)
        text = (f"# {cfg_name}\n\n{setup}\n\nGrid coverage: {coverage}"
                + (f" ({dropped})" if dropped else "") + ".\n"
                + (f"Missing configs: {'; '.join(sel.missing[:20])}{' …' if len(sel.missing) > 20 else ''}.\n"
                   if sel is not None and sel.missing else "")
                + f"\n{len(ok)} ok rows, {len(bad)} error rows; mean ± sd over seeds.\n\n" + to_markdown(table))
        notes = _row_notes(ok)
        if notes:
            text += "\n" + "".join(f"- {n}\n" for n in notes)
        kv = kv_table(ok) if is_kv(ok) else None
        if kv is not None:
            kp = stage / f"{cfg_name}_kv_table.csv"
            kv.to_csv(kp, index=False)
            written.append(kp)
            text += ("\n## Press × compression ratio (kept fraction: mean over the rows; each metric from the "
                     "rows that have it)\n\n" + to_markdown_plain(kv))
        if len(slopes):
            sp = stage / f"{cfg_name}_slopes.csv"
            slopes.to_csv(sp, index=False)
            written.append(sp)
            text += "\n## Log-log slopes (least squares over n)\n\n" + to_markdown_plain(slopes)
        if len(bad):
            text += "\n## Runs that failed (status=error)\n\n"
            bad = bad.assign(knobs=knob_string(bad))
            for _, r in bad.drop_duplicates("run_id").iterrows():
                text += f"- {r['method']} ({r.get('knobs', '')}; run {r['run_id']}): {r['error']}\n"
        written[1].write_text(text)
        written += figures(ok, cfg_name, stage / "figures", subtitle=setup)
        dest = [out / p.relative_to(stage) for p in written]
        tracked = tracked_by_git(dest)
        if tracked and not force:
            more = f" (and {len(tracked) - 1} more tracked file(s))" if len(tracked) > 1 else ""
            raise OverwriteRefused(f"refusing to overwrite {tracked[0]}{more}: tracked by git; "
                                   f"pass --force to replace, or another --out-dir")
        for src, dst in zip(written, dest):
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dst)
    return {"table": table, "slopes": slopes, "kv_table": kv, "errors": bad, "files": dest, "coverage": coverage,
            "missing": sel.missing if sel is not None else [], "experiment": cfg_name, "out_dir": out}


def _coalesce_budget(rows: pd.DataFrame) -> pd.DataFrame:
    """Older rows keep the budget in ``task.budget``, newer ones in ``preset.budget``: one column."""
    if "preset.budget" in rows and "task.budget" in rows:
        rows = rows.assign(**{"preset.budget": rows["preset.budget"].where(rows["preset.budget"].notna(),
                                                                          rows["task.budget"])})
        rows = rows.drop(columns=["task.budget"])
    return rows


def _row_notes(ok: pd.DataFrame) -> list[str]:
    """Flags worth a line under the table: budgets clipped to n, exact shared between runs."""
    notes = []
    if "budget_clipped" in ok:
        clipped = ok[ok["budget_clipped"].map(_canon) == "true"]
        if len(clipped):
            which = sorted({f"{r['method']} (n={_fmt_knob(r.get('n'))})" for _, r in clipped.iterrows()})
            notes.append(f"budget clipped to what n allows in {len(clipped)} row(s): {', '.join(which[:12])}")
    if "exact_shared" in ok and (ok["exact_shared"].map(_canon) == "true").any():
        notes.append("exact's latency / memory measured once per process and n, shared by the methods "
                     "(exact_shared)")
    return notes


def to_markdown_plain(df: pd.DataFrame) -> str:
    lines = ["| " + " | ".join(df.columns) + " |", "|" + "---|" * len(df.columns)]
    for _, r in df.iterrows():
        lines.append("| " + " | ".join(_fmt(v) if isinstance(v, (float, np.floating)) else str(v) for v in r) + " |")
    return "\n".join(lines) + "\n"


def _int_columns(df: pd.DataFrame) -> pd.DataFrame:
    """Numeric columns holding only whole numbers (n, batch, …) printed as integers."""
    df = df.copy()
    for c in df.columns:
        x = pd.to_numeric(df[c], errors="coerce")
        have = x.dropna()
        if len(have) and x.dtype.kind == "f" and x.notna().sum() == df[c].notna().sum() \
                and bool((have == have.round()).all()) and bool((have.abs() < 2**53).all()):
            df[c] = x.astype("Int64")
    return df


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    which = ap.add_mutually_exclusive_group(required=True)
    which.add_argument("--experiment", help="experiment name (conf/experiment/NAME.yaml, or an alias)")
    which.add_argument("--card", metavar="METHOD", help="a method card from +experiment=card rows -> results/cards/METHOD.md "
                                                       "(runners/card.py; --out-dir overrides the folder)")
    ap.add_argument("--preset", default=None, help="--card: only rows run with this preset")
    ap.add_argument("--results-dir", default="results", help="folder holding runs/ (default: results)")
    ap.add_argument("--out-dir", default=None,
                    help="where tables and figures/ go (default: <results-dir>/reports/<experiment>, untracked)")
    ap.add_argument("--force", action="store_true", help="replace files that git tracks (e.g. --out-dir results)")
    ap.add_argument("--conf-dir", default=str(CONF_DIR), help="config folder holding experiment/*.yaml")
    ap.add_argument("--no-grid", action="store_true",
                    help="all rows of the experiment (latest per run), not only its config's grid; "
                         "also for an experiment_name without a config")
    args = ap.parse_args(argv)
    if args.card:
        from attnbench.runners.card import NoCardRows, write_card

        try:
            print("wrote " + ", ".join(map(str, write_card(args.card, args.results_dir, args.out_dir, preset=args.preset))))
        except NoCardRows as e:
            print(f"error: {e}", file=sys.stderr)
            raise SystemExit(2)
        return
    try:
        res = report(args.results_dir, args.experiment, args.out_dir, conf_dir=args.conf_dir, force=args.force,
                     use_grid=not args.no_grid)
    except UnknownExperiment as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2)
    except OverwriteRefused as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(3)
    with pd.option_context("display.max_rows", 500, "display.width", 250, "display.float_format", "{:.4g}".format):
        cols = [c for c in res["table"].columns if not c.endswith("_sd")]
        print(_int_columns(res["table"][cols]).to_string(index=False))
        if len(res["slopes"]):
            print(_int_columns(res["slopes"]).to_string(index=False))
        if res.get("kv_table") is not None:
            print(res["kv_table"].to_string(index=False))
    if len(res["errors"]):
        print(f"{res['errors']['run_id'].nunique()} failed run(s): see the markdown table.")
    print(f"grid coverage ({res['experiment']}): {res['coverage']}")
    if res["missing"]:
        print(f"missing: {'; '.join(res['missing'][:10])}{' …' if len(res['missing']) > 10 else ''}")
    print("wrote " + ", ".join(map(str, res["files"])))


if __name__ == "__main__":
    main()
