"""Results-row columns: a contract read by reports, plots and outside scripts.

Flat, snake_case, units in the name. A task fills the metrics it has and leaves the rest empty;
every config value also appears as ``method.<knob>`` / ``task.<knob>``.
"""
from __future__ import annotations

CONTRACT_COLUMNS = [
    "run_id", "status", "error", "method", "task", "n", "seed", "batch", "heads", "causal",
    "rel_fro_error", "rel_spec_error", "max_abs_error", "latency_ms", "latency_p10_ms", "latency_p90_ms",
    "exact_latency_ms", "speedup", "peak_mem_mb", "exact_peak_mem_mb", "top1", "top5", "fid", "is_mean",
    "is_std", "ppl", "score", "kept_fraction", "device", "torch_version", "git_commit", "wall_s",
]

# timing columns beyond the contract's: the speed-up's 95 % bootstrap interval, the pinned thread
# count, the raw samples (so any statistic can be recomputed), exact's quantiles and samples
TIMING_COLUMNS = [
    "speedup_lo", "speedup_hi", "num_threads", "latency_samples_ms", "exact_latency_p10_ms",
    "exact_latency_p90_ms", "exact_latency_samples_ms", "exact_shared", "budget_clipped",
]

# the measured values of a row (logged to wandb as metrics; everything else is config or identity)
METRIC_COLUMNS = [
    "rel_fro_error", "rel_spec_error", "max_abs_error", "latency_ms", "latency_p10_ms", "latency_p90_ms",
    "exact_latency_ms", "exact_latency_p10_ms", "exact_latency_p90_ms", "speedup", "speedup_lo", "speedup_hi",
    "peak_mem_mb", "exact_peak_mem_mb", "top1", "top5", "fid", "is_mean", "is_std", "ppl", "score",
    "kept_fraction", "wall_s",
]

# identity columns: never metrics even when numeric
IDENTITY_COLUMNS = {"run_id", "status", "error", "method", "task", "n", "seed", "batch", "heads", "head_dim",
                    "causal", "device", "torch_version", "cuda_version", "git_commit", "attnbench_version", "method_version",
                    "hostname",
                    "experiment",
                    "num_threads", "exact_shared", "budget_clipped", "dtype", "source", "sweep_dir", "finished_at", "preset",
                    "load_avg_1m"}

# the columns printed for a row in the terminal (summary tables)
KEY_COLUMNS = [
    "method", "task", "n", "seed", "status", "rel_fro_error", "rel_spec_error", "max_abs_error",
    "latency_ms", "exact_latency_ms", "speedup", "peak_mem_mb", "exact_peak_mem_mb",
    "top1", "top5", "fid", "is_mean", "ppl", "score", "kept_fraction",
]


def is_metric(column: str, value: object) -> bool:
    """A measured value (logged as a metric): numeric, not a config knob, not identity."""
    if column.startswith(("method.", "task.")) or column in IDENTITY_COLUMNS:
        return False
    return isinstance(value, (int, float)) and not isinstance(value, bool)
