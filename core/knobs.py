"""Declared config knobs: each task (and the meter) lists its knobs once with a check.

Defaults live in the yaml files under ``conf/`` only; ``resolve_knobs`` fills them in, rejects
unknown keys with the list of accepted ones, and checks and normalises every value (a scalar
where a list is allowed becomes a one-element list), raising one sentence that names
``<group>.<key>`` and the allowed range. It runs before any tensor is built.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, Mapping

import yaml

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"

Check = Callable[[str, Any], Any]


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) or isinstance(v, float) and v.is_integer()


def Int(lo: int | None = None, hi: int | None = None, *, optional: bool = False) -> Check:
    """An integer in [lo, hi] (either bound may be open)."""
    rng = f"an integer{f' >= {lo}' if lo is not None else ''}{f' and <= {hi}' if hi is not None else ''}"

    def check(key: str, v: Any) -> Any:
        if v is None and optional:
            return None
        if not _is_int(v) or (lo is not None and v < lo) or (hi is not None and v > hi):
            raise ValueError(f"{key} must be {rng}{' or null' if optional else ''}, got {v!r}.")
        return int(v)

    return check


def Float(lo: float | None = None, hi: float | None = None, *, lo_open: bool = False, hi_open: bool = False,
          optional: bool = False) -> Check:
    """A finite number in [lo, hi] (open ends with ``lo_open`` / ``hi_open``)."""
    lo_s = f" {'>' if lo_open else '>='} {lo}" if lo is not None else ""
    hi_s = f" and {'<' if hi_open else '<='} {hi}" if hi is not None else ""
    rng = f"a number{lo_s}{hi_s}"

    def check(key: str, v: Any) -> Any:
        if v is None and optional:
            return None
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
        if ok and lo is not None:
            ok = v > lo if lo_open else v >= lo
        if ok and hi is not None:
            ok = v < hi if hi_open else v <= hi
        if not ok:
            raise ValueError(f"{key} must be {rng}{' or null' if optional else ''}, got {v!r}.")
        return float(v)

    return check


def ListOf(item: Check, *, min_len: int = 1, optional: bool = False) -> Check:
    """A non-empty list of items (a scalar is taken as a one-element list; null with ``optional``)."""

    def check(key: str, v: Any) -> Any:
        if v is None and optional:
            return None
        items = list(v) if isinstance(v, (list, tuple)) else [v]
        if len(items) < min_len:
            raise ValueError(f"{key} must list at least {min_len} value(s), got {v!r}.")
        return [item(f"{key}[{i}]", x) for i, x in enumerate(items)]

    return check


def Choice(*values: Any, optional: bool = False) -> Check:
    """One of ``values``."""

    def check(key: str, v: Any) -> Any:
        if v is None and optional:
            return None
        if v not in values:
            raise ValueError(f"{key} must be one of {list(values)}{' or null' if optional else ''}, got {v!r}.")
        return v

    return check


def Bool() -> Check:
    def check(key: str, v: Any) -> Any:
        if not isinstance(v, bool):
            raise ValueError(f"{key} must be true or false, got {v!r}.")
        return v

    return check


def Str(*, optional: bool = False, prefix_choices: tuple[str, ...] = ()) -> Check:
    """A non-empty string (or null with ``optional``)."""

    def check(key: str, v: Any) -> Any:
        if v is None and optional:
            return None
        if not isinstance(v, str) or not v:
            raise ValueError(f"{key} must be a non-empty string{' or null' if optional else ''}, got {v!r}.")
        return v

    return check


def Mapping_() -> Check:
    def check(key: str, v: Any) -> Any:
        if v is None:
            return {}
        if not isinstance(v, Mapping):
            raise ValueError(f"{key} must be a mapping, got {v!r}.")
        return dict(v)

    return check


def AnyValue() -> Check:
    return lambda key, v: v


def yaml_defaults(group: str, name: str) -> dict[str, Any]:
    """The documented defaults: ``conf/<group>/<name>.yaml`` as a dict (``{}`` when absent)."""
    path = CONF_DIR / group / f"{name}.yaml"
    if not path.is_file():
        return {}
    data = yaml.safe_load(path.read_text()) or {}
    return dict(data)


def resolve_knobs(group: str, name: str, knobs: Mapping[str, Check], cfg: Mapping[str, Any],
                  defaults: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """``cfg`` over the yaml defaults, every key declared in ``knobs`` and checked.

    Returns the normalised config (with ``name``). Errors name ``<group>.<key>``.
    """
    base = dict(yaml_defaults(group, name) if defaults is None else defaults)
    merged = {**base, **{str(k): v for k, v in cfg.items()}}
    merged.pop("name", None)
    unknown = sorted(k for k in merged if k not in knobs)
    if unknown:
        raise ValueError(f"{group} {name!r} has no knob(s) {unknown}; it accepts {sorted(knobs)}.")
    missing = sorted(k for k in knobs if k not in merged)
    if missing:
        raise ValueError(f"{group} {name!r} needs value(s) for {missing} (conf/{group}/{name}.yaml has the defaults).")
    out = {"name": name}
    for key, check in knobs.items():
        out[key] = check(f"{group}.{key}", merged[key])
    return out


def _folder(source: str) -> Path | None:
    """A Hydra config source (``file://dir``, ``pkg://package.sub``) as a folder, if it is one."""
    if source.startswith("file://"):
        return Path(source[len("file://"):]).resolve()
    if source.startswith("pkg://"):
        import importlib.util

        try:
            spec = importlib.util.find_spec(source[len("pkg://"):].strip("/").replace("/", "."))
        except (ImportError, ValueError):
            return None
        locations = list(spec.submodule_search_locations or []) if spec else []
        return Path(locations[0]).resolve() if locations else None
    return None


def config_dirs() -> list[Path]:
    """The config folders on Hydra's search path: ``conf/`` first, then those that plugins add
    (a ``SearchPathPlugin`` in the ``hydra_plugins`` namespace, as Hydra's docs describe) or that
    ``hydra.searchpath`` names in the running app. Outside a Hydra app, the plugins' only."""
    sources: list[str] = []
    try:
        from hydra.core.hydra_config import HydraConfig

        if HydraConfig.initialized():
            sources = [f"{s.schema}://{s.path}" for s in HydraConfig.get().runtime.config_sources
                       if s.provider not in ("hydra", "schema")]
        else:
            from hydra._internal.utils import create_config_search_path

            sources = [e.path for e in create_config_search_path(None).get_path()
                       if e.provider not in ("hydra", "schema")]
    except ImportError:  # pragma: no cover - hydra is a dependency
        pass
    dirs = [CONF_DIR]
    for source in sources:
        folder = _folder(source)
        if folder is not None and folder.is_dir() and folder not in dirs:
            dirs.append(folder)
    return dirs


def find_config(relative: str) -> Path | None:
    """The first ``<dir>/<relative>`` that exists among ``config_dirs()``."""
    return next((d / relative for d in config_dirs() if (d / relative).is_file()), None)


def preset_knobs(preset: str, method: str) -> dict[str, Any] | None:
    """A paper preset's knobs for ``method`` (``method/preset/<preset>/<method>.yaml`` in a config
    folder: ``conf/`` or one a plugin adds), or ``None`` when the preset has no file for it."""
    if find_config(f"preset/{preset}.yaml") is None:
        known = sorted({p.stem for d in config_dirs() for p in (d / "preset").glob("*.yaml")})
        raise ValueError(f"unknown preset {preset!r}; available: {', '.join(known)}.")
    path = find_config(f"method/preset/{preset}/{method}.yaml")
    if path is None:
        return None
    return dict(yaml.safe_load(path.read_text()) or {})


def preset_methods(preset: str) -> list[str]:
    """The methods a preset has settings for (in every config folder)."""
    return sorted({p.stem for d in config_dirs() for p in (d / "method" / "preset" / preset).glob("*.yaml")})
