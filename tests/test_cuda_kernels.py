"""The Triton kernels compiled for real on a CUDA device, against their PyTorch paths (marker ``cuda``).

Each kernel (WildCat's weighted attention, KDEformer's fused block + sample pass, LATTE's two
passes) is called through its entry point on inputs in fp32, fp16 and bf16, on shapes that divide
no tile (n = 1000 queries and keys, 1037 keys in KDEformer's cross-attention case, head dims 64
and 80, coreset / sample / bucket sizes that are not powers of two), and compared with the
PyTorch path on the same random choices. To keep the compile time short on a fresh GPU (every
Triton config is a compilation) the kernels run with their first config (``CONFIGS[0]``, passed
as ``config=``), except one case per kernel (fp32, d = 80) that goes through the autotuner over
every config, as a real run does; every config is checked against PyTorch in the interpreter by
``tests/test_kernel_configs.py``. ``attnbench gpu_check`` runs this file right after its compile
report (``python -m pytest -m cuda tests/test_cuda_kernels.py``).

Without CUDA they are skipped, except under ``TRITON_INTERPRET=1`` (set before Triton is
imported), where the same comparisons run on CPU tensors through the Triton interpreter on small
shapes (n = 70); ``tests/test_gpu_check.py`` runs this file that way in a subprocess. The
interpreter has no bfloat16 (NumPy has none: it multiplies the raw bit patterns, see
triton-lang/triton#4972), so the one kernel that takes bf16 operands as they are (KDEformer's) is
skipped in bf16 there; WildCat and LATTE compute in fp32 after upcasting, as their methods do.

Error: max |triton - torch| / max |torch|, in float64, after both outputs are cast to the input
dtype (what the method returns). Tolerance from the dtype: 8 machine epsilons in fp16/bf16 (the
output rounding, plus KDEformer's fp16/bf16 ``tl.dot`` operands: probabilities rounded to the
dtype before P·V), and 8·√n epsilons in fp32, where both paths compute in IEEE fp32 (no TF32)
and differ only in summation order over n keys.
"""
from __future__ import annotations

import functools
import math
import os

import pytest
import torch

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
CUDA = torch.cuda.is_available() and not INTERPRET
DEVICE = "cuda" if CUDA else "cpu"

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not (CUDA or INTERPRET),
                       reason="no CUDA device (TRITON_INTERPRET=1 runs these on the CPU through the interpreter)"),
]

# (queries = keys, WildCat coreset, KDEformer bucket / samples): none divides a tile.
N, CORESET, BUCKET, SAMPLES = (1000, 100, 64, 100) if CUDA else (70, 20, 16, 20)
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
HEAD_DIMS = [64, 80]
IDS = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


@pytest.fixture(autouse=True)
def _ieee_fp32_and_triton():
    pytest.importorskip("triton")
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False  # the PyTorch reference in IEEE fp32
    yield
    torch.backends.cuda.matmul.allow_tf32 = tf32


def tol(dtype: torch.dtype, n: int = N) -> float:
    eps = torch.finfo(dtype).eps
    return 8 * eps * (math.sqrt(n) if dtype == torch.float32 else 1.0)


def rel_err(out: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype) -> float:
    a, b = out.to(dtype).double(), ref.to(dtype).double()
    assert torch.isfinite(a).all() and torch.isfinite(b).all()
    return float((a - b).abs().max() / b.abs().max())


def qkv(dtype: torch.dtype, d: int, seed: int = 0, b: int = 1, h: int = 2, n: int = N):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(b, h, n, d, generator=g).to(device=DEVICE, dtype=dtype) for _ in range(3))


AUTOTUNED = (torch.float32, 80)  # the one case per kernel that autotunes (the others pin CONFIGS[0])


def params():
    return [pytest.param(dt, d, id=f"{IDS[dt]}-d{d}" + ("-autotuned" if (dt, d) == AUTOTUNED else ""))
            for dt in DTYPES for d in HEAD_DIMS]


def config_for(module, dtype: torch.dtype, d: int):
    """None (autotune over every config) for the AUTOTUNED case, else the kernel's first config."""
    return None if (dtype, d) == AUTOTUNED else module.CONFIGS[0]


@pytest.mark.parametrize("dtype,d", params())
def test_wildcat_kernel_matches_torch(dtype, d):
    """WildCat: one coreset (RPCholesky, signed Nyström weights, value clamp), attended by the fused
    kernel and by ``weighted_attention``; both in fp32 on the dtype-rounded inputs, as WildCat does."""
    from attnbench.methods.kernels import wildcat as KW
    from attnbench.methods.rpcholesky import compress_sequence
    from attnbench.methods.wildcat import weighted_attention

    q, k, v = (t.float().flatten(0, 1) for t in qkv(dtype, d, seed=1))  # (B·H, n, d), upcast
    scale = d**-0.5
    vmin, vmax = v.amin(1, keepdim=True), v.amax(1, keepdim=True)
    q_scale = torch.linalg.vector_norm(q, dim=-1).amax(-1, keepdim=True)
    g = torch.Generator(device=DEVICE).manual_seed(0)
    ks, vs, w = compress_sequence(k, v, CORESET, 1, scale, q_scale, k.mean(1, keepdim=True), generator=g)
    assert ks.shape[1] == CORESET
    ref = weighted_attention(q, ks, vs, w, scale, vmin, vmax)
    out = KW.weighted_attention_triton(q, ks, vs, w, scale, vmin, vmax, config=config_for(KW, dtype, d))
    assert out.shape == ref.shape == (q.shape[0], N, d) and out.device.type == DEVICE
    err = rel_err(out, ref, dtype)
    assert err < tol(dtype), (IDS[dtype], d, err, tol(dtype))


@pytest.mark.parametrize("dtype,d", params())
def test_kdeformer_kernel_matches_torch(dtype, d):
    """KDEformer: one plan (LSH blocks of ⌈n/bucket⌉, sampled residual), evaluated by the fused
    kernel on the dtype's operands and by ``attend_torch`` in fp32; cross-attention (Nk ≠ Nq)."""
    if INTERPRET and dtype == torch.bfloat16:
        pytest.skip("the Triton interpreter has no bfloat16 (triton-lang/triton#4972); runs on CUDA")
    from attnbench.methods import build
    from attnbench.methods.kdeformer import KDEformer
    from attnbench.methods.kernels import kdeformer as KK

    q, _, _ = qkv(dtype, d, seed=2)
    _, k, v = qkv(dtype, d, seed=3, n=N + 37)
    scale = d**-0.5
    m = build({"name": "kdeformer", "bucket_size": BUCKET, "sample_size": SAMPLES, "backend": "torch"})
    m.reseed(1)
    plan = m.plan(q, k, v)
    assert plan["m"] == SAMPLES and plan["nb"] > 1
    ref = KDEformer.attend_torch(q.float(), k.float(), v.float(), plan, scale)
    out = KK.kdeformer_attention(q, k, v, plan, scale, config=config_for(KK, dtype, d))
    assert out.dtype == dtype and out.shape == ref.shape == (1, 2, N, d) and out.device.type == DEVICE
    err = rel_err(out, ref, dtype)
    assert err < tol(dtype), (IDS[dtype], d, err, tol(dtype))


@pytest.mark.parametrize("dtype,d", params())
def test_latte_kernel_matches_torch(dtype, d, monkeypatch):
    """LATTE: the method with ``backend='triton'`` against ``backend='torch'`` (fp32 after the
    method's upcast): causal with the int8 score, bidirectional with the float score. The keep
    decisions are exact in both, so the kept fractions must agree exactly."""
    from attnbench.methods.kernels import latte as KL
    from attnbench.methods.latte import Latte

    cfg = config_for(KL, dtype, d)
    if cfg is not None:  # the method calls the module's function: pin the config there (both passes)
        monkeypatch.setattr(KL, "latte_attention_triton", functools.partial(KL.latte_attention_triton, config=cfg))
    q, k, v = qkv(dtype, d, seed=4)
    for causal, score in ((True, "int8"), (False, "float")):
        a = Latte(threshold=3.0, score=score, backend="torch")
        b = Latte(threshold=3.0, score=score, backend="triton")
        with torch.no_grad():
            ref, out = a(q, k, v, causal=causal), b(q, k, v, causal=causal)
        assert out.dtype == dtype and out.shape == ref.shape and out.device.type == DEVICE
        err = rel_err(out, ref, dtype)
        assert err < tol(dtype), (IDS[dtype], d, causal, score, err, tol(dtype))
        sa, sb = a.extra_stats(), b.extra_stats()
        assert sa["kept_fraction"] == sb["kept_fraction"] and 0 < sb["kept_fraction"] < 1, (sa, sb)
        assert 0 <= sb["skipped_block_fraction"] <= 1
