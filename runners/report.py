"""Paper-style table and figures for one experiment, from saved rows only (never reruns).

``python -m runners.report --experiment NAME [--results-dir results] [--out-dir DIR]``
takes the rows whose ``experiment`` column is NAME and ``status`` is ok and writes

- ``<out>/<NAME>_table.csv`` and ``<NAME>_table.md``: one line per method and the knobs that vary
  (method knobs folded into a ``knobs`` column, varying task columns such as ``n`` or
  ``task.budget`` as their own columns), every metric as mean and sd over seeds, plus derived
  columns: ``speedup`` (exact_latency_ms / latency_ms of the same run), ``is_degradation_pct``
  = (IS_exact − IS)/IS_exact·100 and ``fid_degradation_pct`` = max(0, FID − FID_exact)/FID_exact·100
  (exact matched by seed and the varying task columns; then averaged over seeds), and, when n
  varies, ``latency_slope`` / ``mem_slope`` (least squares on log-log over all n) and
  ``latency_slope_large_n`` (over n ≥ LARGE_N = 4096 only, where fixed costs no longer hide the
  growth); exact's in ``<NAME>_slopes.csv``;
- ``<out>/figures/<NAME>_*.png|pdf``: error vs budget, error vs latency (Pareto), log-log latency
  and memory vs n with fitted slopes, accuracy / FID / IS vs speed-up, as the columns allow.

Rows with status=error are listed (method, knobs, message) at the end of the markdown.
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from runners import plots
from runners.collect import load_rows

METRICS = [
    "rel_spec_error", "rel_fro_error", "max_abs_error", "latency_ms", "exact_latency_ms", "speedup",
    "peak_mem_mb", "exact_peak_mem_mb", "top1", "top5", "fid", "is_mean", "is_std", "ppl", "score",
    "kept_fraction", "is_degradation_pct", "fid_degradation_pct",
]
EXTRA_SUFFIXES = ("_speedup", "_latency_ms", "agreement")  # task-specific metric columns kept too
ROW_AXES = ["n", "batch", "heads", "causal"]  # row columns that become group keys when they vary
BUDGET_COLUMNS = ["task.budget", "budget"]
ERROR_COLUMNS = ["rel_spec_error", "rel_fro_error"]
LARGE_N = 4096  # latency_slope_large_n fits n >= LARGE_N only
SKIP_TASK = {"task.n", "task.cache_dir", "task.glove_path", "task.checkpoint", "task.data_root"}


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
    """Row axes and ``task.*`` columns whose value varies across the experiment's rows."""
    keys = [c for c in ROW_AXES if c in df and _varies(df[c])]
    keys += sorted(c for c in df.columns if c.startswith("task.") and c not in SKIP_TASK and _varies(df[c]))
    return keys


def knob_string(df: pd.DataFrame) -> pd.Series:
    """Per row, 'k=v, ...' of the method knobs that vary among that method's rows."""
    out = pd.Series("", index=df.index, dtype=object)
    for m, d in df.groupby("method"):
        cols = [c for c in d.columns if c.startswith("method.") and c != "method.preset"
                and d[c].notna().any() and _varies(d[c])]
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
    """Markdown table: metric columns as 'mean ± sd' (sd left out with one seed)."""
    metrics = [c[:-5] for c in table.columns if c.endswith("_mean")]
    fixed = [c for c in table.columns if not c.endswith(("_mean", "_sd"))]
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


def figures(rows: pd.DataFrame, name: str, out_dir: Path) -> list[Path]:
    """Every figure the experiment's columns allow (see module docstring)."""
    keys = task_keys(rows)
    df = add_derived(rows, keys)
    for c in metric_columns(df):
        df[c] = _num(df[c])
    paths: list[Path] = []
    budget = next((c for c in BUDGET_COLUMNS if c in df and _varies(df[c])), None)
    if budget:
        df[budget] = _num(df[budget])
    err = [c for c in ERROR_COLUMNS if c in df and df[c].notna().any()]
    approx = df[df["method"] != "exact"]
    for e in err[:1] + [c for c in err[1:]]:
        tag = "spec" if e == "rel_spec_error" else "fro"
        if budget:
            paths += plots.metric_vs_x(approx, budget, e, out_dir, f"{name}_error_{tag}_vs_budget",
                                       title=f"{name}: error vs budget")
        if "latency_ms" in df and df["latency_ms"].notna().any() and (budget or "n" not in keys):
            paths += plots.pareto(approx, e, out_dir, f"{name}_error_{tag}_vs_latency", budget=budget,
                                  title=f"{name}: error vs latency")
    if "n" in keys:
        df["n"] = _num(df["n"])
        if df["latency_ms"].notna().any():
            p, _ = plots.scaling(df, "latency_ms", out_dir, f"{name}_latency_vs_n", exact_col="exact_latency_ms",
                                 title=f"{name}: latency vs n")
            paths += p
        if "peak_mem_mb" in df and df["peak_mem_mb"].notna().any():
            p, _ = plots.scaling(df, "peak_mem_mb", out_dir, f"{name}_memory_vs_n", exact_col="exact_peak_mem_mb",
                                 title=f"{name}: peak memory vs n")
            paths += p
        for e in err[:1]:
            paths += plots.metric_vs_x(approx, "n", e, out_dir, f"{name}_error_vs_n", title=f"{name}: error vs n")
    if "speedup" in df and df["speedup"].notna().any():
        for y in ("top1", "fid", "is_mean", "ppl", "score"):
            if y in df and df[y].notna().any():
                paths += plots.metric_vs_x(df, "speedup", y, out_dir, f"{name}_{y}_vs_speedup",
                                           title=f"{name}: {plots.axis_label(y)} vs speed-up", logx=True, logy=False)
    return paths


def report(results_dir: str | Path, experiment: str, out_dir: str | Path | None = None,
           rows: pd.DataFrame | None = None) -> dict[str, Any]:
    """Write the table (csv, md), slopes and figures of ``experiment``; returns what was written."""
    out = Path(out_dir if out_dir is not None else results_dir)
    all_rows = load_rows(results_dir) if rows is None else rows
    ok, bad = select(all_rows, experiment)
    if ok.empty:
        raise SystemExit(f"no ok rows with experiment={experiment!r} under {results_dir}/runs "
                         f"({len(bad)} error rows); run: python run.py -m +experiment={experiment}")
    table, slopes = build_table(ok)
    out.mkdir(parents=True, exist_ok=True)
    csv, md = out / f"{experiment}_table.csv", out / f"{experiment}_table.md"
    table.to_csv(csv, index=False)
    text = f"# {experiment}\n\n{len(ok)} ok rows, {len(bad)} error rows; mean ± sd over seeds.\n\n" + to_markdown(table)
    written = [csv, md]
    if len(slopes):
        sp = out / f"{experiment}_slopes.csv"
        slopes.to_csv(sp, index=False)
        written.append(sp)
        text += "\n## Log-log slopes (least squares over n)\n\n" + to_markdown_plain(slopes)
    if len(bad):
        text += "\n## Runs that failed (status=error)\n\n"
        bad = bad.assign(knobs=knob_string(bad)) if len(bad) else bad
        for _, r in bad.drop_duplicates("run_id").iterrows():
            text += f"- {r['method']} ({r.get('knobs', '')}; run {r['run_id']}): {r['error']}\n"
    md.write_text(text)
    figs = figures(ok, experiment, out / "figures")
    return {"table": table, "slopes": slopes, "errors": bad, "files": written + figs}


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
    ap.add_argument("--experiment", required=True, help="experiment_name of the rows (conf/experiment/NAME.yaml)")
    ap.add_argument("--results-dir", default="results", help="folder holding runs/ (default: results)")
    ap.add_argument("--out-dir", default=None, help="where tables and figures/ go (default: --results-dir)")
    args = ap.parse_args(argv)
    res = report(args.results_dir, args.experiment, args.out_dir)
    with pd.option_context("display.max_rows", 500, "display.width", 250, "display.float_format", "{:.4g}".format):
        cols = [c for c in res["table"].columns if not c.endswith("_sd")]
        print(_int_columns(res["table"][cols]).to_string(index=False))
        if len(res["slopes"]):
            print(_int_columns(res["slopes"]).to_string(index=False))
    if len(res["errors"]):
        print(f"{res['errors']['run_id'].nunique()} failed run(s): see the markdown table.")
    print("wrote " + ", ".join(map(str, res["files"])))


if __name__ == "__main__":
    main()
