"""Registry of tasks: ``@register("name")``, ``build(cfg, device, seed)``, ``names()``.

Each module in this package (except helpers named below) registers its task on import.
"""
from __future__ import annotations

import importlib
import pkgutil
from typing import Any, Callable, Mapping

import torch

from .base import Task

_REGISTRY: dict[str, type[Task]] = {}
_NOT_TASKS = {"base", "patching", "models", "sources", "presses", "fid"}
_loaded = False


def register(name: str) -> Callable[[type[Task]], type[Task]]:
    def deco(cls: type[Task]) -> type[Task]:
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return deco


def _load_all() -> None:
    global _loaded
    if not _loaded:
        for mod in pkgutil.iter_modules(__path__):
            if mod.name not in _NOT_TASKS and not mod.name.startswith("_"):
                importlib.import_module(f"{__name__}.{mod.name}")
        _loaded = True


def names() -> list[str]:
    _load_all()
    return sorted(_REGISTRY)


def get(name: str) -> type[Task]:
    _load_all()
    if name not in _REGISTRY:
        raise ValueError(f"unknown task {name!r}; available: {', '.join(sorted(_REGISTRY))}.")
    return _REGISTRY[name]


def build(cfg: Mapping[str, Any], device: torch.device | str = "cpu", seed: int = 0) -> Task:
    """Instantiate the task named by ``cfg['name']`` with the whole task config."""
    if "name" not in cfg:
        raise ValueError("task config needs a 'name' key.")
    return get(cfg["name"])(cfg, torch.device(device), seed)


__all__ = ["Task", "register", "build", "names", "get"]
