"""Conv-Basis attention (Liang, Liu, Shi, Song, Xu, Zhao, Zhuang, Findings of EMNLP 2025; arXiv 2405.05219).

The causal score matrix H = M∘(βQKᵀ) is approximated by a k-conv basis
H ≈ Σ_{j=1..k} conv(b_j, m_j), n = m_1 > … > m_k ≥ 1, where conv(a) is the lower-triangular
Toeplitz matrix conv(a)[i, c] = a[i-c] and conv(b, m) is conv(b[:m]) placed in the bottom-right
m×m block. Equivalently: the columns split into segments starting at s_j = n - m_j, and every
column c of segment j is the segment's first column shifted down, H[c+r, c] = B_j[r] with
B_j = b_1 + … + b_j = column s_j of H. Attention is then exp(H)∘M (still a k-conv basis with the same
segments, b'_1 = exp(B_1), b'_j = exp(B_j) - exp(B_{j-1})) applied to [V, 1] by FFT convolutions in
O(k n d log n) time and O(k n + n d) memory per head; no n×n tensor is ever formed.

From the paper (its abstract, and the algorithm outline as summarised for this suite; the full text and
its algorithm listings were not available offline, so details below are reconstructed): the conv basis, the recovery of segment starts by
binary search on "column c agrees, on its first T diagonal offsets and within eps, with the shifted
first column of the current segment" (O(k n d + k T d log n) score evaluations, entries of H computed
on demand from Q and K), exponentiation inside the basis, and FFT products. Exact when H is a
k-conv basis whose consecutive terms differ on their first T offsets by more than eps (the paper's
non-degeneracy); e.g. k = 1 when scores depend only on i - j (ALiBi, rotary-only inputs), and k = n
always (every column is its own segment).

This suite's reconstruction (no official code is public), stated plainly:
- Per (batch, head) recovery with its own segment starts, padded to k (unused terms are empty).
- The product Σ_j conv(b'_j, m_j)·[V, 1] is evaluated in the algebraically equal segment-disjoint
  form Σ_j exp(B_j - c) * ([V, 1] restricted to the columns of segment j): all terms are non-negative,
  so there is no cancellation between the differences b'_j. One global constant c per head (the
  largest recovered score) is subtracted before exp; it cancels in the ratio.
- Real scores are rarely a k-conv basis. If a head would need more than k terms (a (k+1)-th boundary
  is found), ``fallback='none'`` (default, the paper's algorithm as is) keeps the first k segments
  found; on unstructured data that gives starts 0, 1, …, k-1 (rows < k exact) and column k-1, shifted,
  stands in for the remaining n - k + 1 columns. ``fallback='even'`` instead gives such heads k evenly
  spaced starts s_j = floor(j n / k), each segment represented by its first column (on gaussian
  inputs this is worse: the early rows, which carry most of the output norm, are no longer exact).
  Either way the result on such heads is an approximation without an error guarantee;
  ``overflow_head_fraction`` reports how many heads it concerns.
- The binary search assumes the paper's monotone structure; columns it does not probe are not
  checked, so on unstructured data a segment may contain columns that do not match.
- Denominator guard: in exact arithmetic every denominator is positive, but float FFT rounding is
  relative to the head's largest value, so rows whose weights are tiny relative to that (below machine
  eps of it: a score range beyond ~16 / ~36 in float32 / float64 FFTs) can come out ≤ 0 or as noise. Denominators below machine-eps times the head's
  largest denominator are clamped to that floor (the output stays of the order of V) and counted in
  ``clamped_row_fraction``.
- Precision: one shift per head (not per row, as softmax uses) means FFT rounding is relative to the
  head's largest weight, so rows whose weights all lie far below it lose digits. With float32 FFTs,
  the exactly-Toeplitz input q_i·k_j = 5cos(π(i-j)/20 - π), n=200, k=1 gives 1.1e-2 relative error
  (row 0: 3.7e-2); a relative-position input at n=1024 gave 4.5e-4. Hence ``fft_dtype='float64'``
  (default): exponentiation and FFT products run in float64 (about 2.4x the FFT time on CPU) and the
  same inputs agree to 1.4e-7 / 1.9e-7. ``fft_dtype='input'`` computes in the (upcast) input dtype.
Defaults k=16, eps=1e-3, T=8, fft_dtype='float64' are this suite's choices (the paper fixes none).
"""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor

from . import register
from .base import AttentionMethod, check_positive_int, resolve_budget

EntryFn = Callable[[Tensor, Tensor], Tensor]
FALLBACKS = ("none", "even")
FFT_DTYPES = ("input", "float64")


def next_fast_len(n: int) -> int:
    """Smallest 2^a 3^b 5^c >= n (a fast FFT length)."""
    best = 1 << max(0, (n - 1).bit_length())
    p5 = 1
    while p5 < best:
        p35 = p5
        while p35 < best:
            m = p35
            while m < n:
                m *= 2
            best = min(best, m)
            p35 *= 3
        p5 *= 5
    return best


def fft_causal_conv(a: Tensor, x: Tensor) -> Tensor:
    """conv(a)·x by FFT: a (..., n), x (..., n, c) -> (..., n, c), out[i] = Σ_{r<=i} a[r] x[i-r]."""
    n = x.shape[-2]
    size = next_fast_len(2 * n - 1)
    fa = torch.fft.rfft(a, n=size, dim=-1)
    fx = torch.fft.rfft(x, n=size, dim=-2)
    return torch.fft.irfft(fa.unsqueeze(-1) * fx, n=size, dim=-2)[..., :n, :]


def qk_entries(q: Tensor, k: Tensor, scale: float) -> EntryFn:
    """Oracle for masked scores: f(c, r) = scale·q[c+r]·k[c] for heads g, column c[g], offsets r[g, :].

    q, k: (G, n, d); c: (G,) long; r: (G, R) long. Entries with c + r >= n are returned as 0.
    Full columns (R = n) cost one (G, n) matrix-vector product, probes a (G, R, d) gather.
    """
    g_idx = torch.arange(q.shape[0], device=q.device)
    n = q.shape[1]

    def f(c: Tensor, r: Tensor) -> Tensor:
        rows = c[:, None] + r
        valid = rows < n
        rows = rows.clamp(max=n - 1)
        kc = k[g_idx, c]  # (G, d)
        if r.shape[1] == n:
            full = torch.einsum("gnd,gd->gn", q, kc) * scale
            vals = full.gather(1, rows)
        else:
            qr = q[g_idx[:, None], rows]  # (G, R, d)
            vals = torch.einsum("grd,gd->gr", qr, kc) * scale
        return vals.masked_fill(~valid, 0.0)

    return f


def _columns(entries: EntryFn, c: Tensor, n: int) -> Tensor:
    """Column c[g] of H from its diagonal down: out[g, r] = H[c+r, c] (0 for r >= n - c)."""
    r = torch.arange(n, device=c.device).expand(c.shape[0], n)
    return entries(c, r)


def recover_conv_basis(
    entries: EntryFn, n: int, k: int, *, eps: float, T: int, num_heads: int, device, dtype,
    fallback: str = "none",
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Recover a k-conv basis of the masked score matrix of each of ``num_heads`` heads.

    Returns (starts, B, found, overflow): starts (G, k) long, ascending, s_0 = 0, unused slots = n;
    B (G, k, n) with B[g, j, r] = H[s_j + r, s_j] for r < n - s_j (else 0), i.e. the cumulative
    basis vectors b_1 + … + b_j; found (G,) the number of terms the binary search used;
    overflow (G,) bool, heads that needed more than k terms (there ``fallback`` applies).
    """
    G = num_heads
    log_steps = max(1, math.ceil(math.log2(n + 1)) + 1)
    offs = torch.arange(T, device=device).expand(G, T)
    starts = torch.full((G, k), n, dtype=torch.long, device=device)
    starts[:, 0] = 0
    B = torch.zeros(G, k, n, dtype=dtype, device=device)
    cur = torch.zeros(G, dtype=torch.long, device=device)
    B[:, 0] = _columns(entries, cur, n)
    active = torch.ones(G, dtype=torch.bool, device=device)
    found = torch.ones(G, dtype=torch.long, device=device)
    overflow = torch.zeros(G, dtype=torch.bool, device=device)
    for t in range(1, k + 1):
        pred = B[:, t - 1, :T]  # prediction of the current segment on the first T offsets
        lo, hi = cur.clone(), torch.full_like(cur, n)
        for _ in range(log_steps):  # binary search: lo matches, hi mismatches (or is n)
            go = active & (hi - lo > 1)
            if not bool(go.any()):
                break
            mid = torch.where(go, (lo + hi) // 2, lo)
            vals = entries(mid, offs)
            ok = ((vals - pred).abs() <= eps) | (offs >= (n - mid)[:, None])
            match = ok.all(dim=1)
            lo = torch.where(go & match, mid, lo)
            hi = torch.where(go & ~match, mid, hi)
        new = active & (hi < n)
        if t == k:
            overflow = new
            break
        if not bool(new.any()):
            break
        starts[:, t] = torch.where(new, hi, starts[:, t])
        col = _columns(entries, torch.where(new, hi, cur), n)
        B[:, t] = torch.where(new[:, None], col, B[:, t])
        found += new.long()
        cur = torch.where(new, hi, cur)
        active = new
    if fallback == "even" and bool(overflow.any()):
        even = torch.div(torch.arange(k, device=device) * n, k, rounding_mode="floor")
        starts = torch.where(overflow[:, None], even.expand(G, k), starts)
        for j in range(k):
            col = _columns(entries, starts[:, j].clamp(max=n - 1), n)
            B[:, j] = torch.where(overflow[:, None], col, B[:, j])
    return starts, B, found, overflow


def exp_basis(starts: Tensor, B: Tensor, shift: Tensor | float = 0.0) -> Tensor:
    """The paper's basis of exp(H)∘M: b'_1 = exp(B_1 - shift), b'_j = exp(B_j - shift) - exp(B_{j-1} - shift),
    each restricted to its length m_j = n - s_j (zero beyond, and zero for unused slots)."""
    n = B.shape[-1]
    valid = torch.arange(n, device=B.device) < (n - starts)[..., None]
    shift = torch.as_tensor(shift, dtype=B.dtype, device=B.device)
    if shift.dim() == 1:
        shift = shift[:, None, None]
    W = torch.exp(B - shift) * valid
    prev = torch.cat([torch.zeros_like(W[:, :1]), W[:, :-1]], dim=1)
    return (W - prev) * valid


def conv_basis_matrix(starts: Tensor, vecs: Tensor) -> Tensor:
    """Dense Σ_j conv(vecs_j, n - s_j) (G, n, n): for tests and small n only."""
    G, k, n = vecs.shape
    i = torch.arange(n, device=vecs.device)
    diff = (i[:, None] - i[None, :]).clamp(min=0)
    out = torch.zeros(G, n, n, dtype=vecs.dtype, device=vecs.device)
    for j in range(k):
        s = starts[:, j]
        block = vecs[:, j][:, diff]  # conv(vecs_j) over the full grid
        keep = (i[None, :, None] >= i[None, None, :]) & (i[None, None, :] >= s[:, None, None])
        out = out + block * keep
    return out


@register("conv_basis")
class ConvBasis(AttentionMethod):
    """Causal attention through a k-conv basis recovered from Q, K, exponentiated and applied by FFT.

    Knobs: ``k`` terms (int, or float in (0, 1] as a fraction of n; clipped to n), ``eps`` the
    matching tolerance on scaled scores, ``T`` the number of diagonal offsets compared, ``fallback``
    ('none' or 'even') for heads that need more than k terms, ``fft_dtype`` ('input' or 'float64':
    the precision of the exponentiation and FFT products). See the module docstring for what
    follows the paper and what is this suite's reconstruction.
    """

    supports_causal = True
    supports_bidirectional = False
    supports_cross = False

    def __init__(
        self, k: int | float = 16, eps: float = 1e-3, T: int = 8, fallback: str = "none", fft_dtype: str = "float64"
    ) -> None:
        super().__init__()
        resolve_budget("k", k, 1 << 30)  # type/range check now; resolved against n per call
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not math.isfinite(eps) or eps < 0:
            raise ValueError(f"method.eps must be a finite number >= 0, got {eps!r}.")
        check_positive_int("T", T)
        if fallback not in FALLBACKS:
            raise ValueError(f"method.fallback must be one of {FALLBACKS}, got {fallback!r}.")
        if fft_dtype not in FFT_DTYPES:
            raise ValueError(f"method.fft_dtype must be one of {FFT_DTYPES}, got {fft_dtype!r}.")
        self.k = k
        self.eps = float(eps)
        self.T = T
        self.fallback = fallback
        self.fft_dtype = fft_dtype

    def _attend(self, q: Tensor, k: Tensor, v: Tensor, *, causal: bool, scale: float) -> Tensor:
        Bsz, Hh, n, d = q.shape
        dv = v.shape[-1]
        G = Bsz * Hh
        kk = resolve_budget("k", self.k, n)
        qf, kf, vf = q.reshape(G, n, d), k.reshape(G, n, d), v.reshape(G, n, dv)
        dtype, device = q.dtype, q.device

        starts, Bv, found, overflow = recover_conv_basis(
            qk_entries(qf, kf, scale), n, kk, eps=self.eps, T=min(self.T, n), num_heads=G,
            device=device, dtype=dtype, fallback=self.fallback,
        )

        # exp(H)∘M in the basis: segment j's columns all carry W_j = exp(B_j - c), shifted.
        pos = torch.arange(n, device=device)
        valid = pos < (n - starts)[..., None]  # (G, k, n)
        shift = Bv.masked_fill(~valid, float("-inf")).amax(dim=(1, 2))  # (G,)
        fdt = torch.float64 if self.fft_dtype == "float64" else dtype
        W = torch.exp((Bv - shift[:, None, None]).to(fdt)) * valid

        size = next_fast_len(2 * n - 1)
        x = torch.cat([vf.to(fdt), torch.ones(G, n, 1, dtype=fdt, device=device)], dim=-1)  # [V, 1]
        fw = torch.fft.rfft(W, n=size, dim=-1)  # (G, k, F)
        ends = torch.cat([starts[:, 1:], torch.full_like(starts[:, :1], n)], dim=1)
        acc = None
        for j in range(kk):
            seg = (pos >= starts[:, j : j + 1]) & (pos < ends[:, j : j + 1])  # (G, n) columns of segment j
            fx = torch.fft.rfft(x * seg[..., None], n=size, dim=1)  # (G, F, dv+1)
            term = fw[:, j, :, None] * fx
            acc = term if acc is None else acc + term
        out = torch.fft.irfft(acc, n=size, dim=1)[:, :n]  # (G, n, dv+1)
        num, den = out[..., :dv], out[..., dv]

        floor = den.amax(dim=1, keepdim=True).clamp_min(torch.finfo(fdt).tiny) * torch.finfo(fdt).eps
        clamped = den < floor
        y = (num / torch.maximum(den, floor)[..., None]).to(dtype)

        self._stats = {
            "segments_found": float(found.float().mean()),
            "segments_used": float((starts < n).sum(dim=1).float().mean()),
            "overflow_head_fraction": float(overflow.float().mean()),
            "clamped_row_fraction": float(clamped.float().mean()),
        }
        return y.reshape(Bsz, Hh, n, dv)
