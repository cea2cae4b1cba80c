"""An experiment's grid: which configs its sweep runs, and which saved rows belong to it.

``load_grid`` reads ``conf/experiment/<name>.yaml`` (its sweep's methods × presets × the other swept
knobs, and ``task.n``); ``apply_grid`` keeps the latest row of each config of that grid and says
what is covered and missing. Used by ``runners.report`` (and anything else that reads an
experiment's rows the way the report does).
"""
from __future__ import annotations

import itertools
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

PROJECT_ROOT = Path(__file__).resolve().parent.parent
CONF_DIR = PROJECT_ROOT / "conf"
# Two names of one experiment (GloVe-style error vs budget, run on SmolLM2 attention): rows saved
# under either count, the config that exists decides the report's name.
ALIASES = {"glove_error": "smollm2_error", "smollm2_error": "glove_error"}
TIME_COLUMNS = ("finished_at", "timestamp", "time", "created_at", "started_at")  # when a row was written


class UnknownExperiment(LookupError):
    """No conf/experiment/<name>.yaml (nor an alias of one)."""


def experiment_names(conf_dir: str | Path = CONF_DIR) -> list[str]:
    return sorted(p.stem for p in (Path(conf_dir) / "experiment").glob("*.yaml"))


def resolve_experiment(name: str, conf_dir: str | Path = CONF_DIR) -> tuple[str, list[str]]:
    """(config name, experiment names whose rows count). ``name`` may be an alias
    (``ALIASES``): rows saved under either name of a renamed experiment are read."""
    known = experiment_names(conf_dir)
    if name in known:
        cfg_name = name
    elif ALIASES.get(name) in known:
        cfg_name = ALIASES[name]
    else:
        aliases = [f"{a} (= {c})" for a, c in ALIASES.items() if c in known and a not in known]
        raise UnknownExperiment(f"unknown experiment {name!r}; known: {', '.join(known + aliases) or '(none)'} "
                                f"(conf/experiment/*.yaml under {conf_dir})")
    names = [cfg_name] + [a for a, c in ALIASES.items() if c == cfg_name and a != cfg_name]
    return cfg_name, names


@dataclass
class Axis:
    """One swept dimension: the row columns it sets and its values (canonical strings)."""
    label: str
    columns: tuple[str, ...]
    values: list[tuple]
    # for rows that lack the column (older rows): other column -> {its value: this axis's value}
    fallback: dict[str, dict[str, str]] = field(default_factory=dict)


@dataclass
class Grid:
    experiment: str
    axes: list[Axis] = field(default_factory=list)
    method_max_n: dict[str, int] = field(default_factory=dict)  # the experiment's task.method_max_n
    conf_dir: Path = CONF_DIR

    def covers(self, preset: str | None, method: str | None) -> bool:
        """Whether ``preset`` has settings for ``method`` (``conf/method/preset/<preset>/``); a preset
        without any per-method folder (older configs, budgets only) covers every method."""
        if preset in (None, "none"):
            return True
        folder = Path(self.conf_dir) / "method" / "preset" / str(preset)
        return not folder.is_dir() or (folder / f"{method}.yaml").is_file()

    @property
    def columns(self) -> list[str]:
        return [c for a in self.axes for c in a.columns]

    def configs(self) -> list[tuple]:
        """Every combination of the axes' values, less the (method, preset) pairs that the preset
        does not cover (a sweep skips those jobs: ``runners.run``) and the n above a method's
        ``task.method_max_n``."""
        out = [sum(p, ()) for p in itertools.product(*(a.values for a in self.axes))]
        cols = self.columns
        if "method" in cols and "preset" in cols:
            im, ip = cols.index("method"), cols.index("preset")
            out = [c for c in out if self.covers(c[ip], c[im])]
        n_col = "n" if "n" in cols else "context_length"
        if "method" in cols and n_col in cols and self.method_max_n:  # n above a method's cap: not run
            im, i_n = cols.index("method"), cols.index(n_col)
            out = [c for c in out if c[im] not in self.method_max_n or float(c[i_n]) <= self.method_max_n[c[im]]]
        return out


def _canon(v: Any) -> str | None:
    """A comparable spelling of a config value: 64, 64.0 and '64' -> '64'; True -> 'true'."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return None
    if isinstance(v, (bool, np.bool_)):
        return str(bool(v)).lower()
    if isinstance(v, str):
        t = v.strip()
        if t.lower() in ("true", "false"):
            return t.lower()
        try:
            f = float(t)
        except ValueError:
            return t
    else:
        try:
            f = float(v)
        except (TypeError, ValueError):
            return json.dumps(v, sort_keys=True, default=str)
    if math.isnan(f):
        return None
    return str(int(f)) if f.is_integer() else repr(f)


def _column_of(key: str, raw: dict) -> str | None:
    """The row column a sweep key sets: ``method``, ``seed``, ``preset`` (its name), ``task.*`` /
    ``method.*`` / ``preset.*`` as they are; another key through the task / method entry that
    interpolates it (``budget`` -> ``task.budget`` via ``task.budget: ${budget}``)."""
    if key in ("method", "seed", "preset") or key.startswith(("task.", "method.", "preset.")):
        return key
    for section in ("task", "method"):
        for k, v in (raw.get(section) or {}).items():
            if isinstance(v, str) and v.replace(" ", "") == "${" + key + "}":
                return f"{section}.{k}"
    return None


AXIS_LABELS = {"method": "methods", "seed": "seeds", "n": "n", "task.budget": "budgets", "preset": "presets",
               "preset.budget": "budgets"}


def _yaml(path: Path) -> dict:
    return OmegaConf.to_container(OmegaConf.load(path), resolve=False) or {}


def load_grid(name: str, conf_dir: str | Path = CONF_DIR) -> Grid:
    """The current grid of conf/experiment/<name>.yaml: its ``hydra.sweeper.params`` (methods,
    seeds, budgets, …, mapped to row columns) × its ``task.n`` values; the seed, when not swept,
    is the experiment's (or conf/config.yaml's) seed."""
    conf_dir = Path(conf_dir)
    raw = _yaml(conf_dir / "experiment" / f"{name}.yaml")
    params = ((raw.get("hydra") or {}).get("sweeper") or {}).get("params") or {}
    parser = OverridesParser.create()
    grid = Grid(name, conf_dir=conf_dir)
    for key, text in params.items():
        ov = parser.parse_override(f"{key}={text}")
        vals = list(ov.sweep_iterator()) if ov.is_sweep_override() else [ov.value()]
        if key == "task.n":
            ns = sorted({int(x) for v in vals for x in (v if isinstance(v, list) else [v])})
            grid.axes.append(Axis("n", ("n",), [(_canon(x),) for x in ns]))
            continue
        if vals and all(isinstance(v, dict) for v in vals):  # e.g. needle_case: {press, compression_ratio}
            subs = [(sk, _column_of(f"{key}.{sk}", raw)) for sk in sorted({k for v in vals for k in v})]
            subs = [(sk, col) for sk, col in subs if col]
            if subs:
                grid.axes.append(Axis(key, tuple(c for _, c in subs),
                                      list(dict.fromkeys(tuple(_canon(v.get(sk)) for sk, _ in subs) for v in vals))))
            continue
        col = _column_of(key, raw)
        if col == "preset":  # older rows carry no preset name: match them by the preset's budget
            budgets = {}
            for v in vals:
                f = conf_dir / "preset" / f"{v}.yaml"
                b = _yaml(f).get("budget") if f.is_file() else None
                if b is not None:
                    budgets[_canon(b)] = _canon(v)
            grid.axes.append(Axis("presets", ("preset",), list(dict.fromkeys((_canon(v),) for v in vals)),
                                  {"preset.budget": budgets, "task.budget": budgets} if budgets else {}))
            continue
        if col is None:
            print(f"[report] sweep key {key!r} of {name} sets no row column; not part of the grid filter",
                  file=sys.stderr)
            continue
        grid.axes.append(Axis(AXIS_LABELS.get(col, col), (col,), list(dict.fromkeys((_canon(v),) for v in vals))))
    have = set(grid.columns)
    if "method" not in have:
        for d in raw.get("defaults") or []:
            if isinstance(d, dict) and d.get("override /method"):
                grid.axes.insert(0, Axis("methods", ("method",), [(_canon(d["override /method"]),)]))
    if "seed" not in have:
        seed = raw.get("seed")
        if seed is None:
            base = conf_dir / "config.yaml"
            seed = _yaml(base).get("seed", 0) if base.is_file() else 0
        grid.axes.append(Axis("seeds", ("seed",), [(_canon(seed),)]))
    grid.method_max_n = {str(k): int(v) for k, v in ((raw.get("task") or {}).get("method_max_n") or {}).items()}
    task_n = (raw.get("task") or {}).get("n")
    if "n" not in set(grid.columns) and task_n is not None:
        ns = task_n if isinstance(task_n, list) else [task_n]
        grid.axes.append(Axis("n", ("n",), [(_canon(x),) for x in ns]))
    ctx = (raw.get("task") or {}).get("context_length")  # lm / kv_cache: one row per context length
    if "n" not in set(grid.columns) and "context_length" not in set(grid.columns) and ctx is not None:
        grid.axes.append(Axis("n", ("context_length",), [(_canon(x),) for x in (ctx if isinstance(ctx, list) else [ctx])]))
    order = {"methods": 0, "n": 2, "seeds": 3}
    grid.axes.sort(key=lambda a: order.get(a.label, 1))
    return grid


def row_times(rows: pd.DataFrame, results_dir: str | Path | None) -> pd.Series:
    """When each row was written (seconds since the epoch): a time column when the rows carry
    one (``TIME_COLUMNS``), else the mtime of ``<results_dir>/runs/<run_id>.json``; −inf when
    neither is known (then the later row in the table counts as later)."""
    t = pd.Series(np.nan, index=rows.index, dtype=float)
    for c in TIME_COLUMNS:
        if c in rows and rows[c].notna().any():
            v = pd.to_numeric(rows[c], errors="coerce")
            if v.isna().all():
                v = pd.to_datetime(rows[c], errors="coerce", utc=True).map(
                    lambda x: x.timestamp() if pd.notna(x) else np.nan)
            t = t.fillna(v.astype(float))
    if results_dir is not None and "run_id" in rows and t.isna().any():
        runs = Path(results_dir) / "runs"
        mt = {}
        for rid in rows.loc[t.isna(), "run_id"].dropna().unique():
            p = runs / f"{rid}.json"
            mt[rid] = p.stat().st_mtime if p.is_file() else np.nan
        t = t.fillna(rows["run_id"].map(mt).astype(float))
    return t.fillna(-np.inf)


@dataclass
class GridSelection:
    ok: pd.DataFrame
    errors: pd.DataFrame
    coverage: str
    missing: list[str]
    outside: int
    superseded: int


def apply_grid(rows: pd.DataFrame, grid: Grid, when: pd.Series) -> GridSelection:
    """Rows of the grid's configs only; of several rows of one config (method, swept knobs,
    seed, n), those of the latest run. An error row (no n) counts for its config unless an ok
    row of that config is newer."""
    rows = rows.assign(_when=when.reindex(rows.index).to_numpy(), _pos=np.arange(len(rows)))
    canon = pd.DataFrame({c: (rows[c].map(_canon) if c in rows else pd.Series(None, index=rows.index, dtype=object))
                          for c in grid.columns}, index=rows.index)
    for a in grid.axes:
        for other, mapping in a.fallback.items():
            if other in rows and len(a.columns) == 1:
                col = a.columns[0]
                canon[col] = canon[col].where(canon[col].notna(), rows[other].map(_canon).map(mapping))
    ok_status = rows["status"] == "ok"
    inside = pd.Series(True, index=rows.index)
    for a in grid.axes:
        tup = canon[list(a.columns)].apply(tuple, axis=1)
        hit = tup.isin(set(a.values))
        if a.columns == ("n",):
            hit |= ~ok_status & canon["n"].isna()  # error rows carry no n
        inside &= hit
    d, c = rows[inside], canon[inside]
    outside = int((~inside).sum())
    key_cols = list(grid.columns)
    run = d["run_id"].fillna(pd.Series(d.index.astype(str), index=d.index)) if "run_id" in d else \
        pd.Series(d.index.astype(str), index=d.index)
    keyed = c.assign(_run=run, _when=d["_when"], _pos=d["_pos"], _ok=d["status"] == "ok")
    ok_k = keyed[keyed["_ok"]].sort_values(["_when", "_pos"], kind="stable")
    latest = ok_k.groupby(key_cols, dropna=False)["_run"].last()
    ok_keep = ok_k.join(latest.rename("_latest"), on=key_cols)
    ok_idx = ok_keep.index[ok_keep["_run"] == ok_keep["_latest"]]
    # error rows: latest error run per config (without n), dropped when a newer ok row exists
    no_n = [k for k in key_cols if k != "n"]
    err_k = keyed[~keyed["_ok"]].sort_values(["_when", "_pos"], kind="stable")
    err_keep = err_k.groupby(no_n, dropna=False).tail(1) if len(err_k) else err_k
    if len(err_keep) and len(ok_k):
        newest_ok = ok_k.groupby(no_n, dropna=False)["_when"].max().rename("_ok_when")
        err_keep = err_keep.join(newest_ok, on=no_n)
        err_keep = err_keep[~(err_keep["_ok_when"] >= err_keep["_when"])]
    ok = d.loc[ok_idx].sort_values("_pos").drop(columns=["_when", "_pos"])
    errors = d.loc[err_keep.index].sort_values("_pos").drop(columns=["_when", "_pos"])
    superseded = len(d) - len(ok) - len(errors)
    # coverage: per axis, values with at least one ok row; and whole configs
    got = c.loc[ok.index]
    parts = []
    for a in grid.axes:
        have = set(got[list(a.columns)].apply(tuple, axis=1)) if len(got) else set()
        if len(a.values) > 1 or a.label in ("methods", "n"):
            parts.append(f"{len(have & set(a.values))}/{len(a.values)} {a.label}")
    configs = grid.configs()
    have_cfg = set(got[key_cols].apply(tuple, axis=1)) if len(got) else set()
    missing = [", ".join(f"{col}={v}" for col, v in zip(key_cols, cfg)) for cfg in configs if cfg not in have_cfg]
    coverage = " × ".join(parts) + f" = {len(configs) - len(missing)}/{len(configs)} configs"
    return GridSelection(ok, errors, coverage, missing, outside, superseded)
