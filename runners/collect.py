"""Gather every run's rows under ``results/runs`` into one pandas table.

``attnbench collect [--results-dir results]`` prints one line per row (key columns) and
writes ``results/table.csv`` and ``results/table.parquet``.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

import warnings

from attnbench.core.schema import CONTRACT_COLUMNS, KEY_COLUMNS


def load_rows(results_dir: str | Path = "results") -> pd.DataFrame:
    """All rows of all runs, contract columns first (missing ones present and empty).

    An unreadable run file is named in a warning (``UnreadableRunFile``) and counted in
    ``df.attrs["unreadable"]``; its rows are missing from the table.
    """
    rows, bad = [], []
    for path in sorted((Path(results_dir) / "runs").glob("*.json")):
        try:
            data = json.loads(path.read_text())
            rows.extend(data.get("rows", []))
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as exc:
            bad.append(path)
            warnings.warn(f"unreadable run file {path} ({type(exc).__name__}: {exc}); its rows are not in the table.",
                          UnreadableRunFile, stacklevel=2)
    df = pd.DataFrame(rows)
    for c in CONTRACT_COLUMNS:
        if c not in df.columns:
            df[c] = None
    rest = sorted(c for c in df.columns if c not in CONTRACT_COLUMNS)
    df = df[CONTRACT_COLUMNS + rest]
    df.attrs["unreadable"] = [str(p) for p in bad]
    return df


class UnreadableRunFile(UserWarning):
    """A run file under results/runs that is not valid JSON (e.g. a disk that filled up)."""


def write_tables(df: pd.DataFrame, results_dir: str | Path = "results") -> list[Path]:
    out = Path(results_dir)
    out.mkdir(parents=True, exist_ok=True)
    csv, parquet = out / "table.csv", out / "table.parquet"
    df.to_csv(csv, index=False)
    # parquet needs one type per column: config columns mix ints, strings and None
    df.astype({c: "string" for c in df.columns if df[c].dtype == object}).to_parquet(parquet, index=False)
    return [csv, parquet]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results-dir", default="results")
    args = ap.parse_args(argv)
    df = load_rows(args.results_dir)
    paths = write_tables(df, args.results_dir)
    cols = [c for c in KEY_COLUMNS if c in df.columns and df[c].notna().any()]
    with pd.option_context("display.max_rows", 500, "display.width", 250, "display.float_format", "{:.4g}".format):
        print(df[cols].to_string(index=False) if len(df) else "(no rows)")
    print(f"{len(df)} rows -> {', '.join(map(str, paths))}")
    if df.attrs.get("unreadable"):
        print(f"{len(df.attrs['unreadable'])} unreadable run file(s) skipped: {', '.join(df.attrs['unreadable'])}")


if __name__ == "__main__":
    main()
