"""Terminal output: one progress line per row, and an aligned summary table of a run's or a
sweep's rows (units in the headers, fixed decimals)."""
from __future__ import annotations

import math
from typing import Any, Iterable, Mapping

# (column, header, format) in display order; a column shows when any row has it
_COLUMNS: list[tuple[str, str, str]] = [
    ("method", "method", "s"),
    ("preset", "preset", "s"),
    ("n", "n", "d"),
    ("status", "status", "s"),
    ("rel_fro_error", "rel err (fro)", ".4f"),
    ("rel_spec_error", "rel err (spec)", ".4f"),
    ("top1", "top-1 %", ".2f"),
    ("top5", "top-5 %", ".2f"),
    ("fid", "FID", ".2f"),
    ("is_mean", "IS", ".2f"),
    ("ppl", "ppl", ".3f"),
    ("baseline_ppl", "uncompr. ppl", ".3f"),
    ("score", "score", ".2f"),
    ("baseline_score", "uncompr. score", ".2f"),
    ("digit_accuracy", "digit acc. %", ".1f"),
    ("baseline_digit_accuracy", "uncompr. digit acc. %", ".1f"),
    ("kept_fraction", "kept", ".3f"),
    ("latency_ms", "latency ms [p10, p90]", "lat"),
    ("exact_latency_ms", "exact ms", ".1f"),
    ("speedup", "speed-up [95% CI]", "speedup"),
    ("peak_mem_mb", "peak MB", ".1f"),
    ("exact_peak_mem_mb", "exact MB", ".1f"),
]


def _num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _cell(row: Mapping[str, Any], col: str, fmt: str) -> str:
    v = row.get(col)
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return ""
    if fmt == "lat":
        p10, p90 = row.get("latency_p10_ms"), row.get("latency_p90_ms")
        spread = f" [{p10:.1f}, {p90:.1f}]" if _num(p10) and _num(p90) else ""
        return f"{v:.1f}{spread}"
    if fmt == "speedup":
        lo, hi = row.get("speedup_lo"), row.get("speedup_hi")
        ci = f" [{lo:.2f}, {hi:.2f}]" if _num(lo) and _num(hi) else ""
        return f"{v:.2f}x{ci}"
    if fmt == "s":
        return str(v)
    if fmt == "d":
        return f"{int(v)}" if _num(v) else str(v)
    return f"{v:{fmt}}" if _num(v) else str(v)


def format_table(rows: Iterable[Mapping[str, Any]]) -> str:
    """An aligned text table of ``rows`` (only the columns some row fills)."""
    rows = list(rows)
    cols = [(c, h, f) for c, h, f in _COLUMNS if any(r.get(c) is not None for r in rows)]
    if len({r.get("preset") for r in rows}) < 2:  # the preset column only tells rows apart when it varies
        cols = [col for col in cols if col[0] != "preset"]
    if not rows or not cols:
        return "(no rows)"
    cells = [[_cell(r, c, f) for c, _, f in cols] for r in rows]
    widths = [max(len(h), *(len(line[i]) for line in cells)) for i, (_, h, _) in enumerate(cols)]
    align = ["<" if f == "s" else ">" for _, _, f in cols]
    head = "  ".join(f"{h:{a}{w}}" for (_, h, _), a, w in zip(cols, align, widths))
    lines = [head, "  ".join("-" * w for w in widths)]
    lines += ["  ".join(f"{x:{a}{w}}" for x, a, w in zip(line, align, widths)) for line in cells]
    errors = [f"  {r.get('method')}: {r.get('error')}" for r in rows if r.get("status") == "error"]
    legend = []
    if any(r.get("speedup") is not None for r in rows):
        legend.append("speed-up = exact / method median latency, with its 95 % bootstrap interval (samples "
                      "interleaved; unpaired where exact's samples were shared); > 1: the method is faster here.")
    if any(r.get("rel_fro_error") is not None for r in rows):
        legend.append("rel err = ||approx - exact|| / ||exact|| of the attention output on the same inputs.")
    return "\n".join(lines + (["errors:"] + errors if errors else []) + legend)


def progress_line(row: Mapping[str, Any], done: int, expected: int | None, elapsed_s: float) -> str:
    """``[attnbench] wildcat n=4096 done (2/3), 12.3 s, at least 6 s left`` (rows cost about the same or more as they go)."""
    what = f"{row.get('method')}" + (f" n={row['n']}" if row.get("n") is not None else "")
    count = f"{done}/{expected}" if expected else f"{done}"
    left = ""
    if expected and done < expected:
        left = f", at least {elapsed_s / done * (expected - done):.0f} s left"
    return f"[attnbench] {what} done ({count}), {elapsed_s:.1f} s{left}"
