"""The layer map: which SmolLM2 layers each attention approximation can replace (``+experiment=lm_layers``).

``attnbench lm_layers [--results-dir results] [--out-dir DIR] [--force]`` reads the rows of
``conf/experiment/lm_layers.yaml``'s grid (the latest run of each config, as ``attnbench report``
selects them; nothing reruns) and writes, by default under the untracked
``<results-dir>/reports/lm_layers/`` (``--out-dir results --force`` replaces the committed copies):

- ``lm_layers_table.csv``: one line per row: method, preset, the layer spec (``task.layers``), its kind
  (``layer`` = that layer alone, ``first`` / ``last`` = the first / last l layers, ``all``), the layer
  index or l, perplexity, the untouched model's, their difference and ratio, next-token agreement,
  kept fraction (LATTE), and the row's seed, device, threads, torch version, git commit and run id;
- ``lm_layers_table.md``: per method, the perplexity increase with the method in one layer only
  (layers down, methods across), then in the first / last l layers, then the one-glance answer: the
  layers where one swap costs at most ``HARMLESS`` (relative perplexity increase) and the largest l
  of first / last layers within ``TOLERABLE`` (HyperAttention's own 5.6 → 6.3, +12.5 %);
- ``figures/lm_layers_heatmap.png|pdf``: method × layer heat map of the perplexity ratio (one swapped
  layer; log colour scale), beside the first-l / last-l curves.

A single layer l is the same config as ``first:1`` (l = 0) and ``last:1`` (l = 29); ``all`` is
``first`` and ``last`` at l = 30: the grid runs each once and the tables reuse it.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from attnbench.runners import plots
from attnbench.runners.collect import load_rows
from attnbench.runners.grid import apply_grid, load_grid, row_times
from attnbench.runners.report import OverwriteRefused, knob_string, tracked_by_git

EXPERIMENT = "lm_layers"
HARMLESS = 0.01    # one swapped layer "costs nothing": perplexity up by at most 1 %
TOLERABLE = 0.125  # HyperAttention's ChatGLM2 patching: 5.6 -> 6.3 (+12.5 %)
ENDS_L = (1, 2, 4, 8, 15, 30)
RATIO_TICKS = (1, 1.1, 1.5, 2, 5, 10, 100, 1000, 10000)  # colour-bar ticks (perplexity ratio)
PRESET_NOTES = {"scaling_b256": "", "lm_latte_trained": "trained λ = 0.5"}
COLUMNS = ["label", "method", "preset", "knobs", "spec", "kind", "layer", "l", "layers_swapped", "n", "ppl",
           "exact_ppl", "ppl_increase", "ppl_ratio", "top1_agreement", "kept_fraction", "seed", "device",
           "num_threads", "torch_version", "method_version", "git_commit", "load_avg_1m", "run_id"]


def _label(method: str, preset: str, presets_of_method: set[str]) -> str:
    if len(presets_of_method) < 2:
        return method
    note = PRESET_NOTES.get(preset, preset)
    return f"{method} ({note})" if note else f"{method} (untrained)" if method == "latte" else method


def _kind(spec: Any, num_layers: int) -> tuple[str, float, float]:
    """(kind, layer index, l) of a ``task.layers`` value: a single layer, 'first:K', 'last:K' or 'all'."""
    s = str(spec).strip()
    if s == "all":
        return "all", np.nan, float(num_layers)
    if s.isdigit():
        return "layer", float(s), 1.0
    end, _, k = s.partition(":")
    if end in ("first", "last") and k.isdigit():
        return end, np.nan, float(k)
    raise ValueError(f"task.layers={spec!r} is not a lm_layers spec (an index, first:K, last:K or all).")


def layer_rows(rows: pd.DataFrame) -> pd.DataFrame:
    """The ok rows as the long table (``COLUMNS``; see the module docstring)."""
    d = rows.copy()
    for c in ("ppl", "exact_ppl", "ppl_increase", "top1_agreement", "kept_fraction", "num_layers", "layers_swapped",
              "n", "load_avg_1m"):
        d[c] = pd.to_numeric(d[c], errors="coerce") if c in d else np.nan
    d["preset"] = d["preset"].fillna("none") if "preset" in d else "none"
    num = int(d["num_layers"].max()) if d["num_layers"].notna().any() else 30
    kinds = d["task.layers"].map(lambda s: _kind(s, num))
    d["spec"] = d["task.layers"].astype(str)
    d["kind"], d["layer"], d["l"] = [k[0] for k in kinds], [k[1] for k in kinds], [k[2] for k in kinds]
    d["ppl_ratio"] = d["ppl"] / d["exact_ppl"]
    presets = d.groupby("method")["preset"].agg(set)
    d["label"] = [_label(m, p, presets[m]) for m, p in zip(d["method"], d["preset"])]
    d["knobs"] = knob_string(d)
    for c in COLUMNS:
        if c not in d:
            d[c] = np.nan
    order = {m: i for i, m in enumerate(plots.method_order(d["method"].unique()))}
    d = d.assign(_m=d["method"].map(order), _p=(d["preset"] != "scaling_b256").astype(int),
                 _k=d["kind"].map({"layer": 0, "first": 1, "last": 2, "all": 3}))
    return d.sort_values(["_m", "_p", "label", "_k", "layer", "l"])[COLUMNS].reset_index(drop=True)


def end_curve(t: pd.DataFrame, label: str, end: str, num_layers: int = 30) -> pd.Series:
    """Perplexity ratio with the method in the first / last l layers, l = ``ENDS_L``: l = 1 is the single
    layer 0 / ``num_layers``-1, l = ``num_layers`` the ``all`` row."""
    g = t[t["label"] == label]
    out = {}
    for l_ in ENDS_L:
        if l_ == 1:
            hit = g[(g["kind"] == "layer") & (g["layer"] == (0 if end == "first" else num_layers - 1))]
        elif l_ >= num_layers:
            hit = g[g["kind"] == "all"]
        else:
            hit = g[(g["kind"] == end) & (g["l"] == l_)]
        out[l_] = float(hit["ppl_ratio"].iloc[0]) if len(hit) else np.nan
    return pd.Series(out)


def _cell(v: float) -> str:
    if not np.isfinite(v):
        return "—"
    return f"{v:+.3f}" if abs(v) < 10 else f"{v:+.3g}"


def _ranges(idx: list[int]) -> str:
    """[0, 1, 2, 5, 7, 8] -> '0–2, 5, 7–8'."""
    out, start = [], None
    for i, x in enumerate(idx):
        if start is None:
            start = x
        if i + 1 == len(idx) or idx[i + 1] != x + 1:
            out.append(f"{start}" if start == x else f"{start}–{x}")
            start = None
    return ", ".join(out) or "none"


def summary(t: pd.DataFrame, num_layers: int = 30) -> pd.DataFrame:
    """Per method: the layers one swap leaves within ``HARMLESS`` / ``TOLERABLE``, and the largest l of
    first / last layers within ``TOLERABLE``."""
    recs = []
    for label in dict.fromkeys(t["label"]):
        g = t[(t["label"] == label) & (t["kind"] == "layer")].sort_values("layer")
        rec: dict[str, Any] = {"label": label, "layers_measured": len(g)}
        for name, tol in (("harmless", HARMLESS), ("tolerable", TOLERABLE)):
            ok = [int(x) for x in g.loc[g["ppl_ratio"] <= 1 + tol, "layer"]]
            rec[f"{name}_layers"], rec[f"{name}_count"] = _ranges(ok), len(ok)
        worst = g.loc[g["ppl_ratio"].idxmax()] if len(g) else None
        rec["worst_layer"] = int(worst["layer"]) if worst is not None else np.nan
        rec["worst_layer_ppl_increase"] = float(worst["ppl_increase"]) if worst is not None else np.nan
        for end in ("first", "last"):
            c = end_curve(t, label, end, num_layers)
            within = [l_ for l_, r in c.items() if np.isfinite(r) and r <= 1 + TOLERABLE]
            rec[f"max_{end}_l_tolerable"] = max(within) if within else 0
        recs.append(rec)
    return pd.DataFrame(recs)


def markdown(t: pd.DataFrame, s: pd.DataFrame, setup: str, coverage: str) -> str:
    labels = list(dict.fromkeys(t["label"]))
    num = int(np.nanmax(t["layers_swapped"])) if t["layers_swapped"].notna().any() else 30
    lines = [
        "# Layer map: which SmolLM2 layers can each method replace?",
        "",
        "Commands: `OMP_NUM_THREADS=1 python run.py +experiment=lm_layers logger=none quiet=true`, then "
        "`attnbench lm_layers --out-dir results --force` (this page, its CSV and the figure; nothing reruns).",
        "",
        setup,
        "",
        f"Grid coverage: {coverage}. Perplexity only (nothing timed). Cells: perplexity increase over the untouched "
        f"model (exact perplexity {t['exact_ppl'].median():.3f} on the same tokens).",
        "",
        "## One-glance answer",
        "",
        f"Harmless: one swapped layer raises perplexity by at most {HARMLESS:.0%}; tolerable: by at most "
        f"{TOLERABLE:.1%} (HyperAttention's own ChatGLM2 patching: 5.6 → 6.3). Largest l: the most first / last "
        f"layers (l = {', '.join(map(str, ENDS_L))}) swapped together within {TOLERABLE:.1%}.",
        "",
        "| method | harmless single layers | tolerable single layers | worst single layer | largest first l | largest last l |",
        "|---|---|---|---|---|---|",
    ]
    for _, r in s.iterrows():
        worst = f"{int(r['worst_layer'])} ({_cell(r['worst_layer_ppl_increase'])})" if np.isfinite(r["worst_layer"]) \
            else "—"
        lines.append(f"| {r['label']} | {r['harmless_count']}/{r['layers_measured']}: {r['harmless_layers']} | "
                     f"{r['tolerable_count']}/{r['layers_measured']}: {r['tolerable_layers']} | {worst} | "
                     f"{r['max_first_l_tolerable'] or 'none'} | {r['max_last_l_tolerable'] or 'none'} |")
    lines += ["", "## The method in one layer only: perplexity increase", "",
              "| layer | " + " | ".join(labels) + " |", "|" + "---|" * (len(labels) + 1)]
    single = t[t["kind"] == "layer"].pivot_table(index="layer", columns="label", values="ppl_increase", aggfunc="first")
    for layer in range(num):
        vals = [single.at[layer, lab] if layer in single.index and lab in single.columns else np.nan for lab in labels]
        lines.append(f"| {layer} | " + " | ".join(_cell(v) for v in vals) + " |")
    lines += ["", "## The method in the first / last l layers: perplexity ratio to the untouched model", "",
              "| l | " + " | ".join(f"{lab} first | {lab} last" for lab in labels) + " |",
              "|" + "---|" * (2 * len(labels) + 1)]
    curves = {(lab, end): end_curve(t, lab, end, num) for lab in labels for end in ("first", "last")}
    for l_ in ENDS_L:
        cells = [f"{curves[(lab, end)][l_]:.3f}" if np.isfinite(curves[(lab, end)][l_]) else "—"
                 for lab in labels for end in ("first", "last")]
        lines.append(f"| {l_} | " + " | ".join(cells) + " |")
    lines.append("")
    return "\n".join(lines)


def heatmap(t: pd.DataFrame, out_dir: Path, setup: str) -> list[Path]:
    """The heat map (method × layer, one swapped layer) beside the first-l / last-l curves."""
    import matplotlib.colors as mcolors
    import matplotlib.pyplot as plt
    import matplotlib.ticker as mticker
    from matplotlib.lines import Line2D

    labels = list(dict.fromkeys(t["label"]))
    num = int(np.nanmax(t["layers_swapped"])) if t["layers_swapped"].notna().any() else 30
    single = t[t["kind"] == "layer"].pivot_table(index="label", columns="layer", values="ppl_ratio", aggfunc="first")
    grid = single.reindex(index=labels, columns=range(num)).to_numpy(float)
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(14, 0.45 * len(labels) + 3.2), layout="constrained",
                                 gridspec_kw={"width_ratios": [2.3, 1]})
    fig.suptitle("SmolLM2 perplexity with the method in one layer (left) or in the first / last l layers (right)",
                 x=0.01, ha="left", fontweight="bold")
    ax.set_title("\n".join(textwrap.wrap(setup, 150)), loc="left", color="#333333", fontsize=8)
    finite = grid[np.isfinite(grid)]
    top = max(float(finite.max()) if finite.size else 2.0, 1 + TOLERABLE * 2)
    norm = mcolors.LogNorm(vmin=1.0, vmax=top)
    im = ax.imshow(np.clip(grid, 1.0, None), aspect="auto", cmap="magma_r", norm=norm, interpolation="nearest")
    ys, xs = np.nonzero(np.isfinite(grid) & (grid <= 1 + HARMLESS))
    ax.plot(xs, ys, "o", ms=3.2, color="#009E73", ls="none", label=f"harmless (≤ +{HARMLESS:.0%})")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xticks(range(num), [str(i) for i in range(num)], fontsize=7)
    ax.set_xlabel("layer swapped (alone)")
    ax.legend(loc="upper left", bbox_to_anchor=(0, -0.12), fontsize=8, frameon=False)
    ticks = [x for x in RATIO_TICKS if x <= top]
    cb = fig.colorbar(im, ax=ax, pad=0.01, ticks=ticks)
    cb.ax.yaxis.set_major_formatter(mticker.FuncFormatter(lambda v, _: f"{v:g}"))
    cb.ax.yaxis.set_minor_formatter(mticker.NullFormatter())
    cb.set_label("perplexity ÷ untouched model's")
    hues = [c for name, c in plots.OKABE_ITO.items() if name != "yellow"]
    seen: set[str] = set()
    for i, lab in enumerate(labels):  # line style tells first from last: one hue per label, the method's marker
        method = t.loc[t["label"] == lab, "method"].iloc[0]
        st = {**plots.style(method), "color": hues[i % len(hues)]}
        if method in seen:  # a second budget of the same method: open markers
            st = {**st, "mfc": "white", "mec": st["color"]}
        seen.add(method)
        for end, ls in (("first", "-"), ("last", "--")):
            c = end_curve(t, lab, end, num)
            bx.plot(c.index, c.to_numpy(), **{**st, "ls": ls}, label=lab if end == "first" else None)
    bx.axhline(1 + TOLERABLE, color="#777777", lw=0.8, ls=":")
    bx.text(1, 1 + TOLERABLE, f" +{TOLERABLE:.1%}", va="bottom", fontsize=7, color="#555555")
    bx.set_xscale("log", base=2)
    bx.set_yscale("log")
    bx.yaxis.set_major_locator(mticker.FixedLocator([x for x in RATIO_TICKS if x != 1.1]))
    bx.yaxis.set_major_formatter(mticker.FuncFormatter(lambda v, _: f"{v:g}"))
    bx.yaxis.set_minor_formatter(mticker.NullFormatter())
    bx.set_xticks(list(ENDS_L), [str(x) for x in ENDS_L])
    bx.xaxis.set_minor_locator(plt.NullLocator())
    bx.set_xlabel("l layers swapped")
    bx.set_ylabel("perplexity ÷ untouched model's")
    handles, names = bx.get_legend_handles_labels()
    handles += [Line2D([], [], color="#555555", ls="-"), Line2D([], [], color="#555555", ls="--")]
    names += ["first l layers", "last l layers"]
    bx.legend(handles, names, fontsize=7, loc="upper left")
    bx.grid(True, which="major", alpha=0.3)
    return plots._save(fig, out_dir, "lm_layers_heatmap")


def setup_line(t: pd.DataFrame) -> str:
    commits = sorted({str(c)[:12] for c in t["git_commit"].dropna()})
    return (f"SmolLM2-135M-Instruct, {int(t['n'].iloc[0]):,} tokens of held-out text (one window), fp32, seed "
            f"{', '.join(map(str, sorted({int(s) for s in t['seed'].dropna()})))}, "
            f"{', '.join(sorted({str(x) for x in t['device'].dropna()}))}; "
            f"torch {', '.join(sorted({str(x) for x in t['torch_version'].dropna()}))}; commit "
            f"{', '.join(commits[:3])}{' …' if len(commits) > 3 else ''}; budgets: preset scaling_b256 (Performer "
            "256 features; HyperAttention block 128 + 256 samples; Reformer bucket 128, 8 hashes; ScatterBrain "
            "window 128 + 256 features; Conv-Basis k = 16; LATTE θ = 5 untrained) and lm_latte_trained (LATTE, "
            "λ = 0.5 thresholds)")


def write(results_dir: str | Path = "results", out_dir: str | Path | None = None, *, force: bool = False,
          rows: pd.DataFrame | None = None) -> list[Path]:
    """Write the table (csv, md) and the figure; returns the paths written (see the module docstring)."""
    results_dir = Path(results_dir)
    out = Path(out_dir) if out_dir is not None else results_dir / "reports" / EXPERIMENT
    all_rows = load_rows(results_dir) if rows is None else rows
    mine = all_rows[all_rows["experiment"] == EXPERIMENT] if "experiment" in all_rows else all_rows.iloc[0:0]
    sel = apply_grid(mine, load_grid(EXPERIMENT), row_times(mine, results_dir if rows is None else None))
    if sel.ok.empty:
        raise SystemExit(f"no ok rows of experiment {EXPERIMENT} under {results_dir}/runs; run: "
                         f"OMP_NUM_THREADS=1 python run.py +experiment={EXPERIMENT} logger=none quiet=true")
    t = layer_rows(sel.ok)
    setup = setup_line(t)
    with tempfile.TemporaryDirectory(prefix="attnbench-lm-layers-") as tmp:
        stage = Path(tmp)
        files = [stage / "lm_layers_table.csv", stage / "lm_layers_table.md"]
        t.to_csv(files[0], index=False, float_format="%.6g")
        files[1].write_text(markdown(t, summary(t), setup, sel.coverage))
        files += heatmap(t, stage / "figures", setup)
        dest = [out / p.relative_to(stage) for p in files]
        tracked = tracked_by_git(dest)
        if tracked and not force:
            raise OverwriteRefused(f"refusing to overwrite {tracked[0]}: tracked by git; pass --force")
        for src, dst in zip(files, dest):
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dst)
    if sel.missing:
        print(f"[lm_layers] {len(sel.missing)} config(s) not run yet, e.g. {sel.missing[0]}")
    return dest


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="attnbench lm_layers", description=__doc__.splitlines()[0])
    ap.add_argument("--results-dir", default="results", help="folder holding runs/ (default: results)")
    ap.add_argument("--out-dir", default=None, help="where the table and figures/ go (default: "
                                                    "<results-dir>/reports/lm_layers, untracked)")
    ap.add_argument("--force", action="store_true", help="replace files that git tracks (e.g. --out-dir results)")
    args = ap.parse_args(argv)
    try:
        paths = write(args.results_dir, args.out_dir, force=args.force)
    except OverwriteRefused as e:
        print(f"error: {e}", file=sys.stderr)
        return 3
    print("wrote " + ", ".join(map(str, paths)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
