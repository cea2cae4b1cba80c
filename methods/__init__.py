"""Registry of attention methods: ``@register("name")``, ``build(cfg)``, ``names()``.

Every module in this package is imported on first lookup, so a new method is one file
(decorated with ``@register``) plus one yaml under ``conf/method/``.
"""
from __future__ import annotations

from typing import Any, Mapping

from core.registry import Registry

from .base import AttentionMethod

REGISTRY: Registry = Registry("method", __name__)
register = REGISTRY.register
names = REGISTRY.names
get = REGISTRY.get


def _split(cfg: Mapping[str, Any] | str, overrides: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    params: dict[str, Any] = {"name": cfg} if isinstance(cfg, str) else {str(k): to_plain(v) for k, v in dict(cfg).items()}
    params.update(overrides)
    name = params.pop("name", None)
    if name is None:
        raise ValueError("method config needs a 'name' key.")
    return name, params


def resolve(cfg: Mapping[str, Any] | str, **overrides: Any) -> dict[str, Any]:
    """The method's effective knobs: ``cfg`` (and ``overrides``) over the constructor's defaults.

    Unknown knobs raise ``ValueError`` naming the method and its accepted knobs. Paper presets
    are composed into ``cfg`` by Hydra before command-line overrides (``preset=NAME``), so the
    knobs here are exactly the ones that run.
    """
    import inspect

    name, params = _split(cfg, overrides)
    cls = get(name)
    sig = inspect.signature(cls.__init__)
    accepted = {p.name: p for p in sig.parameters.values()
                if p.name != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
    unknown = [k for k in params if k not in accepted]
    if unknown:
        raise ValueError(f"method {name!r} has no parameter(s) {unknown}; it accepts {list(accepted)}.")
    out: dict[str, Any] = {"name": name}
    for k, p in accepted.items():
        if k in params:
            out[k] = params[k]
        elif p.default is not inspect.Parameter.empty:
            out[k] = p.default
    return out


def build(cfg: Mapping[str, Any] | str, **overrides: Any) -> AttentionMethod:
    """Instantiate a method from a config mapping ``{name: ..., <knob>: ...}`` or a bare name
    (knobs checked by ``resolve``; values checked by the constructor)."""
    params = resolve(cfg, **overrides)
    return get(params.pop("name"))(**params)


def to_plain(v: Any) -> Any:
    """OmegaConf containers (configs) as plain Python dicts and lists; anything else unchanged."""
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf

        if isinstance(v, (DictConfig, ListConfig)):
            return OmegaConf.to_container(v, resolve=True)
    except ImportError:  # pragma: no cover
        pass
    return v


__all__ = ["AttentionMethod", "register", "resolve", "build", "rebuild", "names", "get", "to_plain"]


def rebuild(method: AttentionMethod, **overrides: Any) -> AttentionMethod:
    """A new instance of ``method``'s class with its knobs, ``overrides`` applied, same seed.

    Tasks use this for per-layer settings (e.g. T2T layer 1 and 2 budgets).
    """
    new = build({"name": method.name, **method.hparams()}, **overrides)
    new.reseed(method._seed)
    return new
