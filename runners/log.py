"""Results rows on disk (one JSON file per run, replaced atomically) and the wandb logger."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Mapping

from attnbench.core.files import replace_atomic
from attnbench.core.schema import is_metric


def _clean(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if hasattr(v, "item") and getattr(v, "ndim", 1) == 0:
        return _clean(v.item())
    return v


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write ``obj`` as JSON to ``path`` with ``replace_atomic``."""
    def dump(tmp: str) -> None:
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=1, default=str)

    replace_atomic(path, dump)


class RunRecord:
    """The rows of one run, kept in ``<runs_dir>/<run_id>.json`` as ``{run_id, status, config, rows}``.

    ``status`` is ``running`` until ``finish`` sets ``ok`` or ``error``; a sweep skips a run whose
    file says ``ok``. Every ``add`` rewrites the file atomically, so a killed run keeps its rows.
    """

    def __init__(self, runs_dir: str | Path, run_id: str, config: Mapping[str, Any]) -> None:
        self.run_id = run_id
        self.path = Path(runs_dir) / f"{run_id}.json"
        self.data: dict[str, Any] = {"run_id": run_id, "status": "running", "config": dict(config), "rows": []}

    @staticmethod
    def load(runs_dir: str | Path, run_id: str) -> dict[str, Any] | None:
        """The saved record, or ``None``; an unreadable file is named in a warning (it will be
        overwritten by this run)."""
        path = Path(runs_dir) / f"{run_id}.json"
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            print(f"[attnbench] warning: run file {path} is unreadable ({exc}); this run overwrites it.")
            return None

    def add(self, row: Mapping[str, Any]) -> None:
        self.data["rows"].append({k: _clean(v) for k, v in row.items()})
        write_json_atomic(self.path, self.data)

    def finish(self, status: str, error: str | None = None) -> None:
        self.data["status"] = status
        self.data["error"] = error
        write_json_atomic(self.path, self.data)


class NullLogger:
    def log_row(self, row: Mapping[str, Any]) -> None: ...

    def finish(self, error: str | None = None) -> None: ...


class WandbLogger:
    """One wandb run per attnbench run, created after all measurements (see ``runners.run``).

    Config = the run's effective knobs (after presets); metrics = the measured columns only
    (``core.schema.is_metric``); ``group`` = experiment name or sweep folder, ``job_type`` = task,
    tags = method / task / source / preset. Rows with ``n`` use it as their step. System-stats
    sampling and console capture are off. Offline unless WANDB_MODE says otherwise
    (``logger.mode``, default ``offline``); a failed run is marked failed with its error.
    """

    def __init__(self, cfg: Mapping[str, Any], run_id: str, config: Mapping[str, Any], group: str | None) -> None:
        os.environ.setdefault("WANDB_MODE", str(cfg.get("mode", "offline")))
        os.environ.setdefault("WANDB_SILENT", "true")
        import wandb

        wandb_dir = Path(cfg.get("dir", "results"))  # wandb adds its own wandb/ folder under it
        wandb_dir.mkdir(parents=True, exist_ok=True)
        task = config.get("task", {})
        method = config.get("method", {})
        tags = [str(x) for x in (method.get("label", method.get("name")), task.get("name"), task.get("source"),
                                  (config.get("preset") or {}).get("name")) if x and x != "none"]
        self.run = wandb.init(
            project=cfg.get("project", "attnbench"),
            group=str(group) if group else None,
            job_type=task.get("name"),
            tags=tags,
            name=run_id,
            config=dict(config),
            dir=str(wandb_dir),
            reinit="finish_previous",
            settings=wandb.Settings(x_disable_stats=True, console="off", silent=True),
        )
        self._step_defined = False

    def log_row(self, row: Mapping[str, Any]) -> None:
        metrics = {k: v for k, v in row.items() if is_metric(k, v)}
        if row.get("n") is not None:
            if not self._step_defined:
                self.run.define_metric("n")
                self.run.define_metric("*", step_metric="n")
                self._step_defined = True
            metrics["n"] = row["n"]
        self.run.log(metrics)
        for k, v in metrics.items():
            self.run.summary[k] = v

    def finish(self, error: str | None = None) -> None:
        if error:
            self.run.summary["error"] = error
        run_dir = getattr(self.run, "dir", None)
        mode = os.environ.get("WANDB_MODE", "offline")
        self.run.finish(exit_code=1 if error else 0)
        if run_dir and mode == "offline":
            offline = Path(run_dir).parent
            print(f"[attnbench] wandb (offline): {offline}; upload with: wandb sync {offline}")


def make_logger(cfg: Mapping[str, Any] | None, run_id: str, config: Mapping[str, Any], group: str | None):
    name = (cfg or {}).get("name", "none")
    if name == "none":
        return NullLogger()
    if name == "wandb":
        return WandbLogger(cfg, run_id, config, group)
    raise ValueError(f"unknown logger={name!r}; available: wandb, none.")
