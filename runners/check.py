"""Conformance check for any attention method, built-in or plugin: the checks the suite's own
conformance tests apply (``tests/test_conformance.py`` calls the same functions).

    attnbench check method=<name> [method.<knob>=...] [preset=<p>] [--n 256]
    attnbench check method=target method.target=my_pkg.attention:MyAttention

prints one line per check (pass / fail / skip, with the reason of each failure or skip) and exits
0 only when none fails. The arguments are Hydra overrides of ``conf/config.yaml``, so a plugin's
yaml and presets are found as in ``run.py``.

Tolerances come from the dtype and n: comparisons in float64 allow ``8 * n * eps(float64)``
relative error (the conformance tests' bound); "unchanged" outputs (independence, causality)
allow the same relative error, since a method may evaluate other rows in another order.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch
from torch import Tensor

from attnbench import methods
from attnbench.methods.base import AttentionMethod
from attnbench.methods.exact import dense_attention

DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


class CheckFailed(AssertionError):
    """A check's finding, in one sentence."""


class CheckSkipped(Exception):
    """The check does not apply to this method (the reason in one sentence)."""


class MissingPackage(Exception):
    """The method's code needs a package that is not installed: no check can run (one line)."""


class CheckKnown(Exception):
    """The check found what the method declares as its reference algorithm's behaviour (not a failure)."""


@dataclass
class Subject:
    """The method under test: its resolved config, built afresh for every check."""

    config: dict[str, Any]
    n: int = 256
    head_dim: int = 16
    seed: int = 0
    label: str = field(init=False)

    def __post_init__(self) -> None:
        self.config = methods.resolve(self.config)
        self.label = methods.label(self.config)

    def build(self, **overrides: Any) -> AttentionMethod:
        return methods.build(self.config, **overrides)

    @property
    def cls(self) -> type[AttentionMethod]:
        return type(self.build())

    @property
    def causal(self) -> bool:
        """The mode the checks call it in: causal only when it is causal-only."""
        return not self.cls.supports_bidirectional

    def qkv(self, *, batch: int = 1, heads: int = 2, n: int | None = None, dv: int | None = None,
            dtype: torch.dtype = torch.float64, scale_qk: float = 1.0, seed: int = 0) -> tuple[Tensor, Tensor, Tensor]:
        n = n or self.n
        g = torch.Generator().manual_seed(seed)
        q, k = (torch.randn(batch, heads, n, self.head_dim, generator=g, dtype=torch.float64) * scale_qk for _ in range(2))
        v = torch.randn(batch, heads, n, dv or self.head_dim, generator=g, dtype=torch.float64)
        return q.to(dtype), k.to(dtype), v.to(dtype)

    def call(self, m: AttentionMethod, q: Tensor, k: Tensor, v: Tensor, *, causal: bool | None = None) -> Tensor:
        m.reseed(self.seed)
        return m(q, k, v, causal=self.causal if causal is None else causal)


def tolerance(dtype: torch.dtype, n: int) -> float:
    return 8 * n * torch.finfo(dtype).eps


def rel_err(a: Tensor, b: Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


def _expect_unchanged(new: Tensor, old: Tensor, what: str, n: int) -> None:
    if not bool(torch.isfinite(new).all()):
        raise CheckFailed(f"non-finite outputs {what}.")
    err = rel_err(new, old)
    if err > tolerance(torch.float64, n):
        raise CheckFailed(f"{what}: relative change {err:.2e} > {tolerance(torch.float64, n):.1e}.")


# --- the checks ----------------------------------------------------------------------------------------------
def check_shapes_and_dtypes(s: Subject) -> str:
    """(B, H, Nq, Dv) out for fp32, fp16, bf16 and fp64 in, in the input's dtype, finite; a value
    head dim other than the query's; cross-attention (Nq != Nk) when the method allows it."""
    m = s.build()
    for dtype in DTYPES:
        q, k, v = s.qkv(batch=2, heads=3, dv=s.head_dim + 8, dtype=dtype)
        out = s.call(m, q, k, v)
        if out.shape != (2, 3, s.n, s.head_dim + 8):
            raise CheckFailed(f"{dtype} in: output shape {tuple(out.shape)}, expected {(2, 3, s.n, s.head_dim + 8)}.")
        if out.dtype != dtype:
            raise CheckFailed(f"{dtype} in: output dtype {out.dtype}.")
        if not bool(torch.isfinite(out).all()):
            raise CheckFailed(f"{dtype} in: non-finite outputs on standard normal inputs.")
    if m.supports_cross and not s.causal:
        q, _, _ = s.qkv(n=s.n // 2)
        _, k, v = s.qkv(seed=1)
        out = s.call(s.build(), q, k, v)  # fresh: a method may size per-head parameters on its first call
        if out.shape != (1, 2, s.n // 2, s.head_dim):
            raise CheckFailed(f"cross-attention output shape {tuple(out.shape)}, expected {(1, 2, s.n // 2, s.head_dim)}.")
        return "4 dtypes, Dv != D, cross-attention"
    return "4 dtypes, Dv != D"


def check_batch_head_independence(s: Subject) -> str:
    """Changing the inputs of other batch entries and heads leaves a head's output unchanged."""
    m = s.build()
    q, k, v = s.qkv(batch=2, heads=3)
    base = s.call(m, q, k, v)
    q2, k2, v2 = (t.clone() for t in (q, k, v))
    g = torch.Generator().manual_seed(7)
    for t in (q2, k2, v2):
        t[1] = torch.randn(t[1].shape, generator=g, dtype=t.dtype)  # the other batch entry
        t[0, 1:] = torch.randn(t[0, 1:].shape, generator=g, dtype=t.dtype)  # the other heads
    _expect_unchanged(s.call(m, q2, k2, v2)[0, 0], base[0, 0], "of batch 0 head 0 when the other entries change", s.n)
    return "batch 0, head 0 unchanged"


def check_causal_masking(s: Subject) -> str:
    """With causal=True, queries up to t do not see keys or values after t."""
    m = s.build()
    if not m.supports_causal:
        raise CheckSkipped("bidirectional only (supports_causal = False)")
    q, k, v = s.qkv()
    base = s.call(m, q, k, v, causal=True)
    t = s.n // 2
    k2, v2 = k.clone(), v.clone()
    g = torch.Generator().manual_seed(11)
    k2[:, :, t + 1:] = torch.randn(k2[:, :, t + 1:].shape, generator=g, dtype=k.dtype) * 3
    v2[:, :, t + 1:] = torch.randn(v2[:, :, t + 1:].shape, generator=g, dtype=v.dtype) * 3
    try:
        _expect_unchanged(s.call(m, q, k2, v2, causal=True)[:, :, :t + 1], base[:, :, :t + 1],
                          f"at positions <= {t} when keys and values after {t} change", s.n)
    except CheckFailed as finding:
        if m.causal_leak():
            raise CheckKnown(f"{finding} Declared: {m.causal_leak()}") from finding
        raise
    return f"outputs at positions <= {t} unchanged"


def check_seed_determinism(s: Subject) -> str:
    """One seed, one output (bit for bit); says whether other seeds change it (randomised)."""
    m = s.build()
    q, k, v = s.qkv()
    a, b = s.call(m, q, k, v), s.call(m, q, k, v)
    if not torch.equal(a, b):
        raise CheckFailed(f"two calls after reseed({s.seed}) differ (max |diff| {float((a - b).abs().max()):.2e}); "
                          "draw randomness from self.generator(device).")
    m.reseed(s.seed + 1)
    randomised = not torch.equal(a, m(q, k, v, causal=s.causal))
    return "bit-identical; " + ("other seeds differ (randomised)" if randomised else "deterministic")


def check_exact_at_full_budget(s: Subject) -> str:
    """At the knobs the method declares exact (``exact_knobs(n)``), it matches dense attention in float64."""
    knobs = s.cls.exact_knobs(s.n)
    if knobs is None:
        raise CheckSkipped("declares no exact configuration (exact_knobs returns None)")
    q, k, v = s.qkv()
    out = s.call(s.build(**knobs), q, k, v)
    err = rel_err(out, dense_attention(q, k, v, causal=s.causal))
    if not err < tolerance(torch.float64, s.n):
        raise CheckFailed(f"at {knobs}: relative error {err:.2e} against dense attention > {tolerance(torch.float64, s.n):.1e}.")
    return f"at {knobs}: relative error {err:.1e}"


def check_large_inputs(s: Subject) -> str:
    """q, k scaled by 30 (logits ~ 3600): finite outputs, or an error that names the method."""
    m = s.build()
    try:
        out = s.call(m, *s.qkv(dtype=torch.float32, scale_qk=30.0))
    except (ValueError, FloatingPointError, NotImplementedError) as err:
        if s.label not in str(err) and m.name not in str(err):
            raise CheckFailed(f"raised {type(err).__name__} without naming the method: {err}") from err
        return f"clear error: {err}"
    if not bool(torch.isfinite(out).all()):
        raise CheckFailed("non-finite outputs on large-norm inputs (keep a running max in the softmax).")
    return "finite"


def check_gradients(s: Subject) -> str:
    """Backward gives finite gradients for q, k, v, or the call raises NotImplementedError naming
    the method (``supports_grad = False``) and still runs under ``torch.no_grad()``."""
    m = s.build()
    q, k, v = (t.requires_grad_(True) for t in s.qkv(n=64))
    if not m.supports_grad:
        try:
            s.call(m, q, k, v)
        except NotImplementedError as err:
            if "does not support gradients" not in str(err):
                raise CheckFailed(f"supports_grad=False but the error does not say so: {err}") from err
        else:
            raise CheckFailed("supports_grad=False, yet a call with inputs that require grad did not raise.")
        with torch.no_grad():
            s.call(m, q, k, v)
        return "no gradients: clear NotImplementedError; runs under no_grad"
    s.call(m, q, k, v).square().sum().backward()
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.grad is None or not bool(torch.isfinite(t.grad).all()):
            raise CheckFailed(f"no finite gradient for {name}.")
    if float(v.grad.abs().sum()) == 0:
        raise CheckFailed("the gradient for v is zero.")
    return "finite gradients for q, k, v"


def check_bad_inputs(s: Subject) -> str:
    """3-D inputs, mismatched head dims, mixed dtypes and NaN inputs raise ValueError."""
    m = s.build()
    q, k, v = s.qkv(dtype=torch.float32)
    cases = {
        "3-D q": (q[0], k, v),
        "q and k head dims differ": (q[..., :-1], k, v),
        "k and v token counts differ": (q, k, v[:, :, :-1]),
        "mixed dtypes": (q, k.double(), v),
        "NaN in q": (q.clone().index_fill_(2, torch.tensor([0]), float("nan")), k, v),
    }
    for what, args in cases.items():
        try:
            s.call(m, *args)
        except ValueError:
            continue
        except Exception as err:
            raise CheckFailed(f"{what}: raised {type(err).__name__} ({err}), expected ValueError.") from err
        raise CheckFailed(f"{what}: no error.")
    return f"ValueError for {len(cases)} kinds of bad input"


CHECKS: dict[str, Callable[[Subject], str]] = {
    "shapes_and_dtypes": check_shapes_and_dtypes,
    "batch_head_independence": check_batch_head_independence,
    "causal_masking": check_causal_masking,
    "seed_determinism": check_seed_determinism,
    "exact_at_full_budget": check_exact_at_full_budget,
    "large_inputs": check_large_inputs,
    "gradients": check_gradients,
    "bad_inputs": check_bad_inputs,
}


@dataclass
class Result:
    check: str
    status: str  # pass | fail | skip | known (a finding the method declares, e.g. causal_leak)
    detail: str


def run_check(subject: Subject, name: str) -> Result:
    """One check as a Result; an unexpected exception is a failure with its one-line message."""
    try:
        return Result(name, "pass", CHECKS[name](subject))
    except CheckSkipped as why:
        return Result(name, "skip", str(why))
    except CheckKnown as why:
        return Result(name, "known", str(why))
    except CheckFailed as why:
        return Result(name, "fail", str(why))
    except ImportError as err:  # not this check's finding: every other check would repeat it
        raise MissingPackage((str(err).strip().splitlines() or [type(err).__name__])[0]) from err
    except Exception as err:  # the method crashed: that is a failure of this check
        first = (str(err).strip().splitlines() or [""])[0]
        return Result(name, "fail", f"{type(err).__name__}: {first}")


def run_checks(config: Mapping[str, Any] | str, *, n: int = 256, checks: list[str] | None = None) -> list[Result]:
    """Every check (or those named) against the method ``config`` (a resolved or raw method config)."""
    subject = Subject(dict(config) if isinstance(config, Mapping) else {"name": config}, n=n)
    return [run_check(subject, c) for c in (checks or list(CHECKS))]


def format_results(label: str, results: list[Result]) -> str:
    width = max(len(r.check) for r in results)
    lines = [f"conformance check: {label}"]
    lines += [f"  {r.check:<{width}}  {r.status.upper():<4}  {r.detail}" for r in results]
    failed = [r.check for r in results if r.status == "fail"]
    lines.append(f"{len(results) - len(failed)}/{len(results)} passed, skipped or known" +
                 (f"; FAILED: {', '.join(failed)}" if failed else ""))
    return "\n".join(lines)


def compose_method(overrides: list[str]) -> dict[str, Any]:
    """The method config that ``python run.py <overrides>`` would run (Hydra compose: plugin
    yaml and presets included)."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from attnbench.core.knobs import CONF_DIR

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None, job_name="check"):
        cfg = compose(config_name="config", overrides=overrides)
    return OmegaConf.to_container(cfg.method, resolve=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("overrides", nargs="*", help="Hydra overrides: method=<name> [method.<knob>=...] [preset=...]")
    ap.add_argument("--n", type=int, default=256, help="tokens per check input (default 256)")
    args = ap.parse_args(argv)
    try:
        config = compose_method(args.overrides)
        subject = Subject(config, n=args.n)
        missing = getattr(methods.get(config["name"]), "missing", None) if config["name"] != methods.TARGET else None
        reason = missing() if callable(missing) else None
        if reason:
            raise MissingPackage(f"{subject.label}: {reason}")
        results = [run_check(subject, c) for c in CHECKS]
    except MissingPackage as err:
        print(f"[attnbench] check: {err}", file=sys.stderr)
        return 2
    except Exception as err:
        print(f"[attnbench] check: {type(err).__name__}: {err}", file=sys.stderr)
        return 2
    print(format_results(f"{subject.label} {_knob_text(subject.config)} (n={args.n})", results))
    return 1 if any(r.status == "fail" for r in results) else 0


def _knob_text(config: Mapping[str, Any]) -> str:
    knobs = config.get("knobs", {}) if config.get("name") == methods.TARGET else config
    return "{" + ", ".join(f"{k}={v}" for k, v in knobs.items() if k != "name") + "}"


if __name__ == "__main__":
    sys.exit(main())
