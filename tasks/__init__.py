"""Registry of tasks: ``@register("name")``, ``resolve(cfg)``, ``build(cfg, device, seed)``, ``names()``.

Each module of this package registers one task on import; helpers live in subpackages
(``adapters/``, ``datasets/``, ``metrics/``, ``models/``), which the registry does not scan.
"""
from __future__ import annotations

if __name__ != "attnbench.tasks":  # one name per module: never imported as a bare top-level `tasks`
    raise ImportError(f"import attnbench.tasks, not {__name__} (in a clone: `pip install -e .`, then "
                      "`attnbench COMMAND` or `python -m attnbench.tasks.MODULE`).")

from typing import Any, Mapping

import torch

from attnbench.core.knobs import resolve_knobs
from attnbench.core.registry import Registry

from attnbench.tasks.base import Task

REGISTRY: Registry = Registry("task", __name__, skip=("base",))
register = REGISTRY.register
names = REGISTRY.names
get = REGISTRY.get


def resolve(cfg: Mapping[str, Any] | str) -> dict[str, Any]:
    """The task config with the yaml defaults filled in, every knob checked and normalised.

    Unknown keys and bad values raise ``ValueError`` naming ``task.<key>``.
    """
    cfg = {"name": cfg} if isinstance(cfg, str) else dict(cfg)
    if "name" not in cfg:
        raise ValueError("task config needs a 'name' key.")
    cls = get(cfg["name"])
    return resolve_knobs("task", cls.name, cls.knobs, cfg)


def build(cfg: Mapping[str, Any] | str, device: torch.device | str = "cpu", seed: int = 0) -> Task:
    """Instantiate the task named by ``cfg['name']`` with its resolved config."""
    resolved = resolve(cfg)
    return get(resolved["name"])(resolved, torch.device(device), seed)


__all__ = ["Task", "register", "resolve", "build", "names", "get"]
