"""The results' front page: ``attnbench site`` -> ``results/site/index.html`` (+ ``results/LEADERBOARD.md``,
``results/figures/leaderboard_*.png`` and the README's leaderboard block), from the committed tables only.

    attnbench site                 write the page, its markdown twin, the figures and the README block
    attnbench site --check         write nothing; exit 1 when a page would change (figures not compared)
    attnbench site --screenshot    also save results/site/screenshot.png (headless Chromium)
    attnbench site --stale         list the committed tables whose rows predate their methods' versions

The answer first: for each setting the suite measures (bidirectional attention on SmolLM2 q/k/v at 2k
and 8k, Gaussian scaling to 64k, causal scaling, LM perplexity, KV-cache compression at each ratio) the
fastest method within each error budget, its speed-up with its interval, "none" where nothing
qualifies; beside it the error–speed-up frontier (hover: method, knobs, n, interval, load, commit;
click: the method's card). Then the claims (``runners.claims``), the method cards (plugins' too), the
freshness of every committed table and the GPU section (``results/gpu/<device>/`` from
``attnbench gpu_check``). The page is one HTML file with its script and styles inline (no network
request); nothing is rerun, it takes seconds.

Freshness, as lm-evaluation-harness versions its tasks: every method has an integer ``version``
(``methods/base.py``) that changes whenever its fixed-seed outputs change (``tests/test_method_versions.py``).
A row's version is its ``method_version`` column; a row without one (older tables, and the aggregated
tables ``attnbench report`` writes) gets the latest version whose commit (``version_commits``, else the
commit that introduced the ``version = N`` line) is an ancestor of, or equal to, the row's commit
(``git merge-base --is-ancestor``; a ``+dirty`` commit counts as its base commit: what was uncommitted is
not known). The rows' commit is the table's ``git_commit`` column, else the one commit its page's setup
line names (``· commit X ·``); a table whose rows span several commits, or say none, is only known to be
no newer than the last commit that changed it: stale when that commit predates the method's version,
else unknown. A table is *stale* when some method's rows are older than its version, *unknown* when a
version cannot be told (no git, a commit not in this clone), *fresh* otherwise.
"""
from __future__ import annotations

import argparse
import functools
import html
import inspect
import json
import math
import os
import re
import select
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import pandas as pd

from attnbench.runners.card import _num as _f  # a cell as a float, None when empty or not a number

PROJECT_ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path("results")
FRESH, STALE, UNKNOWN = "fresh", "stale", "unknown"
ERROR_BUDGETS = (0.05, 0.1, 0.3)   # relative Frobenius error of the attention output
PPL_BUDGETS = (0.5, 2.0)           # perplexity increase over exact attention / the full cache
KV_BUDGETS = (0.5, 2.0, math.inf)  # perplexity increase over the full cache (inf: any)
HEADLINE_N = 8192
MARK_START, MARK_END = "<!-- leaderboard:start -->", "<!-- leaderboard:end -->"


# ------------------------------------------------------------------------------ git and versions

def _git(*args: str) -> str | None:
    """``git args`` in the clone (stdout), None without git or outside a clone."""
    if not (PROJECT_ROOT / ".git").exists():
        return None
    try:
        return subprocess.run(["git", *args], cwd=PROJECT_ROOT, capture_output=True, text=True, check=True,
                              timeout=60).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


@functools.lru_cache(maxsize=None)
def is_ancestor(a: str, b: str) -> bool | None:
    """Whether commit ``a`` is an ancestor of (or equal to) ``b``; None when git cannot tell."""
    if not (PROJECT_ROOT / ".git").exists():
        return None
    try:
        rc = subprocess.run(["git", "merge-base", "--is-ancestor", a, b], cwd=PROJECT_ROOT, capture_output=True,
                            timeout=60).returncode
    except (OSError, subprocess.SubprocessError):
        return None
    return {0: True, 1: False}.get(rc)


def base_commit(commit: Any) -> str | None:
    """The commit of a row (``abc123+dirty`` -> ``abc123``); None for missing or 'unknown'."""
    if not isinstance(commit, str):
        return None
    c = commit.strip().split("+")[0]
    return c if re.fullmatch(r"[0-9a-f]{7,40}", c) else None


def method_classes() -> dict[str, type]:
    """Every method the registry lists (built-ins and installed plugins) by name."""
    from attnbench import methods

    out = {}
    for name in methods.names():
        try:
            out[name] = methods.get(name)
        except ValueError:  # a plugin that does not import here
            continue
    return out


@functools.lru_cache(maxsize=None)
def version_history(name: str) -> dict[int, str | None]:
    """Version -> the commit its outputs date from, for versions 2..current: ``version_commits``, else
    the commit that introduced the ``version = N`` line in the method's source file (None: not found)."""
    cls = method_classes()[name]
    out: dict[int, str | None] = {v: cls.version_commits.get(v) for v in range(2, cls.version + 1)}
    try:
        source = Path(inspect.getsourcefile(cls) or "").resolve()
        rel = source.relative_to(PROJECT_ROOT)
    except (TypeError, ValueError):
        return out
    for v, c in out.items():
        if c is None:
            found = _git("log", "--format=%h", "--reverse", f"-Sversion = {v}", "--", str(rel))
            out[v] = found.split()[0] if found else None
    return out


def version_at(name: str, commit: Any) -> int | None:
    """The version of method ``name`` at ``commit``: the latest whose commit is an ancestor of it (a
    version whose commit is not known is newer than every row without ``method_version``)."""
    c = base_commit(commit)
    if c is None:
        return None
    v = 1
    for ver, vc in sorted(version_history(name).items()):
        if vc is None:
            continue
        anc = is_ancestor(vc, c)
        if anc is None:
            return None
        if anc:
            v = ver
    return v


# ------------------------------------------------------------------------------ committed tables

@dataclass
class TableInfo:
    """One committed table: its methods, where its rows' commit comes from, and its freshness."""
    path: str                                   # relative to the results folder
    methods: list[str]
    commits: list[str]                          # the rows' commits as recorded
    source: str                                 # 'rows', 'page', 'file' (no newer than) or 'none'
    versions: dict[str, tuple[int | None, int]] = field(default_factory=dict)  # method -> (rows', current)
    status: str = UNKNOWN
    refresh: list[str] = field(default_factory=list)
    claims: bool = False


def tracked_tables(results_dir: Path) -> list[Path]:
    """The CSV tables under ``results_dir`` that are or would be committed (not git-ignored; every CSV
    without git), the site's own excluded."""
    listed = _git("ls-files", "--cached", "--others", "--exclude-standard", "--", str(results_dir.resolve()))
    if listed is None:
        paths = sorted(results_dir.rglob("*.csv"))
    else:
        paths = sorted(PROJECT_ROOT / p for p in listed.splitlines() if p.endswith(".csv"))
    return [p for p in paths if "site" not in p.relative_to(results_dir.resolve()).parts[:1]]


def _header(md: Path) -> str:
    try:
        return "\n".join(md.read_text().splitlines()[:6])
    except OSError:
        return ""


def page_of(csv: Path) -> Path | None:
    """The table's markdown page that names its setup and commit (``attnbench report``'s setup line)."""
    from attnbench.runners.claims_registry import EXPERIMENTS

    stem = csv.stem
    names = [stem, re.sub(r"_(slopes|kv_table)$", "_table", stem)]
    names += [Path(e.page).stem for e in EXPERIMENTS.values() if e.table == csv.name]
    for n in dict.fromkeys(names):
        md = csv.with_name(f"{n}.md")
        if re.search(r"· (commit [0-9a-f]{7,40}(\+dirty)?|\d+ commits) ·", _header(md)):
            return md
    return None


def setup_value(md: Path | None, key: str) -> str | None:
    """A value of the page's setup line: ``commit`` (one commit) or ``n`` (one n, e.g. '8k')."""
    if md is None:
        return None
    text = _header(md)
    pattern = {"commit": r"· commit ([0-9a-f]{7,40}(?:\+dirty)?) ·", "n": r"· n = (\d+k?) ·"}[key]
    m = re.search(pattern, text)
    return m.group(1) if m else None


def _label_to_method(label: Any, known: Iterable[str]) -> str | None:
    if not isinstance(label, str):
        return None
    key = re.sub(r"\s*\(.*\)$", "", label).strip().lower().replace("-", "_").replace(" ", "_")
    return key if key in known else None


def table_methods(df: pd.DataFrame, name: str, known: list[str]) -> list[str]:
    """The registered methods whose outputs a table's rows rest on: its method / peer / press columns,
    else the method its name starts with (``latte_training_curve`` -> latte)."""
    found = []
    for col in ("method", "peer", "press"):
        if col in df:
            found += [m for m in (_label_to_method(v, known) for v in df[col].dropna().unique()) if m]
    if not found:
        found = [m for m in known if name.startswith(m + "_")]
    return sorted(set(found))


def refresh_commands(csv: Path, results_dir: Path) -> list[str]:
    """The commands that remake a table: the claims registry's experiment, a card's, the page's
    ``experiment X``, else the ``Command:`` / ``Made by`` line of its page."""
    from attnbench.runners.claims_registry import EXPERIMENTS

    for e in EXPERIMENTS.values():
        if e.table == csv.name or Path(e.page).stem == csv.stem:
            return list(e.commands)
    if csv.parent.name == "cards":
        return [f"python run.py +experiment=card method={csv.stem} logger=none quiet=true",
                f"attnbench report --card {csv.stem}"]
    md = page_of(csv)
    m = re.search(r"· experiment (\w+)", _header(md)) if md else None
    if m:
        exp = m.group(1)
        grid = (PROJECT_ROOT / "conf" / "experiment" / f"{exp}.yaml").is_file()
        return [f"python run.py +experiment={exp} logger=none" if grid else f"(rows of experiment {exp})",
                f"attnbench report --experiment {exp}{'' if grid else ' --no-grid'} --out-dir results --force"]
    for cand in (csv.with_suffix(".md"), csv.with_name(re.sub(r"_(mix|table)$", "", csv.stem) + ".md")):
        text = _header(cand) if cand.is_file() else ""
        cmds = re.findall(r"(?:Command|[Mm]ade by):? `([^`]+)`(?: then `([^`]+)`)?", text)
        if cmds:
            return [c for pair in cmds[:1] for c in pair if c]
    return [f"see {results_dir.name}/README.md"]


def claims_tables() -> set[str]:
    """The tables ``runners/claims.py`` reads (its claims' experiments, and the Conv-Basis knobs page's)."""
    from attnbench.runners.claims_registry import CLAIMS, EXPERIMENTS

    return {EXPERIMENTS[e].table for c in CLAIMS for e in c.experiments} | {EXPERIMENTS["conv_basis_knobs"].table}


def table_info(csv: Path, results_dir: Path, known: dict[str, type], claims: set[str]) -> TableInfo | None:
    """Freshness of one committed table (None: no registered method's rows in it)."""
    try:
        df = pd.read_csv(csv)
    except (OSError, ValueError, pd.errors.ParserError):
        return None
    rel = str(csv.relative_to(results_dir))
    names = table_methods(df, csv.stem, sorted(known))
    if not names:
        return None
    info = TableInfo(rel, names, [], "none", refresh=refresh_commands(csv, results_dir), claims=csv.name in claims)
    per_row = "git_commit" in df or "method_version" in df
    page_commit = setup_value(page_of(csv), "commit")
    if per_row:
        info.source, info.commits = "rows", sorted(set(df.get("git_commit", pd.Series(dtype=str)).dropna().astype(str)))
    elif page_commit:
        info.source, info.commits = "page", [page_commit]
    else:
        last = _git("log", "-1", "--format=%h", "--", str(csv.resolve()))
        dirty = _git("status", "--porcelain", "--", str(csv.resolve()))
        if last and not dirty:
            info.source, info.commits = "file", [last]
    for name in names:
        current = known[name].version
        if current == 1:  # no row can be older than a method's first version
            info.versions[name] = (1, 1)
            continue
        if per_row:
            mine = pd.Series(False, index=df.index)
            for col in ("method", "peer", "press"):
                if col in df:
                    mine |= df[col].map(lambda v: _label_to_method(v, known)) == name
            rows = df[mine] if mine.any() else df
            got = [int(r["method_version"]) if pd.notna(r.get("method_version", math.nan))
                   else version_at(name, r.get("git_commit")) for _, r in rows.iterrows()]
            v = None if not got or any(g is None for g in got) else min(got)
        elif info.commits:
            v = version_at(name, info.commits[0])
            if info.source == "file" and v == current:
                v = None  # no newer than that commit: not known to be current
        else:
            v = None
        info.versions[name] = (v, current)
    vs = info.versions.values()
    info.status = STALE if any(v is not None and v < c for v, c in vs) else \
        UNKNOWN if any(v is None for v, _ in vs) else FRESH
    return info


def freshness(results_dir: Path = RESULTS) -> list[TableInfo]:
    """Every committed table with registered methods' rows, with its freshness."""
    results_dir = Path(results_dir).resolve()
    known, claims = method_classes(), claims_tables()
    out = [table_info(p, results_dir, known, claims) for p in tracked_tables(results_dir)]
    return [t for t in out if t is not None]


# ------------------------------------------------------------------------------ settings and rankings

@dataclass
class Point:
    method: str           # the method (or press) label
    knobs: str
    group: str            # the setting's sub-case (n, ratio)
    x: float              # error (rel. Frobenius error, perplexity increase)
    y: float              # benefit (speed-up over exact, recall score)
    lo: float | None = None
    hi: float | None = None
    load: float | None = None
    commit: str | None = None
    table: str = ""
    status: str = UNKNOWN
    card: str | None = None      # the method whose card a click opens
    ranked: bool = True          # False: plotted, not ranked (e.g. keeps more tokens)
    x2: float | None = None      # the second error norm (relative spectral error), where measured
    note: str = ""               # shown in the hover
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Setting:
    key: str
    title: str
    what: str
    x_label: str
    y_label: str
    budget_label: str            # e.g. "rel. error ≤ {b}"
    budgets: tuple[float, ...]
    groups: list[str]
    points: list[Point]
    x_log: bool = True
    y_log: bool = True
    speedup: bool = True         # y is a speed-up (1 = exact; intervals shown)
    missing: list[str] = field(default_factory=list)   # sentences with the commands that fill gaps
    x2_label: str = ""           # the second error norm's name ('' : none)
    default_group: str = ""


def _value(v: Any) -> Any:
    """A cell as JSON can hold it: bools and strings as they are, numbers as floats."""
    if isinstance(v, (bool, str)) or hasattr(v, "dtype") and v.dtype == bool:
        return bool(v) if not isinstance(v, str) else v
    f = _f(v)
    return f if f is not None else str(v)


def _n_label(n: Any) -> str | None:
    """``n = 8,192`` (None when the cell is empty)."""
    return None if _f(n) is None else f"n = {int(_f(n)):,}"


def _row_n(r: pd.Series) -> str | None:
    return _n_label(r.get("n"))


class Tables:
    """The committed tables of one results folder, read once, with their freshness per method."""

    def __init__(self, results_dir: Path, info: list[TableInfo]):
        self.dir = Path(results_dir)
        self.info = {t.path: t for t in info}
        self._cache: dict[str, pd.DataFrame | None] = {}

    def read(self, rel: str) -> pd.DataFrame | None:
        if rel not in self._cache:
            p = self.dir / rel
            self._cache[rel] = pd.read_csv(p) if p.is_file() else None
        return self._cache[rel]

    def commit(self, rel: str) -> str | None:
        t = self.info.get(rel)
        return t.commits[0] if t is not None and t.source in ("page", "file") and t.commits else None

    def preset(self, rel: str) -> str:
        """The knobs of rows that set none: the page's budget or preset ('defaults' without one)."""
        text = _header(page_of(self.dir / rel) or Path("/nonexistent"))
        m = re.search(r"· budget (\d+) \(preset (\w+)\) ·", text) or re.search(r"· preset ([\w, –]+) ·", text)
        return (f"budget {m.group(1)} (preset {m.group(2)})" if m.lastindex == 2 else f"preset {m.group(1)}") if m \
            else "defaults"

    def status(self, rel: str, method: str | None) -> str:
        t = self.info.get(rel)
        if t is None or method not in t.versions:
            return UNKNOWN if t is None else t.status
        v, c = t.versions[method]
        return UNKNOWN if v is None else STALE if v < c else FRESH


def _table_points(t: Tables, rel: str, group_of: Callable[[pd.Series], str | None], x: str, y: str,
                  lo: str | None, hi: str | None, known: Iterable[str], extra: dict[str, str] | None = None,
                  where: Callable[[pd.DataFrame], pd.Series] | None = None) -> list[Point]:
    df = t.read(rel)
    if df is None:
        return []
    if where is not None:
        df = df[where(df)]
    out = []
    for _, r in df.iterrows():
        g, xv, yv = group_of(r), _f(r.get(x)), _f(r.get(y))
        if g is None or xv is None or yv is None or r.get("method") == "exact":
            continue
        m = _label_to_method(r.get("method"), known)
        own = isinstance(r.get("knobs"), str) and r.get("knobs").strip()
        knobs = r.get("knobs") if own else ""  # rows at the table's preset: said in the setting's description
        out.append(Point(str(r.get("method")), knobs, g, xv, yv, _f(r.get(lo)) if lo else None,
                         _f(r.get(hi)) if hi else None, _f(r.get("load_avg_1m")),
                         r.get("git_commit") if isinstance(r.get("git_commit"), str) else t.commit(rel),
                         rel, t.status(rel, m), m,
                         extra={**({} if own else {"knobs": t.preset(rel)}),
                                **{k: _value(r.get(c)) for k, c in (extra or {}).items() if c in r and pd.notna(r.get(c))}}))
    return out


def short_knobs(method: str | None, knobs: str) -> str:
    """A card's knobs without those at the constructor's defaults ('card defaults' when none is left)."""
    from attnbench import methods

    try:
        defaults = methods.resolve(method) if method else {}
    except ValueError:
        defaults = {}

    def same(k: str, v: str) -> bool:
        d = defaults.get(k, object())
        a, b = _f(v), _f(d) if not isinstance(d, bool) else None
        return str(d).lower() == v.lower() or (a is not None and b is not None and math.isclose(a, b, rel_tol=1e-4))

    kept = [kv for kv in (x.strip() for x in knobs.split(",")) if "=" in kv and not same(*kv.split("=", 1))]
    return "card: " + ", ".join(kept) if kept else "card defaults"


def _card_points(t: Tables, part: Callable[[str], bool], group_of: Callable[[pd.Series], str | None], x: str,
                 y: str, lo: str, hi: str, known: Iterable[str], extra: dict[str, str] | None = None) -> list[Point]:
    cards = sorted((t.dir / "cards").glob("*.csv"))
    pts = []
    for p in cards:
        rel = str(p.relative_to(t.dir))
        pts += _table_points(t, rel, group_of, x, y, lo, hi, known, {"part": "part", **(extra or {})},
                             where=lambda d: (d["status"] == "ok") & d["part"].astype(str).map(part))
    for p in pts:
        p.extra["knobs"], p.knobs = p.knobs, short_knobs(p.card, p.knobs)
    return pts


def _newest_first(points: list[Point], t: Tables) -> list[Point]:
    """Among points of one method, knobs and group from several tables keep the one with the newest
    commit as ranked; the others stay plotted, marked superseded."""
    by: dict[tuple, list[Point]] = {}
    for p in points:
        by.setdefault((p.method, p.knobs, p.group), []).append(p)
    for same in by.values():
        if len(same) < 2:
            continue
        best = same[0]
        for p in same[1:]:
            a, b = base_commit(best.commit), base_commit(p.commit)
            if a and b and a != b and is_ancestor(a, b):
                best = p
        for p in same:
            if p is not best:
                p.ranked = False
                p.note = f"superseded by {best.table} (newer commit {best.commit})"
    return points


SPECTRAL = "relative spectral error ‖Ô − O‖₂ / ‖O‖₂"


def _spectral(points: list[Point]) -> list[Point]:
    """The rows' spectral error as each point's second error norm."""
    for p in points:
        p.x2 = p.extra.pop("spectral error", None)
    return points


def smollm2_setting(t: Tables, known: list[str]) -> Setting:
    """Bidirectional attention on captured SmolLM2 q/k/v (layer 10) at 2k and 8k tokens."""
    pts = []
    for rel in ("smollm2_error_table.csv", "smollm2_error_2k_table.csv"):
        n = setup_value(page_of(t.dir / rel), "n") if (t.dir / rel).is_file() else None
        if n is None:
            continue
        group = _n_label(int(n[:-1]) * 1024 if n.endswith("k") else int(n))
        pts += _table_points(t, rel, lambda r, g=group: g, "rel_fro_error_mean", "speedup_mean", "speedup_lo_mean",
                             "speedup_hi_mean", known, {"spectral error": "rel_spec_error_mean",
                                                        "budget m": "preset.budget", "kept": "kept_fraction_mean"})
    pts += _card_points(t, lambda p: p == "smollm2_l10", _row_n, "rel_fro_error", "speedup",
                        "speedup_lo", "speedup_hi", known, {"spectral error": "rel_spec_error", "kept": "kept_fraction"})
    groups = [_n_label(2048), _n_label(8192)]
    s = Setting("smollm2", "Bidirectional attention on SmolLM2-135M q/k/v",
                "Captured q, k, v of layer 10 (9 heads, d = 64); every method at its budgets (smollm2_error_table: "
                "m = 64 / 256 / 1024, float64) and each card's default knobs (cards, float32).",
                "relative error ‖Ô − O‖_F / ‖O‖_F", "speed-up over exact attention", "rel. error ≤ {b}", ERROR_BUDGETS,
                groups, _newest_first(_spectral([p for p in pts if p.group in groups]), t),
                default_group=_n_label(HEADLINE_N), x2_label=SPECTRAL)
    if not any(p.table.startswith("smollm2_error") and p.group == groups[0] for p in s.points):
        s.missing.append(
            "At 2,048 tokens only the methods with a card are measured. Every method at 2k (timings: a few "
            "minutes on an idle machine): "
            "`python run.py +experiment=smollm2_error experiment_name=smollm2_error_2k 'task.n=[2048]' logger=none "
            "meter.min_samples=3 meter.max_run_s=60` then `attnbench report --experiment smollm2_error_2k --no-grid "
            "--out-dir results --force`.")
    return s


def scaling_setting(t: Tables, known: list[str], causal: bool, cards: bool = True, key: str = "") -> Setting:
    """Gaussian q, k, v, n = 1k … 64k (bidirectional or causal), budget 256 per method."""
    rels = ["scaling_causal_table.csv"] if causal else ["scaling_table.csv", "scaling_wildcat_64k_table.csv"]
    pts = []
    for rel in rels:
        pts += _table_points(t, rel, _row_n, "rel_fro_error_mean", "speedup_mean",
                             "speedup_lo_mean", "speedup_hi_mean", known,
                             {"spectral error": "rel_spec_error_mean", "kept": "kept_fraction_mean"})
    if cards:
        pts += [p for p in _card_points(t, lambda p: p == "scaling", _row_n, "rel_fro_error",
                                        "speedup", "speedup_lo", "speedup_hi", known,
                                        {"spectral error": "rel_spec_error", "causal": "causal"})
                if str(p.extra.pop("causal", None)).lower() == str(causal).lower()]
    ns = sorted({int(p.group.split("= ")[1].replace(",", "")) for p in pts})
    groups = [_n_label(n) for n in ns]
    what = ("Gaussian q, k, v (batch 1 × 8 heads × d = 64, float32), " + ("causal" if causal else "bidirectional")
            + "; each method at budget 256 (preset scaling_b256)" + (" and each card's default knobs" if cards else "")
            + ". Speed-up: paired with exact SDPA in the same process.")
    if not cards:  # a device's folder: its own setup, as its page states it
        page = page_of(t.dir / rels[0])
        what = _header(page).splitlines()[2].strip() if page is not None and len(_header(page).splitlines()) > 2 else ""
    return Setting(key or ("scaling_causal" if causal else "scaling"),
                   ("Causal" if causal else "Bidirectional") + " attention on Gaussian inputs, n up to 64k", what,
                   "relative error ‖Ô − O‖_F / ‖O‖_F", "speed-up over exact attention", "rel. error ≤ {b}",
                   ERROR_BUDGETS, groups, _newest_first(_spectral(pts), t), x2_label=SPECTRAL,
                   default_group=_n_label(HEADLINE_N) if HEADLINE_N in ns else (groups[-1] if groups else ""))


def lm_setting(t: Tables, known: list[str]) -> Setting:
    """SmolLM2 perplexity with the method in all 30 layers, at 2k and 8k tokens."""
    pts = []
    for rel in ("lm_ppl_table.csv", "lm_ppl_latte_table.csv"):
        pts += _table_points(t, rel, _row_n, "ppl_increase_mean", "attn_speedup_mean", None, None,
                             known, {"ppl": "ppl_mean", "exact ppl": "exact_ppl_mean", "kept": "kept_fraction_mean",
                                     "top-1 agreement %": "top1_agreement_mean"})
    pts += _card_points(t, lambda p: p == "lm", _row_n, "ppl_increase", "attn_speedup",
                        "attn_speedup_lo", "attn_speedup_hi", known, {"ppl": "ppl", "exact ppl": "exact_ppl"})
    groups = [_n_label(2048), _n_label(8192)]
    return Setting("lm_ppl", "Language-model perplexity: SmolLM2-135M with the method in all 30 layers",
                   "Perplexity on local text at 2,048 and 8,192 tokens (lm_ppl tables, causal methods; cards at 2k). "
                   "Speed-up of the attention calls against exact causal SDPA; the aggregated tables keep no interval.",
                   "perplexity increase over exact attention", "attention speed-up", "ppl increase ≤ {b}", PPL_BUDGETS,
                   groups, _newest_first([p for p in pts if p.group in groups], t), default_group=_n_label(HEADLINE_N))


def kv_setting(t: Tables, known: list[str]) -> Setting:
    """KV-cache presses at equal kept tokens (kv_compare): recall within a perplexity budget."""
    rel = "kv_compare_kv_table.csv"
    df = t.read(rel)
    pts: list[Point] = []
    groups: list[str] = []
    if df is not None:
        base = df[df["press"] == "none"].iloc[0]
        for _, r in df[df["press"] != "none"].iterrows():
            ratio = float(r["compression_ratio"])
            g = f"ratio {ratio:g} (keeps {1 - ratio:.0%})"
            m = _label_to_method(r["press"], known)
            over = float(r["kept_fraction"]) > (1 - ratio) + 0.005
            pts.append(Point(str(r["press"]), "", g,
                             float(r["ppl"]) - float(base["ppl"]), float(r["score"]), table=rel, commit=t.commit(rel),
                             status=t.status(rel, m or "wildcat"), card=m, ranked=not over,
                             note="keeps more tokens than the ratio (the official convention): not ranked" if over else "",
                             extra={"ppl": float(r["ppl"]), "digit accuracy %": float(r["digit_accuracy"]),
                                    "kept": float(r["kept_fraction"])}))
        groups = sorted({p.group for p in pts})
    return Setting("kv", "KV-cache compression: SmolLM2-135M after a compressed 2,048-token prefix",
                   "Every press keeps the same number of tokens at a ratio, so memory is equal and there is no speed to "
                   "rank by: the ranking is the press with the best needle recall (4-way choice by likelihood, % of 27 "
                   "questions; ties: digit accuracy) whose perplexity increase over the full cache stays within the "
                   f"budget (full cache: ppl {float(base['ppl']):.2f}, recall {float(base['score']):.0f} %)."
                   if df is not None else "No kv_compare table committed.",
                   "perplexity increase over the full cache", "needle recall %", "ppl increase ≤ {b}", KV_BUDGETS, groups,
                   pts, x_log=False, y_log=False, speedup=False, default_group=groups[-1] if groups else "")


def rank(s: Setting, group: str, alt: bool = False) -> list[Point | None]:
    """Per budget: the ranked point of ``group`` with the largest y among those whose error (``alt``: the
    second norm) is within the budget (None: none)."""
    out: list[Point | None] = []
    err = (lambda p: p.x2) if alt else (lambda p: p.x)
    cand = [p for p in s.points if p.group == group and p.ranked and err(p) is not None]
    for b in s.budgets:
        ok = [p for p in cand if err(p) <= b]
        key = (lambda p: (p.y, p.extra.get("digit accuracy %", 0), -p.x)) if not s.speedup else (lambda p: (p.y, -err(p)))
        out.append(max(ok, key=key) if ok else None)
    return out


def budget_text(s: Setting, b: float) -> str:
    return "any ppl" if math.isinf(b) else s.budget_label.format(b=f"{b:g}")


def point_text(s: Setting, p: Point | None, *, markdown: bool = False) -> str:
    """``method (knobs) 5.71× [5.60, 6.01]`` / ``none``; a speed-up below 1 says so, a stale row too."""
    if p is None:
        return "none"
    name = f"**{p.method}**" if markdown else p.method
    knobs = f" ({p.knobs})" if p.knobs else ""
    if s.speedup:
        value = f"{p.y:.2f}×" + (f" [{p.lo:.2f}, {p.hi:.2f}]" if p.lo is not None and p.hi is not None else "")
        if (p.hi if p.hi is not None else p.y) < 1:
            value += ", slower than exact"
    else:
        value = f"recall {p.y:.0f} %, ppl +{p.x:.2f}"
    flag = f" ({p.status})" if p.status == STALE else ""
    return f"{name}{knobs} {value}{flag}"


# ------------------------------------------------------------------------------ claims, cards, GPU

def _md_inline(text: str, prefix: str = "../") -> str:
    """Inline markdown of the claims page (links, bold, italics, code) as HTML; links relative to results/."""
    out = html.escape(str(text), quote=False)
    out = re.sub(r"`([^`]+)`", r"<code>\1</code>", out)
    out = re.sub(r"\*\*([^*]+)\*\*", r"<b>\1</b>", out)
    out = re.sub(r"(?<![\w*])\*([^*\s][^*]*)\*(?!\w)", r"<i>\1</i>", out)

    def link(m: re.Match) -> str:
        href = m.group(2)
        href = href if re.match(r"^[a-z]+:", href) else prefix + href
        return f'<a href="{html.escape(href)}">{m.group(1)}</a>'

    return re.sub(r"\[([^\]]+)\]\(([^)\s]+)\)", link, out)


def claims_rows(results_dir: Path) -> list[dict[str, str]]:
    from attnbench.runners.claims import evaluate
    from attnbench.runners.claims_registry import CLAIMS, EXPERIMENTS

    rows = []
    for c in CLAIMS:
        o = evaluate(c, results_dir)
        pages = [EXPERIMENTS[e].page for e in c.experiments if e in EXPERIMENTS and (results_dir / EXPERIMENTS[e].page).is_file()]
        rows.append({"id": c.id, "paper": c.paper, "claim": c.claim, "paper_number": c.paper_number,
                     "measured": o.measured, "verdict": o.verdict, "part": o.part, "pages": pages})
    return rows


def card_summary(results_dir: Path, name: str) -> dict[str, Any] | None:
    """A method's card: its header lines, figure, page and points (None: no card committed)."""
    md, csv = results_dir / "cards" / f"{name}.md", results_dir / "cards" / f"{name}.csv"
    if not md.is_file():
        return None
    head = [ln[2:] for ln in md.read_text().splitlines()[:8] if ln.startswith("- ")]
    pts = pd.read_csv(csv) if csv.is_file() else pd.DataFrame()
    return {"lines": head, "page": f"cards/{name}.md", "png": f"cards/{name}.png" if md.with_suffix(".png").is_file()
            else None, "points": pts}


def gpu_devices(results_dir: Path) -> list[Path]:
    gpu = results_dir / "gpu"
    return sorted(p for p in gpu.iterdir() if p.is_dir()) if gpu.is_dir() else []


# ------------------------------------------------------------------------------ building everything

@dataclass
class Site:
    settings: list[Setting]
    info: list[TableInfo]
    claims: list[dict[str, str]]
    methods: dict[str, type]
    cards: dict[str, dict[str, Any]]
    gpu: list[tuple[Path, list[Setting]]]
    compile_md: bool
    results_dir: Path
    card_plot: Setting


def collect(results_dir: Path = RESULTS) -> Site:
    """Everything the page shows, from the committed tables under ``results_dir``."""
    results_dir = Path(results_dir).resolve()
    info = freshness(results_dir)
    known = method_classes()
    t = Tables(results_dir, info)
    names = sorted(known)
    settings = [smollm2_setting(t, names), scaling_setting(t, names, False), scaling_setting(t, names, True),
                lm_setting(t, names), kv_setting(t, names)]
    cards = {n: c for n in names if (c := card_summary(results_dir, n)) is not None}
    gpu = []
    for dev in gpu_devices(results_dir):
        prefix = f"{dev.relative_to(results_dir)}/"
        td = Tables(dev, [TableInfo(**{**vars(i), "path": i.path[len(prefix):]}) for i in info if i.path.startswith(prefix)])
        gpu.append((dev, [s for s in (scaling_setting(td, names, False, cards=False, key=f"gpu-{dev.name}-scaling"),
                                      scaling_setting(td, names, True, cards=False, key=f"gpu-{dev.name}-causal"))
                          if s.points]))
    return Site(settings, info, claims_rows(results_dir), known, cards, gpu,
                (results_dir / "gpu" / "compile.md").is_file(), results_dir, card_setting(t, names))


def card_setting(t: Tables, known: list[str]) -> Setting:
    """Every committed card's SmolLM2 points (layers 10 and 25), for the cards section's figure."""
    def group(r: pd.Series) -> str:
        return f"{'causal' if 'causal' in str(r['part']) else 'bidirectional'}, {_row_n(r)}"

    pts = _spectral(_card_points(t, lambda p: p.startswith("smollm2_"), group, "rel_fro_error", "speedup", "speedup_lo",
                                 "speedup_hi", known, {"spectral error": "rel_spec_error", "kept": "kept_fraction"}))
    groups = [g for g in (f"{c}, {_n_label(n)}" for c in ("bidirectional", "causal") for n in (2048, 8192))
              if any(p.group == g for p in pts)]
    return Setting("cards", "Method cards on SmolLM2 q/k/v", "", "relative error ‖Ô − O‖_F / ‖O‖_F",
                   "speed-up over exact attention", "", (), groups, pts, x2_label=SPECTRAL,
                   default_group=f"bidirectional, {_n_label(HEADLINE_N)}")


# ------------------------------------------------------------------------------ colours (page and figures alike)

PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22",
           "#000000", "#7f7f7f", "#000080", "#f032e6", "#008080", "#c49a00", "#6a3d9a", "#b15928", "#33a02c",
           "#fb9a99", "#a6cee3", "#e31a1c", "#fdbf6f", "#cab2d6", "#b2df8a"]


def colours(site: Site) -> dict[str, str]:
    """One colour per method (registered methods first, then presses and other labels), on the page and figures."""
    others = sorted({p.method for s in site.settings + [site.card_plot] for p in s.points} - set(site.methods))
    return {n: PALETTE[i % len(PALETTE)] for i, n in enumerate(sorted(site.methods) + others)}


VERDICT_COLOURS = {"holds": "#2e7d32", "holds partly": "#f9a825", "does not hold": "#c62828",
                   "not measured yet": "#78909c", "needs assets": "#5c6bc0"}
STATUS_COLOURS = {FRESH: "#2e7d32", STALE: "#c62828", UNKNOWN: "#78909c"}


# ------------------------------------------------------------------------------ the page

def _e(v: Any) -> str:
    return html.escape(str(v))


def _point_json(p: Point) -> dict[str, Any]:
    return {"m": p.method, "k": p.knobs, "g": p.group, "x": p.x, "x2": p.x2, "y": p.y, "lo": p.lo, "hi": p.hi,
            "load": p.load, "commit": p.commit, "table": p.table, "status": p.status, "card": p.card,
            "ranked": p.ranked, "note": p.note, "extra": p.extra}


def _setting_json(s: Setting) -> dict[str, Any]:
    return {"key": s.key, "x_label": s.x_label, "x2_label": s.x2_label, "y_label": s.y_label, "x_log": s.x_log,
            "y_log": s.y_log, "speedup": s.speedup, "groups": s.groups, "group": s.default_group,
            "budgets": [None if math.isinf(b) else b for b in s.budgets], "points": [_point_json(p) for p in s.points]}


def _cell_html(s: Setting, p: Point | None) -> str:
    if p is None:
        return '<td class="none">none</td>'
    name = f'<a class="m" href="#card-{_e(p.card)}">{_e(p.method)}</a>' if p.card else f'<b>{_e(p.method)}</b>'
    knobs = f' <span class="k">({_e(p.knobs)})</span>' if p.knobs else ""
    if s.speedup:
        value = f"{p.y:.2f}×" + (f" [{p.lo:.2f}, {p.hi:.2f}]" if p.lo is not None and p.hi is not None else "")
        slow = ' <span class="slow">slower than exact</span>' if (p.hi if p.hi is not None else p.y) < 1 else ""
    else:
        value, slow = f"recall {p.y:.0f} %, ppl +{p.x:.2f}", ""
    flag = f' <span class="badge {p.status}">{p.status}</span>' if p.status != FRESH else ""
    return f"<td>{name}{knobs} <span class=\"v\">{value}</span>{slow}{flag}</td>"


def ranking_html(s: Setting) -> str:
    """The setting's ranking tables (one per error norm): a row per group, a column per budget."""
    out = []
    for alt in ((False, True) if s.x2_label else (False,)):
        head = "".join(f"<th>{_e(budget_text(s, b))}</th>" for b in s.budgets)
        rows = "".join(f'<tr class="rank-row" data-group="{_e(g)}"><th>{_e(g)}</th>'
                       + "".join(_cell_html(s, p) for p in rank(s, g, alt)) + "</tr>" for g in s.groups)
        if not s.groups:
            rows = f'<tr class="rank-row"><th>—</th><td colspan="{len(s.budgets)}" class="none">no committed rows</td></tr>'
        out.append(f'<table class="ranking" data-norm="{int(alt)}"{" hidden" if alt else ""}>'
                   f"<thead><tr><th></th>{head}</tr></thead><tbody>{rows}</tbody></table>")
    toggle = ('<div class="norm"><span>error:</span><button data-norm="0" class="on">Frobenius</button>'
              '<button data-norm="1">spectral</button></div>') if s.x2_label else ""
    return toggle + "".join(out)


def setting_html(s: Setting) -> str:
    missing = "".join(f'<p class="missing">{_md_inline(m)}</p>' for m in s.missing)
    return (f'<article class="setting" id="setting-{_e(s.key)}" data-key="{_e(s.key)}"><h3>{_e(s.title)}</h3>'
            f'<p class="what">{_e(s.what)}</p><div class="split"><div class="rank">{ranking_html(s)}</div>'
            f'<figure class="plot" data-key="{_e(s.key)}"><div class="groups"></div><svg></svg>'
            f'<figcaption class="legend"></figcaption></figure></div>{missing}</article>')


def claims_html(site: Site) -> str:
    rows = []
    for c in site.claims:
        colour = VERDICT_COLOURS.get(c["verdict"], "#999")
        part = f": {_md_inline(c['part'])}" if c["part"] else ""
        pages = ", ".join(f'<a href="../{_e(p)}">{_e(p)}</a>' for p in c["pages"])
        rows.append(f'<tr class="claim"><th>{_e(c["id"])}</th><td><b>{_e(c["paper"])}</b>: {_e(c["claim"])}</td>'
                    f'<td>{_md_inline(c["paper_number"])}</td><td class="measured">{_md_inline(c["measured"])}</td>'
                    f'<td><span class="verdict" style="background:{colour}">{_e(c["verdict"])}</span>{part}</td>'
                    f"<td>{pages}</td></tr>")
    return ('<figure class="plot bars" data-bars="claims"><svg></svg></figure>'
            '<table class="claims"><thead><tr><th>id</th><th>claim</th><th>paper\'s number</th><th>measured here</th>'
            '<th>verdict</th><th>evidence</th></tr></thead><tbody>' + "".join(rows) + "</tbody></table>"
            '<p>Rules, rows and commands: <a href="../claims.md">claims.md</a> (<code>attnbench claims</code>).</p>')


def _version_text(name: str, cls: type) -> str:
    hist = ", ".join(f"v{v} since {c or '?'}" for v, c in sorted(version_history(name).items()))
    return f"version {cls.version}" + (f" ({hist})" if hist else "")


def cards_html(site: Site) -> str:
    out = ['<figure class="plot" data-key="cards"><div class="groups"></div><svg></svg>'
           '<figcaption class="legend"></figcaption></figure>']
    for name, cls in sorted(site.methods.items()):
        doc = (inspect.getdoc(cls) or "").split("\n\n")[0].replace("\n", " ").replace("``", "`")
        module = cls.__module__
        origin = "built-in" if module.startswith("attnbench.methods.") and ".peers." not in module else f"plugin ({module})"
        tables = [t for t in site.info if name in t.versions]
        fresh = ", ".join(f'<a href="../{_e(t.path)}">{_e(t.path)}</a> <span class="badge {t.status}">'
                          f'{t.status}</span>' for t in tables) or "no committed table"
        card = site.cards.get(name)
        if card:
            pts = card["points"]
            ok = pts[pts["status"] == "ok"] if "status" in pts else pts
            cols = [c for c in ("part", "n", "rel_fro_error", "rel_spec_error", "speedup", "speedup_lo", "speedup_hi",
                                "ppl_increase", "attn_speedup", "score", "load_avg_1m", "git_commit") if c in ok]
            body = "".join("<tr>" + "".join(f"<td>{_e(_fmt(r[c]))}</td>" for c in cols) + "</tr>" for _, r in ok.iterrows())
            errs = pts[pts["status"] != "ok"]["part"].tolist() if "status" in pts else []
            detail = ("<ul>" + "".join(f"<li>{_md_inline(ln)}</li>" for ln in card["lines"]) + "</ul>"
                      + (f'<img loading="lazy" alt="{_e(name)} among the carded methods" src="../{_e(card["png"])}">'
                         if card["png"] else "")
                      + f'<table class="points"><thead><tr>{"".join(f"<th>{_e(c)}</th>" for c in cols)}</tr></thead>'
                      f"<tbody>{body}</tbody></table>"
                      + (f"<p>Could not run: {_e(', '.join(errs))} (reasons in the card).</p>" if errs else "")
                      + f'<p><a href="../{_e(card["page"])}">the full card</a></p>')
        else:
            detail = ("<p>No card committed. Make it with <code>python run.py +experiment=card method="
                      f"{_e(name)} logger=none quiet=true</code> then <code>attnbench report --card {_e(name)}</code>.</p>")
        out.append(f'<article class="card" id="card-{_e(name)}"><details{" open" if card else ""}><summary>'
                   f'<b>{_e(name)}</b> · {_e(origin)} · {_e(_version_text(name, cls))}'
                   f'{" · card" if card else ""}</summary><p>{_md_inline(doc)}</p><p>Rows: {fresh}</p>{detail}'
                   "</details></article>")
    return "".join(out)


def _fmt(v: Any) -> str:
    f = _f(v) if not isinstance(v, bool) else None
    if f is None:
        return "" if v is None or (isinstance(v, float) and math.isnan(v)) else str(v)
    return f"{f:,.0f}" if f.is_integer() and abs(f) >= 100 else f"{f:.3g}"


def shown_commits(t: TableInfo) -> str:
    """The rows' commits as the pages show them: a table's own last commit is left out (it changes when the
    table is committed, the page should not)."""
    return ", ".join(t.commits) if t.source in ("rows", "page") and t.commits else "—"


def freshness_html(site: Site) -> str:
    rows = []
    for t in site.info:
        versions = ", ".join(f"{m} {'?' if v is None else v}/{c}" for m, (v, c) in t.versions.items())
        where = {"rows": "rows' git_commit", "page": "page's setup line", "file": "no newer than the file's commit",
                 "none": "not recorded"}[t.source]
        rows.append(f'<tr class="table-row {t.status}"><td><a href="../{_e(t.path)}">{_e(t.path)}</a>'
                    f'{" <span class=badge>claims</span>" if t.claims else ""}</td><td>{_e(versions)}</td>'
                    f"<td>{_e(shown_commits(t))} <small>({_e(where)})</small></td>"
                    f'<td><span class="badge {t.status}">{t.status}</span></td>'
                    f"<td>{'<br>'.join(f'<code>{_e(c)}</code>' for c in t.refresh) if t.status != FRESH else ''}</td></tr>")
    return ('<p>A table is <b>stale</b> when its rows predate a method\'s current <code>version</code> (its fixed-seed '
            'outputs have changed since), <b>unknown</b> when that cannot be told from what the table records, '
            '<b>fresh</b> otherwise. Versions: rows\' / current.</p>'
            '<figure class="plot bars" data-bars="freshness"><svg></svg></figure>'
            '<table class="fresh"><thead><tr><th>table</th><th>methods: rows\' version / current</th><th>rows\' commit'
            '</th><th>status</th><th>refresh</th></tr></thead><tbody>' + "".join(rows) + "</tbody></table>")


def gpu_html(site: Site) -> str:
    parts = []
    if site.compile_md:
        parts.append('<p>Kernel compile report (no GPU needed, not timings): <a href="../gpu/compile.md">gpu/compile.md'
                     "</a>.</p>")
    if not site.gpu:
        parts.append('<p class="empty">No GPU run committed yet. On a CUDA machine, <code>attnbench gpu_check</code> '
                     "writes <code>results/gpu/&lt;device&gt;/</code> (scaling tables, figures, README); commit it and "
                     "run <code>attnbench site</code>: its rankings and frontiers appear here.</p>")
    for dev, settings in site.gpu:
        meta = dev / "versions.json"
        info = json.loads(meta.read_text()) if meta.is_file() else {}
        facts = ", ".join(f"{k} {info[k]}" for k in ("gpu", "torch", "triton", "cuda", "git_commit") if k in info)
        parts.append(f'<h3>{_e(dev.name)}</h3><p>{_e(facts + " · " if facts else "")}'
                     f'<a href="../gpu/{_e(dev.name)}/README.md">the run\'s README</a></p>')
        parts += [setting_html(s) for s in settings] or ["<p>No scaling table in this folder yet.</p>"]
    return "".join(parts)


def render_html(site: Site) -> str:
    colour = colours(site)
    gpu_settings = [s for _, ss in site.gpu for s in ss]
    data = {"colours": colour, "settings": [_setting_json(s) for s in site.settings + gpu_settings + [site.card_plot]],
            "bars": {"claims": [[v, sum(c["verdict"] == v for c in site.claims), VERDICT_COLOURS[v]]
                                for v in VERDICT_COLOURS],
                     "freshness": [[k, sum(t.status == k for t in site.info), c] for k, c in STATUS_COLOURS.items()]}}
    blob = json.dumps(data, allow_nan=False, default=str).replace("</", "<\\/")
    head = headline_rows(site)
    summary = "".join(f"<li><b>{_e(label)}</b>: {_e(text)}</li>" for label, text in head)
    body = [
        '<header><h1>attnbench: which attention approximation, within which error, and how much faster?</h1>'
        "<p>Every number below comes from the committed tables under <code>results/</code> (nothing is rerun): "
        "per setting, the fastest method whose error stays within each budget, its speed-up over exact attention with "
        "its 95 % interval, and <i>none</i> where nothing qualifies (use exact attention there). Hover a point for its "
        "knobs, interval, load and commit; click a method for its card. CPU rows: a 2-core machine.</p>"
        f"<ul class=\"headline\">{summary}</ul>"
        '<nav><a href="#answer">rankings</a> <a href="#claims">claims</a> <a href="#cards">method cards</a> '
        '<a href="#freshness">freshness</a> <a href="#gpu">GPU</a> <a href="../LEADERBOARD.md">markdown</a></nav>'
        "</header>",
        '<section id="answer"><h2>The answer first: rankings by error budget</h2>'
        + "".join(setting_html(s) for s in site.settings) + "</section>",
        '<section id="claims"><h2>The papers\' claims, checked</h2>' + claims_html(site) + "</section>",
        '<section id="cards"><h2>Method cards</h2><p>Every registered method, plugins included; a card places it '
        "among the others on SmolLM2 q/k/v (figure: all committed cards, layers 10 and 25).</p>"
        + cards_html(site) + "</section>",
        '<section id="freshness"><h2>Freshness of the committed tables</h2>' + freshness_html(site) + "</section>",
        '<section id="gpu"' + ("" if site.gpu else ' data-empty="1"') + "><h2>GPU</h2>" + gpu_html(site) + "</section>",
        "<footer>Written by <code>attnbench site</code> (runners/site.py) from the committed tables; "
        "<code>attnbench site --check</code> says whether this page is current.</footer>",
        '<div id="tooltip" hidden></div>',
    ]
    return ("<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            "<title>attnbench results</title><style>" + CSS + "</style></head><body>" + "\n".join(body)
            + f'<script type="application/json" id="data">{blob}</script><script>{JS}</script></body></html>\n')


def headline_rows(site: Site) -> list[tuple[str, str]]:
    """(setting at n = 8,192, its ranking across budgets in one line), for the page's top and the README."""
    out = []
    for s in site.settings:
        g = next((g for g in s.groups if g == _n_label(HEADLINE_N)), None)
        if g is None:
            continue
        cells = [f"{budget_text(s, b)}: {point_text(s, p)}" for b, p in zip(s.budgets, rank(s, g))]
        out.append((f"{s.title} ({g})", "; ".join(cells)))
    return out


CSS = """
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0 auto;max-width:1280px;padding:0 18px;
color:#1d232a;background:#fbfbfa}
h1{font-size:1.55em;margin:.7em 0 .3em}h2{border-bottom:2px solid #d5d9de;padding-bottom:.2em;margin-top:1.6em}
h3{margin:.9em 0 .2em}a{color:#1f5fa8}code{background:#eef0f2;padding:0 .25em;border-radius:3px;font-size:.92em}
nav a{margin-right:1em}.headline{margin:.4em 0;padding-left:1.2em}.what{color:#4a5560;margin:.1em 0 .5em}
.split{display:flex;flex-wrap:wrap;gap:18px;align-items:flex-start}.rank{flex:1 1 520px;min-width:420px}
figure.plot{flex:0 0 600px;max-width:600px;margin:0;background:#fff;border:1px solid #dde1e5;border-radius:6px;padding:6px}
figure.bars{flex:none;max-width:760px}svg{display:block;width:100%;height:auto}
table{border-collapse:collapse;width:100%;font-size:.9em;background:#fff}
th,td{border:1px solid #dde1e5;padding:3px 6px;text-align:left;vertical-align:top}thead th{background:#f0f2f4}
tr.rank-row:hover{background:#f4f8fc;cursor:pointer}tr.rank-row.sel>th{background:#e3eefa}
td.none{color:#8a949e;font-style:italic}.k{color:#5b6570;font-size:.92em}.v{font-weight:600;white-space:nowrap}
.slow{color:#b06000;font-size:.85em}.badge{border-radius:3px;padding:0 .35em;font-size:.8em;background:#e0e4e8}
.badge.fresh{background:#d8efd9}.badge.stale{background:#f8d4d4}.badge.unknown{background:#e4e7ea}
.verdict{color:#fff;border-radius:3px;padding:1px 6px;font-weight:600;white-space:nowrap}
.claims td.measured{font-size:.88em;max-width:460px}.missing{background:#fff8e1;border-left:3px solid #f9a825;padding:4px 8px}
.norm,.groups{margin:4px 0;font-size:.85em}.norm span{margin-right:.4em;color:#5b6570}
button{font:inherit;border:1px solid #c4cad0;background:#fff;border-radius:3px;margin:0 3px 3px 0;cursor:pointer}
button.on{background:#1f5fa8;color:#fff;border-color:#1f5fa8}.legend{font-size:.82em}
.legend span{display:inline-block;margin-right:10px;cursor:pointer}.legend i{display:inline-block;width:10px;height:10px;
border-radius:50%;margin-right:3px;vertical-align:middle}
#tooltip{position:absolute;background:#1d232a;color:#fff;padding:6px 8px;border-radius:4px;font-size:12.5px;
pointer-events:none;max-width:380px;z-index:10;line-height:1.35}
article.card{margin:.35em 0}article.card summary{cursor:pointer}article.card img{max-width:720px;width:100%}
article.card:target{outline:3px solid #f9a825;border-radius:4px}.points{font-size:.8em}.empty{color:#5b6570;font-style:italic}
footer{margin:2.5em 0 1.5em;color:#5b6570;font-size:.85em}
"""

JS = r"""
const DATA = JSON.parse(document.getElementById('data').textContent);
const NS = 'http://www.w3.org/2000/svg';
const TIP = document.getElementById('tooltip');
const el = (tag, attrs, parent) => { const e = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v); if (parent) parent.appendChild(e); return e; };
const fmt = v => v == null ? '—' : Math.abs(v) >= 100 ? v.toFixed(0) : Math.abs(v) >= 10 ? v.toFixed(1) :
  Math.abs(v) >= 0.01 || v === 0 ? String(+v.toPrecision(3)) : v.toExponential(1);
const esc = s => String(s).replace(/[&<>"]/g, c => ({'&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;'}[c]));

function scale(lo, hi, a, b, log) {
  const f = log ? Math.log10 : (v => v); const l = f(lo), h = f(hi);
  const s = v => a + (f(v) - l) / ((h - l) || 1) * (b - a); s.lo = lo; s.hi = hi; s.log = log; return s;
}
function ticks(lo, hi, log) {
  if (!log) { const step = Math.pow(10, Math.floor(Math.log10((hi - lo) || 1))); const out = [];
    for (let v = Math.ceil(lo / step) * step; v <= hi + 1e-9; v += step) out.push(+v.toPrecision(6));
    return out.length > 8 ? out.filter((_, i) => i % 2 === 0) : out; }
  const out = []; for (let e = Math.floor(Math.log10(lo)); e <= Math.ceil(Math.log10(hi)); e++)
    for (const m of [1, 2, 5]) { const v = m * Math.pow(10, e); if (v >= lo * 0.999 && v <= hi * 1.001) out.push(v); }
  return out.length > 9 ? out.filter(v => String(v).replace(/0|\./g, '') === '1') : out;
}
function extent(vals, log, pad) {
  let lo = Math.min(...vals), hi = Math.max(...vals);
  if (log) { lo = lo / pad; hi = hi * pad; } else { const d = (hi - lo) || Math.abs(hi) || 1; lo -= d * 0.08; hi += d * 0.08; }
  return [lo, hi];
}
function tooltip(ev, p, s, norm) {
  const lines = [`<b>${esc(p.m)}</b> ${esc(p.k || '')}`, `${esc(p.g)}`,
    `${esc(norm ? s.x2_label : s.x_label)}: ${fmt(norm ? p.x2 : p.x)}`,
    `${esc(s.y_label)}: ${fmt(p.y)}${s.speedup ? '×' : ''}` +
      (p.lo != null && p.hi != null ? ` [${fmt(p.lo)}, ${fmt(p.hi)}] (95 % interval)`
        : s.speedup ? ' (no interval in this table)' : ''),
    `load (1 min): ${p.load == null ? 'not recorded in this table' : fmt(p.load)}`,
    `commit: ${esc(p.commit || 'not recorded')} · rows ${esc(p.status)}`, `table: ${esc(p.table)}`];
  for (const [k, v] of Object.entries(p.extra || {})) lines.push(`${esc(k)}: ${typeof v === 'number' ? fmt(v) : esc(v)}`);
  if (p.note) lines.push(`<i>${esc(p.note)}</i>`);
  if (p.card) lines.push('click: its card');
  TIP.innerHTML = lines.join('<br>'); TIP.hidden = false;
  TIP.style.left = (ev.pageX + 14) + 'px'; TIP.style.top = (ev.pageY + 12) + 'px';
}
function openCard(name) {
  const a = document.getElementById('card-' + name); if (!a) return;
  a.querySelector('details').open = true; location.hash = 'card-' + name;
}
function frontier(pts) {  // the points no other point beats on both error (lower) and benefit (higher)
  const s = pts.filter(p => p.ranked).sort((a, b) => a.ex - b.ex || b.y - a.y); const out = []; let best = -Infinity;
  for (const p of s) if (p.y > best) { out.push(p); best = p.y; } return out;
}
function plot(fig, s, norm) {
  const svg = fig.querySelector('svg'); svg.innerHTML = '';
  const W = 600, H = 390, L = 62, R = 14, T = 14, B = 46; svg.setAttribute('viewBox', `0 0 ${W} ${H}`);
  const pts = s.points.filter(p => p.g === s.group).map(p => ({...p, ex: norm ? p.x2 : p.x}))
    .filter(p => p.ex != null && p.y != null && (!s.x_log || p.ex > 0) && (!s.y_log || p.y > 0));
  const label = norm ? s.x2_label : s.x_label;
  if (!pts.length) {
    el('text', {x: W / 2, y: H / 2, 'text-anchor': 'middle', fill: '#777'}, svg).textContent = 'no rows for ' + s.group;
    return;
  }
  const budgets = (s.budgets || []).filter(b => b != null && (!s.x_log || b > 0));
  const xs = pts.map(p => p.ex).concat(budgets);
  const ys = pts.flatMap(p => [p.y, p.lo, p.hi]).filter(v => v != null && (!s.y_log || v > 0));
  if (s.speedup) ys.push(1);
  const [x0, x1] = extent(xs, s.x_log, 1.35), [y0, y1] = extent(ys, s.y_log, 1.3);
  const X = scale(x0, x1, L, W - R, s.x_log), Y = scale(y0, y1, H - B, T, s.y_log);
  for (const v of ticks(x0, x1, s.x_log)) { el('line', {x1: X(v), x2: X(v), y1: T, y2: H - B, stroke: '#eceef0'}, svg);
    el('text', {x: X(v), y: H - B + 15, 'text-anchor': 'middle', 'font-size': 11, fill: '#444'}, svg).textContent = fmt(v); }
  for (const v of ticks(y0, y1, s.y_log)) { el('line', {x1: L, x2: W - R, y1: Y(v), y2: Y(v), stroke: '#eceef0'}, svg);
    el('text', {x: L - 6, y: Y(v) + 4, 'text-anchor': 'end', 'font-size': 11, fill: '#444'}, svg)
      .textContent = fmt(v) + (s.speedup ? '×' : ''); }
  el('rect', {x: L, y: T, width: W - R - L, height: H - B - T, fill: 'none', stroke: '#9aa3ab'}, svg);
  el('text', {x: (L + W - R) / 2, y: H - 8, 'text-anchor': 'middle', 'font-size': 12}, svg)
    .textContent = label + (s.x_log ? ' (log)' : '');
  const mid = (T + H - B) / 2;
  el('text', {x: 14, y: mid, 'text-anchor': 'middle', 'font-size': 12, transform: `rotate(-90 14 ${mid})`}, svg)
    .textContent = s.y_label + (s.y_log ? ' (log)' : '');
  for (const b of budgets) {
    el('line', {x1: X(b), x2: X(b), y1: T, y2: H - B, stroke: '#f9a825', 'stroke-dasharray': '5 3', class: 'budget'}, svg);
    el('text', {x: X(b) + 3, y: T + 12, 'font-size': 10.5, fill: '#b07800'}, svg).textContent = '≤ ' + b;
  }
  if (s.speedup && y0 < 1 && y1 > 1) {
    el('line', {x1: L, x2: W - R, y1: Y(1), y2: Y(1), stroke: '#555', 'stroke-dasharray': '2 3'}, svg);
    el('text', {x: W - R - 4, y: Y(1) - 4, 'text-anchor': 'end', 'font-size': 10.5, fill: '#555'}, svg)
      .textContent = 'exact (1×)';
  }
  const f = frontier(pts);
  if (f.length > 1) el('polyline', {points: f.map(p => `${X(p.ex)},${Y(p.y)}`).join(' '), fill: 'none', stroke: '#333',
    'stroke-width': 1.2, 'stroke-opacity': 0.55, class: 'frontier'}, svg);
  for (const p of pts) {
    const c = DATA.colours[p.m] || '#555', cx = X(p.ex), cy = Y(p.y);
    if (p.lo != null && p.hi != null && (!s.y_log || p.lo > 0))
      el('line', {x1: cx, x2: cx, y1: Y(p.lo), y2: Y(p.hi), stroke: c, 'stroke-width': 1.5}, svg);
    const dot = el('circle', {cx, cy, r: 5.5, fill: p.status === 'stale' ? '#fff' : c, stroke: c, 'stroke-width': 1.6,
      'fill-opacity': p.ranked ? 0.9 : 0.25, class: 'pt', 'data-method': p.m}, svg);
    dot.style.cursor = p.card ? 'pointer' : 'default';
    dot.addEventListener('mouseenter', ev => tooltip(ev, p, s, norm));
    dot.addEventListener('mousemove', ev => { TIP.style.left = (ev.pageX + 14) + 'px'; TIP.style.top = (ev.pageY + 12) + 'px'; });
    dot.addEventListener('mouseleave', () => { TIP.hidden = true; });
    dot.addEventListener('click', () => { if (p.card) openCard(p.card); });
  }
  const legend = fig.querySelector('.legend');
  if (legend) {
    legend.innerHTML = '';
    for (const m of [...new Set(pts.map(p => p.m))]) {
      const p = pts.find(q => q.m === m), sp = document.createElement('span');
      sp.innerHTML = `<i style="background:${DATA.colours[m] || '#555'}"></i>${esc(m)}`;
      if (p.card) sp.onclick = () => openCard(p.card);
      legend.appendChild(sp);
    }
  }
}
function bars(fig, items) {
  const svg = fig.querySelector('svg'); svg.innerHTML = ''; const W = 760, H = 86; svg.setAttribute('viewBox', `0 0 ${W} ${H}`);
  const total = items.reduce((a, it) => a + it[1], 0) || 1; let x = 10, k = 0;
  for (const [name, n, c] of items) { if (!n) continue; const w = (W - 20) * n / total;
    el('rect', {x, y: 8, width: w, height: 30, fill: c, class: 'bar'}, svg);
    el('text', {x: x + w / 2, y: 28, 'text-anchor': 'middle', fill: '#fff', 'font-size': 13, 'font-weight': 600}, svg)
      .textContent = n;
    el('text', {x: x + w / 2, y: 54 + 14 * (k++ % 2), 'text-anchor': 'middle', 'font-size': 11.5, fill: '#333'}, svg)
      .textContent = name; x += w; }
}
for (const fig of document.querySelectorAll('figure.plot[data-key]')) {
  const s = DATA.settings.find(z => z.key === fig.dataset.key); if (!s) continue;
  const art = fig.closest('article'); let norm = 0;
  const draw = () => { plot(fig, s, norm);
    for (const b of fig.querySelectorAll('.groups button')) b.classList.toggle('on', b.textContent === s.group);
    if (art) for (const r of art.querySelectorAll('tr.rank-row')) r.classList.toggle('sel', r.dataset.group === s.group); };
  const gdiv = fig.querySelector('.groups');
  for (const g of s.groups) {
    const b = document.createElement('button');
    b.textContent = g; b.onclick = () => { s.group = g; draw(); }; gdiv.appendChild(b);
  }
  if (art) {
    for (const r of art.querySelectorAll('tr.rank-row')) r.onclick = ev => {
      if (ev.target.tagName !== 'A' && r.dataset.group) { s.group = r.dataset.group; draw(); } };
    for (const b of art.querySelectorAll('.norm button')) b.onclick = () => { norm = +b.dataset.norm;
      for (const o of art.querySelectorAll('.norm button')) o.classList.toggle('on', o === b);
      for (const t of art.querySelectorAll('table.ranking')) t.hidden = +t.dataset.norm !== norm; draw(); }; }
  draw();
}
for (const fig of document.querySelectorAll('figure.bars')) bars(fig, DATA.bars[fig.dataset.bars] || []);
const fromHash = () => { if (location.hash.startsWith('#card-')) openCard(location.hash.slice(6)); };
window.addEventListener('hashchange', fromHash); fromHash();
"""


# ------------------------------------------------------------------------------ the markdown twin, figures, README

def _md_cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def ranking_markdown(s: Setting, alt: bool = False) -> list[str]:
    head = ["", *[budget_text(s, b) for b in s.budgets]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for g in s.groups:
        lines.append("| " + " | ".join([g] + [_md_cell(point_text(s, p, markdown=True)) for p in rank(s, g, alt)]) + " |")
    return lines


def render_markdown(site: Site) -> str:
    lines = [
        "# Leaderboard: which method, within which error budget, and how much faster",
        "",
        "Written by `attnbench site` from the committed tables under `results/` (nothing is rerun); the interactive "
        "page with every point's knobs, interval, load and commit is [site/index.html](site/index.html). Per setting: "
        "the fastest method whose error stays within each budget, its speed-up over exact attention with its 95 % "
        "bootstrap interval (paired with exact in the same process), and *none* where nothing qualifies (exact attention "
        "is then the answer). *slower than exact*: the best qualifying method still loses to exact attention here. CPU "
        "rows: a 2-core machine; speed-ups on a GPU differ (see the GPU section of the page).",
        "",
    ]
    for s in site.settings:
        lines += [f"## {s.title}", "", s.what, ""]
        if s.x2_label:
            lines += [f"By {s.x_label}:", ""]
        lines += ranking_markdown(s) + [""]
        if s.x2_label:
            lines += [f"By {s.x2_label}:", ""] + ranking_markdown(s, alt=True) + [""]
        if s.points:
            lines += [f"![{s.title}](figures/leaderboard_{s.key}.png)", ""]
        lines += [m for m in s.missing] + ([""] if s.missing else [])
        tables = sorted({p.table for p in s.points})
        if tables:
            lines += ["Rows: " + ", ".join(f"[{t}]({t})" for t in tables) + ".", ""]
    stale = [t for t in site.info if t.status != FRESH]
    lines += ["## Freshness", "",
              f"{sum(t.status == FRESH for t in site.info)} of {len(site.info)} committed tables are fresh (their rows "
              "carry every method's current `version`), "
              f"{sum(t.status == STALE for t in site.info)} stale, {sum(t.status == UNKNOWN for t in site.info)} unknown "
              "(the table does not record when its rows were made well enough to tell)." + (" Not fresh:" if stale else ""),
              ""]
    if stale:
        lines += ["| table | status | rows' commit | refresh |", "|---|---|---|---|"]
        lines += [f"| [{t.path}]({t.path}){' (claims)' if t.claims else ''} | {t.status} | {shown_commits(t)} | "
                  + "; then ".join(f"`{_md_cell(c)}`" for c in t.refresh) + " |" for t in stale]
        lines.append("")
    return "\n".join(lines)


def figure_paths(site: Site, figures_dir: Path) -> dict[str, Path]:
    return {s.key: figures_dir / f"leaderboard_{s.key}.png" for s in site.settings if s.points}


def write_figures(site: Site, figures_dir: Path) -> list[Path]:
    """One PNG per setting: a panel per group, error vs benefit, budgets dashed, exact at 1×."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, NullFormatter

    colour = colours(site)
    written = []
    for s in site.settings:
        if not s.points:
            continue
        groups = [g for g in s.groups if any(p.group == g for p in s.points)]
        cols = min(4, len(groups))
        rows = math.ceil(len(groups) / cols)
        fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.4 * rows), squeeze=False)
        for ax, g in zip(axes.flat, groups):
            pts = [p for p in s.points if p.group == g and (p.x > 0 or not s.x_log)]
            for p in pts:
                yerr = [[p.y - p.lo], [p.hi - p.y]] if p.lo is not None and p.hi is not None else None
                ax.errorbar(p.x, p.y, yerr=yerr, fmt="o", ms=5, color=colour.get(p.method, "#555"),
                            mfc="white" if p.status == STALE else colour.get(p.method, "#555"),
                            alpha=0.9 if p.ranked else 0.3, label=p.method)
            for b in s.budgets:
                if not math.isinf(b):
                    ax.axvline(b, color="#f9a825", ls="--", lw=1)
            if s.speedup:
                ax.axhline(1, color="#555", ls=":", lw=1)
            ax.set_xscale("log" if s.x_log else "linear")
            ax.set_yscale("log" if s.y_log else "linear")
            ax.set_title(g, fontsize=10)
            ax.grid(alpha=0.25)
            for axis in (ax.xaxis, ax.yaxis):
                axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
                axis.set_minor_formatter(NullFormatter())
        for ax in list(axes.flat)[len(groups):]:
            ax.axis("off")
        handles: dict[str, Any] = {}
        for ax in axes.flat:
            for h, lab in zip(*ax.get_legend_handles_labels()):
                handles.setdefault(lab, h)
        fig.legend(handles.values(), handles.keys(), loc="center right", fontsize=8, frameon=False)
        fig.supxlabel(s.x_label + (" (log)" if s.x_log else ""), fontsize=9)
        fig.supylabel(s.y_label + (" (log)" if s.y_log else ""), fontsize=9)
        fig.suptitle(s.title + " (dashed: budgets; dotted: exact)", fontsize=10)
        fig.tight_layout(rect=(0, 0, 1 - 1.3 / fig.get_figwidth(), 1))
        path = figure_paths(site, figures_dir)[s.key]
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110, metadata={"Software": None})
        plt.close(fig)
        written.append(path)
    return written


def readme_block(site: Site) -> str:
    """The README's leaderboard block: the headline ranking at n = 8,192 and the links."""
    lines = [MARK_START, "", f"**Which method, within which error, how much faster?** The ranking at n = {HEADLINE_N:,} "
             "(the fastest method within each error budget, speed-up over exact attention [95 % interval], CPU; "
             "*none*: use exact):", ""]
    lines += ["| setting | error | fastest within each budget |", "|---|---|---|"]
    for s in site.settings:
        if _n_label(HEADLINE_N) in s.groups:
            cells = [_md_cell(f"≤ {b:g}: {point_text(s, p, markdown=True)}")
                     for b, p in zip(s.budgets, rank(s, _n_label(HEADLINE_N)))]
            lines.append(f"| {s.title} | {s.x_label} | " + "<br>".join(cells) + " |")
    lines += ["", "Every setting, budget and frontier: [results/LEADERBOARD.md](results/LEADERBOARD.md); interactive "
              "(hover: knobs, interval, load, commit; click: the method's card; freshness of every table): "
              "[results/site/index.html](results/site/index.html) (`attnbench site`; its screenshot is below).", "",
              MARK_END]
    return "\n".join(lines)


def with_readme_block(readme: str, block: str) -> str:
    if MARK_START not in readme or MARK_END not in readme:
        raise ValueError(f"README.md has no {MARK_START} … {MARK_END} block.")
    head, rest = readme.split(MARK_START, 1)
    return head + block + rest.split(MARK_END, 1)[1]


# ------------------------------------------------------------------------------ headless Chromium (DevTools on a pipe)

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars", "--force-device-scale-factor=1"]


def chromium_binary() -> str | None:
    """Chromium (Debian's ``chromium``) or Chrome on PATH, None without one."""
    return next((b for b in ("chromium", "chromium-browser", "google-chrome", "chrome") if shutil.which(b)), None)


class Browser:
    """Headless Chromium driven over the DevTools protocol on a pipe (``--remote-debugging-pipe``: no port, no
    dependency). ``open(url)`` loads a page in a fresh tab, recording console errors, uncaught exceptions and
    every request's URL; ``evaluate``, ``mouse`` and ``screenshot`` act on it."""

    def __init__(self, width: int = 1280, height: int = 1000, binary: str | None = None, timeout: float = 60):
        binary = binary or chromium_binary()
        if binary is None:
            raise FileNotFoundError("no chromium on PATH (Debian: apt-get install -y chromium).")
        self.timeout, self.width, self.height = timeout, width, height
        self.profile = tempfile.mkdtemp(prefix="attnbench-chromium-")
        cmd_r, self._cmd_w = os.pipe()
        self._out_r, out_w = os.pipe()

        def fds() -> None:  # the browser reads commands on fd 3 and answers on fd 4 (copies above 10 first:
            import fcntl   # dup2 onto the same number would keep the pipe's close-on-exec flag)

            a, b = fcntl.fcntl(cmd_r, fcntl.F_DUPFD, 10), fcntl.fcntl(out_w, fcntl.F_DUPFD, 10)
            os.dup2(a, 3)
            os.dup2(b, 4)

        self.proc = subprocess.Popen([binary, *CHROMIUM_FLAGS, f"--user-data-dir={self.profile}",
                                      f"--window-size={width},{height}", "--remote-debugging-pipe", "about:blank"],
                                     preexec_fn=fds, close_fds=False, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(cmd_r)
        os.close(out_w)
        self._buf, self._id, self.session = b"", 0, None
        self.console_errors: list[str] = []
        self.requests: list[str] = []

    def _read(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buf:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([self._out_r], [], [], max(0.0, left))
            if not ready:
                raise TimeoutError("chromium did not answer in time")
            chunk = os.read(self._out_r, 1 << 16)
            if not chunk:
                raise EOFError("chromium closed its DevTools pipe")
            self._buf += chunk
        raw, self._buf = self._buf.split(b"\0", 1)
        msg = json.loads(raw)
        self._record(msg)
        return msg

    def _record(self, msg: dict[str, Any]) -> None:
        method, p = msg.get("method"), msg.get("params", {})
        if method == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
            self.console_errors.append(" ".join(str(a.get("value", a.get("description", ""))) for a in p.get("args", [])))
        elif method == "Runtime.exceptionThrown":
            d = p.get("exceptionDetails", {})
            self.console_errors.append(d.get("exception", {}).get("description") or d.get("text", "exception"))
        elif method == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
            self.console_errors.append(p["entry"].get("text", ""))
        elif method == "Network.requestWillBeSent":
            self.requests.append(p.get("request", {}).get("url", ""))

    def _wait(self, pred: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        deadline = time.monotonic() + self.timeout
        while True:
            msg = self._read(deadline)
            if pred(msg):
                return msg

    def send(self, method: str, params: dict[str, Any] | None = None, session: bool = True) -> dict[str, Any]:
        self._id += 1
        msg: dict[str, Any] = {"id": self._id, "method": method, "params": params or {}}
        if session and self.session:
            msg["sessionId"] = self.session
        os.write(self._cmd_w, json.dumps(msg).encode() + b"\0")
        reply = self._wait(lambda m, i=self._id: m.get("id") == i)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply.get("result", {})

    def open(self, url: str) -> None:
        target = self.send("Target.createTarget", {"url": "about:blank"}, session=False)["targetId"]
        self.session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True}, session=False)["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.send(f"{domain}.enable")
        self.send("Emulation.setDeviceMetricsOverride", {"width": self.width, "height": self.height,
                                                         "deviceScaleFactor": 1, "mobile": False})
        self.send("Page.navigate", {"url": url})
        self._wait(lambda m: m.get("method") == "Page.loadEventFired")

    def evaluate(self, expression: str) -> Any:
        r = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True})
        if "exceptionDetails" in r:
            raise RuntimeError(r["exceptionDetails"].get("exception", {}).get("description", "evaluation failed"))
        return r.get("result", {}).get("value")

    def mouse(self, kind: str, x: float, y: float) -> None:
        """A real mouse event at page-viewport coordinates: 'mouseMoved', 'mousePressed', 'mouseReleased'."""
        extra = {"button": "left", "clickCount": 1} if kind != "mouseMoved" else {}
        self.send("Input.dispatchMouseEvent", {"type": kind, "x": x, "y": y, **extra})

    def screenshot(self, path: Path, full_page: bool = False) -> Path:
        import base64

        params: dict[str, Any] = {"format": "png"}
        if full_page:
            size = self.evaluate("[document.documentElement.scrollWidth, document.documentElement.scrollHeight]")
            params.update(captureBeyondViewport=True, clip={"x": 0, "y": 0, "width": size[0], "height": size[1], "scale": 1})
        Path(path).write_bytes(base64.b64decode(self.send("Page.captureScreenshot", params)["data"]))
        return Path(path)

    def close(self) -> None:
        try:
            self.send("Browser.close", session=False)
        except (OSError, EOFError, TimeoutError, RuntimeError):
            pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        for fd in (self._cmd_w, self._out_r):
            try:
                os.close(fd)
            except OSError:
                pass
        shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self) -> "Browser":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def screenshot(index: Path, out: Path) -> Path:
    """The page's first screen (1280 × 1000) as a PNG."""
    with Browser() as b:
        b.open(index.resolve().as_uri())
        return b.screenshot(out)


# ------------------------------------------------------------------------------ command line

def pages(site: Site, results_dir: Path, readme: Path | None) -> dict[Path, str]:
    """The text files ``attnbench site`` writes (path -> content)."""
    out = {results_dir / "site" / "index.html": render_html(site), results_dir / "LEADERBOARD.md": render_markdown(site)}
    if readme is not None and readme.is_file() and MARK_START in (text := readme.read_text()):
        out[readme] = with_readme_block(text, readme_block(site))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="attnbench site", description=__doc__.splitlines()[0])
    ap.add_argument("--results-dir", default="results", help="the committed tables (default: results)")
    ap.add_argument("--readme", default="README.md", help="the README whose leaderboard block is filled ('' : none)")
    ap.add_argument("--check", action="store_true", help="write nothing; exit 1 when a page would change")
    ap.add_argument("--screenshot", action="store_true", help="also save <results-dir>/site/screenshot.png (chromium)")
    ap.add_argument("--stale", action="store_true", help="list the stale tables with their refresh commands and exit")
    args = ap.parse_args(argv)
    results_dir = Path(args.results_dir)
    if args.stale:
        info = freshness(results_dir)
        for t in info:
            if t.status != FRESH:
                when = {"file": "no newer than ", "none": ""}.get(t.source, "at ")
                print(f"{t.status:8} {t.path}{' (claims)' if t.claims else ''}: rows {when}{', '.join(t.commits) or '?'}; "
                      + "; then ".join(t.refresh))
        return 1 if any(t.status == STALE for t in info) else 0
    t0 = time.perf_counter()
    site = collect(results_dir)
    texts = pages(site, results_dir, Path(args.readme) if args.readme else None)
    changed = [p for p, text in texts.items() if not p.is_file() or p.read_text() != text]
    if args.check:
        print("would change: " + ", ".join(map(str, changed)) if changed else "pages up to date")
        return 1 if changed else 0
    for p in changed:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(texts[p])
    figs = write_figures(site, results_dir / "figures")
    if args.screenshot:
        figs.append(screenshot(results_dir / "site" / "index.html", results_dir / "site" / "screenshot.png"))
    stale = [t.path for t in site.info if t.status == STALE]
    print(f"wrote {', '.join(map(str, changed)) or 'no page (up to date)'}; {len(figs)} figures; "
          f"{len(stale)} stale table(s){': ' + ', '.join(stale) if stale else ''} ({time.perf_counter() - t0:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
