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


def ListOf(item: Check, *, min_len: int = 1) -> Check:
    """A non-empty list of items (a scalar is taken as a one-element list)."""

    def check(key: str, v: Any) -> Any:
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


def preset_knobs(preset: str, method: str) -> dict[str, Any] | None:
    """A paper preset's knobs for ``method`` (``conf/method/preset/<preset>/<method>.yaml``), or
    ``None`` when the preset has no file for that method."""
    path = CONF_DIR / "method" / "preset" / preset / f"{method}.yaml"
    if not (CONF_DIR / "preset" / f"{preset}.yaml").is_file():
        known = sorted(p.stem for p in (CONF_DIR / "preset").glob("*.yaml"))
        raise ValueError(f"unknown preset {preset!r}; available: {', '.join(known)}.")
    if not path.is_file():
        return None
    return dict(yaml.safe_load(path.read_text()) or {})


def preset_methods(preset: str) -> list[str]:
    """The methods a preset has settings for."""
    return sorted(p.stem for p in (CONF_DIR / "method" / "preset" / preset).glob("*.yaml"))
