"""WildCat: weighted coreset attention by randomly pivoted Cholesky (Schröder & Mackey, 2026).

Follows the official code (github.com/microsoft/wildcat, MIT): ``wildcat/wildcat.py`` (binning,
query/key scales, value range clamp), ``wildcat/compress_kv.py`` (temperature rule ρ = 3.94582,
Gaussian→exponential weights; ``compresskv.py`` holds the older Lambert-W rule),
``wildcat/rp_nystrom.py`` (RPCholesky with Gumbel-max pivots) and
``examples/kvcache/presses/compress_kv_press.py`` (KV-cache mode: sink, window, bins, weight
channel). Per (batch, head[, bin]), with β the attention scale:

1. centre the keys (exact for softmax), record the per-channel min/max of V;
2. split the keys into ``num_bins`` contiguous bins (a leftover partial bin is compressed too);
3. k̃ = k·√β/τ with τ = √(ρ·k_scale/q_scale) (k_scale, q_scale: largest key / query norm);
4. RPCholesky on the Gaussian kernel G(i,j) = exp(-|k̃_i-k̃_j|²/2) with pivots drawn ∝ residual
   diagonal × exp(|k̃_i|²) (the exponential kernel's residual diagonal);
5. Nyström weights W = G_SS⁻¹ G_S· rescaled to the exponential kernel; Ṽ = W V, w = W 1;
6. out = exp(βQK_Sᵀ - m)Ṽ / exp(βQK_Sᵀ - m)w, zero where the denominator is ≤ 1e-20, clamped to
   the value range.

Departures (same mathematics, different arithmetic, for speed):
- Code layout: the RPCholesky core and the compression (steps 1-5) are in ``methods/rpcholesky.py``;
  this module holds the method, the weighted attention (step 6) and the KV-cache mode.
- The official loop keeps G(S,·) and a running G_SS⁻¹ and forms W (r×n) explicitly. We keep the
  Cholesky factor F (r×n, G ≈ FᵀF) instead: W = U⁻¹F with U = F[:, S] upper triangular, so
  Ṽ = U⁻¹(F V) and w = U⁻¹(F 1) cost O(n·r·d) and one r×r triangular solve
  instead of an O(n·r²) product. The exponential rescaling exp(h_j - h_s) (h = |k̃|²/2) is split
  around the midpoint of h to keep both factors inside the float range.
- ``block=b > 1`` runs accelerated RPCholesky (Epperly, Tropp & Webber 2024, "Embrace
  rejection"): b candidates are drawn i.i.d. from the current residual diagonal, the b×b residual
  block is factored sequentially, and candidate j is accepted with probability
  (its residual after the earlier accepted candidates) / (its residual when drawn). Its pivots
  have exactly the distribution of plain RPCholesky, but the O(n·r²) work becomes matrix-matrix
  products (candidates are drawn with ``torch.multinomial``; the b×b rejection loop runs in
  float64 NumPy). ``block=1`` is the plain algorithm with Gumbel-max pivots, as in the official
  code; on CPU ``block=32`` is 2-3× faster at n=4096. Each round's accepted rows of F are
  written in place after the earlier ones (the b×b factor is permuted so they come first), and
  the kernel rows come from one product with h = |x|²/2 folded in as two extra coordinates.
  A drawn candidate's residual-diagonal entry is reset to the value its acceptance was judged on
  (equal in exact arithmetic): otherwise a key left just above the noise floor by rounding was
  rejected in every round and the loop ran to its cap (tiny BigGAN's attention: half the calls
  took 264 rounds instead of 10, a heavy latency tail).
- For speed on long sequences (same mathematics): the coreset is built for a few (batch·head) rows
  at a time when F would exceed ``rpcholesky.GROUP_ELEMS`` entries (its memory is reused between groups),
  and the weighted attention runs over blocks of queries (``SCORE_TILE_ELEMS`` scores at a time).
- Residual-diagonal entries ≤ 64·machine-eps (G's diagonal is 1, so this is rounding noise) are
  set to 0, and a pivot drawn when the residual is exhausted (every key represented exactly, e.g.
  duplicated keys) is left empty: a zero row of F, weight 0, value 0. The official code would
  pick noise pivots and divide by ~0 there.
- Very peaked attention (improves on the reference): when h = |k̃|²/2 spans more than the float
  exponent range (logits in the hundreds or thousands: q, k of std 30 at β = d^-1/2, or BigGAN's
  attention at β = 1), e^{h_j - h_s} overflows; the official code then forms ∞·0 = NaN in its
  weights (its output is NaN, or 0 where the NaN denominator fails the > 1e-20 test) and so did the
  split above. Rows whose [Ṽ, w] come out non-finite are recomputed by the official formula in the
  log domain (sign(W_sj)·exp(log|W_sj| + h_j - h_s - c_s), per-entry row maxima c_s, G and the
  solve in float64; see ``rpcholesky._log_domain_weights``), and for rows whose h spans more than twice the
  log of the float range RPCholesky's noise floor grows with h (``rpcholesky._noise_floor``), since kernel
  rows carry exponent errors of ~u·h there. Rows where the split path is finite are untouched.
- Cross-attention (Nq ≠ Nk) works; causal attention is not supported (the paper's method is
  bidirectional).
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from attnbench.methods import register
from attnbench.methods.base import SCORE_TILE_ELEMS, AttentionMethod, check_positive_int, check_scale, resolve_budget
from attnbench.methods.rpcholesky import RHO, TEMPERATURE_RULES, compress_bins, compress_sequence

DENOM_EPS = 1e-20  # official threshold below which the output is set to 0


# ----------------------------------------------------------------------------- weighted attention
def weighted_attention(
    q: Tensor, k_s: Tensor, v_s: Tensor, w: Tensor, scale: float, vmin: Tensor, vmax: Tensor,
    tile: int = SCORE_TILE_ELEMS,
) -> Tensor:
    """Reference (PyTorch) weighted attention: q (B, M, E), k_s (B, R, E), v_s (B, R, D), w (B, R),
    vmin/vmax (B, 1, D). out = P Ṽ / P w with P = exp(β q k_sᵀ - rowmax); 0 where P w ≤ 1e-20;
    clamped to [vmin, vmax]. Queries are processed in blocks of about ``tile`` scores (B·rows·R),
    so the score block stays in cache; the result does not depend on ``tile``."""
    B, M, _ = q.shape
    R, D = k_s.shape[1], v_s.shape[-1]
    vw = torch.cat((v_s, w.unsqueeze(-1)), -1)  # (B, R, D+1): P[Ṽ, w] in one product
    kt = k_s.transpose(1, 2).contiguous()
    out = q.new_empty(B, M, D)
    rows = max(1, tile // max(1, B * R))
    buf = q.new_empty(B, min(rows, M), R)
    for i in range(0, M, rows):
        qi = q[:, i : i + rows]
        s = buf[:, : qi.shape[1]]
        torch.baddbmm(s, qi, kt, beta=0.0, alpha=scale, out=s)  # β q kᵀ
        s -= s.amax(-1, keepdim=True)
        o = torch.bmm(s.exp_(), vw)  # (B, rows, D+1)
        den = o[..., D:]
        res = torch.div(o[..., :D], den, out=out[:, i : i + rows])
        bad = den <= DENOM_EPS
        if bool(bad.any()):
            res.masked_fill_(bad, 0.0)
        res.clamp_(min=vmin, max=vmax)
    return out


def _use_triton(t: Tensor) -> bool:
    if t.device.type != "cuda" or t.dtype == torch.float64:
        return False
    try:
        from attnbench.methods.kernels import wildcat as _k  # noqa: F401
    except Exception:  # pragma: no cover - triton missing on a CUDA machine
        return False
    return True


def wildcat_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    scale: float,
    r: int,
    num_bins: int = 1,
    *,
    temperature: str = "rho",
    rho: float = RHO,
    block: int = 1,
    generator: torch.Generator | None = None,
    use_triton: bool | None = None,
) -> tuple[Tensor, int]:
    """WildCat attention on (B, M, E), (B, n, E), (B, n, D) tensors. Returns (out, coreset size)."""
    vmin = v.amin(1, keepdim=True)
    vmax = v.amax(1, keepdim=True)
    q_scale = torch.linalg.vector_norm(q, dim=-1).amax(-1, keepdim=True)
    ks, vs, w = compress_sequence(k, v, r, num_bins, scale, q_scale, k.mean(1, keepdim=True),
                                  temperature=temperature, rho=rho, block=block, generator=generator)
    if use_triton is None:
        use_triton = _use_triton(q)
    if use_triton:
        from attnbench.methods.kernels.wildcat import weighted_attention_triton

        out = weighted_attention_triton(q, ks, vs, w, scale, vmin, vmax)
    else:
        out = weighted_attention(q, ks, vs, w, scale, vmin, vmax)
    return out, ks.shape[1]


# ----------------------------------------------------------------------------- KV-cache mode
class CompressedKV(NamedTuple):
    """KV cache compressed the official way (``compress_kv_press.py``).

    keys: (B, H, M, E) — sink keys, coreset keys, window keys (the key mean is added back, so
    they live in the same space as the original keys, e.g. after RoPE).
    values: (B, H, M, D+1) — [value, weight]: sink/window rows are [v, 1], coreset rows [Ṽ, w].
    vmin, vmax: (B, H, 1, D) — per-channel range of the original values (for the clamp).
    """

    keys: Tensor
    values: Tensor
    vmin: Tensor
    vmax: Tensor


def compress_kv_cache(
    keys: Tensor,
    values: Tensor,
    scale: float,
    *,
    compression_ratio: float = 0.5,
    sink: int = 32,
    window: int = 32,
    bin_r: int = 12,
    temperature: str = "rho",
    rho: float = RHO,
    block: int = 1,
    generator: torch.Generator | None = None,
    keep: int | None = None,
) -> CompressedKV:
    """Compress a KV cache (B, H, N, ·) as the official kvpress press does.

    ``compression_ratio`` is the fraction of the middle keys removed (kvpress convention).
    The first ``sink`` and last ``window`` keys stay exact; the middle N' = N - sink - window keys
    are split into ``bins = floor(N'·(1-ratio)) // bin_r`` contiguous bins of ⌊N'/bins⌋ keys
    (the leftover keys join the window), each compressed to ``bin_r`` points with q_scale =
    k_scale (no queries are seen). The weight is carried as an extra value channel, so an
    unmodified SDPA kernel decodes: ``o = SDPA(q, keys, values)``, then
    ``decode_weighted(o, vmin, vmax)`` divides o[..., :D] by o[..., D] and clamps. New tokens
    appended during decoding get weight 1 (``with_weight_channel``). If no bin fits, the cache is
    returned uncompressed (weights 1).

    ``keep`` (departure, for kvpress's contract that a cache keeps an exact number of entries):
    the total number of entries kept, sink and window included (``sink + window <= keep <= N``;
    ``compression_ratio`` is then not used). The middle gets ``bins = min(m // bin_r, (m+1) // 2)``
    bins (at least 1; m = keep - sink - window, the official count when bin_r >= 2) of ⌊N'/bins⌋
    keys, the leftover keys join the window as above, and the bins keep ⌊R/bins⌋ or ⌊R/bins⌋ + 1
    points (the first ones the larger), R = m - leftover, so exactly ``keep`` entries remain; m = 0
    drops the middle.
    """
    if not 0 <= compression_ratio < 1:
        raise ValueError(f"compression_ratio must lie in [0, 1), got {compression_ratio}.")
    for name, val in (("sink", sink), ("window", window)):
        if isinstance(val, bool) or not isinstance(val, int) or val < 0:
            raise ValueError(f"{name} must be a non-negative integer, got {val!r}.")
    check_positive_int("bin_r", bin_r)
    B, H, N, E = keys.shape
    D = values.shape[-1]
    vmin = values.amin(-2, keepdim=True)
    vmax = values.amax(-2, keepdim=True)
    kbar = keys.mean(-2, keepdim=True)
    kc = keys - kbar
    n_mid = N - sink - window
    if keep is None:
        bins = int(math.floor(n_mid * (1 - compression_ratio))) // bin_r if n_mid > 0 else 0
        if bins < 1 or n_mid // bins <= bin_r:
            return CompressedKV(keys, with_weight_channel(values), vmin, vmax)
        sizes = [(bins, bin_r)]  # (number of bins, points per bin)
    else:
        if isinstance(keep, bool) or not isinstance(keep, int) or not sink + window <= keep <= N:
            raise ValueError(f"keep must be an integer in [sink + window, N] = [{sink + window}, {N}], got {keep!r}.")
        m = keep - sink - window
        if m >= n_mid or m == 0:
            idx = torch.arange(N, device=keys.device) if m else torch.cat(
                (torch.arange(sink, device=keys.device), torch.arange(N - window, N, device=keys.device)))
            return CompressedKV(keys[..., idx, :], with_weight_channel(values[..., idx, :]), vmin, vmax)
        bins = max(1, min(m // bin_r, (m + 1) // 2))
        pts = m - (n_mid - bins * (n_mid // bins))  # coreset points: the budget less the leftover keys
        sizes = [(pts % bins, pts // bins + 1), (bins - pts % bins, pts // bins)]
    bin_n = n_mid // bins
    n_in = bins * bin_n
    win = window + n_mid - n_in
    work = torch.float32 if keys.dtype in (torch.float16, torch.bfloat16) else keys.dtype
    ks, vw, start = [], [], sink
    for nb, r in sizes:
        if nb == 0:
            continue
        seg = slice(start, start + nb * bin_n)
        start += nb * bin_n
        k_s, v_s, w = compress_bins(kc[..., seg, :].reshape(B * H * nb, bin_n, E).to(work),
                                    values[..., seg, :].reshape(B * H * nb, bin_n, D).to(work), r, scale, None,
                                    temperature=temperature, rho=rho, block=block, generator=generator)
        ks.append(k_s.to(keys.dtype).reshape(B, H, nb * r, E))
        vw.append(torch.cat((v_s, w.unsqueeze(-1)), -1).to(values.dtype).reshape(B, H, nb * r, D + 1))
    ks, vw = torch.cat(ks, -2), torch.cat(vw, -2)
    k_out = torch.cat((keys[..., :sink, :], ks + kbar, keys[..., N - win :, :]), -2)
    v_out = torch.cat((with_weight_channel(values[..., :sink, :]), vw,
                       with_weight_channel(values[..., N - win :, :])), -2)
    return CompressedKV(k_out, v_out, vmin, vmax)


def with_weight_channel(values: Tensor) -> Tensor:
    """Append a weight-1 channel to exact values (..., D) -> (..., D+1)."""
    return torch.cat((values, torch.ones_like(values[..., :1])), -1)


def decode_weighted(out: Tensor, vmin: Tensor | None = None, vmax: Tensor | None = None) -> Tensor:
    """From SDPA output over [value, weight] channels (..., D+1) to attention output (..., D):
    divide by the weight channel (0 where it is ≤ 1e-20, as the official code) and clamp to
    [vmin, vmax] when given (broadcastable to (..., D))."""
    den = out[..., -1:]
    ok = den > DENOM_EPS
    res = torch.where(ok, out[..., :-1] / torch.where(ok, den, torch.ones_like(den)), torch.zeros_like(out[..., :-1]))
    if vmin is not None:
        res = torch.maximum(res, vmin.to(res.dtype))
    if vmax is not None:
        res = torch.minimum(res, vmax.to(res.dtype))
    return res


# ----------------------------------------------------------------------------- the method
@register("wildcat")
class WildCat(AttentionMethod):
    """WildCat weighted-coreset attention (RPCholesky Nyström on rescaled keys); bidirectional.

    Knobs: ``r`` coreset size (int, or a fraction of n in (0, 1]); ``num_bins`` contiguous bins
    compressed independently (r is padded to a multiple); ``temperature`` ``rho`` (official
    newest, τ² = ρ·k_scale/q_scale) or ``lambert`` (official older rule); ``rho``; ``block``
    candidates per accelerated-RPCholesky round (1 = plain RPCholesky, the official algorithm);
    ``use_triton`` (None: the fused Triton kernel on CUDA, PyTorch elsewhere).
    Stats: ``coreset_size`` (entries kept per head), ``kept_fraction``.
    """

    supports_grad = False  # chunked evaluation into preallocated outputs (out=...): no autograd

    supports_causal = False
    supports_bidirectional = True
    supports_cross = True
    version = 2
    version_commits = {2: "5f97f242aa38"}  # default block=32

    @classmethod
    def exact_knobs(cls, n: int) -> dict:
        return {"r": n}  # a coreset of all n keys

    def __init__(
        self,
        r: int | float = 128,
        num_bins: int = 1,
        temperature: str = "rho",
        rho: float = RHO,
        block: int = 32,
        use_triton: bool | None = None,
    ) -> None:
        super().__init__()
        if isinstance(r, bool) or not isinstance(r, (int, float)):
            raise ValueError(f"method.r must be a positive integer or a fraction in (0, 1], got {r!r}.")
        resolve_budget("r", r, 1 << 30)  # validates int >= 1 or fraction in (0, 1]
        self.r = r
        self.num_bins = check_positive_int("num_bins", num_bins)
        if temperature not in TEMPERATURE_RULES:
            raise ValueError(f"method.temperature must be one of {TEMPERATURE_RULES}, got {temperature!r}.")
        self.temperature = temperature
        if isinstance(rho, bool) or not isinstance(rho, (int, float)) or not math.isfinite(rho) or rho <= 0:
            raise ValueError(f"method.rho must be a finite positive number, got {rho!r}.")
        self.rho = float(rho)
        self.block = check_positive_int("block", block)
        if use_triton not in (None, True, False):
            raise ValueError(f"method.use_triton must be true, false or null, got {use_triton!r}.")
        self.use_triton = use_triton

    def _attend(self, q: Tensor, k: Tensor, v: Tensor, *, causal: bool, scale: float) -> Tensor:
        B, H, M, E = q.shape
        n, D = k.shape[2], v.shape[-1]
        r = resolve_budget("r", self.r, n)
        use_triton = self.use_triton
        if use_triton and q.device.type != "cuda":
            raise ValueError("method.use_triton=true needs CUDA tensors.")
        if use_triton is None:
            use_triton = _use_triton(q)
        out, size = wildcat_attention(
            q.reshape(B * H, M, E), k.reshape(B * H, n, E), v.reshape(B * H, n, D), scale, r, self.num_bins,
            temperature=self.temperature, rho=self.rho, block=self.block,
            generator=self.generator(q.device), use_triton=use_triton,
        )
        self._stats = {"coreset_size": float(size), "kept_fraction": float(size) / n}
        return out.reshape(B, H, M, D)

    def compress(self, k: Tensor, v: Tensor, budget: int | float) -> tuple[Tensor, Tensor, Tensor]:
        """Coreset (k_c, v_c, log_w) with softmax(q k_cᵀ·scale + log_w) v_c ≈ attention.

        k, v: (B, H, n, ·). ``budget`` is the coreset size (int or fraction of n, padded to a
        multiple of ``num_bins``). The scale is taken as D**-0.5 (the default): WildCat's
        temperature depends on it — use ``compress_kv_cache`` to pass another scale.
        Keys are centred for the compression and the mean is added back to k_c.
        Weights: the DESIGN contract needs w > 0 (v_c = Ṽ/w, log_w = log w). Nyström weights can
        be ≤ 0; such entries cannot be expressed in this form and are DROPPED (log_w = -inf,
        v_c = 0); their number is reported as ``nonpositive_weights`` in ``extra_stats``. The exact
        signed form is ``compress_kv_cache`` (weight carried as an extra value channel). The
        value-range clamp of WildCat is not part of this contract either.
        """
        if k.dim() != 4 or v.dim() != 4 or k.shape[:3] != v.shape[:3]:
            raise ValueError(f"k and v must be (B, H, n, ·) with matching n, got {tuple(k.shape)}, {tuple(v.shape)}.")
        B, H, n, E = k.shape
        D = v.shape[-1]
        r = resolve_budget("budget", budget, n)
        scale = check_scale(None, E)
        dtype = k.dtype
        work = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
        kk = k.reshape(B * H, n, E).to(work)
        kbar = kk.mean(1, keepdim=True)
        ks, vs, w = compress_sequence(kk - kbar, v.reshape(B * H, n, D).to(work), r, self.num_bins, scale, None,
                                      temperature=self.temperature, rho=self.rho, block=self.block,
                                      generator=self.generator(k.device))
        pos = w > 0
        log_w = torch.where(pos, torch.log(torch.where(pos, w, 1.0)), float("-inf"))
        v_c = torch.where(pos.unsqueeze(-1), vs / torch.where(pos, w, 1.0).unsqueeze(-1), 0.0)
        m = ks.shape[1]
        self._stats = {"coreset_size": float(m), "kept_fraction": m / n,
                       "nonpositive_weights": float((~pos).sum()) / (B * H)}
        return (
            (ks + kbar).reshape(B, H, m, E).to(dtype),
            v_c.reshape(B, H, m, D).to(dtype),
            log_w.reshape(B, H, m).to(dtype),
        )
