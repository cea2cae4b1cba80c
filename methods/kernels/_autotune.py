"""Autotuning helpers shared by the Triton kernels of this package.

On a GPU each kernel is wrapped in ``triton.autotune`` over a short list of ``triton.Config``
(block sizes, ``num_warps``, ``num_stages``) keyed on the problem sizes. The first call with a new
key (and new dtypes: Triton adds them to the key) compiles and times every config that survives the
kernel's pruning function, once per process; later calls reuse the fastest. Configs that do not
fit (shared memory, registers) are timed as infinitely slow by Triton and so never chosen.

Under ``TRITON_INTERPRET=1`` (the CPU tests) ``num_warps``/``num_stages`` mean nothing and timing
would only run every config on the CPU, so ``tuning_space`` keeps just the first config (the
kernel's previous fixed choice): with one config ``triton.autotune`` launches it directly, with no
timing. The flag is read once, at import, as Triton itself does when it decorates the kernels.
Every config stays testable in the interpreter through ``launch(..., config=cfg)``, which calls
the undecorated kernel (``kernel.fn``) with that config.

Every config is compiled ahead of time for sm_80, sm_90 and sm_100 at each launch the suite makes
(``attnbench gpu_check --compile`` -> ``results/gpu/compile.md``). Each kernel lists, per config,
the padded head dims it is launched at: those where it compiles on every target with no register
spill and within shared memory; its pruning (``prune_tiles``) drops it at the others.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Collection, Sequence

import triton

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
# Padded head dims (powers of two >= 16) the kernels are compiled for in the compile report
# (runners/kernel_compile.py); each config lists those it is launched at. Smaller head dims use
# the configs of 32.
HEAD_DIMS = (32, 64, 128)


def tuning_space(configs: Sequence[triton.Config]) -> list[triton.Config]:
    """The configs handed to ``triton.autotune``: all of them on a GPU, the first under the interpreter."""
    return list(configs[:1]) if INTERPRET else list(configs)


def block_ok(config: triton.Config) -> bool:
    """True when every ``BLOCK_*`` value is a power of two >= 16 (``tl.dot`` needs dims >= 16)."""
    blocks = [v for k, v in config.kwargs.items() if k.startswith("BLOCK_")]
    return bool(blocks) and all(isinstance(b, int) and b >= 16 and b & (b - 1) == 0 for b in blocks)


def keep_or_smallest(
    configs: Sequence[triton.Config], ok: Callable[[triton.Config], bool], size: Callable[[triton.Config], int]
) -> list[triton.Config]:
    """Configs passing ``ok``; if none does, the one(s) of least ``size`` (pruning must keep one)."""
    kept = [c for c in configs if ok(c)]
    if kept:
        return kept
    least = min(size(c) for c in configs)
    return [c for c in configs if size(c) == least]


def head_dim_bucket(head_dim: int) -> int | None:
    """The smallest of ``HEAD_DIMS`` >= ``head_dim`` (None above them)."""
    return next((b for b in HEAD_DIMS if head_dim <= b), None)


def prune_tiles(
    configs: Sequence[triton.Config], head_dim: int, head_dims: Callable[[triton.Config], Collection[int]],
    small_enough: Callable[[triton.Config], bool], size: Callable[[triton.Config], int],
) -> list[triton.Config]:
    """The configs launched for one problem: those listing ``head_dim``'s bucket in ``head_dims(c)``
    (where the compile report shows them unspilled on every target), narrowed by
    ``keep_or_smallest`` to tiles ``small_enough`` for the problem. Above ``HEAD_DIMS`` (outside
    the report) every config is a candidate."""
    b = head_dim_bucket(head_dim)
    fitting = [c for c in configs if b in head_dims(c)] or list(configs)
    return keep_or_smallest(fitting, small_enough, size)


def launch(kernel, grid, args: Sequence, meta: dict, config: triton.Config | None) -> None:
    """Run an autotuned ``kernel`` (``config=None``) or its undecorated function with ``config``."""
    if config is None:
        kernel[grid](*args, **meta)
    else:
        kernel.fn[grid](*args, **meta, **config.all_kwargs())


def describe(config: triton.Config) -> str:
    """Short readable name of a config, e.g. ``BLOCK_M=64,BLOCK_N=32,w4,s3``."""
    blocks = ",".join(f"{k}={v}" for k, v in config.kwargs.items())
    return f"{blocks},w{config.num_warps},s{config.num_stages}"
