"""Attention-level fidelity: error of a method against exact attention, and both costs, vs n."""
from __future__ import annotations

import json
from collections import OrderedDict
from typing import Any, Iterator

import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor

import methods
from methods.base import AttentionMethod
from runners.measure import Meter
from tasks import register
from tasks.base import Task
from tasks.sources import make_qkv

DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16, "bfloat16": torch.bfloat16}
EXACT_CACHE_BYTES = 2 << 30  # outputs of exact attention kept for reuse in this process (see Fidelity)
_exact_cache: OrderedDict[str, tuple[dict[str, Any], Tensor]] = OrderedDict()


def _exact_key(cfg: Any, n: int, seed: int, device: Any, causal: bool, scale: Any, meter: Meter) -> str:
    task = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    task.pop("n", None)
    return json.dumps([task, n, seed, str(device), causal, scale, meter.warmup, meter.repeats, meter.memory],
                      sort_keys=True, default=str)


def _remember_exact(key: str, row: dict[str, Any], out: Tensor) -> None:
    _exact_cache[key] = (row, out)
    while sum(o.numel() * o.element_size() for _, o in _exact_cache.values()) > EXACT_CACHE_BYTES and len(_exact_cache) > 1:
        _exact_cache.popitem(last=False)


def errors(approx: Tensor, exact: Tensor) -> dict[str, float]:
    """Relative Frobenius error (whole tensor), relative spectral-norm error (‖Ô−O‖₂/‖O‖₂ per
    (batch, head) matrix, averaged, as in KDEformer's GloVe experiment) and max-abs error."""
    a, e = approx.double(), exact.double()
    diff = a - e
    spec = torch.linalg.matrix_norm(diff, ord=2) / torch.linalg.matrix_norm(e, ord=2).clamp_min(1e-300)
    return {
        "rel_fro_error": float(diff.norm() / e.norm().clamp_min(1e-300)),
        "rel_spec_error": float(spec.mean()),
        "max_abs_error": float(diff.abs().max()),
    }


@register("fidelity")
class Fidelity(Task):
    """For each ``task.n``: build q, k, v from ``task.source``, run the method and exact SDPA
    (same inputs, same run), and yield one row with errors, latencies and peak memories.

    Exact runs only up to ``task.exact_max_n`` (beyond it the error columns stay empty).
    With ``task.share_exact`` (default true), exact attention on identical inputs (same task
    config, n, seed, device, meter settings) is measured once per process and its timing, memory
    and output are reused by later runs, e.g. by every method of a ``-m`` sweep; such rows have
    ``exact_shared`` true. The spectral norm is computed exactly (``torch.linalg.matrix_norm(ord=2)``)
    rather than by power iteration.
    """

    def run(self, method: AttentionMethod, meter: Meter) -> Iterator[dict[str, Any]]:
        cfg = self.cfg
        ns = cfg.get("n", 1024)
        ns = [int(x) for x in (ns if isinstance(ns, (list, tuple)) else [ns])]
        causal = bool(cfg.get("causal", False))
        dtype_name = str(cfg.get("dtype", "float32"))
        if dtype_name not in DTYPES:
            raise ValueError(f"task.dtype must be one of {sorted(DTYPES)}, got {dtype_name!r}.")
        dtype = DTYPES[dtype_name]
        exact_max_n = int(cfg.get("exact_max_n", 1 << 30))
        exact = methods.build("exact")
        share = bool(cfg.get("share_exact", True))
        for n in ns:
            data = make_qkv(cfg, n, self.seed, self.device, dtype)
            q, k, v = data["q"], data["k"], data["v"]
            scale = cfg.get("scale")
            scale = float(scale) if scale is not None else data.get("scale")
            row: dict[str, Any] = {
                "n": n, "batch": q.shape[0], "heads": q.shape[1], "head_dim": q.shape[-1], "causal": causal,
                "dtype": dtype_name, "source": cfg.get("source", "gaussian"),
            }
            method.reseed(self.seed)
            out = meter.measure(lambda: method(q, k, v, causal=causal, scale=scale), label=f"method_n{n}")
            row.update(meter.results[f"method_n{n}"].row())
            if n <= exact_max_n:
                key = _exact_key(cfg, n, self.seed, self.device, causal, scale, meter) if share else ""
                if key in _exact_cache:
                    exact_row, ref = _exact_cache[key]
                    row.update(exact_row, exact_shared=True)
                else:
                    ref = meter.measure(lambda: exact(q, k, v, causal=causal, scale=scale), label=f"exact_n{n}")
                    exact_row = meter.results[f"exact_n{n}"].row("exact_")
                    row.update(exact_row, exact_shared=False)
                    if share:
                        _remember_exact(key, exact_row, ref)
                row["speedup"] = row["exact_latency_ms"] / row["latency_ms"]
                row.update(errors(out, ref))
            row.update(method.extra_stats())
            yield row
