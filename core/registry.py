"""One generic registry, used by ``methods`` and ``tasks``: ``@register("name")``, lookup by name.

Built-in entries: every module of the owning package is imported on first lookup (subpackages
hold helpers and are not scanned), so adding one is one decorated class in one new module.

Plugins: with ``entry_points`` set (methods use ``"attnbench.methods"``), the entry points of
that group in any installed distribution are entries too (Python's packaging convention, e.g.
``[project.entry-points."attnbench.methods"] mine = "my_pkg.attention:MyAttention"``). They are
listed by ``names()`` without importing them; ``get(name)`` imports one, passes it through
``adapt(name, obj, spec)`` (the owner's check: is it the right kind of object?) and caches the
result. A plugin that clashes with a built-in or another plugin, or does not import, is a
one-line ``ValueError`` naming it.
"""
from __future__ import annotations

import importlib
import importlib.metadata
import pkgutil
from typing import Any, Callable, Generic, TypeVar

T = TypeVar("T", bound=type)


def installed_entry_points(group: str) -> list[tuple[str, str]]:
    """``(name, "module:attr")`` of every installed entry point in ``group`` (tests patch this)."""
    return [(ep.name, ep.value) for ep in importlib.metadata.entry_points(group=group)]


def load_target(spec: str) -> Any:
    """The object named by ``"pkg.module:attr"`` (or ``"pkg.module.attr"``); ``ValueError`` when
    it does not import or has no such attribute."""
    module, sep, attr = spec.partition(":")
    if not sep:
        module, _, attr = spec.rpartition(".")
    if not module or not attr:
        raise ValueError(f"{spec!r} is not an import target; write it as 'package.module:attribute'.")
    try:
        obj: Any = importlib.import_module(module)
    except Exception as exc:  # ImportError, or an error raised while the module runs
        raise ValueError(f"{spec!r} does not import: {type(exc).__name__}: {exc}".rstrip(".") + ".") from exc
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"{spec!r}: module {module!r} has no attribute {attr!r}.")
        obj = getattr(obj, part)
    return obj


class Registry(Generic[T]):
    """Named classes of one kind (``kind`` is used in messages: "method", "task")."""

    def __init__(self, kind: str, package: str, skip: tuple[str, ...] = ("base",), *,
                 entry_points: str | None = None, adapt: Callable[[str, Any, str], T] | None = None) -> None:
        self.kind, self.package, self.skip = kind, package, skip
        self.group, self.adapt = entry_points, adapt
        self._entries: dict[str, T] = {}
        self._plugins: dict[str, T] = {}
        self._specs: dict[str, str] | None = None
        self._loaded = False

    def register(self, name: str) -> Callable[[T], T]:
        """Class decorator adding ``cls`` under ``name`` (sets ``cls.name``); a second class under
        one name is an error."""

        def deco(cls: T) -> T:
            old = self._entries.get(name)
            if old is not None and old.__qualname__ != cls.__qualname__:
                raise ValueError(f"{self.kind} {name!r} is registered twice ({old.__name__}, {cls.__name__}).")
            cls.name = name
            self._entries[name] = cls
            return cls

        return deco

    def _load_all(self) -> None:
        if self._loaded:
            return
        pkg = importlib.import_module(self.package)
        for mod in pkgutil.iter_modules(pkg.__path__):
            if not mod.ispkg and mod.name not in self.skip and not mod.name.startswith("_"):
                importlib.import_module(f"{self.package}.{mod.name}")
        self._loaded = True

    def plugin_specs(self) -> dict[str, str]:
        """``{name: "module:attr"}`` of the installed plugins (nothing imported); a name that
        clashes with a built-in entry or names two plugins is a ``ValueError``. Read once per
        process; ``refresh()`` reads them again."""
        if self.group is None:
            return {}
        self._load_all()
        if self._specs is not None:
            return dict(self._specs)
        specs: dict[str, str] = {}
        for name, spec in installed_entry_points(self.group):
            if name in self._entries:
                raise ValueError(f"{self.kind} plugin {name!r} ({spec}, entry point group {self.group!r}) clashes "
                                 f"with the built-in {self.kind} {name!r}; rename the entry point.")
            if name in specs and specs[name] != spec:
                raise ValueError(f"{self.kind} plugin {name!r} is installed twice ({specs[name]}, {spec}); "
                                 "uninstall one.")
            specs[name] = spec
        self._specs = specs
        return dict(specs)

    def refresh(self) -> None:
        """Forget the plugins read so far (after installing one, or in tests)."""
        self._specs, self._plugins = None, {}

    def builtin_names(self) -> list[str]:
        """Sorted names of the built-in entries (this package's modules)."""
        self._load_all()
        return sorted(self._entries)

    def names(self) -> list[str]:
        """Sorted names: built-in entries and installed plugins."""
        return sorted([*self.builtin_names(), *self.plugin_specs()])

    def is_plugin(self, name: str) -> bool:
        return name not in self.builtin_names() and name in self.plugin_specs()

    def get(self, name: str) -> T:
        """The class registered as ``name`` (a plugin is imported and checked on first use); the
        error lists the available names."""
        self._load_all()
        specs = self.plugin_specs()  # raises on a clash, so a built-in name is never ambiguous
        if name in self._entries:
            return self._entries[name]
        if name not in specs:
            raise ValueError(f"unknown {self.kind} {name!r}; available: {', '.join(sorted([*self._entries, *specs]))}.")
        if name not in self._plugins:
            spec = specs[name]
            try:
                obj = load_target(spec)
            except ValueError as exc:
                raise ValueError(f"{self.kind} plugin {name!r}: {exc}") from exc
            self._plugins[name] = self.adapt(name, obj, spec) if self.adapt else obj
        return self._plugins[name]
