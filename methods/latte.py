"""LATTE: low-precision approximate attention with head-wise trainable thresholds.

Wang, Lin, Wu (National Taiwan University), "Low-Precision Approximate Attention with
Head-wise Trainable Threshold for Efficient Transformer", arXiv 2404.07519. The paper has no
public code; this file is the suite's implementation.

From the paper:
  * Q and K are quantised to 8 bits; a cheap estimate of every score uses only the most
    significant 4 bits of each operand (the "hi" nibble).
  * A head-wise threshold filter keeps, for each query, the keys whose estimated score is close
    to the row maximum: a *differential* threshold, ``ŝ_ij >= max_j ŝ_ij - θ_h``. With
    ``θ_h = -ln γ_h`` this keeps keys whose estimated softmax probability is at least ``γ_h``
    times the row's largest one.
  * Computation reuse: the full-precision score of a kept key reuses the 4-bit partial product.
  * Thresholds are trained end to end (with a penalty that pushes filtering up).

This suite's choices (the paper's exact recipe is not public):
  * Quantisation: symmetric int8 per (batch, head), scale = max|x| / 127, round to nearest;
    ``x = 16·hi + lo`` with ``hi = floor(x/16)`` in [-8, 7] and ``lo`` in [0, 15] (exact).
    The scale is taken over all tokens of the call, so in causal use future keys can move the
    scale (not the mask) of past ones; a deployment with a KV cache would calibrate it instead.
  * Estimate ``ŝ = 256·(q_hi·k_hi)·s_q·s_k·scale``. Full int8 score with reuse:
    ``q·k = 256·(q_hi·k_hi) + [q_hi, q_lo]·[16·k_lo, k]`` (equal to
    ``256 hh + 16(hl + lh) + ll``). ``score="float"`` uses the unquantised score of kept keys
    instead (the filter still uses the 4-bit estimate).
  * Softmax runs over kept keys only (the row maximum is always kept, so no row is empty).
  * Training: forward uses the hard mask; backward a straight-through sigmoid surrogate
    ``σ((ŝ - max ŝ + θ_h)/T)`` (``temperature`` = T, in logit units). The int8 score passes
    gradients to q, k as if it were the float score (straight-through over the rounding).
    ``self.soft_kept`` holds the differentiable kept fraction of the last call for the
    regulariser ``λ·kept`` (see ``runners/train_thresholds.py``). θ is clamped to >= 0.
  * Heads: ``heads`` fixes the number of thresholds; ``heads=None`` sizes θ lazily on the first
    call (build the optimiser after one forward). ``thresholds_path`` loads a ``.pt`` file of
    ``{layer_name: θ tensor}``; ``threshold_layer`` picks the entry (may be omitted when the
    file holds exactly one; with several and none picked, calling the method is an error, so that
    a task can give each layer its entry: ``task=lm`` does).

Complexity: a filter, not a sub-quadratic method: O(n²·d) time. Three implementations, one
kept set (``backend``):
  * ``torch``: dense query chunks of ``chunk_size`` (float products of the integer-valued parts,
    exact), memory O(chunk_size·n) floats, never n×n for n > chunk_size (during training autograd
    still keeps every chunk). The only differentiable path: training uses it.
  * ``cpu`` (forward only): per tile (min(64, chunk_size) queries of one head in the kernel,
    at most chunk_size·n estimates in the fallback), the 4-bit products by ``torch._int_mm``
    (int8 × int8 -> int32, exact) into an int32 tile; per query the smallest
    integer estimate that passes the dense path's float test (so the kept sets are identical);
    then only the kept keys: their scores, softmax and values. A small C++ kernel
    (``_ROWS_SRC``, compiled on first use with ``torch.utils.cpp_extension``, about half a
    minute, cached; tiles in parallel, each in cache) does the per-query work: a tile keeping
    at most ``CPU_DENSE`` (20 %) of its valid pairs gathers the kept keys row by row; a denser
    one (near-uniform heads, such as SmolLM2's layer 0) scores the whole tile by one matmul,
    masks the dropped keys and multiplies by V in a second (the same kept sets; about twice as
    fast there). Where the kernel cannot be built (no compiler) the same steps run as PyTorch
    ops (``_cpu_tile_ops``: the kept pairs as a CSR pattern, ``sampled_addmm``, ``CSR @ V``),
    with a warning, several times slower. Memory O(chunk_size·n) at most (the kernel: 64·n
    int32 and, for dense tiles, 64·n floats per thread) plus O(n·d); time O(n²·d) integer
    work plus O(kept·d) (dense tiles: O(64·n·d) each).
  * ``triton`` (CUDA, fp32, forward only): a two-pass kernel (``methods/kernels/latte.py``)
    computes the 4-bit estimate and skips the full-score work of key blocks in which nothing
    is kept.
``auto`` takes ``triton`` on CUDA (fp32) and ``cpu`` on the CPU when no gradient is needed (under
``torch.no_grad()``, or with θ, q, k, v all frozen), else ``torch``. With ``score="int8"`` the
kept scores are the same floats on every path (integer products are exact), so outputs differ
only by summation order; with ``score="float"`` by the float products' rounding as well.

Chained through a model's layers, such last-bit differences do not stay small: the int8 rounding
and the hard filter turn them into different kept sets in later layers. On SmolLM2 (θ = 8 in all
30 layers, one 2,048-token window) each layer's cpu and torch outputs agree to ≤ 5e-7 relative with
identical kept sets on the same inputs, yet the model's perplexity is 7.96 on the cpu path and 8.19
on the torch path, and 3e-7 relative noise on every layer's output moves it between 8.02 and 8.19.
Perplexity differences of this size between LATTE runs are rounding, not the method: compare
settings over several windows.
"""
from __future__ import annotations

import os
import warnings
from typing import Any

import torch
from torch import Tensor, nn

from attnbench.methods import register
from attnbench.methods.base import AttentionMethod, check_positive_int, score_groups

SCORES = ("int8", "float")
BACKENDS = ("auto", "torch", "cpu", "triton")


def quantize_int8(x: Tensor) -> tuple[Tensor, Tensor]:
    """Symmetric int8 per (batch, head): integer-valued tensor in [-127, 127] (x's float dtype)
    and the scale (B, H, 1, 1) with ``x ≈ x_int · scale``."""
    amax = x.detach().abs().amax(dim=(-2, -1), keepdim=True)
    scale = torch.where(amax > 0, amax / 127.0, torch.ones_like(amax))
    x_int = torch.round(x.detach() / scale).clamp_(-127, 127)
    return x_int, scale


def split_hi_lo(x_int: Tensor) -> tuple[Tensor, Tensor]:
    """``x_int = 16·hi + lo`` exactly, hi = floor(x/16) (signed 4-bit, [-8, 7]), lo in [0, 15]."""
    hi = torch.floor(x_int / 16)
    lo = x_int - 16 * hi
    return hi, lo


CPU_KERNEL = True  # the cpu path uses the compiled row kernel where it builds (False: PyTorch ops only)
CPU_QUERY_BLOCK = 64  # a tile's queries come in blocks of this many (int8 matmuls of 64+ rows run fastest)
CPU_DENSE = 0.2  # the kernel's tiles keeping more than this fraction of their valid pairs run dense (matmuls)
_WORDS = 32  # the CPU path orders keys in groups of 8·_WORDS so that each 8-key word's maximum is a strided max
_INVALID = -(2 ** 30)  # int32 estimate of a masked (causal, padding) key: below every threshold
_PACK = 0x0102040810204080  # (word · _PACK) >> 56: bit j = byte j, for a word of 0/1 bytes
_POPCOUNT = torch.tensor([bin(b).count("1") for b in range(256)])


_INT_MM: bool | None = None  # whether torch._int_mm runs here (probed on first use)


def _int_mm_runs() -> bool:
    """Whether ``torch._int_mm`` runs on the CPU here (probed once)."""
    global _INT_MM
    if _INT_MM is None:
        try:
            torch._int_mm(torch.ones(17, 8, dtype=torch.int8), torch.ones(8, 8, dtype=torch.int8))
            _INT_MM = True
        except (RuntimeError, NotImplementedError, AttributeError):
            _INT_MM = False
    return _INT_MM


def _int8_mm(a: Tensor, b: Tensor, out: Tensor) -> None:
    """``out = a @ b`` (int8 × int8 -> int32, exact) by ``torch._int_mm``; where a build lacks it,
    by float32 products (exact below 2^24, so for head dims up to 2^18 of 4-bit values)."""
    if _int_mm_runs():
        torch._int_mm(a, b, out=out)
    else:
        out.copy_(a.float() @ b.float())


# The cpu path's kernel, compiled on first use (torch.utils.cpp_extension; cached under
# ~/.cache/torch_extensions). Tiles of ``block`` queries of one head run in parallel; per tile the int8
# matmul (at::_int_mm_out) into the thread's int32 buffer, then per query the row maximum and
# ``_row_threshold``'s test in the same float operations (built without FMA contraction) and the kept
# count. A sparse tile then takes, per query, the kept keys (a vector compare per 16 or 8 keys with
# AVX-512 or AVX2), their scores ``dot(q, k)·mult`` (int8 dots for int8 scores: the same integers, a quarter
# of the memory traffic), softmax over them and their values' weighted sum; a
# dense one (kept fraction above ``CPU_DENSE``) the same softmax over a matmul of the whole tile.
_ROWS_SRC = r"""
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <algorithm>
#include <cmath>
#include <vector>
#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif

// Per query row: the smallest integer t that passes the dense path's float test (see _row_threshold).
template <typename T>
int32_t row_threshold(const int32_t* h, int64_t kend, T cg, T thg, int64_t lowest) {
  int32_t top = h[0];
  for (int64_t j = 1; j < kend; ++j) top = std::max(top, h[j]);
  const T est_top = (T(256) * T(top)) * cg;
  double st = std::ceil(double(top) - double(thg) / (256.0 * double(cg)));
  st = std::max(st, double(lowest));
  int64_t t = top;
  for (int o = -2; o < 2; ++o) {
    const double cand = std::min(st + o, double(top));
    if ((T(256) * T(cand)) * cg - est_top >= -thg) { t = int64_t(cand); break; }
  }
  return int32_t(t);
}

// How many keys j < kend have h[j] >= t.
inline int64_t count_kept(const int32_t* h, int64_t kend, int32_t t32) {
  int32_t n = 0;
#pragma omp simd reduction(+ : n)
  for (int64_t j = 0; j < kend; ++j) n += h[j] >= t32;
  return n;
}

// The keys j < kend with h[j] >= t, ascending, into idx; returns their count.
inline int64_t kept_keys(const int32_t* h, int64_t kend, int32_t t32, int64_t* idx) {
  int64_t n = 0, j = 0;
#if defined(__AVX512F__)
  const __m512i tv = _mm512_set1_epi32(t32);
  for (; j + 16 <= kend; j += 16) {
    uint32_t m = _mm512_cmpge_epi32_mask(_mm512_loadu_si512(h + j), tv);
    while (m) { idx[n++] = j + __builtin_ctz(m); m &= m - 1; }
  }
#elif defined(__AVX2__)
  const __m256i tv = _mm256_set1_epi32(t32 - 1);
  for (; j + 8 <= kend; j += 8) {
    __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(h + j));
    uint32_t m = _mm256_movemask_ps(_mm256_castsi256_ps(_mm256_cmpgt_epi32(x, tv)));
    while (m) { idx[n++] = j + __builtin_ctz(m); m &= m - 1; }
  }
#endif
  for (; j < kend; ++j) if (h[j] >= t32) idx[n++] = j;
  return n;
}

// One query row over its n kept keys idx: scores dot(q, k)·mult, softmax over them, values' weighted sum.
// With int8 scores (qi, Ki not null) the dots are int8 products (exact, a quarter of the memory traffic).
template <typename T>
void sparse_row(const T* q, const T* Kb, const int8_t* qi, const int8_t* Ki, const T* Vb, const int64_t* idx,
                int64_t n, T mg, T* o, T* s, int64_t D, int64_t Dv) {
  T top_dot = -INFINITY;
  for (int64_t i = 0; i < n; ++i) {
    T acc = 0;
    if (qi != nullptr) {
      const int8_t* kk = Ki + idx[i] * D;
      int32_t iacc = 0;
#pragma omp simd reduction(+ : iacc)
      for (int64_t d = 0; d < D; ++d) iacc += int32_t(qi[d]) * int32_t(kk[d]);
      acc = T(iacc);
    } else {
      const T* kk = Kb + idx[i] * D;
#pragma omp simd reduction(+ : acc)
      for (int64_t d = 0; d < D; ++d) acc += q[d] * kk[d];
    }
    s[i] = acc;
    top_dot = std::max(top_dot, acc);
  }
  const T top_s = top_dot * mg;  // mg > 0: the largest kept score, rounded as the dense path
  std::fill(o, o + Dv, T(0));
  T den = 0;
  for (int64_t i = 0; i < n; ++i) {
    const T w = std::exp(s[i] * mg - top_s);
    den += w;
    const T* vv = Vb + idx[i] * Dv;
#pragma omp simd
    for (int64_t d = 0; d < Dv; ++d) o[d] += w * vv[d];
  }
  for (int64_t d = 0; d < Dv; ++d) o[d] /= den;
}

// A tile where many keys are kept: scores of the whole tile by one matmul, kept ones as logits relative to
// each row's largest kept score (-inf elsewhere), exp over the tile, probabilities times V by one matmul.
template <typename T>
void dense_tile(const int32_t* hh, int64_t kend_all, const int32_t* t, int64_t r0, int64_t R, bool causal,
                T mg, const torch::Tensor& qt, const torch::Tensor& kt, const torch::Tensor& vt, torch::Tensor ot,
                const torch::Tensor& sbuf) {
  torch::Tensor S = sbuf.narrow(0, 0, R * kend_all).view({R, kend_all});
  at::mm_out(S, qt, kt.t());
  T* P = S.data_ptr<T>();
  std::vector<T> den(R);
  for (int64_t i = 0; i < R; ++i) {
    const int32_t* h = hh + i * kend_all;
    T* p = P + i * kend_all;
    const int64_t kend = causal ? r0 + i + 1 : kend_all;
    const int32_t ti = t[i];
    T top_dot = -INFINITY;
#pragma omp simd reduction(max : top_dot)
    for (int64_t j = 0; j < kend; ++j) top_dot = h[j] >= ti ? std::max(top_dot, p[j]) : top_dot;
    const T top_s = top_dot * mg;
    // dropped keys get a finite stand-in (-inf or underflowing arguments take exp's slow path), zeroed below
#pragma omp simd
    for (int64_t j = 0; j < kend; ++j) p[j] = h[j] >= ti ? p[j] * mg - top_s : T(-64);
    std::fill(p + kend, p + kend_all, T(-64));
  }
  S.exp_();
  for (int64_t i = 0; i < R; ++i) {
    const int32_t* h = hh + i * kend_all;
    T* p = P + i * kend_all;
    const int64_t kend = causal ? r0 + i + 1 : kend_all;
    const int32_t ti = t[i];
    T acc = 0;
#pragma omp simd reduction(+ : acc)
    for (int64_t j = 0; j < kend; ++j) {
      p[j] = h[j] >= ti ? p[j] : T(0);
      acc += p[j];
    }
    std::fill(p + kend, p + kend_all, T(0));
    den[i] = acc;
  }
  at::mm_out(ot, S, vt);
  T* o = ot.data_ptr<T>();
  const int64_t Dv = ot.size(1);
  for (int64_t i = 0; i < R; ++i)
    for (int64_t d = 0; d < Dv; ++d) o[i * Dv + d] /= den[i];
}

// q8 (BH, Nq, D), k8 (BH, Nk, D) int8 4-bit parts; qs, ks (BH, N, D), vs (BH, Nk, Dv) float; c, th, mult (BH).
// Tiles of `block` queries of one head run in parallel, each with its own int32 buffer (cache-sized). A tile
// whose kept pairs exceed `dense` of its valid pairs takes dense_tile, the others sparse_row per query.
void latte_cpu(torch::Tensor q8, torch::Tensor k8, torch::Tensor qs, torch::Tensor ks, torch::Tensor vs,
               torch::Tensor qi8, torch::Tensor ki8,
               torch::Tensor c, torch::Tensor th, torch::Tensor mult, torch::Tensor out, torch::Tensor kept,
               bool causal, int64_t lowest, int64_t block, double dense) {
  const bool int8_scores = qi8.numel() > 0;  // qi8, ki8: the int8 q, k (empty: float scores)
  const int64_t BH = q8.size(0), Nq = q8.size(1), D = q8.size(2), Nk = k8.size(1), Dv = vs.size(2);
  const int64_t nb = (Nq + block - 1) / block;
  AT_DISPATCH_FLOATING_TYPES(qs.scalar_type(), "latte_cpu", [&] {
    const scalar_t* Q = qs.data_ptr<scalar_t>(); const scalar_t* K = ks.data_ptr<scalar_t>();
    const scalar_t* V = vs.data_ptr<scalar_t>(); const scalar_t* C = c.data_ptr<scalar_t>();
    const scalar_t* TH = th.data_ptr<scalar_t>(); const scalar_t* M = mult.data_ptr<scalar_t>();
    scalar_t* O = out.data_ptr<scalar_t>(); int64_t* KEPT = kept.data_ptr<int64_t>();
    const int8_t* QI = int8_scores ? qi8.data_ptr<int8_t>() : nullptr;
    const int8_t* KI = int8_scores ? ki8.data_ptr<int8_t>() : nullptr;
    at::parallel_for(0, BH * nb, 1, [&](int64_t begin, int64_t end) {
      std::vector<int64_t> idx(Nk);
      std::vector<scalar_t> s(Nk);
      std::vector<int32_t> t(block);
      torch::Tensor buf = torch::empty({block * Nk}, torch::kInt32);
      torch::Tensor sbuf;  // dense tiles' scores, allocated at the first one
      for (int64_t tile = begin; tile < end; ++tile) {
        const int64_t bh = tile / nb, r0 = (tile % nb) * block, r1 = std::min(Nq, r0 + block), R = r1 - r0;
        const int64_t kend_all = causal ? r1 : Nk;
        torch::Tensor hh = buf.narrow(0, 0, R * kend_all).view({R, kend_all});
        at::_int_mm_out(hh, q8[bh].narrow(0, r0, R), k8[bh].narrow(0, 0, kend_all).t());
        const int32_t* H = hh.data_ptr<int32_t>();
        int64_t n_kept = 0, n_valid = 0;
        for (int64_t i = 0; i < R; ++i) {
          const int32_t* h = H + i * kend_all;
          const int64_t kend = causal ? r0 + i + 1 : Nk;
          t[i] = row_threshold<scalar_t>(h, kend, C[bh], TH[bh], lowest);
          const int64_t n = count_kept(h, kend, t[i]);
          KEPT[bh * Nq + r0 + i] = n;
          n_kept += n;
          n_valid += kend;
        }
        const scalar_t* Kb = K + bh * Nk * D;
        const scalar_t* Vb = V + bh * Nk * Dv;
        if (double(n_kept) > dense * double(n_valid)) {
          if (!sbuf.defined()) sbuf = torch::empty({block * Nk}, qs.options());
          dense_tile<scalar_t>(H, kend_all, t.data(), r0, R, causal, M[bh], qs[bh].narrow(0, r0, R),
                               ks[bh].narrow(0, 0, kend_all), vs[bh].narrow(0, 0, kend_all), out[bh].narrow(0, r0, R),
                               sbuf);
        } else {
          for (int64_t i = 0; i < R; ++i) {
            const int64_t kend = causal ? r0 + i + 1 : Nk;
            const int64_t n = kept_keys(H + i * kend_all, kend, t[i], idx.data());
            sparse_row<scalar_t>(Q + (bh * Nq + r0 + i) * D, Kb,
                                 int8_scores ? QI + (bh * Nq + r0 + i) * D : nullptr,
                                 int8_scores ? KI + bh * Nk * D : nullptr, Vb, idx.data(), n, M[bh],
                                 O + (bh * Nq + r0 + i) * Dv, s.data(), D, Dv);
          }
        }
      }
    });
  });
}
"""
_ROWS: Any = None  # the compiled module, False where it cannot be built here (then the PyTorch ops run)
_ROWS_FLAGS = {"AVX512": ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mfma"], "AVX2": ["-mavx2", "-mfma"]}


def _rows_kernel() -> Any:
    """The compiled row kernel, built on first use; ``None`` where no compiler can build it."""
    global _ROWS
    if _ROWS is None:
        try:
            import logging
            import platform

            quiet = logging.getLogger("torch.utils.cpp_extension")  # it logs a note on CUDA_HOME at import
            level = quiet.level
            quiet.setLevel(logging.ERROR)
            try:
                from torch.utils.cpp_extension import load_inline
            finally:
                quiet.setLevel(level)

            isa = torch.backends.cpu.get_cpu_capability() if platform.machine() in ("x86_64", "AMD64") else "none"
            flags = ["-O3", "-ffp-contract=off", "-fopenmp", *_ROWS_FLAGS.get(isa, [])]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                _ROWS = load_inline(f"attnbench_latte_cpu_{isa.lower()}", cpp_sources=_ROWS_SRC,
                                    functions=["latte_cpu"], extra_cflags=flags, extra_ldflags=["-fopenmp"])
        except Exception as exc:  # no compiler, no ninja, a failed build: the PyTorch ops path runs
            warnings.warn(f"LATTE's compiled CPU row kernel is unavailable ({type(exc).__name__}); "
                          "the cpu path runs on PyTorch ops (the same kept sets, slower).", stacklevel=3)
            _ROWS = False
    return _ROWS or None


def _row_threshold(top: Tensor, c: Tensor, theta: Tensor, lowest: int) -> Tensor:
    """Per row, the smallest integer ``t`` such that ``q_hi·k_hi >= t`` is the dense path's test
    ``256·hh·c - 256·top·c >= -θ`` in ``c``'s float dtype (both sides monotone in ``hh``).

    ``top``: (R,) int row maxima of ``q_hi·k_hi``; ``c``, ``theta``: (R,) positive, float. As
    ``|hh|, |top| <= 64·D``, the test's rounding moves its boundary from the real one,
    ``top - θ/(256 c)``, by about ``128·D`` units in the last place of ``c``'s dtype, far below one
    integer, so testing four integers around the real boundary finds ``t``. Where the boundary
    lies below ``lowest`` (below every possible ``hh``: every key kept), ``t <= lowest``."""
    est_top = (256 * top.to(c.dtype)) * c
    x = top.double() - theta.double() / (256 * c.double())
    start = torch.ceil(x).clamp(min=lowest, max=None)
    cand = torch.minimum(start[:, None] + torch.arange(-2, 2, dtype=torch.float64), top.double()[:, None])
    ok = ((256 * cand.to(c.dtype)) * c[:, None] - est_top[:, None]) >= -theta[:, None]
    t = torch.where(ok, cand, top.double()[:, None]).amin(-1)
    return t.to(torch.int32)


class _LatteStats:
    """Per-head kept / valid counts accumulated over query chunks."""

    def __init__(self, heads: int, device: torch.device) -> None:
        self.kept = torch.zeros(heads, dtype=torch.float64, device=device)
        self.valid = torch.zeros(heads, dtype=torch.float64, device=device)


@register("latte")
class Latte(AttentionMethod):
    """LATTE threshold filter on a 4-bit score estimate; softmax over the kept keys.

    Knobs: ``threshold`` (initial θ for every head, logit units, >= 0; keep keys within θ of the
    row max of the estimate), ``heads`` (number of thresholds or None = lazy), ``score``
    ("int8" | "float": how kept scores are computed), ``temperature`` (surrogate T > 0),
    ``chunk_size`` (queries per chunk on the torch path; estimates per tile / n on the cpu path),
    ``backend`` ("auto" | "torch" | "cpu" | "triton", see the module docstring),
    ``thresholds_path`` / ``threshold_layer`` (learned θ).
    """

    supports_causal = True
    supports_bidirectional = True
    version = 1
    supports_cross = True

    @classmethod
    def exact_knobs(cls, n: int) -> dict:
        return {"threshold": 1e9, "score": "float"}  # a threshold no score gap reaches keeps every key

    def __init__(
        self,
        threshold: float = 5.0,
        heads: int | None = None,
        score: str = "int8",
        temperature: float = 1.0,
        chunk_size: int = 512,
        backend: str = "auto",
        thresholds_path: str | None = None,
        threshold_layer: str | None = None,
    ) -> None:
        super().__init__()
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 <= float(threshold) < float("inf"):
            raise ValueError(f"method.threshold must be a finite number >= 0, got {threshold!r}.")
        if heads is not None:
            check_positive_int("heads", heads)
        if score not in SCORES:
            raise ValueError(f"method.score must be one of {SCORES}, got {score!r}.")
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) \
                or not 0 < float(temperature) < float("inf"):
            raise ValueError(f"method.temperature must be a finite number > 0, got {temperature!r}.")
        check_positive_int("chunk_size", chunk_size)
        if backend not in BACKENDS:
            raise ValueError(f"method.backend must be one of {BACKENDS}, got {backend!r}.")
        self.threshold = float(threshold)
        self.heads = heads
        self.score = score
        self.temperature = float(temperature)
        self.chunk_size = chunk_size
        self.backend = backend
        self.thresholds_path = thresholds_path
        self.threshold_layer = threshold_layer
        self.theta: nn.Parameter | None = None
        self._soft_kept: Tensor | None = None
        self._unresolved = ""  # set when thresholds_path holds several layers and threshold_layer is None
        if heads is not None:
            self.theta = nn.Parameter(torch.full((heads,), self.threshold))
        if thresholds_path is not None:
            self.load_thresholds(thresholds_path, threshold_layer)

    # --- thresholds ------------------------------------------------------------------------
    def load_thresholds(self, path: str, layer: str | None = None) -> None:
        """Set θ from a ``.pt`` file of ``{layer_name: θ tensor}``."""
        if not os.path.isfile(path):
            raise ValueError(f"method.thresholds_path {path!r} is not a file.")
        table = torch.load(path, map_location="cpu")
        if not isinstance(table, dict) or not table:
            raise ValueError(f"method.thresholds_path {path!r} must hold a non-empty dict {{layer_name: θ tensor}}.")
        if layer is None:
            if len(table) != 1:  # an error at the first call: a task may still pick the layer (task=lm does)
                self._unresolved = (f"method.threshold_layer must name one of {sorted(table)} "
                                    f"(the file holds several layers).")
                return
            layer = next(iter(table))
        if layer not in table:
            raise ValueError(f"method.threshold_layer {layer!r} is not in {path!r}; it holds {sorted(table)}.")
        theta = torch.as_tensor(table[layer], dtype=torch.float32).flatten()
        if self.heads is not None and theta.numel() != self.heads:
            raise ValueError(f"method.heads={self.heads} but {path!r}[{layer!r}] has {theta.numel()} thresholds.")
        if not bool(torch.isfinite(theta).all()) or bool((theta < 0).any()):
            raise ValueError(f"thresholds in {path!r}[{layer!r}] must be finite and >= 0.")
        self.heads = int(theta.numel())
        self.theta = nn.Parameter(theta.clone())

    def _theta_for(self, heads: int, device: torch.device) -> Tensor:
        if self._unresolved:
            raise ValueError(self._unresolved)
        if self.theta is None:  # lazy sizing on the first call
            self.theta = nn.Parameter(torch.full((heads,), self.threshold, device=device))
            self.heads = heads
        if self.theta.numel() != heads:
            raise ValueError(f"method.heads={self.theta.numel()} thresholds but the input has {heads} heads.")
        if self.theta.device != device:
            self.theta.data = self.theta.data.to(device)
        return self.theta.clamp_min(0)

    @property
    def soft_kept(self) -> Tensor | None:
        """Differentiable kept fraction of the last call (forward value = hard fraction)."""
        return self._soft_kept

    # --- the call --------------------------------------------------------------------------
    def causal_leak(self) -> str | None:
        return ("the int8 quantisation scale of q and k is the max over all tokens of the call, so later tokens can "
                "move earlier scores' rounding and kept sets (a deployment would calibrate the scale).")

    def _needs_grad(self, q: Tensor, k: Tensor, v: Tensor) -> bool:
        return torch.is_grad_enabled() and (
            q.requires_grad or k.requires_grad or v.requires_grad
            or (self.theta is not None and self.theta.requires_grad)
        )

    def _path(self, q: Tensor, k: Tensor, v: Tensor) -> str:
        """Which implementation runs this call: "triton", "cpu" or "torch" (see ``backend``)."""
        needs_grad = self._needs_grad(q, k, v)
        if self.backend == "triton":
            if q.device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
                raise ValueError("method.backend='triton' needs a CUDA device (or TRITON_INTERPRET=1).")
            if q.dtype != torch.float32:
                raise ValueError(f"method.backend='triton' computes in float32, got {q.dtype}.")
            if needs_grad:
                raise ValueError("method.backend='triton' is forward-only; run under torch.no_grad().")
            return "triton"
        if self.backend == "cpu":
            if q.device.type != "cpu":
                raise ValueError(f"method.backend='cpu' needs CPU tensors, got {q.device}.")
            if needs_grad:
                raise ValueError("method.backend='cpu' is forward-only; run under torch.no_grad() "
                                 "(training uses backend='torch').")
            return "cpu"
        if self.backend == "torch" or needs_grad:
            return "torch"
        if q.device.type == "cuda" and q.dtype == torch.float32:
            return "triton"
        return "cpu" if q.device.type == "cpu" else "torch"

    def _attend(self, q: Tensor, k: Tensor, v: Tensor, *, causal: bool, scale: float) -> Tensor:
        B, H, Nq, D = q.shape
        theta = self._theta_for(H, q.device)
        path = self._path(q, k, v)
        q_int, s_q = quantize_int8(q)
        k_int, s_k = quantize_int8(k)
        c = (s_q * s_k * scale).to(q.dtype)  # (B, H, 1, 1): int score -> logit
        if path == "cpu":
            return self._attend_cpu(q, k, v, q_int, k_int, c, theta, causal=causal, scale=scale)
        q_hi, q_lo = split_hi_lo(q_int)
        k_hi, k_lo = split_hi_lo(k_int)
        if path == "triton":
            from attnbench.methods.kernels.latte import latte_attention_triton

            out, kept_rows, valid_rows, blocks = latte_attention_triton(
                q, k, v, q_hi, q_lo, k_hi, k_lo, k_int, c, theta.detach(), causal=causal, score=self.score, scale=scale
            )
            kept_h = kept_rows.double().sum(dim=(0, 2))
            valid_h = valid_rows.double().sum(dim=(0, 2))
            self._soft_kept = None
            self._record(kept_h, valid_h, extra={"skipped_block_fraction": blocks})
            return out
        return self._attend_torch(q, k, v, q_hi, q_lo, k_hi, k_lo, k_int, c, theta, causal=causal, scale=scale)

    def _attend_torch(self, q, k, v, q_hi, q_lo, k_hi, k_lo, k_int, c, theta, *, causal, scale) -> Tensor:
        B, H, Nq, D = q.shape
        Nk = k.shape[2]
        train = torch.is_grad_enabled() and theta.requires_grad
        th = theta.view(1, H, 1, 1).to(q.dtype)
        k_rest = torch.cat([16 * k_lo, k_int], dim=-1)  # reuse: q·k = 256 hh + [q_hi, q_lo]·[16 k_lo, k]
        stats = _LatteStats(H, q.device)
        soft_sum = q.new_zeros(()) if train else None
        outs = []
        cols = torch.arange(Nk, device=q.device)
        for start in range(0, Nq, self.chunk_size):
            stop = min(Nq, start + self.chunk_size)
            # causal: keys after the chunk's last query are masked for every row of the chunk, so
            # they are left out (the same output, half the work over the whole call)
            kend = min(Nk, stop + (Nk - Nq)) if causal else Nk
            k_hi_c, k_rest_c, k_c, v_c = k_hi[:, :, :kend], k_rest[:, :, :kend], k[:, :, :kend], v[:, :, :kend]
            hh = q_hi[:, :, start:stop] @ k_hi_c.transpose(-2, -1)  # exact small-integer products
            est = 256 * hh * c
            if causal:
                rows = torch.arange(start, stop, device=q.device) + (Nk - Nq)
                valid = (cols[None, :kend] <= rows[:, None]).expand(B, H, -1, -1)
                est = est.masked_fill(~valid, float("-inf"))
            else:
                valid = None
            rel = est - est.amax(dim=-1, keepdim=True)  # <= 0, -inf where invalid
            keep = rel >= -th
            if self.score == "int8":
                q_rest = torch.cat([q_hi[:, :, start:stop], q_lo[:, :, start:stop]], dim=-1)
                s = (256 * hh + q_rest @ k_rest_c.transpose(-2, -1)) * c
                if q.requires_grad or k.requires_grad:  # straight-through over the rounding
                    s_f = (q[:, :, start:stop] @ k_c.transpose(-2, -1)) * scale
                    s = s_f + (s - s_f).detach()
            else:
                s = (q[:, :, start:stop] @ k_c.transpose(-2, -1)) * scale
            m_hard = keep.to(q.dtype)
            if train:
                m_soft = torch.sigmoid((rel + th) / self.temperature)
                if valid is not None:
                    m_soft = m_soft * valid
                m = m_hard + (m_soft - m_soft.detach())
                soft_sum = soft_sum + m.sum()
            else:
                m = m_hard
            # Dropped keys stay in the exponent (times a zero mask) so that the surrogate gradient
            # can reach θ through them; the forward value is the softmax over kept keys.
            if valid is not None:
                s = s.masked_fill(~valid, float("-inf"))
            row_max = s.detach().masked_fill(~keep, float("-inf")).amax(dim=-1, keepdim=True)
            w = torch.exp((s - row_max).clamp_max(80.0)) * m
            p = w / w.sum(dim=-1, keepdim=True)
            outs.append(p @ v_c)
            stats.kept += keep.sum(dim=(0, 2, 3)).double()
            n_valid = (valid.sum(dim=(0, 2, 3)).double() if valid is not None
                       else torch.full_like(stats.valid, B * (stop - start) * Nk))
            stats.valid += n_valid
        total_valid = float(stats.valid.sum())
        self._soft_kept = soft_sum / total_valid if train else None
        self._record(stats.kept, stats.valid)
        return torch.cat(outs, dim=2)

    def _attend_cpu(self, q, k, v, q_int, k_int, c, theta, *, causal, scale) -> Tensor:
        """Forward-only CPU path: the 4-bit products by an int8 matmul, then the kept pairs only.

        Per tile of heads × query blocks (at most ``chunk_size·n`` estimates), ``hh = q_hi·k_hi``
        by ``torch._int_mm`` (int8 × int8 -> int32, exact); then per query the row maximum, the
        smallest integer ``t`` passing the dense path's float test (``_row_threshold``: the same
        kept set), the keys with ``hh >= t``, their scores (int8 scores: integer-valued float
        products, exact), softmax over them and their values' weighted sum: in the compiled row
        kernel (``_ROWS_SRC``; tiles keeping more than ``CPU_DENSE`` of their pairs by matmuls)
        where it builds, else in PyTorch ops (``_cpu_tile_ops``).
        """
        B, H, Nq, D = q.shape
        Nk, Dv, BH = k.shape[2], v.shape[-1], B * H
        qi8, ki8 = (x.reshape(BH, -1, D).to(torch.int8).contiguous() for x in (q_int, k_int))  # exact: |x| <= 127
        q8, k8 = (x >> 4 for x in (qi8, ki8))  # q_hi = floor(q_int / 16), exactly
        qs, ks = (q_int, k_int) if self.score == "int8" else (q, k)
        qs, ks, vs = (x.reshape(BH, -1, x.shape[-1]).contiguous() for x in (qs, ks, v))  # one copy at most
        mult = c.reshape(BH) if self.score == "int8" else torch.full((BH,), scale, dtype=q.dtype)
        th = theta.detach().to(q.dtype).repeat(B).contiguous()  # (BH,): head h of batch b at b·H + h
        c_bh = c.reshape(BH).contiguous()
        out = torch.empty(BH, Nq, Dv, dtype=q.dtype)
        kept = torch.zeros(BH, dtype=torch.int64)
        lowest = -(64 * D + 2)  # below every 4-bit product sum (|q_hi·k_hi| <= 64·D)
        kernel = _rows_kernel() if CPU_KERNEL and _int_mm_runs() else None
        qb = min(CPU_QUERY_BLOCK, self.chunk_size)
        if kernel is None:
            self._cpu_tile_ops(q8, k8, qs, ks, vs, c_bh, th, mult, out, kept, qb, causal=causal, lowest=lowest)
        else:
            kept_rows = torch.empty(BH, Nq, dtype=torch.int64)
            if self.score != "int8":  # int8 scores: the row kernel's sparse dots in int8 (exact, less traffic)
                qi8 = ki8 = torch.empty(0, dtype=torch.int8)
            kernel.latte_cpu(q8, k8, qs, ks, vs, qi8, ki8, c_bh, th, mult, out, kept_rows, causal, lowest, qb,
                             CPU_DENSE)
            kept = kept_rows.sum(1)
        valid = torch.full((BH,), Nq * (Nq + 1) / 2 if causal else Nq * Nk, dtype=torch.float64)
        self._soft_kept = None
        self._record(kept.double().view(B, H).sum(0), valid.view(B, H).sum(0))
        return out.view(B, H, Nq, Dv)

    def _cpu_tile_ops(self, q8, k8, qs, ks, vs, c_bh, th, mult, out, kept, qb, *, causal, lowest) -> None:
        """The cpu path's tiles in PyTorch ops (where the row kernel cannot be built).

        Keys are stored in groups of ``8·_WORDS``, ordered so that the 8 keys of each word lie
        ``_WORDS`` rows apart: each word's maximum is a max over 8 strided rows of ``hh``, and only
        words whose maximum reaches ``t`` are gathered and tested key by key. The kept pairs form a
        CSR pattern: their scores by ``torch.sparse.sampled_addmm``, softmax by ``segment_reduce``,
        the output by ``CSR @ V``.
        """
        BH, Nq, D = q8.shape
        Nk, Dv = vs.shape[1], vs.shape[2]
        group = 8 * _WORDS
        nk_pad = -(-Nk // group) * group
        pos = torch.arange(nk_pad)  # stored position -> key: group·s + 8·w + j at position group·s + _WORDS·j + w
        key_at = pos - pos % group + (pos % _WORDS) * 8 + (pos % group) // _WORDS
        k8p = torch.zeros(BH, nk_pad + 1, D, dtype=torch.int8)  # row nk_pad: zeros, for padded keys
        k8p[:, :Nk] = k8
        k8p = k8p[:, key_at.clamp_max(nk_pad)]
        tiles = []
        for h0, h1, c0, c1 in score_groups(BH, -(-Nq // qb), qb * nk_pad, self.chunk_size * nk_pad):
            r0, r1 = c0 * qb, min(Nq, c1 * qb)
            kend = r1 if causal else Nk  # causal: Nq == Nk, keys after the tile's last row are masked
            tiles.append((h0, h1, r0, r1, -(-kend // group) * group))
        size = max((h1 - h0) * (r1 - r0) * kp for h0, h1, r0, r1, kp in tiles)
        hh_buf = torch.empty(size, dtype=torch.int32)  # reused: a fresh large buffer per tile costs page faults
        with warnings.catch_warnings():  # torch's once-per-process note on CSR tensors
            warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
            for h0, h1, r0, r1, kp in tiles:
                g, R = h1 - h0, r1 - r0
                nw = kp // 8
                hh = hh_buf[: g * R * kp].view(g, R, kp)
                for i in range(g):  # no batched int8 matmul on the CPU
                    _int8_mm(q8[h0 + i, r0:r1], k8p[h0 + i, :kp].t(), out=hh[i])
                if causal:  # keys after the row (padding included) are invalid
                    s0 = r0 - r0 % group
                    hh[:, :, s0:].masked_fill_(key_at[None, s0:kp] > torch.arange(r0, r1)[:, None], _INVALID)
                elif nk_pad > Nk:
                    hh[:, :, kp - group:].masked_fill_(key_at[kp - group:kp] >= Nk, _INVALID)
                hh4 = hh.view(g * R, kp // group, 8, _WORDS)
                wmax = hh4.amax(2).view(g * R, nw)  # word w holds keys 8w .. 8w+7
                top = wmax.amax(1)  # the row maxima of the 4-bit products
                t = _row_threshold(top, c_bh[h0:h1].repeat_interleave(R), th[h0:h1].repeat_interleave(R), lowest)
                row_w, word = (wmax >= t[:, None]).nonzero(as_tuple=True)  # words with a kept key, row-major
                keep8 = hh4[row_w, word // _WORDS, :, word % _WORDS] >= t[row_w, None]  # (words, 8)
                per_word = _POPCOUNT[((keep8.view(torch.int64).view(-1) * _PACK) >> 56) & 255]
                col = ((row_w // R) * Nk + word * 8)[:, None] + torch.arange(8)
                col = col[keep8]  # kept pairs: row-major, keys ascending
                n_pairs = col.numel()
                counts = torch.zeros(g * R, dtype=torch.int64).index_add_(0, row_w, per_word)
                crow = torch.zeros(g * R + 1, dtype=torch.int64)
                torch.cumsum(counts, 0, out=crow[1:])
                pattern = torch.sparse_csr_tensor(crow, col, torch.zeros(n_pairs, dtype=qs.dtype),
                                                  size=(g * R, g * Nk), check_invariants=False)
                qt = qs[h0:h1, r0:r1].reshape(g * R, D)
                dots = torch.sparse.sampled_addmm(pattern, qt, ks[h0:h1].reshape(g * Nk, D).t(), beta=0.0).values()
                # c > 0: the largest kept score is the largest dot times c, rounded as the dense path rounds it
                m_row = mult[h0:h1].repeat_interleave(R)
                top_s = torch.segment_reduce(dots, "max", lengths=counts, unsafe=True) * m_row
                per_pair = torch.stack([m_row, top_s], 1).repeat_interleave(counts, dim=0, output_size=n_pairs)
                w = torch.exp(dots * per_pair[:, 0] - per_pair[:, 1])
                den = torch.segment_reduce(w, "sum", lengths=counts, unsafe=True)
                probs = torch.sparse_csr_tensor(crow, col, w, size=(g * R, g * Nk), check_invariants=False)
                out[h0:h1, r0:r1] = ((probs @ vs[h0:h1].reshape(g * Nk, Dv)) / den[:, None]).view(g, R, Dv)
                kept[h0:h1] += counts.view(g, R).sum(1)

    def _record(self, kept_h: Tensor, valid_h: Tensor, extra: dict[str, Any] | None = None) -> None:
        kept_h, valid_h = kept_h.double().cpu(), valid_h.double().cpu()
        self._stats = {"kept_fraction": float(kept_h.sum() / valid_h.sum())}
        for h, frac in enumerate((kept_h / valid_h).tolist()):
            self._stats[f"kept_fraction_h{h}"] = float(frac)
        if extra:
            self._stats.update({k: float(v) for k, v in extra.items()})

    def hparams(self) -> dict[str, Any]:
        return {k: v for k, v in super().hparams().items() if k != "theta"}
