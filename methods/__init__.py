"""Registry of attention methods: ``@register("name")``, ``build(cfg)``, ``names()``.

Every module in this package is imported on first lookup, so a new built-in method is one file
(decorated with ``@register``) plus one yaml under ``conf/method/``. Methods from other packages
come in two ways (``methods/plugins.py``): installed plugins, by name through the entry-point
group ``attnbench.methods``, and ``{name: target, target: "pkg.module:attr", knobs: {...}}``
for an import target that is not installed as a plugin.
"""
from __future__ import annotations

if __name__ != "attnbench.methods":  # one name per module: never imported as a bare top-level `methods`
    raise ImportError(f"import attnbench.methods, not {__name__} (in a clone: `pip install -e .`, then "
                      "`attnbench COMMAND` or `python -m attnbench.methods.MODULE`).")

import inspect
import types
import typing
from typing import Any, Mapping

from attnbench.core.registry import Registry, load_target

from attnbench.methods.base import AttentionMethod
from attnbench.methods.plugins import ENTRY_POINT_GROUP, as_method, target_label

REGISTRY: Registry = Registry("method", __name__, skip=("base", "plugins"), entry_points=ENTRY_POINT_GROUP,
                              adapt=as_method)
register = REGISTRY.register
names = REGISTRY.names
builtin_names = REGISTRY.builtin_names
get = REGISTRY.get
TARGET = "target"  # the config name of an import-target method (conf/method/target.yaml)


def _split(cfg: Mapping[str, Any] | str, overrides: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    params: dict[str, Any] = {"name": cfg} if isinstance(cfg, str) else {str(k): to_plain(v) for k, v in dict(cfg).items()}
    name = params.pop("name", None)
    if name is None:
        raise ValueError("method config needs a 'name' key.")
    if name == TARGET:  # overrides are the target's knobs
        params["knobs"] = {**(params.get("knobs") or {}), **overrides}
    else:
        params.update(overrides)
    return name, params


def _knobs(label: str, cls: type, params: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``params`` over ``cls``'s constructor defaults; unknown knobs name the method and the accepted ones."""
    sig = inspect.signature(cls.__init__)
    accepted = {p.name: p for p in sig.parameters.values()
                if p.name != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
    unknown = [k for k in params if k not in accepted]
    if unknown:
        raise ValueError(f"method {label!r} has no parameter(s) {unknown}; it accepts {list(accepted)}"
                         f"{f' (as {prefix}<name>)' if prefix else ''}.")
    hints = _hints(cls)
    for key in params:
        if key in hints and _kind_ok(params[key], hints[key]) is False:
            raise ValueError(f"{prefix or 'method.'}{key} must be {_kind_name(hints[key])}, got {params[key]!r}.")
    return {k: params[k] if k in params else p.default for k, p in accepted.items()
            if k in params or p.default is not inspect.Parameter.empty}


def _hints(cls: type) -> dict[str, Any]:
    """The constructor's resolved annotations ({} when they do not resolve, e.g. a plugin's own types)."""
    try:
        return typing.get_type_hints(cls.__init__)
    except Exception:  # noqa: BLE001 - annotations are a convenience here, never a requirement
        return {}


_KINDS = {bool: "true or false", int: "an integer", float: "a number", str: "a string", type(None): "null"}


def _kind_ok(value: Any, tp: Any) -> bool | None:
    """Whether ``value`` is of the annotated kind (bool, int, float, str, None and unions of them);
    None when the annotation is of another kind (then the constructor alone checks the value)."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        found = [_kind_ok(value, t) for t in typing.get_args(tp)]
        return True if True in found else None if None in found else False
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is str or tp is type(None):
        return isinstance(value, tp)
    return None


def _kind_name(tp: Any) -> str:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return " or ".join(_kind_name(t) for t in typing.get_args(tp))
    return _KINDS.get(tp, getattr(tp, "__name__", str(tp)))


_targets: dict[str, tuple[str, type[AttentionMethod]]] = {}


def _target_class(params: Mapping[str, Any]) -> tuple[str, type[AttentionMethod]]:
    """``(label, method class)`` of ``params["target"]`` (imported and checked once per process)."""
    spec = params.get("target")
    if isinstance(spec, str) and spec in _targets:
        return _targets[spec]
    if not spec or not isinstance(spec, str):
        raise ValueError("method=target needs method.target=package.module:attribute (an AttentionMethod subclass "
                         "or a function with SDPA's signature).")
    try:
        obj = load_target(spec)
    except ValueError as exc:
        raise ValueError(f"method.target={exc}") from exc
    label = target_label(spec, obj)
    if label in builtin_names() or label == TARGET:
        raise ValueError(f"method.target={spec} is named {label!r}, which clashes with the built-in method {label!r}; "
                         "give the class another `name`.")
    _targets[spec] = label, as_method(label, obj, spec)
    return _targets[spec]


def resolve(cfg: Mapping[str, Any] | str, **overrides: Any) -> dict[str, Any]:
    """The method's effective knobs: ``cfg`` (and ``overrides``) over the constructor's defaults.

    Unknown knobs raise ``ValueError`` naming the method and its accepted knobs. Paper presets
    are composed into ``cfg`` by Hydra before command-line overrides (``preset=NAME``), so the
    knobs here are exactly the ones that run. An import target resolves to
    ``{name: target, target: <spec>, knobs: {<its knobs>}}``.
    """
    name, params = _split(cfg, overrides)
    if name == TARGET:
        extra = sorted(set(params) - {"target", "knobs"})
        if extra:
            raise ValueError(f"method=target has keys target and knobs only; put {extra} under method.knobs.")
        label, cls = _target_class(params)
        knobs = params.get("knobs") or {}
        if not isinstance(knobs, Mapping):
            raise ValueError(f"method.knobs must be a mapping of {label}'s keyword arguments, got {knobs!r}.")
        return {"name": TARGET, "target": params["target"], "knobs": _knobs(label, cls, knobs, "method.knobs.")}
    return {"name": name, **_knobs(name, get(name), params)}


def label(resolved: Mapping[str, Any]) -> str:
    """The name rows give a resolved method config (a target's class or function name)."""
    return _target_class(resolved)[0] if resolved.get("name") == TARGET else str(resolved["name"])


def build(cfg: Mapping[str, Any] | str, **overrides: Any) -> AttentionMethod:
    """Instantiate a method from a config mapping ``{name: ..., <knob>: ...}`` or a bare name
    (knobs checked by ``resolve``; values checked by the constructor)."""
    params = resolve(cfg, **overrides)
    name = params.pop("name")
    if name == TARGET:
        method = _target_class(params)[1](**params["knobs"])
        method._config = {"name": TARGET, **params}
        return method
    return get(name)(**params)


def to_plain(v: Any) -> Any:
    """OmegaConf containers (configs) as plain Python dicts and lists; anything else unchanged."""
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf

        if isinstance(v, (DictConfig, ListConfig)):
            return OmegaConf.to_container(v, resolve=True)
    except ImportError:  # pragma: no cover
        pass
    return v


__all__ = ["AttentionMethod", "register", "resolve", "build", "rebuild", "label", "names", "builtin_names", "get",
           "to_plain"]


def rebuild(method: AttentionMethod, **overrides: Any) -> AttentionMethod:
    """A new instance of ``method``'s class with its knobs, ``overrides`` applied, same seed.

    Tasks use this for per-layer settings (e.g. T2T layer 1 and 2 budgets).
    """
    config = getattr(method, "_config", None)
    if config is not None:  # an import target: overrides are its knobs
        new = build({**config, "knobs": {**config["knobs"], **overrides}})
    else:
        new = build({"name": method.name, **method.hparams()}, **overrides)
    new.reseed(method._seed)
    return new
