"""Results rows on disk (one JSON file per run, replaced atomically) and the wandb logger."""
from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Mapping


def _clean(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if hasattr(v, "item") and getattr(v, "ndim", 1) == 0:
        return _clean(v.item())
    return v


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write ``obj`` as JSON to ``path`` via a temporary file and a rename (never half-written)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=1, default=str)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


class RunRecord:
    """The rows of one run, kept in ``<runs_dir>/<run_id>.json`` as ``{run_id, status, config, rows}``.

    ``status`` is ``running`` until ``finish`` sets ``ok`` or ``error``; a sweep skips a run whose
    file says ``ok``. Every ``add`` rewrites the file atomically, so a killed run keeps its rows.
    """

    def __init__(self, runs_dir: str | Path, run_id: str, config: Mapping[str, Any]) -> None:
        self.path = Path(runs_dir) / f"{run_id}.json"
        self.data: dict[str, Any] = {"run_id": run_id, "status": "running", "config": dict(config), "rows": []}

    @staticmethod
    def load(runs_dir: str | Path, run_id: str) -> dict[str, Any] | None:
        path = Path(runs_dir) / f"{run_id}.json"
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError:
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

    def finish(self) -> None: ...


class WandbLogger:
    """One wandb run per attnbench run; runs of one experiment share a group.

    Offline unless WANDB_MODE says otherwise (``logger.mode``, default ``offline``).
    """

    def __init__(self, cfg: Mapping[str, Any], run_id: str, config: Mapping[str, Any], group: str | None) -> None:
        os.environ.setdefault("WANDB_MODE", str(cfg.get("mode", "offline")))
        os.environ.setdefault("WANDB_SILENT", "true")
        import wandb

        wandb_dir = Path(cfg.get("dir", "results/wandb"))
        wandb_dir.mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(
            project=cfg.get("project", "attnbench"),
            group=group,
            name=run_id,
            config=dict(config),
            dir=str(wandb_dir),
            reinit="finish_previous",
        )

    def log_row(self, row: Mapping[str, Any]) -> None:
        nums = {k: v for k, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        self.run.log(nums)
        for k, v in nums.items():
            self.run.summary[k] = v

    def finish(self) -> None:
        self.run.finish()


def make_logger(cfg: Mapping[str, Any] | None, run_id: str, config: Mapping[str, Any], group: str | None):
    name = (cfg or {}).get("name", "none")
    if name == "none":
        return NullLogger()
    if name == "wandb":
        return WandbLogger(cfg, run_id, config, group)
    raise ValueError(f"unknown logger={name!r}; available: wandb, none.")
