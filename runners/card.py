"""Method cards: ``attnbench report --card NAME`` (a view of the ``+experiment=card`` rows).

Writes ``results/cards/NAME.md`` (what the method is, its conformance check, the tables of each
card part, its latency and memory slopes, and what it could not run and why), ``NAME.csv`` (one
line per part and n: the card's points, committed so that other cards can place this method) and
``NAME.png`` (rel. Frobenius error vs paired speed-up on SmolLM2 q/k/v at 2,048 and 8,192 tokens,
this method among every other method that has a committed card CSV, each labelled with the commit
and load it was measured at). Rows are read with ``runners.collect``: the latest row of each part
and n for rows whose ``experiment`` is ``card`` and whose ``method`` is NAME.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from attnbench.runners import plots
from attnbench.runners.collect import load_rows

EXPERIMENT = "card"
ERROR_FLOOR = 1e-6  # the figure's smallest error (exact attention's error is 0)
PART_ORDER = ["smollm2_l10", "smollm2_l25", "smollm2_causal_l10", "smollm2_causal_l25", "scaling", "lm",
              "kv_recall_25", "kv_recall_50", "kv_recall_75", "kv_ppl_25", "kv_ppl_50", "kv_ppl_75"]
POINT_COLUMNS = [
    "method", "part", "n", "causal", "status", "error", "rel_fro_error", "rel_spec_error", "speedup", "speedup_lo",
    "speedup_hi", "latency_ms", "latency_p10_ms", "latency_p90_ms", "exact_latency_ms", "peak_mem_mb",
    "exact_peak_mem_mb", "kept_fraction", "ppl", "exact_ppl", "ppl_increase", "top1_agreement", "attn_speedup",
    "attn_speedup_lo", "attn_speedup_hi", "score", "baseline_score", "digit_accuracy", "baseline_digit_accuracy",
    "baseline_ppl", "knobs", "preset", "git_commit", "load_avg_1m", "device", "num_threads", "finished_at",
]


class NoCardRows(LookupError):
    """No card rows for the method (nothing to write)."""


def _num(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(f) else f


def part_of(row: pd.Series) -> str | None:
    """The card part (conf/card/<part>.yaml) a row comes from, from its task columns."""
    task = row.get("task")
    if task == "fidelity":
        if row.get("task.source") == "smollm2":
            causal = str(row.get("task.causal")).lower() == "true"
            layer = _num(row.get("task.layer"))
            return f"smollm2{'_causal' if causal else ''}_l{int(layer) if layer is not None else '?'}"
        return "scaling"
    if task == "lm":
        return "lm"
    if task == "kv_cache":
        ratio = _num(row.get("task.compression_ratio"))
        return f"kv_{row.get('task.dataset')}_{round(100 * ratio) if ratio is not None else '?'}"
    return None


def knob_text(rows: pd.DataFrame) -> str:
    """``k=v, …`` of the method's knobs as the rows record them (an import target: its knobs)."""
    cols = sorted(c for c in rows.columns if c.startswith("method.") and rows[c].notna().any())
    if not len(rows):
        return ""
    first = rows.iloc[0]
    if "method.target" in cols and isinstance(first.get("method.target"), str):
        knobs = json.loads(first["method.knobs"]) if isinstance(first.get("method.knobs"), str) else {}
        return f"target={first['method.target']}" + "".join(f", {k}={v}" for k, v in knobs.items())
    return ", ".join(f"{c[len('method.'):]}={_knob_value(first[c])}" for c in cols)


def _knob_value(v: Any) -> Any:
    """A knob as written in a config: whole floats (a column with gaps reads back as float) as ints."""
    return int(v) if isinstance(v, float) and v.is_integer() else v


def method_config(rows: pd.DataFrame, name: str) -> dict[str, Any]:
    """The method config the rows ran (for the conformance check)."""
    first = rows.iloc[0]
    if isinstance(first.get("method.target"), str):
        knobs = json.loads(first["method.knobs"]) if isinstance(first.get("method.knobs"), str) else {}
        return {"name": "target", "target": first["method.target"], "knobs": knobs}
    cfg: dict[str, Any] = {"name": name}
    for c in rows.columns:
        if c.startswith("method.") and pd.notna(first.get(c)):
            v = first[c]
            if isinstance(v, str) and v[:1] in "[{":
                v = json.loads(v)
            elif isinstance(v, float) and v.is_integer() and c != "method.rho":
                v = int(v)
            cfg[c[len("method."):]] = v.item() if hasattr(v, "item") else v
    return cfg


def card_rows(df: pd.DataFrame, name: str, preset: str | None = None) -> pd.DataFrame:
    """The latest row of each (part, n) of ``name``'s card runs."""
    rows = df[(df["experiment"] == EXPERIMENT) & (df["method"] == name)].copy()
    if preset is not None and "preset" in rows:
        rows = rows[rows["preset"].fillna("none") == preset]
    if rows.empty:
        raise NoCardRows(f"no card rows for method {name!r}; run: python run.py +experiment=card method={name} "
                         "logger=none quiet=true")
    rows["part"] = rows.apply(part_of, axis=1)
    rows["n_key"] = rows["n"].fillna(-1) if "n" in rows else -1
    rows = rows.sort_values("finished_at").groupby(["part", "n_key"], dropna=False).tail(1)
    rows["knobs"] = knob_text(rows)
    return rows.drop(columns="n_key")


def points(rows: pd.DataFrame) -> pd.DataFrame:
    out = rows.reindex(columns=POINT_COLUMNS).copy()
    order = {p: i for i, p in enumerate(PART_ORDER)}
    out["_o"] = out["part"].map(order).fillna(len(order))
    return out.sort_values(["_o", "n"]).drop(columns="_o").reset_index(drop=True)


# --- markdown -------------------------------------------------------------------------------------------------
def _f(v: Any, digits: int = 3) -> str:
    x = _num(v)
    if x is None:
        return "—"
    if x != 0 and (abs(x) >= 1e4 or abs(x) < 1e-3):
        return f"{x:.2e}"
    return f"{x:.{digits}g}" if abs(x) < 100 else f"{x:,.0f}"


def _speedup(r: pd.Series, col: str = "speedup") -> str:
    s, lo, hi = _num(r.get(col)), _num(r.get(f"{col}_lo")), _num(r.get(f"{col}_hi"))
    if s is None:
        return "—"
    return f"{s:.2f}× [{lo:.2f}, {hi:.2f}]" if lo is not None and hi is not None else f"{s:.2f}×"


def _table(header: list[str], lines: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *("| " + " | ".join(x) + " |" for x in lines)]


def slopes(scaling: pd.DataFrame) -> dict[str, float]:
    """Least-squares log-log slopes over n >= 4096 of latency, exact's latency and peak memory."""
    ok = scaling[(scaling["status"] == "ok") & (pd.to_numeric(scaling["n"], errors="coerce") >= 4096)]
    out = {}
    for col in ("latency_ms", "exact_latency_ms", "peak_mem_mb", "exact_peak_mem_mb"):
        d = ok[["n", col]].apply(pd.to_numeric, errors="coerce").dropna()
        if len(d) >= 2:
            out[col] = plots.fit_loglog_slope(d["n"].to_numpy(float), d[col].to_numpy(float))[0]
    return out


def markdown(name: str, pts: pd.DataFrame, checks: list | None, figure: str | None) -> str:
    ok = pts[pts["status"] == "ok"]
    commits = sorted(set(pts["git_commit"].dropna().astype(str)))
    loads = pd.to_numeric(pts["load_avg_1m"], errors="coerce").dropna()
    lines = [f"# Method card: {name}", ""]
    preset = pts["preset"].dropna().iloc[0] if pts["preset"].notna().any() else "none"
    load = f"load average at run starts {loads.min():.1f}–{loads.max():.1f}" if len(loads) else "load average not recorded"
    lines += [f"- knobs: {pts['knobs'].iloc[0] or '(defaults)'}; preset: {preset}",
              f"- measured: {', '.join(sorted(set(pts['device'].dropna().astype(str))))}, commit {', '.join(commits) or '?'}, "
              f"{str(pts['finished_at'].dropna().min())[:16]} – {str(pts['finished_at'].dropna().max())[:16]} UTC, {load}",
              "- made by: `python run.py +experiment=card method=" + name + " logger=none quiet=true` then "
              f"`attnbench report --card {name}`; speed-ups are paired with exact SDPA in the same process "
              "(95 % bootstrap intervals).", ""]
    if checks is not None:
        lines += ["## Conformance (`attnbench check`)", ""]
        lines += _table(["check", "result", "detail"], [[c.check, c.status, c.detail.replace("|", "/")] for c in checks])
        lines.append("")
    sm = ok[ok["part"].astype(str).str.startswith("smollm2")]
    if len(sm):
        lines += ["## Attention on captured SmolLM2-135M q/k/v (9 heads, d 64)", ""]
        lines += _table(["part", "n", "rel. Fro error", "rel. spec error", "speed-up [95 % CI]", "latency ms", "exact ms",
                         "peak MB", "exact MB", "kept"],
                        [[r.part, f"{int(r.n)}", _f(r.rel_fro_error), _f(r.rel_spec_error), _speedup(r), _f(r.latency_ms),
                          _f(r.exact_latency_ms), _f(r.peak_mem_mb), _f(r.exact_peak_mem_mb), _f(r.kept_fraction)]
                         for _, r in sm.iterrows()])
        lines.append("")
    if figure:
        lines += [f"![error vs speed-up among methods]({figure})", "",
                  "Other methods' points come from their committed cards (`results/cards/*.csv`); the figure's caption "
                  "gives each one's commit and load.", ""]
    sc = ok[ok["part"] == "scaling"]
    if len(sc):
        sl = slopes(pts[pts["part"] == "scaling"])
        lines += ["## Scaling on Gaussian inputs (8 heads, d 64)", ""]
        lines += _table(["n", "causal", "latency ms [p10, p90]", "exact ms", "speed-up [95 % CI]", "peak MB", "exact MB",
                         "rel. Fro error"],
                        [[f"{int(r.n)}", str(r.causal), f"{_f(r.latency_ms)} [{_f(r.latency_p10_ms)}, {_f(r.latency_p90_ms)}]",
                          _f(r.exact_latency_ms), _speedup(r), _f(r.peak_mem_mb), _f(r.exact_peak_mem_mb),
                          _f(r.rel_fro_error)] for _, r in sc.iterrows()])
        lines += ["", "Log-log slopes over n ≥ 4,096: " + ", ".join(f"{k} {v:.2f}" for k, v in sl.items()), ""]
    lm = ok[ok["part"] == "lm"]
    if len(lm):
        lines += ["## SmolLM2 perplexity with the method in all 30 layers (held-out text)", ""]
        lines += _table(["context", "ppl", "untouched ppl", "increase", "next-token agreement", "kept", "attention speed-up"],
                        [[f"{int(r.n)}", _f(r.ppl, 4), _f(r.exact_ppl, 4), _f(r.ppl_increase), _f(r.top1_agreement),
                          _f(r.kept_fraction), _speedup(r, "attn_speedup")] for _, r in lm.iterrows()])
        lines.append("")
    kv = ok[ok["part"].astype(str).str.startswith("kv_")]
    if len(kv):
        lines += ["## KV-cache compression with `compress()` (SmolLM2, 2,048-token context)", ""]
        lines += _table(["part", "kept", "recall score %", "uncompressed", "digit acc. %", "uncompressed", "ppl",
                         "uncompressed"],
                        [[r.part, _f(r.kept_fraction), _f(r.score), _f(r.baseline_score), _f(r.digit_accuracy),
                          _f(r.baseline_digit_accuracy), _f(r.ppl), _f(r.baseline_ppl)] for _, r in kv.iterrows()])
        lines.append("")
    bad = pts[pts["status"] != "ok"]
    missing = [p for p in PART_ORDER if p not in set(pts["part"])]
    lines += ["## What it could not run, and why", ""]
    if len(bad) or missing:
        reasons: dict[str, list[str]] = {}  # one line per reason, naming the parts it stopped
        for _, r in bad.iterrows():
            reasons.setdefault(str(r.error).splitlines()[0], []).append(str(r.part))
        lines += [f"- {', '.join(parts)}: {reason}" for reason, parts in reasons.items()]
        lines += [f"- {p}: no rows yet (`python run.py +experiment=card method={name} +card={p} hydra.mode=RUN`)"
                  for p in missing]
    else:
        lines.append("- nothing: every part ran.")
    return "\n".join(x for x in lines if x is not None) + "\n"


# --- figure ---------------------------------------------------------------------------------------------------
def figure(name: str, cards_dir: Path, out_dir: Path) -> list[Path]:
    """Error vs speed-up on SmolLM2 (two panels: 2,048 and 8,192 tokens) for every committed card."""
    frames = []
    for path in sorted(cards_dir.glob("*.csv")):
        frames.append(pd.read_csv(path))
    if not frames:
        return []
    df = pd.concat(frames, ignore_index=True)
    df = df[(df["status"] == "ok") & df["part"].astype(str).str.startswith("smollm2")]
    df = df.dropna(subset=["speedup", "rel_fro_error"]).copy()
    df["rel_fro_error"] = df["rel_fro_error"].clip(lower=ERROR_FLOOR)  # exact's 0 on a log axis
    if df.empty:
        return []
    import matplotlib.pyplot as plt
    from matplotlib import ticker

    ns = sorted(int(n) for n in df["n"].dropna().unique())
    fig, axes = plt.subplots(1, len(ns), figsize=(5.2 * len(ns), 4.6), squeeze=False)
    for ax, n in zip(axes[0], ns):
        d = df[df["n"] == n]
        for method, m in d.groupby("method"):
            st = plots.style(method) if method in plots.METHOD_STYLES else {"color": "0.4", "marker": "o"}
            mine = method == name
            for causal, c in m.groupby(m["causal"].astype(str).str.lower() == "true"):
                ax.scatter(c["speedup"], c["rel_fro_error"], s=130 if mine else 45, marker="*" if mine else st["marker"],
                           facecolors=(("black" if mine else st["color"]) if not causal else "none"),
                           edgecolors="black" if mine else st["color"], linewidths=1.2, zorder=3 if mine else 2)
            x, y = float(np.exp(np.log(m["speedup"]).mean())), float(np.exp(np.log(m["rel_fro_error"]).mean()))
            ax.annotate(method, (x, y), fontsize=8, xytext=(4, 3), textcoords="offset points",
                        weight="bold" if mine else "normal")
        ax.axvline(1.0, color="0.6", lw=0.8, ls=":")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}×"))
        ax.xaxis.set_minor_formatter(ticker.NullFormatter())
        ax.set_xlabel("speed-up over exact SDPA (paired, > 1: faster)")
        ax.set_ylabel(f"relative Frobenius error (< {ERROR_FLOOR:g} drawn at {ERROR_FLOOR:g})")
        ax.set_title(f"n = {n:,} (filled: bidirectional, hollow: causal)", fontsize=9)
        ax.grid(True, which="both", alpha=0.25)
    notes = []
    for method, m in df.groupby("method"):
        loads = pd.to_numeric(m["load_avg_1m"], errors="coerce").dropna()
        load = f"load {loads.min():.1f}–{loads.max():.1f}" if len(loads) else "load ?"
        notes.append(f"{method}: {', '.join(sorted(set(m['git_commit'].astype(str))))}, {load}")
    fig.suptitle(f"{name} among the methods with a card: attention error vs speed-up on SmolLM2 layers 10 and 25",
                 fontsize=10)
    fig.text(0.01, 0.005, "measured at: " + "; ".join(notes), fontsize=6.5, wrap=True)
    fig.tight_layout(rect=(0, 0.06, 1, 0.95))
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.png"
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return [path]


def redraw_figures(cards_dir: str | Path, skip: str | None = None) -> list[Path]:
    """Redraw the figure of every card in ``cards_dir`` (each among all committed cards) but ``skip``."""
    cards_dir = Path(cards_dir)
    return [p for csv in sorted(cards_dir.glob("*.csv")) if csv.stem != skip for p in figure(csv.stem, cards_dir, cards_dir)]


def write_card(name: str, results_dir: str | Path = "results", out_dir: str | Path | None = None, *,
               preset: str | None = None, check: bool = True, rows: pd.DataFrame | None = None) -> list[Path]:
    """Write ``<out_dir>/<name>.csv``, ``.png`` and ``.md`` (``out_dir`` defaults to ``results/cards``)."""
    out = Path(out_dir) if out_dir is not None else Path(results_dir) / "cards"
    df = load_rows(results_dir) if rows is None else rows
    pts = points(card_rows(df, name, preset))
    out.mkdir(parents=True, exist_ok=True)
    csv = out / f"{name}.csv"
    pts.to_csv(csv, index=False)
    written = [csv, *figure(name, out, out)]
    redraw_figures(out, skip=name)  # every other card's figure shows this card's points too
    checks = None
    if check:
        from attnbench.runners.check import run_checks

        checks = run_checks(method_config(card_rows(df, name, preset), name))
    md = out / f"{name}.md"
    md.write_text(markdown(name, pts, checks, f"{name}.png" if len(written) > 1 else None))
    return [*written, md]
