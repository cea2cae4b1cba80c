"""Methods from outside this package: installed plugins and ``method=target`` import targets.

A plugin is an ``AttentionMethod`` subclass, or a plain function with SDPA's signature
``fn(q, k, v, *, is_causal=False, scale=None, **knobs)`` (``torch.nn.functional.
scaled_dot_product_attention`` qualifies), found by name through the entry-point group
``attnbench.methods`` or given as ``method.target=package.module:attribute``. ``as_method``
checks it and returns the class the registry hands out: a subclass named after the entry point
(the plugin's own class is not modified), or for a function a generated ``FunctionMethod`` whose
knobs are the function's keyword arguments.
"""
from __future__ import annotations

import inspect
from typing import Any, Callable

import torch

from attnbench.methods.base import AttentionMethod

ENTRY_POINT_GROUP = "attnbench.methods"
# arguments of SDPA that the method call itself supplies (never knobs)
CALL_ARGS = ("attn_mask", "is_causal", "scale")


def as_method(name: str, obj: Any, spec: str) -> type[AttentionMethod]:
    """``obj`` (loaded from ``spec``) as a method class named ``name``; ``ValueError`` with one
    sentence when it is neither an attention-method class nor a function with SDPA's signature."""
    if isinstance(obj, type):
        if not issubclass(obj, AttentionMethod) or obj is AttentionMethod:
            raise ValueError(f"{spec} is not an attention method: a class must subclass methods.base.AttentionMethod "
                             f"(got {obj.__name__}, bases {[b.__name__ for b in obj.__mro__[1:-1]]}).")
        attrs = {"name": name, "__module__": obj.__module__, "__qualname__": obj.__qualname__, "__doc__": obj.__doc__}
        return type(obj.__name__, (obj,), attrs)
    if callable(obj):
        return function_method(name, obj, spec)
    raise ValueError(f"{spec} is not an attention method: expected an AttentionMethod subclass or a function with "
                     f"SDPA's signature, got a {type(obj).__name__}.")


def _function_knobs(fn: Callable, spec: str) -> list[inspect.Parameter] | None:
    """The function's knob parameters (keyword arguments with defaults besides q, k, v and the
    call's own), or None when Python cannot read its signature (a builtin)."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return None
    params = list(sig.parameters.values())
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    var_pos = any(p.kind == p.VAR_POSITIONAL for p in params)
    var_kw = any(p.kind == p.VAR_KEYWORD for p in params)
    names = {p.name for p in params if p.kind != p.POSITIONAL_ONLY}
    problems = []
    if len(positional) < 3 and not var_pos:
        problems.append("three positional arguments (q, k, v)")
    missing = [a for a in ("is_causal", "scale") if a not in names and not var_kw]
    if missing:
        problems.append("keyword argument(s) " + ", ".join(missing))
    required = [p.name for p in positional[3:] + [p for p in params if p.kind == p.KEYWORD_ONLY]
                if p.default is p.empty]
    if required:
        problems.append(f"defaults for {required}")
    if problems:
        raise ValueError(f"{spec} has the wrong signature for an attention function: {fn.__name__}{sig} needs "
                         f"{' and '.join(problems)}, as scaled_dot_product_attention(q, k, v, is_causal=, scale=).")
    return [p.replace(kind=p.KEYWORD_ONLY) for p in positional[3:] + [p for p in params if p.kind == p.KEYWORD_ONLY]
            if p.name not in CALL_ARGS]


def _trial_call(fn: Callable, spec: str) -> None:
    """A function without a readable signature must accept SDPA's call on a tiny input."""
    x = torch.zeros(1, 1, 4, 8)
    try:
        out = fn(x, x, x, is_causal=False, scale=None)
    except TypeError as exc:
        first = str(exc).strip().splitlines()[0].rstrip(".") if str(exc).strip() else type(exc).__name__
        raise ValueError(f"{spec} does not take SDPA's call fn(q, k, v, is_causal=, scale=): {first}.") from exc
    if not isinstance(out, torch.Tensor) or out.shape != x.shape:
        raise ValueError(f"{spec} does not return a tensor of shape (B, H, Nq, Dv) for SDPA's call "
                         f"(got {type(out).__name__} {getattr(out, 'shape', '')}).")


def function_method(name: str, fn: Callable, spec: str) -> type[AttentionMethod]:
    """A method class that calls ``fn(q, k, v, is_causal=causal, scale=scale, **knobs)`` on the
    inputs as given (no upcast: the function handles dtypes, as SDPA does)."""
    knobs = _function_knobs(fn, spec)
    if knobs is None:
        _trial_call(fn, spec)
        knobs = []
    knob_names = [p.name for p in knobs]

    def __init__(self, **values: Any) -> None:
        AttentionMethod.__init__(self)
        for p in knobs:
            setattr(self, p.name, values.get(p.name, p.default))

    __init__.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD), *knobs])

    def _attend(self, q, k, v, *, causal, scale):
        return fn(q, k, v, is_causal=causal, scale=scale, **{n: getattr(self, n) for n in knob_names})

    doc = f"{spec} called as an attention method (function plugin).\n\n{inspect.getdoc(fn) or ''}".strip()
    return type("FunctionMethod", (AttentionMethod,), {
        "name": name, "upcast": False, "__init__": __init__, "_attend": _attend, "__doc__": doc,
        "__module__": __name__, "function": staticmethod(fn), "target": spec,
    })


def target_label(spec: str, obj: Any) -> str:
    """The name a ``method=target`` run goes by in rows: the class's own ``name`` when it declares
    one, else the target's attribute name (``my_pkg.attention:MyAttention`` -> ``MyAttention``)."""
    own = obj.__dict__.get("name") if isinstance(obj, type) else None
    if isinstance(own, str) and own and own != AttentionMethod.name:
        return own
    return spec.replace(":", ".").rsplit(".", 1)[-1]
