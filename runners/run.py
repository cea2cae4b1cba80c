"""Run one config: seed, build method and task, measure, save one row per task result."""
from __future__ import annotations

import hashlib
import json
import os
import platform
import random
import subprocess
import time
import traceback
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

import methods
from methods import to_plain
import tasks
from runners.log import RunRecord, make_logger
from runners.measure import Meter

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={name} was asked for but CUDA is not available; use device=cpu or device=auto.")
    return dev


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def git_commit() -> str:
    """HEAD's short hash, with '+dirty' when the working tree differs from it; 'unknown' outside git."""
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


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def run_identity(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The parts of the config that define a run (what a rerun must match to be skipped)."""
    return {
        "method": cfg["method"],
        "task": cfg["task"],
        "seed": cfg.get("seed", 0),
        "device": cfg.get("device", "auto"),
        "meter": cfg.get("meter", {}),
        "experiment": cfg.get("experiment_name"),
    }


def run_id_of(cfg: Mapping[str, Any]) -> str:
    blob = json.dumps(run_identity(cfg), sort_keys=True, default=str)
    name = cfg["method"].get("name", "method")
    return f"{cfg['task'].get('name', 'task')}-{name}-{hashlib.sha1(blob.encode()).hexdigest()[:12]}"


def flatten(prefix: str, d: Mapping[str, Any]) -> dict[str, Any]:
    """``{prefix}.{key}`` columns; nested mappings and lists become JSON strings."""
    out = {}
    for k, v in d.items():
        if k == "name":
            continue
        out[f"{prefix}.{k}"] = json.dumps(v, sort_keys=True) if isinstance(v, (dict, list)) else v
    return out


def run(cfg_in: Any, *, raise_errors: bool = False) -> list[dict[str, Any]]:
    """Run the config; return its rows. Skips (returns the saved rows) when an ``ok`` record
    of the same run exists, unless ``rerun`` is set. Errors are saved as a row with
    ``status=error``; ``raise_errors`` re-raises them afterwards."""
    cfg = to_plain(cfg_in)
    runs_dir = Path(cfg.get("results_dir", "results")) / "runs"
    run_id = run_id_of(cfg)
    previous = RunRecord.load(runs_dir, run_id)
    if previous and previous.get("status") == "ok" and not cfg.get("rerun", False):
        print(f"[attnbench] skip {run_id}: finished rows exist ({runs_dir / (run_id + '.json')}); +rerun=true forces.")
        return previous["rows"]

    seed = int(cfg.get("seed", 0))
    meter_cfg = cfg.get("meter", {})
    base: dict[str, Any] = {
        "run_id": run_id,
        "status": "ok",
        "error": None,
        "method": cfg["method"]["name"],
        "task": cfg["task"]["name"],
        "seed": seed,
        "experiment": cfg.get("experiment_name"),
        "torch_version": torch.__version__,
        "cuda_version": torch.version.cuda,
        "git_commit": git_commit(),
        "hostname": platform.node(),
    }
    base.update(flatten("method", cfg["method"]))
    if isinstance(cfg["method"].get("preset"), dict):
        base["method.preset"] = cfg["method"]["preset"].get("name")
    base.update(flatten("task", cfg["task"]))
    record = RunRecord(runs_dir, run_id, run_identity(cfg))
    logger = None
    t_start = time.perf_counter()
    try:
        device = resolve_device(str(cfg.get("device", "auto")))
        base["device"] = device_name(device)
        logger = make_logger(cfg.get("logger"), run_id, {**run_identity(cfg)}, cfg.get("experiment_name"))
        seed_everything(seed)
        method = methods.build(cfg["method"]).to(device)
        method.reseed(seed)
        base.update({f"method.{k}": v for k, v in method.hparams().items()})  # effective knob values
        task = tasks.build(cfg["task"], device=device, seed=seed)
        meter = Meter(device=device, warmup=int(meter_cfg.get("warmup", 1)), repeats=int(meter_cfg.get("repeats", 5)),
                      memory=bool(meter_cfg.get("memory", True)))
        for metrics in task.run(method, meter):
            row = {**base, **method.extra_stats(), **metrics, "wall_s": time.perf_counter() - t_start}
            record.add(row)
            logger.log_row(row)
            print_row(row)
        record.finish("ok")
    except Exception as exc:  # a failed run leaves an error row and lets the sweep go on
        message = f"{type(exc).__name__}: {exc}"
        row = {**base, "status": "error", "error": message, "wall_s": time.perf_counter() - t_start}
        record.add(row)
        record.finish("error", message)
        print(f"[attnbench] run {run_id} failed: {message}")
        if os.environ.get("ATTNBENCH_TRACEBACK"):
            traceback.print_exc()
        if raise_errors:
            raise
    finally:
        if logger is not None:
            logger.finish()
    return record.data["rows"]


KEY_COLUMNS = [
    "method", "task", "n", "seed", "status", "rel_fro_error", "rel_spec_error", "max_abs_error",
    "latency_ms", "exact_latency_ms", "speedup", "peak_mem_mb", "exact_peak_mem_mb",
    "top1", "top5", "fid", "is_mean", "ppl", "score", "kept_fraction",
]


def print_row(row: Mapping[str, Any]) -> None:
    parts = []
    for k in KEY_COLUMNS:
        v = row.get(k)
        if v is None:
            continue
        parts.append(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}")
    print("[attnbench] " + " ".join(parts), flush=True)
