"""Registry of attention methods: ``@register("name")``, ``build(cfg)``, ``names()``.

Every module in this package is imported on first lookup, so a new method is one file
(decorated with ``@register``) plus one yaml under ``conf/method/``.
"""
from __future__ import annotations

import importlib
import pkgutil
from typing import Any, Callable, Mapping

from .base import AttentionMethod

_REGISTRY: dict[str, type[AttentionMethod]] = {}
_loaded = False


def register(name: str) -> Callable[[type[AttentionMethod]], type[AttentionMethod]]:
    """Class decorator adding an ``AttentionMethod`` subclass under ``name``."""

    def deco(cls: type[AttentionMethod]) -> type[AttentionMethod]:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"method {name!r} is registered twice ({_REGISTRY[name].__name__}, {cls.__name__}).")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return deco


def _load_all() -> None:
    global _loaded
    if _loaded:
        return
    for mod in pkgutil.iter_modules(__path__):
        if mod.name not in ("base",) and not mod.name.startswith("_"):
            importlib.import_module(f"{__name__}.{mod.name}")
    _loaded = True


def names() -> list[str]:
    """Sorted names of all registered methods."""
    _load_all()
    return sorted(_REGISTRY)


def get(name: str) -> type[AttentionMethod]:
    """The class registered as ``name``; the error lists the available names."""
    _load_all()
    if name not in _REGISTRY:
        raise ValueError(f"unknown method {name!r}; available: {', '.join(sorted(_REGISTRY))}.")
    return _REGISTRY[name]


def build(cfg: Mapping[str, Any] | str, **overrides: Any) -> AttentionMethod:
    """Instantiate a method from a config mapping ``{name: ..., <knob>: ...}`` or a bare name.

    A ``preset`` entry (``+method/preset=NAME``: a mapping method name -> knobs, see
    ``conf/method/preset/``) applies the paper setting for this method over the other knobs.

    Unknown knobs raise ``ValueError`` naming the method and its accepted knobs.
    """
    import inspect

    if isinstance(cfg, str):
        params: dict[str, Any] = {"name": cfg}
    else:
        params = {str(k): v for k, v in dict(cfg).items()}
    params.update(overrides)
    name = params.pop("name", None)
    if name is None:
        raise ValueError("method config needs a 'name' key.")
    cls = get(name)
    preset = to_plain(params.pop("preset", None))
    if preset:
        if name not in preset:
            covered = sorted(k for k in preset if k != "name")
            raise ValueError(f"preset {preset.get('name')!r} has no settings for method {name!r}; it covers {covered}.")
        params.update(preset[name])
    sig = inspect.signature(cls.__init__)
    accepted = [p for p in sig.parameters if p != "self"]
    has_var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in sig.parameters.values())
    unknown = [k for k in params if k not in accepted]
    if unknown and not has_var_kw:
        raise ValueError(f"method {name!r} has no parameter(s) {unknown}; it accepts {accepted}.")
    params = {k: to_plain(v) for k, v in params.items()}
    return cls(**params)


def to_plain(v: Any) -> Any:
    """OmegaConf containers (configs) as plain Python dicts and lists; anything else unchanged."""
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf

        if isinstance(v, (DictConfig, ListConfig)):
            return OmegaConf.to_container(v, resolve=True)
    except ImportError:  # pragma: no cover
        pass
    return v


__all__ = ["AttentionMethod", "register", "build", "rebuild", "names", "get", "to_plain"]


def rebuild(method: AttentionMethod, **overrides: Any) -> AttentionMethod:
    """A new instance of ``method``'s class with its knobs, ``overrides`` applied, same seed.

    Tasks use this for per-layer settings (e.g. T2T layer 1 and 2 budgets).
    """
    new = build({"name": method.name, **method.hparams()}, **overrides)
    new.reseed(method._seed)
    return new
