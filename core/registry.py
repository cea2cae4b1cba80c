"""One generic registry, used by ``methods`` and ``tasks``: ``@register("name")``, lookup by name.

Every module of the owning package is imported on first lookup (subpackages hold helpers and
are not scanned), so adding an entry is one decorated class in one new module.
"""
from __future__ import annotations

import importlib
import pkgutil
from typing import Callable, Generic, TypeVar

T = TypeVar("T", bound=type)


class Registry(Generic[T]):
    """Named classes of one kind (``kind`` is used in messages: "method", "task")."""

    def __init__(self, kind: str, package: str, skip: tuple[str, ...] = ("base",)) -> None:
        self.kind, self.package, self.skip = kind, package, skip
        self._entries: dict[str, T] = {}
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

    def names(self) -> list[str]:
        """Sorted registered names."""
        self._load_all()
        return sorted(self._entries)

    def get(self, name: str) -> T:
        """The class registered as ``name``; the error lists the available names."""
        self._load_all()
        if name not in self._entries:
            raise ValueError(f"unknown {self.kind} {name!r}; available: {', '.join(sorted(self._entries))}.")
        return self._entries[name]
