"""Every autotune config of the Triton kernels (methods/kernels/*.py), in the interpreter, on the CPU.

Under TRITON_INTERPRET=1 the kernels autotune over their first config only (see
methods/kernels/_autotune.py), so each kernel is also run here with every entry of its ``CONFIGS``
explicitly (``config=``), on shapes that do and do not divide the tiles, against the PyTorch path.
The GPU autotuning path itself (pruning, key names, grid, ``reset_to_zero``) is exercised with a
fake timer that runs each config once and declares the largest-BLOCK_M one fastest. The interpreter
runs in subprocesses so TRITON_INTERPRET never leaks into the other tests.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

triton = pytest.importorskip("triton")

from attnbench.methods.kernels import _autotune as A  # noqa: E402
from attnbench.methods.kernels import kdeformer as KK  # noqa: E402
from attnbench.methods.kernels import latte as KL  # noqa: E402
from attnbench.methods.kernels import wildcat as KW  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MODULES = {"wildcat": KW, "kdeformer": KK, "latte": KL}
KERNELS = {"wildcat": ["_wildcat_wattn_kernel"], "kdeformer": ["_kde_fwd"], "latte": ["_latte_rowmax", "_latte_attend"]}


# --------------------------------------------------------------------------- config lists (no interpreter)
# how each kernel's head dims are chosen in its SPACE: named classes -> (meta kwargs of a launch)
CLASSES = {
    "wildcat": {"fp32": lambda d: {"E_P": d, "D_P": d}},
    "kdeformer": {"fp32": lambda d: {"BLOCK_D": d, "BLOCK_DV": d, "IEEE": True},
                  "fp16/bf16": lambda d: {"BLOCK_D": d, "BLOCK_DV": d, "IEEE": False}},
    "latte": {"pass 1": lambda d: {"BLOCK_D": d, "CAUSAL": True},
              "pass 2 int8": lambda d: {"BLOCK_D": d, "BLOCK_DV": d, "CAUSAL": True, "INT8": True},
              "pass 2 float": lambda d: {"BLOCK_D": d, "BLOCK_DV": d, "CAUSAL": False, "INT8": False}},
}
BIG = {"wildcat": {"M": 4096, "R": 512}, "kdeformer": {"n_q": 4096, "n_k": 4096, "n_blocks": 32, "n_samples": 128},
       "latte": {"Nq": 2048, "Nk": 2048}}
TINY = {"wildcat": {"M": 20, "R": 10}, "kdeformer": {"n_q": 160, "n_k": 160, "n_blocks": 10, "n_samples": 8},
        "latte": {"Nq": 1, "Nk": 2048}}


@pytest.mark.parametrize("name", sorted(MODULES))
def test_configs_are_valid(name):
    mod = MODULES[name]
    configs = mod.CONFIGS
    assert len(configs) >= 4 and configs == [entry[0] for entry in mod.SPACE]
    for c in configs:
        assert A.block_ok(c), A.describe(c)  # powers of two >= 16: tl.dot shapes hold for every config
        assert c.num_warps in (2, 4, 8, 16) and c.num_stages in (2, 3)
    assert len({A.describe(c) for c in configs}) == len(configs)  # no duplicates
    for kernel in KERNELS[name]:  # outside the interpreter the autotuner sees the whole list
        assert len(getattr(mod, kernel).configs) == len(configs)
    for entry in mod.SPACE:  # head dims are buckets of the compile report
        for dims in entry[1:]:
            assert set(dims) <= set(A.HEAD_DIMS), (A.describe(entry[0]), dims)


def test_tuning_space_and_block_ok():
    cfgs = KW.CONFIGS
    assert A.tuning_space(cfgs) == (cfgs[:1] if A.INTERPRET else cfgs)
    assert not A.block_ok(triton.Config({"BLOCK_M": 8, "BLOCK_N": 32}))
    assert not A.block_ok(triton.Config({"BLOCK_M": 48, "BLOCK_N": 32}))
    assert not A.block_ok(triton.Config({}))
    assert [A.head_dim_bucket(d) for d in (1, 16, 32, 33, 64, 80, 128, 129, 256)] == [32, 32, 32, 64, 64, 128, 128,
                                                                                       None, None]


def _blocks(cs, *names):
    return {tuple(c.kwargs[n] for n in names) for c in cs}


@pytest.mark.parametrize("name", sorted(MODULES))
def test_prune_keeps_the_configs_of_the_head_dim(name):
    """On a large problem the prune keeps exactly the configs listed for the head dim's bucket (where
    the compile report shows them unspilled); every bucket of every class has some; above the buckets
    every config is a candidate; a tiny problem keeps only small tiles of the bucket's configs."""
    mod = MODULES[name]
    for k, (cls, meta) in enumerate(CLASSES[name].items()):
        for d in A.HEAD_DIMS:
            want = [e[0] for e in mod.SPACE if d in e[1 + k]]
            assert want, (name, cls, d)  # pruning never falls back at a covered head dim
            assert mod._prune(mod.CONFIGS, BIG[name], **meta(d)) == want, (cls, d)
            assert mod._prune(mod.CONFIGS, BIG[name], **meta(d // 2 + 1)) == want  # padded dims in the bucket
            tiny = mod._prune(mod.CONFIGS, TINY[name], **meta(d))
            assert tiny and all(c in want for c in tiny)
            assert max(c.kwargs["BLOCK_M"] for c in tiny) <= 32, (cls, d, [A.describe(c) for c in tiny])
        assert mod._prune(mod.CONFIGS, BIG[name], **meta(256)) == mod.CONFIGS


def test_prune_sizes():
    small = KW._prune(KW.CONFIGS, {"M": 20, "R": 10}, E_P=64, D_P=64)
    assert all(c.kwargs["BLOCK_M"] <= 32 and c.kwargs["BLOCK_R"] <= 32 for c in small)
    tiny = KK._prune(KK.CONFIGS, {"n_q": 160, "n_k": 160, "n_blocks": 10, "n_samples": 8},
                     BLOCK_D=64, BLOCK_DV=64, IEEE=False)  # blocks of 16
    assert _blocks(tiny, "BLOCK_M", "BLOCK_N") == {(16, 16)}
    few_q = KK._prune(KK.CONFIGS, {"n_q": 3, "n_k": 1000, "n_blocks": 10, "n_samples": 40},
                      BLOCK_D=64, BLOCK_DV=64, IEEE=False)
    assert few_q and all(c.kwargs["BLOCK_M"] == 16 for c in few_q)
    one_row = KL._prune(KL.CONFIGS, {"Nq": 1, "Nk": 2048}, BLOCK_D=64, BLOCK_DV=64, CAUSAL=True, INT8=True)
    assert one_row and all(c.kwargs["BLOCK_M"] == 16 for c in one_row)
    assert KL.MIN_BLOCK_M == min(c.kwargs["BLOCK_M"] for c in KL.CONFIGS)


# --------------------------------------------------------------------------- every config, in the interpreter
_SCRIPT = textwrap.dedent(
    r'''
    import functools, json, sys
    import torch, triton
    from attnbench.methods.kernels._autotune import describe
    from attnbench.methods.kernels import wildcat as KW, kdeformer as KK, latte as KL

    out = {"rows": [], "single": {}}

    def fake_autotuned(mod, attr, key, **kw):
        """mod.attr -> autotuner over all CONFIGS (sorted by BLOCK_M, ties kept) with a fake timer:
        every surviving config runs once, the last one timed (largest BLOCK_M) 'wins'."""
        calls = []
        def bench(fn, quantiles):
            fn(); calls.append(1); return [1000.0 - len(calls)] * 3
        cfgs = sorted(mod.CONFIGS, key=lambda c: c.kwargs["BLOCK_M"])
        kern = getattr(mod, attr)
        out["single"][attr] = len(kern.configs)
        tuned = triton.autotune(configs=cfgs, key=key, prune_configs_by={"early_config_prune": mod._prune},
                                do_bench=bench, **kw)(kern.fn)
        setattr(mod, attr, tuned)
        return calls

    def row(case, cfg, err, tuner=None, **extra):
        if tuner is not None and extra.get("benched"):  # the configs timed by this call, in order
            extra["timed"] = [describe(c) for c in tuner.configs_timings]
        out["rows"].append({"case": case, "config": cfg, "err": err, **extra})

    def run_wildcat():
        from attnbench.methods.wildcat import weighted_attention
        calls = fake_autotuned(KW, "_wildcat_wattn_kernel", ["M", "R", "E", "D"])
        g = torch.Generator().manual_seed(0)
        for (B, M, R, E, D) in [(2, 70, 45, 20, 24), (1, 64, 32, 16, 16), (1, 5, 3, 8, 8)]:
            q, k, v = (torch.randn(B, n, e, generator=g) for n, e in ((M, E), (R, E), (R, D)))
            w = torch.rand(B, R, generator=g) + 0.1
            w[0, :2] = -1.0                   # signed weights
            if B > 1:
                q[1, :3] = 0.0; w[1] = 0.0    # zero denominators -> 0 before the clamp
            vmin, vmax = v.amin(1, keepdim=True) * 0.5, v.amax(1, keepdim=True) * 0.5
            ref = weighted_attention(q, k, v, w, 0.3, vmin, vmax)
            for cfg in [None] + KW.CONFIGS:
                n0 = len(calls)
                a = KW.weighted_attention_triton(q, k, v, w, 0.3, vmin, vmax, config=cfg)
                name = describe(cfg) if cfg else "autotuned:" + KW.chosen_config()
                row((B, M, R, E, D), name, float((a - ref).abs().max()), KW._wildcat_wattn_kernel,
                    benched=len(calls) - n0)

    def run_kdeformer():
        from attnbench.methods import build
        from attnbench.methods.kdeformer import KDEformer
        calls = fake_autotuned(KK, "_kde_fwd", ["n_q", "n_k", "n_blocks", "n_samples", "d", "dv"])
        cases = [(1, 2, 70, 130, 16, 16, 32, 20, torch.float32),   # non-divisible, cross
                 (1, 1, 64, 64, 16, 16, 16, 16, torch.float32),    # divisible
                 (1, 1, 48, 80, 8, 24, 16, 10, torch.float16)]     # D < 16, Dv != D, fp16 (non-IEEE dot)
        for b, h, nq, nk, d, dv, bs, ss, dt in cases:
            g = torch.Generator().manual_seed(nq)
            q, k, v = (torch.randn(b, h, n, e, generator=g).to(dt) for n, e in ((nq, d), (nk, d), (nk, dv)))
            m = build({"name": "kdeformer", "bucket_size": bs, "sample_size": ss, "backend": "torch"})
            m.reseed(1)
            plan = m.plan(q, k, v)
            ref = KDEformer.attend_torch(q.float(), k.float(), v.float(), plan, 0.3)
            for cfg in [None] + KK.CONFIGS:
                n0 = len(calls)
                a = KK.kdeformer_attention(q, k, v, plan, 0.3, config=cfg)
                assert a.dtype == dt and a.shape == ref.shape
                name = describe(cfg) if cfg else "autotuned:" + KK.chosen_config()
                err = float((a.float() - ref).abs().max() / ref.abs().max())
                row((nq, nk, bs, ss, str(dt)), name, err, KK._kde_fwd, fp16=dt == torch.float16,
                    benched=len(calls) - n0)

    def tile_skip(q_hi, k_hi, c, theta, causal, bm, bn):
        """Reference skipped-tile fraction for BLOCK_M=bm, BLOCK_N=bn (same fp32 ops as the kernel)."""
        B, H, Nq, _ = q_hi.shape
        Nk = k_hi.shape[2]
        hh = q_hi @ k_hi.transpose(-1, -2)                        # small integers: exact in fp32
        valid = torch.ones(Nq, Nk, dtype=torch.bool)
        if causal:
            valid = torch.arange(Nk)[None, :] <= torch.arange(Nq)[:, None] + (Nk - Nq)
        mhh = hh.masked_fill(~valid, float("-inf")).amax(-1, keepdim=True)
        est, est_max = (256.0 * hh) * c, (256.0 * mhh) * c
        keep = valid & ((est - est_max) >= -theta.view(1, -1, 1, 1))
        visited = done = 0
        for pm in range(-(-Nq // bm)):
            n_end = min(Nk, (pm + 1) * bm + Nk - Nq) if causal else Nk
            for s in range(0, max(n_end, 0), bn):
                visited += B * H
                done += int(keep[:, :, pm * bm:(pm + 1) * bm, s:s + bn].flatten(2).any(-1).sum())
        return 1.0 - done / max(visited, 1)

    def run_latte():
        from attnbench.methods.latte import Latte
        calls = fake_autotuned(KL, "_latte_attend", ["Nq", "Nk", "D", "DV", "CAUSAL", "INT8"], reset_to_zero=["BLOCKS"])
        fake_autotuned(KL, "_latte_rowmax", ["Nq", "Nk", "D", "CAUSAL"])
        orig = KL.latte_attention_triton
        seen = {}
        def spy(*args, config=None, **kw):
            res = orig(*args, config=config, **kw)
            seen.update(args=args, kw=kw, skip=res[3])
            return res
        torch.manual_seed(0)
        # hot: a few keys aligned with every query dominate, so whole tiles are skipped (non-trivial skip)
        for nq, nk, d, causal, score, th, hot in [(50, 50, 16, True, "int8", 1.0, False),
                                                  (37, 70, 24, False, "float", 1.0, True),
                                                  (45, 45, 16, True, "int8", 0.5, True),
                                                  (64, 64, 8, False, "int8", 0.0, False)]:
            q, k, v = torch.randn(1, 2, nq, d), torch.randn(1, 2, nk, d), torch.randn(1, 2, nk, 12)
            if hot:
                base = torch.randn(d)
                q, k = base + 0.3 * q, 0.3 * k
                k[:, :, [3, 20]] += 2 * base
            a = Latte(threshold=th, score=score, backend="torch")
            with torch.no_grad():
                oa = a(q, k, v, causal=causal)
            for cfg in [None] + KL.CONFIGS:
                KL.latte_attention_triton = functools.partial(spy, config=cfg)
                b = Latte(threshold=th, score=score, backend="triton")
                n0 = len(calls)
                with torch.no_grad():
                    ob = b(q, k, v, causal=causal)
                chosen = cfg if cfg is not None else KL._latte_attend.best_config
                args = seen["args"]
                ref_skip = tile_skip(args[3], args[5], args[8], args[9], causal,
                                     chosen.kwargs["BLOCK_M"], chosen.kwargs["BLOCK_N"])
                name = describe(cfg) if cfg else "autotuned:" + KL.chosen_config()
                row((nq, nk, d, causal, score, th, hot), name, float((oa - ob).abs().max()), KL._latte_attend,
                    kept_diff=abs(a.extra_stats()["kept_fraction"] - b.extra_stats()["kept_fraction"]),
                    skip=seen["skip"], ref_skip=ref_skip, benched=len(calls) - n0)
        KL.latte_attention_triton = orig

    {"wildcat": run_wildcat, "kdeformer": run_kdeformer, "latte": run_latte}[sys.argv[1]]()
    print("RESULT " + json.dumps(out))
    '''
)


def _run_in_interpreter(name: str) -> dict:
    env = {**os.environ, "TRITON_INTERPRET": "1", "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(ROOT)}
    res = subprocess.run([sys.executable, "-c", _SCRIPT, name], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-4000:]
    line = [ln for ln in res.stdout.splitlines() if ln.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):])


@pytest.mark.parametrize("name", sorted(MODULES))
def test_every_config_matches_pytorch_in_interpreter(name):
    out = _run_in_interpreter(name)
    n_cfg = len(MODULES[name].CONFIGS)
    assert all(n == 1 for n in out["single"].values()) and len(out["single"]) == len(KERNELS[name])
    rows = out["rows"]
    cases = {json.dumps(r["case"]) for r in rows}
    assert len(cases) >= 2 and len(rows) == len(cases) * (n_cfg + 1)  # every config + the autotuned path
    explicit = {r["config"] for r in rows if not r["config"].startswith("autotuned:")}
    assert explicit == {A.describe(c) for c in MODULES[name].CONFIGS}
    bad = []
    for r in rows:
        tol = 2e-3 if r.get("fp16") else 1e-5
        if not r["err"] < tol:
            bad.append((r["case"], r["config"], "err", r["err"]))
        if name == "latte" and (r["kept_diff"] != 0.0 or r["skip"] != r["ref_skip"]):
            bad.append((r["case"], r["config"], "kept/skip", r["kept_diff"], r["skip"], r["ref_skip"]))
    assert not bad, bad
    if name == "latte":  # the skip check is not vacuous: some tilings skip tiles, and not all alike
        skips = [r["skip"] for r in rows]
        assert max(skips) > 0.2 and len(set(skips)) >= 3
    # Fake-timed autotuning (last timed = fastest): the autotuned call times every config that survives
    # pruning, in BLOCK_M order, and runs the last one; explicit configs never time anything. For
    # LATTE the winner has the fewest query tiles, so its skip count also checks reset_to_zero.
    tuned = [r for r in rows if r["config"].startswith("autotuned:")]
    assert tuned[0]["benched"] >= 2
    for r in tuned:
        if r["benched"]:
            assert r["benched"] == len(r["timed"]) and r["config"] == "autotuned:" + r["timed"][-1]
            assert r["timed"][0].split(",")[0] != r["timed"][-1].split(",")[0] or name == "kdeformer"
    assert all(r["benched"] == 0 for r in rows if not r["config"].startswith("autotuned:"))
