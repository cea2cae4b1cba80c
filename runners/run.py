"""Run one config: check it, seed, build method and task, measure, save rows, then log them."""
from __future__ import annotations

import hashlib
import json
import os
import platform
import random
import subprocess
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from attnbench import methods
from attnbench import tasks
from attnbench.core.knobs import preset_knobs, preset_methods
from attnbench.core.measure import METER_KNOBS, meter_from_config
from attnbench.core.progress import Progress
from attnbench.methods import to_plain
from attnbench.runners.log import RunRecord, make_logger
from attnbench.runners.summary import format_table, progress_line

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError as exc:
        raise ValueError(f"device={name!r} is not a device; use auto, cpu, cuda or cuda:N.") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={name} was asked for but CUDA is not available; use device=cpu or device=auto.")
    return dev


def _load_average() -> float | None:
    """The 1-minute load average when the run starts (what else the machine was doing; rows carry it)."""
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:  # not available on this platform
        return None


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def git_commit() -> str:
    """HEAD's short hash, with '+dirty' when the working tree differs from it, when attnbench runs from
    its clone (an editable install); 'unknown' otherwise (an installed wheel: ``attnbench_version``
    says which release ran, and a git repository around site-packages is not ours)."""
    if not (PROJECT_ROOT / ".git").exists():
        return "unknown"
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=PROJECT_ROOT, capture_output=True, text=True
        ).stdout.strip()
        return head + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def attnbench_version() -> str:
    from attnbench import __version__

    return __version__


def provenance() -> dict[str, Any]:
    """Where and with what a row was made: versions, commit, host and load (every runner's rows carry these)."""
    return {"torch_version": torch.__version__, "cuda_version": torch.version.cuda, "git_commit": git_commit(),
            "attnbench_version": attnbench_version(), "hostname": platform.node(), "load_avg_1m": _load_average()}


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def uncovered_preset(cfg: Mapping[str, Any]) -> str | None:
    """``"preset P has no settings for method M; …"`` when the config's preset does not cover its
    method, else None. A single run with such a pair is an error; a sweep (method × preset, where
    presets may cover only some methods) skips the job without a row."""
    name, method = _raw_name(cfg, "preset"), _raw_name(cfg, "method")
    if name in (None, "none") or method is None:
        return None
    try:
        if preset_knobs(str(name), str(method)) is not None:
            return None
    except ValueError:  # unknown preset: resolve_config makes the error row
        return None
    return f"preset {name!r} has no settings for method {method!r}; it covers {preset_methods(str(name))}"


def missing_package(cfg: Mapping[str, Any]) -> str | None:
    """Why the config's method cannot run here when it is a plugin whose package is not installed: its
    module does not import for a missing module, or its class's ``missing()`` says so (the peers,
    ``methods/peers``); else None. A single run with it is an error; a sweep skips the job without a row."""
    name = _raw_name(cfg, "method")
    try:
        if not isinstance(name, str) or not methods.REGISTRY.is_plugin(name):
            return None
        missing = getattr(methods.get(name), "missing", None)
    except ValueError as exc:  # the plugin does not import (the ImportError is under the registry's errors)
        cause = exc.__cause__
        while cause is not None and not isinstance(cause, ImportError):
            cause = cause.__cause__
        return str(exc) if cause is not None else None
    reason = missing() if callable(missing) else None
    return f"method {name!r}: {reason}" if reason else None


def resolve_config(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The validated, normalised config of a run: the method's effective knobs, the task's knobs
    with defaults filled in, the meter's knobs, seed, device, preset and experiment.

    Bad values raise ``ValueError`` naming the key, before any tensor is built.
    """
    seed = cfg.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}.")
    method_cfg = methods.resolve(cfg["method"])
    preset = dict(cfg.get("preset") or {"name": "none"})
    if preset.get("name", "none") != "none" and preset_knobs(preset["name"], method_cfg["name"]) is None:
        raise ValueError(uncovered_preset({"preset": preset, "method": method_cfg}) + ".")
    meter_cfg = dict(cfg.get("meter") or {})
    unknown = sorted(set(meter_cfg) - set(METER_KNOBS))
    if unknown:
        raise ValueError(f"meter has no knob(s) {unknown}; it accepts {list(METER_KNOBS)}.")
    return {
        "method": method_cfg,
        "task": tasks.resolve(cfg["task"]),
        "seed": seed,
        "device": str(cfg.get("device", "auto")),
        "meter": meter_cfg,
        "preset": preset,
        "experiment": cfg.get("experiment_name"),
    }


def run_identity(resolved: Mapping[str, Any]) -> dict[str, Any]:
    """What a rerun must match to be skipped: the resolved config (equal runs, equal ids)."""
    return {k: resolved[k] for k in ("method", "task", "seed", "device", "meter", "preset", "experiment")}


def run_id_of(identity: Mapping[str, Any]) -> str:
    blob = json.dumps(identity, sort_keys=True, default=str)
    method = identity["method"].get("name", "method") if isinstance(identity.get("method"), Mapping) else "method"
    task = identity["task"].get("name", "task") if isinstance(identity.get("task"), Mapping) else "task"
    return f"{task}-{method}-{hashlib.sha1(blob.encode()).hexdigest()[:12]}"


def flatten(prefix: str, d: Mapping[str, Any]) -> dict[str, Any]:
    """``{prefix}.{key}`` columns; nested mappings and lists become JSON strings."""
    out = {}
    for k, v in d.items():
        if k == "name":
            continue
        out[f"{prefix}.{k}"] = json.dumps(v, sort_keys=True) if isinstance(v, (dict, list)) else v
    return out


def _raw_name(cfg: Mapping[str, Any], group: str) -> Any:
    part = cfg.get(group)
    return part.get("name") if isinstance(part, Mapping) else part


def run(cfg_in: Any, *, raise_errors: bool = False, sweep_dir: str | None = None) -> list[dict[str, Any]]:
    """Run the config; return its rows.

    Skips (returns the saved rows) when an ``ok`` record of the same run exists, unless
    ``rerun`` is set. Errors, bad config values included, are saved as a row with
    ``status=error``; ``raise_errors`` re-raises them afterwards. The logger starts only after
    the task has finished measuring and receives the buffered rows.
    """
    cfg = to_plain(cfg_in)
    runs_dir = Path(cfg.get("results_dir", "results")) / "runs"
    quiet = bool(cfg.get("quiet", False))
    Progress.quiet = quiet
    t_start = time.perf_counter()
    base: dict[str, Any] = {
        "status": "ok", "error": None, "method": _raw_name(cfg, "method"), "task": _raw_name(cfg, "task"),
        "seed": cfg.get("seed", 0), "experiment": cfg.get("experiment_name"), "sweep_dir": sweep_dir,
        **provenance(),
    }
    skip = uncovered_preset(cfg) if sweep_dir is not None else None
    if skip:
        print(f"[attnbench] skip: {skip} (a method × preset pair of the sweep that the preset does not cover)")
        return []
    skip = missing_package(cfg) if sweep_dir is not None else None
    if skip:
        print(f"[attnbench] skip: {skip}")
        return []
    try:
        resolved = resolve_config(cfg)
    except Exception as exc:  # a bad config is an error row too (a sweep goes on)
        identity = {k: cfg.get(k) for k in ("method", "task", "seed", "device", "meter", "experiment_name")}
        return _fail(RunRecord(runs_dir, run_id_of(identity), identity), base, exc, t_start, raise_errors)

    identity = run_identity(resolved)
    run_id = run_id_of(identity)
    record = RunRecord(runs_dir, run_id, identity)
    previous = RunRecord.load(runs_dir, run_id)
    if previous and previous.get("status") == "ok" and not cfg.get("rerun", False):
        print(f"[attnbench] skip {run_id}: finished rows exist ({record.path}); +rerun=true forces.")
        return previous["rows"]

    base.update(run_id=run_id, method=methods.label(resolved["method"]), task=resolved["task"]["name"],
                seed=resolved["seed"], preset=resolved["preset"].get("name"))
    base.update(flatten("method", resolved["method"]))
    base.update(flatten("task", resolved["task"]))
    base.update({f"preset.{k}": v for k, v in resolved["preset"].items() if k != "name"})
    rows: list[dict[str, Any]] = []
    try:
        device = resolve_device(resolved["device"])
        meter = meter_from_config(resolved["meter"], device)
        base.update(device=device_name(device), num_threads=meter.num_threads)
        seed_everything(resolved["seed"])
        method = methods.build(resolved["method"]).to(device)
        base["method_version"] = method.version  # the outputs' version (methods/base.py); the site checks freshness by it
        method.reseed(resolved["seed"])
        task = tasks.build(resolved["task"], device=device, seed=resolved["seed"])
        expected = task.num_rows()
        for metrics in task.run(method, meter):
            row = {**base, **method.extra_stats(), **metrics, "wall_s": time.perf_counter() - t_start,
                   "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
            if row.get("budget_clipped"):
                print(f"[attnbench] note: a budget of {row['method']} exceeds n={row.get('n')}; it was clipped to n "
                      "(the method is exact there); the row says budget_clipped=true.")
            record.add(row)
            rows.append(row)
            if not quiet:
                print(progress_line(row, len(rows), expected, time.perf_counter() - t_start), flush=True)
        if not rows:
            raise ValueError(f"task {resolved['task']['name']} produced no rows; check task.* (e.g. task.n).")
        record.finish("ok")
    except Exception as exc:  # a failed run leaves an error row and lets the sweep go on
        rows = _fail(record, base, exc, t_start, False, rows)
        _log(cfg, resolved, run_id, rows, sweep_dir, failed=f"{type(exc).__name__}: {exc}")
        if raise_errors:
            raise
        return rows
    print(format_table(rows), flush=True)
    print(f"[attnbench] rows: {record.path}")
    _log(cfg, resolved, run_id, rows, sweep_dir)
    return rows


def _fail(record: RunRecord, base: dict[str, Any], exc: Exception, t_start: float, raise_errors: bool,
          rows: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    message = f"{type(exc).__name__}: {exc}"
    row = {**base, "run_id": record.run_id, "status": "error", "error": message,
           "wall_s": time.perf_counter() - t_start, "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    record.add(row)
    record.finish("error", message)
    print(f"[attnbench] run {record.run_id} failed: {message}", flush=True)
    if os.environ.get("ATTNBENCH_TRACEBACK"):
        traceback.print_exc()
    if raise_errors:
        raise exc
    return [*(rows or []), row]


def _log(cfg: Mapping[str, Any], resolved: Mapping[str, Any], run_id: str, rows: list[dict[str, Any]],
         sweep_dir: str | None, failed: str | None = None) -> None:
    """Start the logger now that nothing is timed any more, give it the rows, finish it. The
    config names the method as rows do (``method.label``: an import target's class name)."""
    config = {**resolved, "method": {**resolved["method"], "label": methods.label(resolved["method"])}}
    logger = make_logger(cfg.get("logger"), run_id, config, group=resolved.get("experiment") or sweep_dir)
    try:
        for row in rows:
            if row.get("status") == "ok":
                logger.log_row(row)
    finally:
        logger.finish(error=failed)
