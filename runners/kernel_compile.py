"""Every Triton kernel of the suite compiled ahead of time for real NVIDIA targets, no GPU needed.

``attnbench gpu_check --compile`` calls ``report``; ``tests/test_kernel_compile.py`` calls
``compile_case``. For each kernel (``methods/kernels/*.py``), each config of its tuning space
(``CONFIGS``), each target (``TARGETS`` whose ``ptxas`` in the triton wheel knows the arch) and
each launch the suite makes (``cases``: the dtypes the kernel takes, head dims 32, 64, 128, and its
constexpr variants), the launch is recorded from the kernel's own entry point on small CPU
tensors (``launch`` swapped for a recorder, so the arguments, strides and constexprs are the
suite's), bound by Triton's own JIT binder (same signature and 16-divisibility specialisation
as a real launch), and compiled with ``triton.compile(ASTSource(...), target=GPUTarget("cuda",
cap, 32))`` down to a cubin, with the wheel's ``ptxas -v`` log (``TRITON_DUMP_PTXAS_LOG``) read
for registers per thread, spill stores/loads and stack frame. Shared memory is Triton's
``metadata.shared`` (the kernels declare no static shared memory; ptxas's ``smem`` is added if
any), checked against the target's per-block limit as Triton checks it at load time.

A config that the kernel's ``_prune`` removes at a head dim / dtype for every problem size (the
union over ``PRUNE_SIZES``) is never launched there: its row says ``pruned`` and is not compiled.

Each compile runs in a worker process (2 by default) with an empty Triton cache of its own, so
compile seconds are those of real compiles and the user's cache is left alone. The report is
``compile.csv`` (one row per kernel × case × config × target) and ``compile.md`` (one line per
kernel × case × config, a column per target).
"""
from __future__ import annotations

import contextlib
import csv
import datetime as dt
import functools
import io
import itertools
import os
import platform
import re
import subprocess
import tempfile
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, fields
from multiprocessing import get_context
from pathlib import Path

# Per-block shared-memory limit (opt-in, bytes): CUDA C++ Programming Guide, "Technical
# Specifications per Compute Capability", maximum shared memory per thread block: 163 KB on 8.0
# and 8.7, 99 KB on 8.6, 8.9 and 12.0, 227 KB on 9.0, 10.0 and 10.3 (=
# cudaDevAttrMaxSharedMemoryPerBlockOptin, which Triton compares with ``metadata.shared`` before a
# launch). Tensor memory (sm_100): 512 columns, the limit Triton checks at load time.
KB = 1024
TARGETS = {  # capability -> (name, shared memory per block, GPUs)
    80: ("sm_80", 163 * KB, "A100"),
    86: ("sm_86", 99 * KB, "A10, A40, RTX 30xx"),
    87: ("sm_87", 163 * KB, "Jetson Orin"),
    89: ("sm_89", 99 * KB, "L4, L40, RTX 40xx"),
    90: ("sm_90", 227 * KB, "H100, H200"),
    100: ("sm_100", 227 * KB, "B200"),
    103: ("sm_103", 227 * KB, "B300"),
    120: ("sm_120", 99 * KB, "RTX 50xx"),
}
DEFAULT_TARGETS = (80, 90, 100)  # the report's targets; the others for a device's own compile step
TMEM_COLUMNS = 512
N = 1024  # sequence length of the recorded launches (a multiple of 16, as the suite's n are)
# Problem sizes over which the kernels' pruning is evaluated (a config kept at any is launched).
PRUNE_SIZES = (1, 16, 33, 100, 1000, 4096, 131072)
PRUNE_BLOCKS = (1, 4, 64, 1024)
PRUNE_SAMPLES = (0, 16, 100, 1000)
SIZE_ARGS = {"wildcat": ("M", "R"), "kdeformer": ("n_q", "n_k"), "latte": ("Nq", "Nk")}
WORKERS = 2


@dataclass(frozen=True)
class Case:
    """One launch of one kernel as the suite makes it."""

    module: str  # methods/kernels/<module>.py
    kernel: str
    dtype: str  # of the kernel's operands
    head_dim: int
    variant: str = ""  # constexpr switches other than tiles, e.g. "causal,int8"

    @property
    def label(self) -> str:
        return ", ".join(x for x in (self.dtype, f"d={self.head_dim}", self.variant) if x)


@dataclass
class Row:
    kernel: str
    module: str
    dtype: str
    head_dim: int
    variant: str
    config: str
    target: str
    status: str  # compiled | failed | pruned
    registers: int | None = None
    spill_stores: int | None = None
    spill_loads: int | None = None
    stack_bytes: int | None = None
    shared_bytes: int | None = None
    shared_limit: int | None = None
    tmem_columns: int | None = None
    compile_s: float | None = None
    error: str = ""

    @property
    def spilled(self) -> int:
        return (self.spill_stores or 0) + (self.spill_loads or 0)

    @property
    def ok(self) -> bool:
        """Compiled, no spill, within the shared (and tensor) memory limits; or never launched."""
        if self.status == "pruned":
            return True
        return (self.status == "compiled" and self.spilled == 0 and self.shared_bytes <= self.shared_limit
                and (self.tmem_columns or 0) <= TMEM_COLUMNS)


# --------------------------------------------------------------------------- the toolchain
def parse_target(name: str) -> int:
    """``"sm_90"`` (or ``"90"``) -> 90, one of ``TARGETS``."""
    m = re.fullmatch(r"(?:sm_)?(\d+)", name.strip())
    if m is None or int(m.group(1)) not in TARGETS:
        raise ValueError(f"unknown target {name!r}; known: {', '.join(t[0] for t in TARGETS.values())}.")
    return int(m.group(1))


def ptxas_path(capability: int) -> Path | None:
    """The wheel's ``ptxas`` Triton uses for ``capability`` (``ptxas-blackwell`` from sm_100), if present."""
    try:
        from triton.backends.nvidia.compiler import get_ptxas

        path = Path(get_ptxas(capability).path)
    except Exception:
        return None
    return path if path.is_file() and os.access(path, os.X_OK) else None


@functools.lru_cache(maxsize=None)
def _ptxas_text(path: str, flag: str) -> str:
    try:
        res = subprocess.run([path, flag], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return ""
    return res.stdout


def ptxas_version(capability: int) -> str | None:
    """``12.9``-style release of the ptxas used for ``capability``, or None."""
    path = ptxas_path(capability)
    m = re.search(r"release (\d+\.\d+)", _ptxas_text(str(path), "--version")) if path else None
    return m.group(1) if m else None


def supported(capability: int) -> bool:
    """True when the wheel's ptxas for ``capability`` lists its arch (``sm_90a`` for 9.0) in ``--help``."""
    from triton.backends.nvidia.compiler import sm_arch_from_capability

    path = ptxas_path(capability)
    return bool(path) and re.search(rf"\b{sm_arch_from_capability(capability)}\b",
                                    _ptxas_text(str(path), "--help")) is not None


def parse_ptxas_log(log: str) -> dict:
    """Registers, spill stores/loads, stack frame and static shared memory from a ``ptxas -v`` log."""
    regs = re.search(r"Used (\d+) registers", log)
    spill = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", log)
    smem = re.search(r"(\d+) bytes smem", log)
    if regs is None:
        raise ValueError("no 'Used N registers' line in the ptxas log.")
    stack, stores, loads = (int(x) for x in spill.groups()) if spill else (0, 0, 0)
    return {"registers": int(regs.group(1)), "spill_stores": stores, "spill_loads": loads,
            "stack_bytes": stack, "static_smem": int(smem.group(1)) if smem else 0}


def first_error_line(exc: BaseException) -> str:
    """The line of a compile error that says what went wrong (ptxas's ``error`` line, else the last line)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    for ln in lines:
        if re.search(r"\berror\b", ln, re.IGNORECASE) and not ln.startswith("`ptxas` failed"):
            return f"{type(exc).__name__}: {ln}"[:300]
    return f"{type(exc).__name__}: {lines[-1] if lines else ''}"[:300]


# --------------------------------------------------------------------------- the suite's launches
def _module(name: str):
    import importlib

    return importlib.import_module(f"attnbench.methods.kernels.{name}")


def _call_entry(case: Case) -> None:
    """Call the kernel module's entry point as the suite does, on small CPU tensors of ``case``."""
    import torch

    dt_ = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[case.dtype]
    g = torch.Generator().manual_seed(0)
    d = case.head_dim
    if case.module == "wildcat":  # methods/wildcat.py: (B·H, n, d) queries, a coreset of r = 128
        from attnbench.methods.kernels.wildcat import weighted_attention_triton

        q, k, v = (torch.randn(2, n, d, generator=g) for n in (N, 128, 128))
        weighted_attention_triton(q.to(dt_), k.to(dt_), v.to(dt_), torch.rand(2, 128, generator=g), 0.125,
                                  v.amin(1, keepdim=True), v.amax(1, keepdim=True))
    elif case.module == "kdeformer":  # methods/kdeformer.py: (B, H, n, d), a plan of 64-key blocks
        from attnbench.methods import build
        from attnbench.methods.kernels.kdeformer import kdeformer_attention

        q, k, v = (torch.randn(1, 2, N, d, generator=g) for _ in range(3))
        m = build({"name": "kdeformer", "bucket_size": 64, "sample_size": 64, "backend": "torch"})
        m.reseed(0)
        kdeformer_attention(q.to(dt_), k.to(dt_), v.to(dt_), m.plan(q, k, v), 0.125)
    elif case.module == "latte":  # methods/latte.py: fp32 (B, H, n, d) and their int8 splits
        from attnbench.methods.kernels.latte import latte_attention_triton

        x = [torch.randn(1, 2, N, d, generator=g) for _ in range(8)]
        latte_attention_triton(*x, torch.rand(1, 2, 1, 1, generator=g), torch.ones(2),
                               causal="causal" in case.variant.split(","),
                               score="int8" if "int8" in case.variant.split(",") else "float", scale=0.125)
    else:
        raise ValueError(f"unknown kernel module {case.module!r}.")


@functools.lru_cache(maxsize=None)
def recorded_launch(case: Case) -> tuple[tuple, dict]:
    """(args, constexpr meta) the suite passes to ``case.kernel`` (tiles excluded: the config gives them)."""
    mod = _module(case.module)
    seen: list[tuple] = []
    orig = mod.launch
    mod.launch = lambda kernel, grid, args, meta, config: seen.append((kernel, tuple(args), dict(meta)))
    try:
        _call_entry(case)
    finally:
        mod.launch = orig
    for kernel, args, meta in seen:
        if kernel is getattr(mod, case.kernel):
            return args, meta
    raise ValueError(f"{case.module}'s entry point never launched {case.kernel}.")


def cases(modules: Iterable[str] = ("wildcat", "kdeformer", "latte")) -> list[Case]:
    """Every launch the suite makes: WildCat and LATTE in fp32 (the methods upcast to, or require,
    fp32), KDEformer in fp32 / fp16 / bf16; head dims ``_autotune.HEAD_DIMS`` (32, 64, 128); LATTE causal or not, int8 or
    float scores (its row-max pass depends on causality only)."""
    from attnbench.methods.kernels._autotune import HEAD_DIMS

    out = []
    for mod, d in itertools.product(modules, HEAD_DIMS):
        if mod == "wildcat":
            out.append(Case(mod, "_wildcat_wattn_kernel", "fp32", d))
        elif mod == "kdeformer":
            out += [Case(mod, "_kde_fwd", t, d) for t in ("fp32", "fp16", "bf16")]
        elif mod == "latte":
            out += [Case(mod, "_latte_rowmax", "fp32", d, c) for c in ("", "causal")]
            out += [Case(mod, "_latte_attend", "fp32", d, ",".join(x for x in (c, s) if x))
                    for c in ("", "causal") for s in ("float", "int8")]
        else:
            raise ValueError(f"unknown kernel module {mod!r}.")
    return out


def _named_args(case: Case) -> dict:
    args, _ = recorded_launch(case)
    return dict(zip(getattr(_module(case.module), case.kernel).fn.arg_names, args))


def launched_configs(case: Case) -> list[int]:
    """Indices into ``CONFIGS`` that the kernel's ``_prune`` keeps for ``case`` at some problem size."""
    mod = _module(case.module)
    _, meta = recorded_launch(case)
    base = _named_args(case)
    grid = [dict(zip(SIZE_ARGS[case.module], ns)) for ns in itertools.product(PRUNE_SIZES, repeat=2)]
    if case.module == "kdeformer":
        grid = [{**g, "n_blocks": b, "n_samples": s} for g in grid for b in PRUNE_BLOCKS for s in PRUNE_SAMPLES]
    kept: set[int] = set()
    for sizes in grid:
        for c in mod._prune(mod.CONFIGS, {**base, **sizes}, **meta):
            kept.add(next(i for i, x in enumerate(mod.CONFIGS) if x is c))
    return sorted(kept)


# --------------------------------------------------------------------------- one compile
def _row(case: Case, config_index: int, capability: int, status: str, **values) -> Row:
    from attnbench.methods.kernels._autotune import describe

    name, limit, _ = TARGETS[capability]
    return Row(case.kernel, case.module, case.dtype, case.head_dim, case.variant,
               describe(_module(case.module).CONFIGS[config_index]), name, status, shared_limit=limit, **values)


def compile_case(case: Case, config_index: int, capability: int) -> Row:
    """Compile ``case`` with ``CONFIGS[config_index]`` for ``capability``; its resources, or the error."""
    import triton
    from triton import knobs
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, make_backend
    from triton.runtime.jit import create_function_from_signature

    mod = _module(case.module)
    cfg = mod.CONFIGS[config_index]
    row = _row(case, config_index, capability, "failed")
    args, meta = recorded_launch(case)
    fn = getattr(mod, case.kernel).fn  # the JITFunction under the autotuner
    target = GPUTarget("cuda", capability, 32)
    backend = make_backend(target)
    kwargs = {**meta, **cfg.all_kwargs(), "debug": False}
    bound, spec, opts = create_function_from_signature(fn.signature, fn.params, backend)(*args, **kwargs)
    options, signature, constexprs, attrs = fn._pack_args(backend, kwargs, bound, spec, opts)
    out = io.StringIO()
    t0 = time.perf_counter()
    try:
        # an empty cache (a real compile, and ptxas runs); ptxas -v's log is printed: captured
        with tempfile.TemporaryDirectory(prefix="attnbench-compile-") as cache, knobs.cache.scope(), \
                knobs.nvidia.scope(), contextlib.redirect_stdout(out):
            knobs.cache.dir = cache
            knobs.nvidia.dump_ptxas_log = True
            kernel = triton.compile(ASTSource(fn, signature, constexprs, attrs), target=target,
                                    options=options.__dict__)
        res = parse_ptxas_log(out.getvalue())
    except Exception as exc:  # a failed compile is a row, not a crash of the report
        row.compile_s = time.perf_counter() - t0
        row.error = first_error_line(exc)
        return row
    row.compile_s = time.perf_counter() - t0
    row.status = "compiled"
    row.registers, row.spill_stores, row.spill_loads, row.stack_bytes = (
        res["registers"], res["spill_stores"], res["spill_loads"], res["stack_bytes"])
    row.shared_bytes = int(kernel.metadata.shared) + res["static_smem"]
    row.tmem_columns = getattr(kernel.metadata, "tmem_size", None)
    return row


# --------------------------------------------------------------------------- the report
def report(out_dir: Path, *, capabilities: Sequence[int] | None = None, workers: int = WORKERS,
           modules: Iterable[str] = ("wildcat", "kdeformer", "latte"), log=print) -> list[Row]:
    """Compile every case × config × supported target; write ``compile.csv`` and ``compile.md``."""
    from attnbench.methods.kernels._autotune import describe

    if os.environ.get("TRITON_INTERPRET") == "1":
        raise RuntimeError("TRITON_INTERPRET=1 is set: the compile report needs the real compiler; unset it.")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}.")
    caps = list(DEFAULT_TARGETS) if capabilities is None else sorted(set(capabilities))
    unknown = [c for c in caps if c not in TARGETS]
    if unknown:
        raise ValueError(f"unknown target capability {unknown}; known: {sorted(TARGETS)}.")
    skipped = [c for c in caps if not supported(c)]
    caps = [c for c in caps if c not in skipped]
    if not caps:
        raise RuntimeError("the triton wheel has no ptxas for any requested target.")
    all_cases = cases(modules)
    rows: list[Row] = []
    tasks = []
    for case in all_cases:
        cfgs = _module(case.module).CONFIGS
        launched = launched_configs(case)
        for i, cap in itertools.product(range(len(cfgs)), caps):
            if i in launched:
                tasks.append((case, i, cap))
            else:
                rows.append(_row(case, i, cap, "pruned"))
    log(f"[compile] {len(tasks)} compiles ({len(rows)} pruned) for {', '.join(TARGETS[c][0] for c in caps)}"
        f" with {workers} worker(s)" + (f"; no ptxas for {[TARGETS[c][0] for c in skipped]}" if skipped else ""))
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
        futures = [pool.submit(compile_case, *task) for task in tasks]
        for k, (task, fut) in enumerate(zip(tasks, futures), 1):
            try:
                row = fut.result()
            except Exception as exc:  # the worker itself died (e.g. the compiler aborted): a failed row
                case, i, cap = task
                row = _row(case, i, cap, "failed", error=first_error_line(exc))
            rows.append(row)
            if not row.ok or k % 50 == 0 or k == len(tasks):
                bad = "" if row.ok else f"  <- {row.status} {row.error or f'{row.spilled} B spilled'}"
                log(f"[compile] {k}/{len(tasks)} {row.kernel} {row.dtype} d={row.head_dim} {row.variant} "
                    f"{row.config} {row.target}: {row.registers} regs{bad}")
    wall = time.perf_counter() - t0
    order = {(c.kernel, c.dtype, c.head_dim, c.variant): i for i, c in enumerate(all_cases)}
    cap_of = {name: cap for cap, (name, _, _) in TARGETS.items()}
    rows.sort(key=lambda r: (order[(r.kernel, r.dtype, r.head_dim, r.variant)],
                             [describe(c) for c in _module(r.module).CONFIGS].index(r.config), cap_of[r.target]))
    info = versions(caps, skipped, wall, workers)
    info["load"] = [round(load0, 1), round(os.getloadavg()[0], 1)]
    out_dir.mkdir(parents=True, exist_ok=True)
    write_csv(out_dir / "compile.csv", rows, info)
    (out_dir / "compile.md").write_text(markdown(rows, info, caps))
    log(f"[compile] {summary(rows)}; {wall:.0f} s; {out_dir / 'compile.md'}")
    return rows


def versions(caps: Sequence[int], skipped: Sequence[int], wall_s: float, workers: int) -> dict:
    import torch
    import triton

    from attnbench.runners.gpu_check import git_state  # gpu_check imports this module: import at call time

    return {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "triton": triton.__version__, "torch": torch.__version__, "python": platform.python_version(),
        "ptxas": {TARGETS[c][0]: ptxas_version(c) for c in caps},
        "skipped_targets": [TARGETS[c][0] for c in skipped],
        **git_state(),
        "host": f"{platform.machine()}, {os.cpu_count()} CPUs", "workers": workers, "wall_s": round(wall_s, 1),
    }


def summary(rows: Sequence[Row]) -> str:
    compiled = [r for r in rows if r.status == "compiled"]
    failed = sum(r.status == "failed" for r in rows)
    spilled = sum(r.spilled > 0 for r in compiled)
    over = sum(r.shared_bytes > r.shared_limit for r in compiled)
    return (f"{len(rows)} kernel x case x config x target: {len(compiled)} compiled, "
            f"{sum(r.status == 'pruned' for r in rows)} pruned (never launched), {failed} failed, "
            f"{spilled} spilled, {over} over the shared-memory limit")


CSV_EXTRA = ("triton", "ptxas", "git_commit")


def write_csv(path: Path, rows: Sequence[Row], info: dict) -> None:
    names = [f.name for f in fields(Row)]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow([*names, *CSV_EXTRA])
        for r in rows:
            d = asdict(r)
            if d["compile_s"] is not None:
                d["compile_s"] = round(d["compile_s"], 2)
            w.writerow([("" if d[n] is None else d[n]) for n in names]
                       + [info["triton"], info["ptxas"].get(r.target) or "", info["git_commit"] or ""])


def load_rows(path: Path) -> list[Row]:
    """The rows of a ``compile.csv``, typed (ValueError on a malformed file)."""
    with open(path, newline="") as f:
        raw = list(csv.DictReader(f))
    rows = []
    for d in raw:
        try:
            kw = {f.name: d[f.name] for f in fields(Row)}
        except KeyError as exc:
            raise ValueError(f"{path}: no column {exc}.") from None
        for name in ("head_dim", "registers", "spill_stores", "spill_loads", "stack_bytes", "shared_bytes",
                     "shared_limit", "tmem_columns"):
            kw[name] = int(kw[name]) if kw[name] != "" else None
        kw["compile_s"] = float(kw["compile_s"]) if kw["compile_s"] != "" else None
        rows.append(Row(**kw))
    return rows


def _cell(r: Row) -> str:
    if r.status == "pruned":
        return "pruned"
    if r.status == "failed":
        return f"**failed**: {r.error.replace('|', '/')}"
    spill = "0 spill" if not r.spilled else f"**{r.spill_stores}+{r.spill_loads} B spill**"
    smem = f"{r.shared_bytes / KB:.0f} KB" + (" **> limit**" if r.shared_bytes > r.shared_limit else "")
    return f"{r.registers} regs, {spill}, {smem}, {r.compile_s:.1f} s"


def markdown(rows: Sequence[Row], info: dict, caps: Sequence[int]) -> str:
    names = [TARGETS[c][0] for c in caps]
    compiled = [r for r in rows if r.status == "compiled"]
    lines = [
        "# Triton kernels compiled for NVIDIA targets (no GPU)",
        "",
        "`attnbench gpu_check --compile` (`runners/kernel_compile.py`): every kernel of `methods/kernels/` x every "
        "config of its tuning space (`CONFIGS`) x every launch the suite makes (operand dtypes, head dims 32 / 64 / "
        "128, constexpr variants) x target, compiled by `triton.compile` for `GPUTarget(\"cuda\", cap, 32)` down to "
        "a cubin with the triton wheel's `ptxas`. Registers per thread and spills from `ptxas -v`; shared memory "
        "= Triton's `metadata.shared`, against the per-block opt-in limit (CUDA C++ Programming Guide, technical "
        "specifications per compute capability: "
        + ", ".join(f"{TARGETS[c][0]} ({TARGETS[c][2]}) {TARGETS[c][1] // KB} KB" for c in caps)
        + "). `pruned`: the kernel's `_prune` drops that config at that head dim / dtype for every problem size, "
        "so it is never launched there (not compiled). Compile seconds: one compile in one of "
        f"{info['workers']} worker process(es) with an empty Triton cache, on {info['host']} (load average "
        f"{info['load'][0]} at the start, {info['load'][1]} at the end: seconds under load are not evidence).",
        "",
        f"{info['date']}; triton {info['triton']}, torch {info['torch']}, Python {info['python']}; ptxas "
        + ", ".join(f"{t} {v}" for t, v in info["ptxas"].items())
        + (f" (no ptxas for {', '.join(info['skipped_targets'])})" if info["skipped_targets"] else "")
        + f"; commit `{(info['git_commit'] or 'unknown')[:12]}`" + (" (with uncommitted changes)" if info["git_dirty"]
                                                                  else "") + ".",
        "",
        f"**Totals**: {summary(rows)}. Whole report: {info['wall_s']:.0f} s wall.",
    ]
    if compiled:
        worst = max(compiled, key=lambda r: r.shared_bytes / r.shared_limit)
        lines += ["", f"Most registers: {max(r.registers for r in compiled)} per thread; most shared memory: "
                      f"{worst.shared_bytes / KB:.0f} KB of {worst.shared_limit // KB} KB ({worst.kernel}, "
                      f"{worst.config}, {worst.target}); compile seconds: median "
                      f"{sorted(r.compile_s for r in compiled)[len(compiled) // 2]:.1f}, max "
                      f"{max(r.compile_s for r in compiled):.1f}."]
    by_key: dict[tuple, dict[str, Row]] = {}
    for r in rows:
        by_key.setdefault((r.kernel, r.dtype, r.head_dim, r.variant, r.config), {})[r.target] = r
    kernel = None
    for (k, dtype, d, variant, config), cells in by_key.items():
        if k != kernel:
            kernel = k
            lines += ["", f"## `{k}` (`methods/kernels/{next(iter(cells.values())).module}.py`)", "",
                      "| launch | config | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
        label = ", ".join(x for x in (dtype, f"d={d}", variant) if x)
        lines.append(f"| {label} | {config} | " + " | ".join(_cell(cells[t]) if t in cells else "" for t in names)
                     + " |")
    return "\n".join(lines) + "\n"
