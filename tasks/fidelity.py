"""Attention-level fidelity: error of a method against exact attention, and both costs, vs n."""
from __future__ import annotations

import json
from collections import OrderedDict
from typing import Any, Iterator

import torch
from torch import Tensor

from attnbench import methods
from attnbench.core.knobs import Bool, Choice, Float, Int, ListOf, Mapping_, Str
from attnbench.core.measure import Measurement, Meter
from attnbench.methods.base import DTYPES, AttentionMethod
from attnbench.tasks import register
from attnbench.tasks.base import Task, capped
from attnbench.tasks.datasets.sources import SOURCES, make_qkv

EXACT_CACHE_BYTES = 2 << 30  # outputs of exact attention kept for reuse in this process (see Fidelity)
_exact_cache: OrderedDict[str, tuple[Measurement, Tensor]] = OrderedDict()


def _exact_key(cfg: dict[str, Any], n: int, seed: int, device: Any, scale: Any, meter: Meter) -> str:
    task = {k: v for k, v in cfg.items() if k != "n"}
    timing = {k: getattr(meter, k) for k in ("warmup", "min_samples", "max_samples", "min_run_s", "max_run_s",
                                              "threshold", "block_ms", "memory", "num_threads")}
    return json.dumps([task, n, seed, str(device), scale, timing], sort_keys=True, default=str)


def _remember_exact(key: str, measured: Measurement, out: Tensor) -> None:
    _exact_cache[key] = (measured, out)
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


def grad_errors(approx: Tensor, exact: Tensor, d: int) -> dict[str, float]:
    """Relative Frobenius errors of gradients concatenated as [dq, dk, dv] on the last dim (d = q's head
    dim): all together (``grad_rel_fro_error``) and each one (``grad_q_rel_error`` …)."""
    a, e = approx.double(), exact.double()
    out = {"grad_rel_fro_error": float((a - e).norm() / e.norm().clamp_min(1e-300))}
    for name, sl in (("q", slice(0, d)), ("k", slice(d, 2 * d)), ("v", slice(2 * d, None))):
        out[f"grad_{name}_rel_error"] = float((a[..., sl] - e[..., sl]).norm() / e[..., sl].norm().clamp_min(1e-300))
    return out


def differentiated(attn: AttentionMethod, q: Tensor, k: Tensor, v: Tensor, timed: str, seed: int,
                   **kw: Any) -> tuple[Any, Tensor]:
    """(the callable to time, the forward output) for ``task.timed`` backward / forward_backward: the
    callable returns the gradients (dq, dk, dv) for a fixed Gaussian cotangent (seeded); ``backward`` runs
    autograd through the graph of one forward built here (retained), ``forward_backward`` a fresh forward
    each call."""
    leaves = [t.detach().requires_grad_(True) for t in (q, k, v)]
    with torch.enable_grad():
        out = attn(*leaves, **kw)
    cot = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    cot = cot.to(device=out.device, dtype=out.dtype)

    def grads(o: Tensor) -> tuple[Tensor, ...]:
        return torch.autograd.grad(o, leaves, cot, retain_graph=timed == "backward")

    if timed == "backward":
        return (lambda: grads(out)), out.detach()

    def forward_backward() -> tuple[Tensor, ...]:
        with torch.enable_grad():
            return grads(attn(*leaves, **kw))

    return forward_backward, out.detach()


def _bad(key: str, allowed: str, v: Any) -> Any:
    raise ValueError(f"{key} must be {allowed}, got {v!r}.")


@register("fidelity")
class Fidelity(Task):
    """For each ``task.n``: build q, k, v from ``task.source``, run the method and exact SDPA on
    the same inputs, timed interleaved by ``Meter.compare``, and yield one row with errors,
    latencies, the speed-up with its bootstrap interval, and peak memories.

    The error columns compare exact with the method's first call after ``reseed(seed)``, so they
    do not depend on the meter's settings. A method output with NaN or inf is an error naming
    the method and n. Exact runs only up to ``task.exact_max_n`` (beyond it the error columns stay
    empty). With ``task.share_exact``, exact attention on identical inputs (same task config, n,
    seed, device, meter settings) is measured once per process and its samples, memory and output
    are reused by later runs, e.g. by every method of a ``-m`` sweep in one process; such rows have
    ``exact_shared`` true and an unpaired interval. ``task.method_max_n`` ({method: n}) caps the
    n at which a method runs (a quadratic one in a scaling sweep); the skipped n are printed. The
    spectral norm is computed exactly (``torch.linalg.matrix_norm(ord=2)``) rather than by power
    iteration. ``task.timed`` (forward, backward, forward_backward) picks the timed region: with
    backward the method and exact are timed on the gradients of q, k, v through the graph of one
    forward (``differentiated``), and the row adds ``grad_*`` errors (``grad_errors``) to the forward
    output's; exact is then never shared.
    """

    knobs = {
        "source": Choice(*SOURCES),
        "n": ListOf(Int(1)),
        "batch": Int(1),
        "heads": Int(1),
        "head_dim": Int(1),
        "std": Float(0, lo_open=True),
        "radius": Float(0, lo_open=True),
        "layer": Int(0),
        "causal": lambda key, v: v if isinstance(v, bool) or v == "auto" else _bad(key, "true, false or auto", v),
        "scale": Float(0, lo_open=True, optional=True),
        "dtype": Choice(*DTYPES),
        "exact_max_n": Int(0),
        "share_exact": Bool(),
        "cache_dir": Str(),
        "glove_path": Str(optional=True),
        "method_max_n": Mapping_(),
        "timed": Choice("forward", "backward", "forward_backward"),
    }

    def num_rows(self) -> int:
        return len(self.cfg["n"])

    def run(self, method: AttentionMethod, meter: Meter) -> Iterator[dict[str, Any]]:
        cfg = self.cfg
        causal, dtype_name = cfg["causal"], cfg["dtype"]
        if causal == "auto":  # causal only for a causal-only method (e.g. Conv-Basis)
            causal = not method.supports_bidirectional
        exact = methods.build("exact")
        timed = cfg["timed"]
        if timed != "forward" and not method.supports_grad:
            raise ValueError(f"task.timed={timed} needs gradients, but method {method.name} has no autograd "
                             "(supports_grad=False).")
        for n in capped(cfg, method.name, cfg["n"], "n"):
            data = make_qkv(cfg, n, self.seed, self.device, DTYPES[dtype_name])
            q, k, v = data["q"], data["k"], data["v"]
            scale = cfg["scale"] if cfg["scale"] is not None else data.get("scale")
            row: dict[str, Any] = {
                "n": n, "batch": q.shape[0], "heads": q.shape[1], "head_dim": q.shape[-1], "causal": causal,
                "dtype": dtype_name, "source": cfg["source"],
            }

            @torch.no_grad()  # inference: a method with parameters (LATTE's θ) must not build a graph
            def approx() -> Tensor:
                return method(q, k, v, causal=causal, scale=scale)

            @torch.no_grad()
            def reference() -> Tensor:
                return exact(q, k, v, causal=causal, scale=scale)

            method.reseed(self.seed)
            fwd = None  # timed != forward: the forward outputs (method, exact) beside the timed gradients
            if timed != "forward":
                approx, out_m = differentiated(method, q, k, v, timed, self.seed, causal=causal, scale=scale)
                reference, out_e = differentiated(exact, q, k, v, timed, self.seed, causal=causal, scale=scale) \
                    if n <= cfg["exact_max_n"] else (None, None)
                fwd = (out_m, out_e)
            if n > cfg["exact_max_n"]:
                out, ref = meter.measure(approx, label=f"n{n}"), None
                row.update(meter.results[f"n{n}"].columns())
            else:
                key = _exact_key(cfg, n, self.seed, self.device, scale, meter) if cfg["share_exact"] and fwd is None else ""
                if key in _exact_cache:
                    shared, ref = _exact_cache[key]
                    out, _, comp = meter.compare(approx, label=f"n{n}", exact=shared)
                else:
                    out, ref, comp = meter.compare(approx, reference, label=f"n{n}")
                    if key:
                        _remember_exact(key, comp.exact, ref)
                row.update(comp.columns(), exact_shared=bool(key in _exact_cache and not comp.paired))
            if fwd is not None:  # gradients (dq, dk, dv) -> one tensor, concatenated on the last dim
                out, ref = (torch.cat(g, dim=-1) if g is not None else None for g in (out, ref))
            if not bool(torch.isfinite(out).all()):
                raise FloatingPointError(f"method {method.name} returned non-finite values at n={n}.")
            if n <= cfg["exact_max_n"]:
                row.update(errors(out, ref) if fwd is None else {**errors(*fwd), **grad_errors(out, ref, q.shape[-1])})
            row.update(method.extra_stats())
            yield row
