"""attnbench: a benchmark and evaluation suite for fast approximate attention.

The public API for library users and plugin authors (everything else is internal)::

    from attnbench import AttentionMethod, build_method, list_methods

    class MyAttention(AttentionMethod):          # a method in your own package
        name = "mine"
        def __init__(self, budget: int = 64): ...
        def _attend(self, q, k, v, *, causal, scale): ...   # validated (B, H, N, D) inputs

    attn = build_method("wildcat", r=128)         # any registered method, knobs checked
    out = attn(q, k, v, causal=False, scale=None) # SDPA's call: (B, H, Nq, D) ... -> (B, H, Nq, Dv)

Subpackages: ``attnbench.core`` (measurement, schema, registry), ``attnbench.methods``,
``attnbench.tasks``, ``attnbench.runners``; the Hydra configs are ``attnbench/conf``. In a clone
these are the repository's top-level folders (``core/ methods/ tasks/ runners/ conf/``), mapped
into this namespace by the install (``pyproject.toml``: ``[tool.setuptools] package-dir``).
"""
from __future__ import annotations

from importlib import metadata as _metadata
from typing import Any

try:
    __version__ = _metadata.version("attnbench")
except _metadata.PackageNotFoundError:  # pragma: no cover - a source tree that was never installed
    __version__ = "0+unknown"

_LAZY = {"AttentionMethod": "attnbench.methods.base", "check_positive_int": "attnbench.methods.base",
         "resolve_budget": "attnbench.methods.base"}


def build_method(name_or_config: str | dict[str, Any], **knobs: Any):
    """An attention method (an ``AttentionMethod``) by registered name, built-in or plugin, or by
    config mapping ``{"name": ..., <knob>: ...}``; ``knobs`` override the config. Unknown knobs and
    bad values raise ``ValueError`` naming the key."""
    from attnbench import methods

    return methods.build(name_or_config, **knobs)


def list_methods() -> list[str]:
    """Names of every method ``build_method`` accepts: built-in ones and installed plugins."""
    from attnbench import methods

    return list(methods.names())


def __getattr__(name: str) -> Any:
    """The public classes and checks, imported on first use (``import attnbench.core.schema`` and
    the report runners stay free of torch)."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'attnbench' has no attribute {name!r}")


__all__ = ["AttentionMethod", "build_method", "list_methods", "check_positive_int", "resolve_budget", "__version__"]
