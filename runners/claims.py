"""Paper claims, checked: each headline claim of the seed papers and the baselines gets a verdict from the committed tables.

``attnbench claims [--results-dir results] [--run] [--check]`` reads the tables that
``attnbench report ... --out-dir results --force`` (and ``runners.train_thresholds --curve``)
committed under ``results/``, applies each claim's rule (``runners/claims_registry.py``) and writes

- ``results/claims.md``: claim | paper's number | measured here | settings that differ | verdict, the
  verdict one of *holds*, *holds partly* (which part), *does not hold*, *not measured yet* (the commands
  that make the missing table) or *needs assets* (which, and the commands once they exist), then each
  claim's rule, the strongest objection an author could raise with what the suite did about it, rows and
  commands;
- ``results/conv_basis_knobs.md`` and ``.csv`` (when its table exists): Conv-Basis' best (eps, T,
  fallback) per k on SmolLM2 layers, the evidence page of claim C4.

Nothing is rerun and torch is not imported: it takes a second. ``--run`` first makes the missing tables
that need no external assets: the experiment's report command when its rows are already under
``results/runs`` (read with ``runners.collect``, as the reports do), else its run and report commands.
``--check`` writes nothing and exits 1 when a page would change.
"""
from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
from pathlib import Path

import pandas as pd

from attnbench.runners.claims_registry import (ASSETS, CLAIMS, EXPERIMENTS, FAILS, HOLDS, MISSING, PARTLY, VERDICTS, Claim,
                                     Outcome, commands_text, conv_knob_summary, fmt, knob)

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def missing_tables(claim: Claim, results_dir: Path) -> list[str]:
    return [e for e in claim.experiments if not (results_dir / EXPERIMENTS[e].table).is_file()]


def evaluate(claim: Claim, results_dir: str | Path) -> Outcome:
    """The claim's outcome from the tables under ``results_dir``: its rule when every table it needs
    exists, else *needs assets* (a missing table whose experiment lists assets) or *not measured yet*."""
    results_dir = Path(results_dir)
    missing = missing_tables(claim, results_dir)
    if missing:
        ext = [e for e in missing if EXPERIMENTS[e].assets]
        if ext:
            assets = sorted({a for e in ext for a in EXPERIMENTS[e].assets})
            return Outcome(ASSETS, "—", f"{'; '.join(assets)}; then run {commands_text(missing)}")
        tables = ", ".join(f"`{EXPERIMENTS[e].table}`" for e in missing)
        return Outcome(MISSING, "—", f"rows missing ({tables}): run {commands_text(missing)}")
    tables = {e: pd.read_csv(results_dir / EXPERIMENTS[e].table) for e in claim.experiments}
    return claim.judge(tables)


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def verdict_text(o: Outcome) -> str:
    v = f"**{o.verdict}**"
    return f"{v}: {o.part}" if o.part else v


def render_claims(results_dir: str | Path) -> str:
    """The markdown of results/claims.md."""
    outcomes = [(c, evaluate(c, results_dir)) for c in CLAIMS]
    counts = {v: sum(o.verdict == v for _, o in outcomes) for v in VERDICTS}
    lines = [
        "# Paper claims, checked",
        "",
        "Written by `attnbench claims` from the committed tables under `results/` (nothing is rerun; "
        "`--run` first makes the tables that are missing and need no external assets). The registry judges the "
        "headline claims of the four seed papers (WildCat, KDEformer, Conv-Basis, LATTE) and of the baselines the "
        "suite runs (HyperAttention, Performer, Reformer, Nyströmformer, ScatterBrain, Thinformer): each claim "
        "(paraphrased, with where it stands in the paper), the paper's number, what the "
        "committed rows measure here (linked), the settings that differ from the paper's, and the verdict: "
        f"*{HOLDS}*, *{PARTLY}* (which part), *{FAILS}*, *{MISSING}* (the commands that make the rows) or "
        f"*{ASSETS}* (which, and the commands to run once they exist). Each verdict's rule is printed below the "
        "table, with the strongest objection an author could raise against a verdict other than *holds* and "
        "what the suite did about it, so a reader can disagree with the rule as well as with the result; claims, "
        "rules and commands live in `runners/claims_registry.py`.",
        "",
        "Verdicts: " + ", ".join(f"{counts[v]} {v}" for v in VERDICTS) + ".",
        "",
        "| id | claim | paper's number | measured here | settings that differ from the paper's | verdict |",
        "|---|---|---|---|---|---|",
    ]
    for c, o in outcomes:
        lines.append("| " + " | ".join(_cell(x) for x in (
            c.id, f"{c.paper}: {c.claim} ({c.where})", c.paper_number, o.measured, c.differs, verdict_text(o))) + " |")
    lines += ["", "## Rules, rows and commands", ""]
    for c, o in outcomes:
        exps = [EXPERIMENTS[e] for e in c.experiments]
        assets = sorted({a for e in exps for a in e.assets})
        lines += [
            f"### {c.id} · {c.paper}: {c.claim}",
            "",
            f"- Where: {c.where}. Paper's number: {c.paper_number}.",
            f"- Rows: {', '.join(f'experiment `{e.name}` ([{e.page}]({e.page}), table `{e.table}`)' for e in exps)}; "
            f"filters: {c.filters}.",
            f"- Rule: {c.rule}",
            f"- Verdict: {verdict_text(o)}.",
            *([f"- Strongest objection: {c.objection} What the suite did: {c.answer}"] if c.objection else []),
            f"- Commands: {commands_text(list(c.experiments))}.",
            f"- Assets: {'; '.join(assets) if assets else 'none beyond this repository (CPU)'}.",
        ]
        notes = [e.timing_note for e in exps if e.timing_note]
        if notes:
            lines.append(f"- Timing note: {'; '.join(notes)}.")
        lines.append("")
    return "\n".join(lines)


def render_conv_knobs(table: pd.DataFrame) -> tuple[str, pd.DataFrame]:
    """(markdown, summary) of results/conv_basis_knobs.md / .csv from the conv_basis_knobs table."""
    s = conv_knob_summary(table)
    d = table[table["method"] == "conv_basis"]
    layers = sorted(int(x) for x in pd.to_numeric(d["task.layer"], errors="coerce").dropna().unique()) \
        if "task.layer" in d else []
    exp = EXPERIMENTS["conv_basis_knobs"]
    lines = [
        "# Conv-Basis knobs on SmolLM2 attention: the best error per k",
        "",
        "Commands: " + "; then ".join(f"`{c}`" for c in exp.commands) + "; then `attnbench claims` "
        "(writes this page and its CSV from `conv_basis_knobs_table.csv`).",
        "",
        f"Captured SmolLM2-135M q/k/v, causal, n = 2,048, 9 heads, d = 64, the model's scale, fp32 inputs with "
        f"float64 FFTs, seed 0; layers {', '.join(map(str, layers))}. Grid: k × eps × T × fallback "
        f"({int(s['configs'].max()) if len(s) else 0} configurations per k; `conf/experiment/conv_basis_knobs.yaml` "
        "says what each knob does). Error: relative Frobenius error of the attention output against exact causal "
        "SDPA, deterministic for the seed. The meter took one sample per call: the latency columns of the full "
        "table ([conv_basis_knobs_table.md](conv_basis_knobs_table.md)) are not evidence.",
        "",
        "Best configuration per k (lowest mean error over the layers; 'tied': how many configurations reach "
        "that same error, the default shown when it is one of them), its error on each layer, the suite's "
        "default (eps = 0.001, T = 8, fallback = none), the worst configuration, and the lowest error any "
        "configuration reaches on each layer on its own:",
        "",
    ]
    lay_best = [c for c in s.columns if c.startswith("best_config_error_layer")]
    lay_any = [c for c in s.columns if c.startswith("best_any_config_error_layer")]
    head = (["k", "best configuration", "tied", "mean error"] + [f"layer {c.removeprefix('best_config_error_layer')}"
                                                            for c in lay_best]
            + ["default", "worst"] + [f"best on layer {c.removeprefix('best_any_config_error_layer')}" for c in lay_any])
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for _, r in s.iterrows():
        cells = [str(int(r["k"])), r["best_config"], str(int(r["tied"])), fmt(r["best_mean_error"])]
        cells += [fmt(r[c]) for c in lay_best]
        cells += [fmt(r["default_mean_error"]), fmt(r["worst_mean_error"])] + [fmt(r[c]) for c in lay_any]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Mean error over the layers by eps and fallback (the best T of each pair):", ""]
    g = d.assign(**{name: knob(d["knobs"], name) for name in ("k", "eps", "T", "fallback")})
    g = g.groupby(["k", "fallback", "eps", "T"])["rel_fro_error_mean"].mean().groupby(["k", "fallback", "eps"]).min()
    grid = g.unstack("eps")
    lines += ["| k | fallback | " + " | ".join(f"eps = {fmt(e)}" for e in grid.columns) + " |",
              "|" + "---|" * (len(grid.columns) + 2)]
    for (k, fb), r in grid.iterrows():
        lines.append(f"| {int(k)} | {fb} | " + " | ".join(fmt(v) for v in r) + " |")
    lines.append("")
    return "\n".join(lines), s


def write_pages(results_dir: str | Path, *, check: bool = False) -> list[Path]:
    """Write (or, with ``check``, compare) the pages; returns those written (or that would change)."""
    results_dir = Path(results_dir)
    pages: dict[Path, str] = {results_dir / "claims.md": render_claims(results_dir)}
    knobs = results_dir / EXPERIMENTS["conv_basis_knobs"].table
    if knobs.is_file():
        md, summary = render_conv_knobs(pd.read_csv(knobs))
        pages[results_dir / "conv_basis_knobs.md"] = md
        pages[results_dir / "conv_basis_knobs.csv"] = summary.to_csv(index=False, float_format="%.6g")
    changed = [p for p, text in pages.items() if not p.is_file() or p.read_text() != text]
    if not check:
        for p in changed:
            p.write_text(pages[p])
    return changed


def run_missing(results_dir: str | Path, *, dry: bool = False) -> list[str]:
    """Make the missing tables that need no external assets; returns the commands (run unless ``dry``)."""
    from attnbench.runners.collect import load_rows

    results_dir = Path(results_dir)
    todo = sorted({e for c in CLAIMS for e in missing_tables(c, results_dir) if not EXPERIMENTS[e].assets})
    if not todo:
        return []
    rows = load_rows(results_dir)
    have = set(rows["experiment"].dropna()) if "experiment" in rows else set()
    cmds = []
    for e in todo:
        exp = EXPERIMENTS[e]
        cmds += [exp.report] if e in have and exp.report else list(exp.commands)
    for cmd in cmds:
        print(f"[claims] {cmd}", flush=True)
        if not dry:
            subprocess.run(shlex.split(cmd), cwd=PROJECT_ROOT, check=True)
    return cmds


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="attnbench claims", description=__doc__.splitlines()[0])
    ap.add_argument("--results-dir", default="results", help="folder holding the committed tables (default: results)")
    ap.add_argument("--run", action="store_true", help="first make the missing tables that need no external assets")
    ap.add_argument("--dry-run", action="store_true", help="with --run: print the commands only")
    ap.add_argument("--check", action="store_true", help="write nothing; exit 1 when a page would change")
    args = ap.parse_args(argv)
    if args.run:
        run_missing(args.results_dir, dry=args.dry_run)
    changed = write_pages(args.results_dir, check=args.check)
    for c in CLAIMS:
        o = evaluate(c, args.results_dir)
        print(f"{c.id:3} {c.paper:14} {o.verdict:17} {c.claim}")
    if args.check:
        if changed:
            print("would change: " + ", ".join(map(str, changed)))
        return 1 if changed else 0
    print("wrote " + (", ".join(map(str, changed)) if changed else "nothing (pages up to date)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
