"""The ``attnbench`` command: Hydra jobs and sweeps, and the runners as subcommands.

    attnbench method=wildcat task=lm [key=value ...]    one job (-m: a sweep), as ``python run.py``
    attnbench report --experiment scaling               a runner: attnbench.runners.report
    attnbench --version

Configs come from the package (``attnbench/conf``; ``conf/`` in a clone) plus whatever installed
plugins put on Hydra's search path; rows and Hydra's folders go under ``results/`` of the current
directory (``results_dir=...`` moves them).
"""
from __future__ import annotations

import importlib
import os
import sys
from typing import Callable

# a runner's name -> what it does (one line; `attnbench --help` lists them)
COMMANDS: dict[str, str] = {
    "check": "conformance battery for one method: attnbench check method=NAME",
    "collect": "every row under results/runs -> results/table.csv and .parquet",
    "report": "an experiment's table and figures (--experiment NAME), or a method card (--card NAME)",
    "claims": "the papers' claims and their verdicts from the committed tables -> results/claims.md",
    "site": "the front page (rankings, frontiers, claims, cards, freshness) -> results/site/index.html",
    "train_thresholds": "LATTE's head-wise thresholds trained on SmolLM2 (and its training curve)",
    "peers_report": "the suite's baselines beside their public packages -> results/peers_table.md",
    "kv_layers": "per-layer attention error of each KV-cache press on SmolLM2",
    "conv_oracle": "Conv-Basis: the best k-conv basis of SmolLM2 attention (exact DP) beside the reconstruction",
    "lm_layers": "the layer map: SmolLM2 perplexity with each method in one / the first / the last l layers",
    "performer_unbiased": "Performer's estimator on fixed inputs: bias and error vs random features m",
    "gpu_check": "on a CUDA device: kernels compiled and compared, then the scaling experiments",
    "bench_latte": "benchmark (prints only): LATTE's CPU path vs exact causal SDPA",
    "bench_biggan_tail": "benchmark (prints only): latency spread of methods inside tiny BigGAN",
    "bench_meter": "benchmark (prints only): the meter's timing protocol on exact attention",
}


def _usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: attnbench [KEY=VALUE ...] [-m]     a job or a sweep (Hydra overrides, as python run.py)",
             "       attnbench COMMAND [ARGS ...]       a runner (COMMAND --help for its options)",
             "       attnbench --version", "", "commands:"]
    lines += [f"  {name:<{width}}  {text}" for name, text in COMMANDS.items()]
    return "\n".join(lines)


def runner(name: str) -> Callable[[list[str] | None], object]:
    """The ``main(argv)`` of runner ``name`` (``-`` and ``_`` alike)."""
    key = name.replace("-", "_")
    if key not in COMMANDS:
        raise KeyError(name)
    return importlib.import_module(f"attnbench.runners.{key}").main


def main(argv: list[str] | None = None) -> None:
    """Console-script entry: a subcommand when the first word names a runner, else a Hydra job."""
    args = sys.argv[1:] if argv is None else list(argv)
    if args and args[0] in ("--version", "-V"):
        from attnbench import __version__

        print(f"attnbench {__version__}")
        return
    if args and args[0].replace("-", "_") in COMMANDS:
        sys.argv = [f"attnbench {args[0]}", *args[1:]]
        result = runner(args[0])(args[1:])
        raise SystemExit(result if isinstance(result, int) else 0)
    if args and not args[0].startswith("-") and "=" not in args[0]:
        raise SystemExit(f"attnbench: unknown command {args[0]!r}; a job takes KEY=VALUE overrides.\n{_usage()}")
    if args in (["--help"], ["-h"]):
        print(_usage() + "\n")
    if argv is not None:
        sys.argv = [sys.argv[0], *args]
    run_job()


def run_job() -> None:
    """The Hydra job (``sys.argv`` holds its overrides)."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # the suite prints its own progress lines
    os.environ.setdefault("TQDM_DISABLE", "1")
    _hydra_main()


def _job(cfg) -> None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from attnbench.runners.run import run
    from attnbench.runners.sweep import next_steps, note_job

    hc = HydraConfig.get()
    single = hc.mode == RunMode.RUN
    rows = run(cfg, raise_errors=False, sweep_dir=None if single else hc.sweep.dir)
    note_job(hc.runtime.output_dir, rows)
    if single:
        failed = any(r.get("status") == "error" for r in rows)
        if not failed and not cfg.get("quiet", False):
            print(next_steps())
        if failed:  # a single run exits non-zero on error; in a sweep the error row is kept and the sweep goes on
            raise SystemExit(1)


def _hydra_main() -> None:
    import hydra

    hydra.main(version_base="1.3", config_path="conf", config_name="config")(_job)()
