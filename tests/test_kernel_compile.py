"""The Triton kernels compiled ahead of time for a real NVIDIA target (sm_90), without a GPU.

One config of every kernel (``CONFIGS[0]``, the one the interpreter tests run) is compiled by
``runners/kernel_compile.py`` for sm_90 (H100 / H200) down to a cubin with the triton wheel's
``ptxas``, at the launch the suite makes where that config needs the most registers (fp32, the
largest head dim it is launched with, LATTE's causal int8 variant); a compile error, a register
spill or shared memory over the target's limit fails. The full matrix (every config, dtype, head
dim and sm_80 / sm_90 / sm_100) is ``attnbench gpu_check --compile`` -> ``results/gpu/compile.md``;
the committed report is checked here to cover the current tuning spaces with no failure or spill.
Skipped, with the reason, when the triton wheel has no ptxas for sm_90 or TRITON_INTERPRET=1.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

pytest.importorskip("triton")

from attnbench.methods.kernels._autotune import HEAD_DIMS, describe  # noqa: E402
from attnbench.runners import kernel_compile as K  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SM90 = 90
KERNELS = [("wildcat", "_wildcat_wattn_kernel", ""), ("kdeformer", "_kde_fwd", ""),
           ("latte", "_latte_rowmax", "causal"), ("latte", "_latte_attend", "causal,int8")]

needs_ptxas = pytest.mark.skipif(
    os.environ.get("TRITON_INTERPRET") == "1" or not K.supported(SM90),
    reason="TRITON_INTERPRET=1 (the interpreter replaces the compiler)" if os.environ.get("TRITON_INTERPRET") == "1"
    else "the triton wheel has no ptxas for sm_90 (triton/backends/nvidia/bin/ptxas)")


def _heaviest_case(module: str, kernel: str, variant: str) -> K.Case:
    """fp32 at the largest head dim where CONFIGS[0] is launched (the prune keeps it)."""
    for d in sorted(HEAD_DIMS, reverse=True):
        case = K.Case(module, kernel, "fp32", d, variant)
        if 0 in K.launched_configs(case):
            return case
    raise AssertionError(f"{kernel}: CONFIGS[0] is launched at no head dim.")


@needs_ptxas
@pytest.mark.parametrize("module,kernel,variant", KERNELS, ids=[k for _, k, _ in KERNELS])
def test_first_config_compiles_for_sm90_without_spills(module, kernel, variant):
    case = _heaviest_case(module, kernel, variant)
    row = K.compile_case(case, 0, SM90)
    assert row.status == "compiled", row.error
    assert row.target == "sm_90" and 0 < row.registers <= 255
    assert row.spilled == 0, f"{row.config} spills {row.spill_stores} B / {row.spill_loads} B on sm_90"
    assert 0 < row.shared_bytes <= row.shared_limit == 227 * 1024
    assert row.ok


def test_parse_ptxas_log_and_errors():
    log = ("ptxas info    : Function properties for k\n"
           "    24 bytes stack frame, 32 bytes spill stores, 20 bytes spill loads\n"
           "ptxas info    : Used 255 registers, used 1 barriers, 24 bytes cumulative stack size, 1024 bytes smem\n")
    assert K.parse_ptxas_log(log) == {"registers": 255, "spill_stores": 32, "spill_loads": 20, "stack_bytes": 24,
                                      "static_smem": 1024}
    assert K.parse_ptxas_log("ptxas info    : Used 40 registers, used 1 barriers")["spill_stores"] == 0
    with pytest.raises(ValueError, match="registers"):
        K.parse_ptxas_log("nothing")
    err = RuntimeError("`ptxas` failed with error code 255\n`ptxas` stderr:\nptxas error   : Entry function 'k' uses "
                       "too much shared data (0x30000 bytes, 0xc000 max)\n\nRepro command: ptxas ...")
    assert K.first_error_line(err).startswith("RuntimeError: ptxas error   : Entry function 'k' uses too much")
    assert K.first_error_line(ValueError("a\nb")) == "ValueError: b"
    assert K.parse_target("sm_90") == K.parse_target("90") == 90
    with pytest.raises(ValueError, match="unknown target 'sm_75'"):
        K.parse_target("sm_75")


def test_row_ok():
    row = K.Row("k", "m", "fp32", 64, "", "c", "sm_90", "compiled", registers=100, spill_stores=0, spill_loads=0,
                shared_bytes=1000, shared_limit=2000)
    assert row.ok
    assert not K.Row(**{**row.__dict__, "spill_loads": 4}).ok
    assert not K.Row(**{**row.__dict__, "shared_bytes": 3000}).ok
    assert not K.Row(**{**row.__dict__, "status": "failed"}).ok
    assert K.Row(**{**row.__dict__, "status": "pruned", "registers": None}).ok


def test_cases_cover_every_kernel_and_the_first_config_is_launched():
    """Every kernel of methods/kernels is in the matrix, its launch recorded from its entry point, and
    every config of a tuning space is launched somewhere (by one of the module's kernels; none is
    dead weight)."""
    cases = K.cases()
    kernels = {(c.module, c.kernel) for c in cases}
    assert kernels == {(m, k) for m, k, _ in KERNELS}
    assert {c.head_dim for c in cases} == set(HEAD_DIMS)
    assert {c.dtype for c in cases if c.module == "kdeformer"} == {"fp32", "fp16", "bf16"}
    launched: dict[str, set] = {}
    for c in cases:
        args, meta = K.recorded_launch(c)
        assert args and not any(k.startswith("BLOCK_") and k not in ("BLOCK_D", "BLOCK_DV") for k in meta)
        launched.setdefault(c.module, set()).update(K.launched_configs(c))
    for module, configs in launched.items():
        assert configs == set(range(len(K._module(module).CONFIGS))), (module, sorted(configs))
    for module, kernel, variant in KERNELS:
        assert 0 in K.launched_configs(_heaviest_case(module, kernel, variant))


def test_committed_report_matches_the_tuning_spaces():
    """results/gpu/compile.csv lists every kernel x case x config of the current code for sm_80, sm_90
    and sm_100, with no failure, spill or shared memory over the limit (rerun ``attnbench gpu_check
    --compile`` after changing a tuning space)."""
    path = ROOT / "results" / "gpu" / "compile.csv"
    if not path.is_file():
        pytest.skip("no committed results/gpu/compile.csv")
    rows = K.load_rows(path)
    bad = [(r.kernel, r.dtype, r.head_dim, r.variant, r.config, r.target, r.status, r.error or r.spilled)
           for r in rows if not r.ok]
    assert not bad, bad
    got = {(r.kernel, r.dtype, r.head_dim, r.variant, r.config, r.target) for r in rows}
    want = {(c.kernel, c.dtype, c.head_dim, c.variant, describe(cfg), K.TARGETS[t][0])
            for c in K.cases() for cfg in K._module(c.module).CONFIGS for t in K.DEFAULT_TARGETS}
    assert got == want and len(rows) == len(want)
    pruned = {(r.kernel, r.dtype, r.head_dim, r.variant, r.config) for r in rows if r.status == "pruned"}
    expect_pruned = {(c.kernel, c.dtype, c.head_dim, c.variant, describe(cfg)) for c in K.cases()
                     for i, cfg in enumerate(K._module(c.module).CONFIGS) if i not in K.launched_configs(c)}
    assert pruned == expect_pruned
