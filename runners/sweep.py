"""The end of a ``-m`` sweep: a Hydra callback prints one summary table of the sweep's rows.

Each job writes the run ids of its rows to ``<job output dir>/attnbench_runs.txt``
(``note_job``); ``SweepSummary.on_multirun_end`` reads those files under the sweep folder and
the run files they name, so skipped (already finished) runs appear in the summary too.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback

from attnbench.runners.summary import format_table

def next_steps() -> str:
    """What to try after a single run, in the form the user ran it (``python run.py`` or ``attnbench``)."""
    prog = "python run.py" if Path(sys.argv[0]).name == "run.py" else "attnbench"
    lines = [(f"{prog} -m method=exact,wildcat,kdeformer task.n=1024,4096,16384", "a sweep (summary at the end)"),
             (f"{prog} +experiment=scaling logger=none", "a paper-style experiment (a sweep)"),
             ("attnbench collect", "all rows -> results/table.csv"),
             ("attnbench report --experiment scaling", "its table and figures")]
    width = max(len(c) for c, _ in lines)
    return "\n".join(["[attnbench] next:", *(f"  {c:<{width}}   # {t}" for c, t in lines)])


MARKER = "attnbench_runs.txt"


def note_job(output_dir: str | Path, rows: list[dict[str, Any]]) -> None:
    """Record which run files hold this job's rows (read by ``SweepSummary``)."""
    ids = sorted({str(r["run_id"]) for r in rows if r.get("run_id")})
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("\n".join(ids) + "\n")


def sweep_rows(sweep_dir: str | Path, results_dir: str | Path) -> list[dict[str, Any]]:
    """The rows of every job of the sweep in ``sweep_dir``, in job order."""
    rows: list[dict[str, Any]] = []
    markers = sorted(Path(sweep_dir).glob(f"*/{MARKER}"), key=lambda p: (len(p.parent.name), p.parent.name))
    for marker in markers:
        for run_id in marker.read_text().split():
            path = Path(results_dir) / "runs" / f"{run_id}.json"
            try:
                rows.extend(json.loads(path.read_text()).get("rows", []))
            except (OSError, json.JSONDecodeError) as exc:
                print(f"[attnbench] warning: cannot read {path} ({exc}).")
    return rows


class SweepSummary(Callback):
    """Prints the summary table of a multirun when it ends."""

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        sweep_dir = config.hydra.sweep.dir
        rows = sweep_rows(sweep_dir, config.get("results_dir", "results"))
        ok = sum(r.get("status") == "ok" for r in rows)
        print(f"\n[attnbench] sweep {sweep_dir}: {len(rows)} rows ({ok} ok, {len(rows) - ok} errors)")
        print(format_table(rows))
        print("[attnbench] all rows: attnbench collect; figures: attnbench report --experiment NAME")
