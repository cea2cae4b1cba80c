"""Conv-Basis attention (Liang, Liu, Shi, Song, Xu, Zhao, Zhuang, Findings of EMNLP 2025; arXiv 2405.05219).

The causal score matrix H = M∘(βQKᵀ) is approximated by a k-conv basis
H ≈ Σ_{j=1..k} conv(b_j, m_j), n = m_1 > … > m_k ≥ 1, where conv(a) is the lower-triangular
Toeplitz matrix conv(a)[i, c] = a[i-c] and conv(b, m) is conv(b[:m]) placed in the bottom-right
m×m block. Equivalently: the columns split into segments starting at s_j = n - m_j, and every
column c of segment j is the segment's first column shifted down, H[c+r, c] = B_j[r] with
B_j = b_1 + … + b_j = column s_j of H. Attention is then exp(H)∘M (still a k-conv basis with the same
segments, b'_1 = exp(B_1), b'_j = exp(B_j) - exp(B_{j-1})) applied to [V, 1] by FFT convolutions in
O(k n d log n) time at most (O(n d log n) on unstructured inputs; see "Evaluation" below) and
O(k n + n d) memory per head; no n×n tensor is ever formed.

From the paper (its abstract, and the algorithm outline as summarised for this suite; the full text and
its algorithm listings were not available offline, so details below are reconstructed): the conv basis,
the recovery of segment starts by binary search on "column c agrees, on its first T diagonal offsets and
within eps, with the shifted first column of the current segment" (O(k n d + k T d log n) score
evaluations, entries of H computed on demand from Q and K), exponentiation inside the basis, and FFT
products. Exact when H is a
k-conv basis whose consecutive terms differ on their first T offsets by more than eps (the paper's
non-degeneracy) and no later segment's column matches an earlier one's there (the binary search's
predicate must be monotone: with b_3 = -b_2 on those offsets, segment 3 passes for segment 1 and both
boundaries are missed; tests/test_conv_oracle.py); e.g. k = 1 when scores depend only on i - j (ALiBi,
rotary-only inputs), and k = n always (every column is its own segment).

This suite's reconstruction (no official code is public), stated plainly:
- Per (batch, head) recovery with its own segment starts, padded to k (unused terms are empty).
- The product Σ_j conv(b'_j, m_j)·[V, 1] is evaluated in the algebraically equal segment-disjoint
  form Σ_j exp(B_j - c) * ([V, 1] restricted to the columns of segment j): all terms are non-negative,
  so there is no cancellation between the differences b'_j. One global constant c per head (the
  largest recovered score) is subtracted before exp; it cancels in the ratio.
- Evaluation (``SegmentProduct``): term j touches only segment j's L_j columns of [V, 1] and rows
  >= s_j. Segments of at most ``DIRECT_MAX_LEN`` = 32 columns are applied directly (their shifted W_j
  times those columns, a batched matrix product: O(n L_j d)); the others by FFT: one real transform
  of each such segment's columns of [V, 1] (zero elsewhere), products with the W_j transforms summed
  in the frequency domain, one inverse transform per head, all at length N = next_fast_len(n + L - 1)
  with L the longest such segment (term j's linear convolution ends at row n + L_j - 2, so nothing
  wraps into rows < n). A head thus costs (f + 1)(d + 1) real transforms of length N, f the number of
  long segments, plus O(n d) per short column. Unstructured inputs with fallback 'none' (k - 1
  one-column segments and one long one): f = 1, N ≈ 2n, i.e. 2(d + 1) transforms, against the former
  (k + 1)(d + 1) (every term's masked [V, 1] transformed at 2n); fallback 'even': f = k, N ≈ n(1 + 1/k).
  Heads and V's channels go in blocks whose FFT buffers hold at most ``SCORE_TILE_ELEMS`` float64
  entries (16 MB; sizes the C allocator reuses: fresh larger buffers cost page faults that, on small
  VMs, took as long as the FFTs). The direct part's gathered W_j tiles hold ``SCORE_TILE_ELEMS`` too.
  Values equal the former evaluation's up to float rounding (the direct part is rounded like a plain
  product, not like an FFT). While autograd records (training; ``task.timed=backward``), nothing is
  written into or read from slices of a larger tensor: blocks are taken with ``split`` and joined with
  ``cat``, and each FFT term's columns are selected by a mask product instead of a buffer's slice
  writes. The backward of a slice write copies the whole tensor's gradient and the backward of a slice
  read builds a zero tensor of the whole input, once per block; as blocks grow in number with n
  (``SCORE_TILE_ELEMS``), that made the backward quadratic (log-log slope 1.38 over n = 4k-32k, idle;
  0.5 s of 1.1 s at 32k spent filling zeros). Same values and gradients, bit for bit; without autograd
  the buffer and slice writes stay (fewer allocations).
- Recovery cost: the binary search resolves ``SEARCH_LEVELS`` = 3 steps per oracle call (all 7
  midpoints those steps could probe, evaluated at once; the path through them followed on the host):
  exactly the probes and starts of one probe per step, in a fraction of the small tensor operations
  (which dominated at small n, and on a shared CPU at every n). During the search only the first T
  entries of each segment's first column are computed; the k full columns B_j come at the end from one
  (n, d)·(d, k) product per head (one pass over Q instead of k matrix-vector passes), equal to the
  former column-by-column values up to float rounding (a few ulp).
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
  eps of it: a score range beyond ~16 / ~36 in float32 / float64 FFTs) can come out ≤ 0 or as noise.
  Denominators below machine-eps times the head's largest denominator are clamped to that floor (the
  output stays of the order of V) and counted in ``clamped_row_fraction``.
- Precision: one shift per head (not per row, as softmax uses) means FFT rounding is relative to the
  head's largest weight, so rows whose weights all lie far below it lose digits. With float32 FFTs,
  the exactly-Toeplitz input q_i·k_j = 5cos(π(i-j)/20 - π), n=200, k=1 gives 1.7e-2 relative error
  (row 0: 5.1e-2; the former evaluation: 1.1e-2 / 3.7e-2); a relative-position input at n=1024 gave
  4.5e-4; gaussian inputs (8 heads, d=64, k=16, n=1k-16k) differ from the float64 result by
  0.6e-4-8.4e-4 relative (per row up to 7e-3), above a 1e-4 budget. Hence ``fft_dtype='float64'``
  (default): exponentiation and FFT products run in float64 (about 2.4x the FFT time on CPU) and the
  same inputs agree to 1.4e-7 / 1.9e-7. ``fft_dtype='input'`` computes in the (upcast) input dtype.
- Speed (2-core CPU, 2 threads, load average 1.3-2 from other jobs; batch 1, 8 heads, d=64, fp32
  gaussian inputs, k=16, float64 FFTs; medians of interleaved runs): 0.12 / 0.16 / 0.43 / 0.93 / 1.7 s
  at n = 4k / 8k / 16k / 32k / 64k against 0.11 / 0.41 / 1.6 / 6.4 / 25 s for exact causal SDPA
  (log-log slope 4k->64k 0.96 against 1.95); the former evaluation took 1.6 s at 4k and 7.3 s at 16k
  (idle). Many small tensor operations remain (k sequential searches): on a busy CPU, where each
  multi-threaded operation waits for a descheduled thread, small n suffers most.
Defaults k=16, eps=1e-3, T=8, fft_dtype='float64' are this suite's choices (the paper fixes none).
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from attnbench.methods import register
from attnbench.methods.base import SCORE_TILE_ELEMS, AttentionMethod, check_positive_int, resolve_budget

EntryFn = Callable[[Tensor, Tensor], Tensor]
FALLBACKS = ("none", "even")
FFT_DTYPES = ("input", "float64")
DIRECT_MAX_LEN = 32  # segments of at most this many columns are applied directly, longer ones by FFT
SEARCH_LEVELS = 3  # binary-search steps resolved per batched probe (7 probed columns per head)


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


def segment_product(
    starts: Tensor, W: Tensor, x: Tensor, *, direct_max_len: int | None = None, ones: bool = False
) -> Tensor:
    """Σ_j conv(W_j)·(x restricted to the columns of segment j): out[g, :, i] = Σ_{c<=i} W[g, j(c), i-c] x[g, :, c],
    j(c) the segment of column c (segment j holds columns s_j <= c < s_{j+1}).

    starts (G, k) ascending, unused slots = n; W (G, k, n), zero at offsets r >= n - s_j; x (G, ch, n),
    channels first, any dtype and strides (a transposed view of V will do); ``ones`` appends a channel
    of ones (the softmax denominators). Computed and returned in W's dtype, (G, ch [+ 1], n). See
    ``SegmentProduct``, which this builds and applies once.
    """
    return SegmentProduct(starts, W, direct_max_len=direct_max_len)(x, ones=ones)


class SegmentProduct:
    """The segment-disjoint product for fixed starts (G, k) and W (G, k, n), applied to any x (G, ch, n).

    Segments of at most ``direct_max_len`` columns (default ``DIRECT_MAX_LEN``) are applied directly:
    their columns' shifted W_j (gathered once when it fits ``SCORE_TILE_ELEMS``, else per row chunk) times x's
    columns, a batched matrix product, O(n d) per column. Longer segments go by FFT: one real transform
    of length N of each segment's columns of x (zero elsewhere), products with the transforms of their
    W_j (computed once here) summed in the frequency domain, one inverse transform; N = next_fast_len(n +
    L - 1) with L the longest such segment, since term j's linear convolution reaches row n + L_j - 2
    and must not wrap into rows < n. Memory per call: a few (G, ch, N) buffers (callers bound G·ch).
    """

    def __init__(self, starts: Tensor, W: Tensor, *, direct_max_len: int | None = None) -> None:
        G, k, n = W.shape
        self.G, self.k, self.n, self.W = G, k, n, W
        self.dtype, self.device = W.dtype, W.device
        tau = DIRECT_MAX_LEN if direct_max_len is None else direct_max_len
        ends = torch.cat([starts[:, 1:], torch.full_like(starts[:, :1], n)], dim=1)
        L = ends - starts  # segment lengths, 0 for unused slots
        direct = (L > 0) & (L <= tau)
        by_fft = L > tau

        self.Kf = int(by_fft.sum(dim=1).max())
        if self.Kf:
            order = torch.argsort((~by_fft).to(torch.uint8), dim=1, stable=True)[:, : self.Kf]  # FFT terms first
            use = by_fft.gather(1, order)
            self.size = next_fast_len(n + int(L[by_fft].max()) - 1)
            Wt = W.gather(1, order[..., None].expand(G, self.Kf, n)) * use[..., None]
            self.fw = torch.fft.rfft(Wt, n=self.size, dim=-1)  # (G, Kf, size // 2 + 1)
            self.lo = starts.gather(1, order).masked_fill(~use, 0).tolist()
            self.hi = ends.gather(1, order).masked_fill(~use, 0).tolist()

        self.C = int((direct * L).sum(dim=1).max())
        if self.C:
            # the columns of the short segments, compacted per head: col (G, C), their segment seg; ok = real entry
            u = torch.arange(tau, device=self.device)
            col = (starts[:, :, None] + u).reshape(G, -1)
            ok = (direct[:, :, None] & (u < L[:, :, None])).reshape(G, -1)
            seg = torch.arange(k, device=self.device).repeat_interleave(tau).expand(G, -1)
            order = torch.argsort((~ok).to(torch.uint8), dim=1, stable=True)[:, : self.C]
            col, self.ok, self.seg = col.gather(1, order), ok.gather(1, order), seg.gather(1, order)
            self.col = col.masked_fill(~self.ok, n)  # padding entries lie right of every row: they never contribute
            self.r0 = int(self.col.min())
            self.rows = max(1, SCORE_TILE_ELEMS // (G * self.C))
            self.A = self._block(self.r0, n) if self.rows >= n - self.r0 else None

    def _block(self, a: int, b: int) -> Tensor:
        """Rows a..b-1 of the direct columns' matrix: A[g, c, i - a] = W[g, seg_c, i - col_c] (0 for i < col_c)."""
        i = torch.arange(a, b, device=self.device)
        rel = i - self.col[:, :, None]  # (G, C, R): offset of row i below column col
        idx = (self.seg[:, :, None] * self.n + rel.clamp(min=0)).view(self.G, -1)
        return self.W.reshape(self.G, -1).gather(1, idx).view(self.G, self.C, b - a).masked_fill_(rel < 0, 0)

    def __call__(self, x: Tensor, *, ones: bool = False) -> Tensor:
        G, n, dtype, device = self.G, self.n, self.dtype, self.device
        ch = x.shape[1] + int(ones)
        recorded = torch.is_grad_enabled() and (x.requires_grad or self.W.requires_grad)  # autograd records
        if self.Kf:
            acc = None
            if recorded:
                # autograd: each term's columns selected by a mask (a product, whose backward is one product),
                # not written into a buffer's slices (each write's backward copies the whole buffer's gradient)
                xo = x.to(dtype)
                if ones:
                    xo = torch.cat([xo, torch.ones(G, 1, n, dtype=dtype, device=device)], dim=1)
                cols = torch.arange(n, device=device)
                lo, hi = torch.tensor(self.lo, device=device), torch.tensor(self.hi, device=device)  # (G, Kf)
                for t in range(self.Kf):
                    mask = (cols >= lo[:, t, None]) & (cols < hi[:, t, None])  # (G, n)
                    fx = torch.fft.rfft(xo * mask[:, None, :], n=self.size, dim=-1)
                    acc = fx * self.fw[:, t, None, :] if acc is None else acc + fx * self.fw[:, t, None, :]
            else:
                # one segment's columns per head, in one buffer reused across terms (zeroing the last segment)
                buf = torch.zeros(G, ch, self.size, dtype=dtype, device=device)
                for t in range(self.Kf):
                    for g in range(G):
                        lo, hi = self.lo[g], self.hi[g]
                        if t > 0 and hi[t - 1] > lo[t - 1]:
                            buf[g, :, lo[t - 1] : hi[t - 1]] = 0
                        if hi[t] > lo[t]:
                            if ones:
                                buf[g, :-1, lo[t] : hi[t]] = x[g, :, lo[t] : hi[t]]
                                buf[g, -1, lo[t] : hi[t]] = 1
                            else:
                                buf[g, :, lo[t] : hi[t]] = x[g, :, lo[t] : hi[t]]
                    fx = torch.fft.rfft(buf, dim=-1)  # (G, ch, size // 2 + 1)
                    acc = fx * self.fw[:, t, None, :] if acc is None else acc.addcmul_(fx, self.fw[:, t, None, :])
                del buf
            del fx
            out = torch.fft.irfft(acc, n=self.size, dim=-1)[..., :n]
        else:
            out = torch.zeros(G, ch, n, dtype=dtype, device=device)
        if self.C:
            cols = self.col.clamp(max=n - 1)[:, None, :]
            xc = x.gather(2, cols.expand(G, x.shape[1], self.C)).to(dtype)
            if ones:
                xc = torch.cat([xc, torch.ones(G, 1, self.C, dtype=dtype, device=device)], dim=1)
            xc = xc * self.ok[:, None, :]
            chunks = [(a, min(n, a + self.rows)) for a in range(self.r0, n, self.rows)]
            if recorded:
                # out of place, pieces by split: autograd's record of in-place writes into slices of out (and the
                # backward of each slice) would make a tensor of out's whole size per chunk; same kernel, same values
                pieces = out.split([self.r0] + [b - a for a, b in chunks], dim=-1)
                out = torch.cat([pieces[0]] + [
                    torch.baddbmm(piece, xc, self.A if self.A is not None else self._block(a, b))
                    for piece, (a, b) in zip(pieces[1:], chunks)], dim=-1)
            else:
                for a, b in chunks:
                    out[..., a:b].baddbmm_(xc, self.A if self.A is not None else self._block(a, b))
        return out


def qk_entries(q: Tensor, k: Tensor, scale: float) -> EntryFn:
    """Oracle for masked scores: f(c, r) = scale·q[c+r]·k[c] for heads g, column c[g], offsets r[g, :].

    q, k: (G, n, d); c: (G,) long, or (G, P) for P columns per head; r: (G, R) long. Returns (G, R),
    or (G, P, R). Entries with c + r >= n are returned as 0. R = n means full columns (r = 0..n-1): one
    (G, n) matrix-vector product for c (G,), one (n, d)·(d, P) product per head for c (G, P); probes
    (R < n) are a (G, P, R, d) gather.
    """
    g_idx = torch.arange(q.shape[0], device=q.device)
    n, d = q.shape[1], q.shape[2]
    q_rows, k_rows = q.reshape(-1, d), k.reshape(-1, d)  # (G n, d), copied once if q, k are not contiguous

    def f(c: Tensor, r: Tensor) -> Tensor:
        if c.dim() == 2:  # several columns per head: binary-search probes, or all recovered columns at once
            G, P = c.shape
            base = (g_idx * n)[:, None]
            kc = k_rows.index_select(0, (c + base).view(-1)).view(G, P, d)
            if r.shape[1] == n:  # full columns (r = 0..n-1): one (n, d)·(d, P) product per head, then shifted
                full = torch.bmm(q, kc.transpose(1, 2)) * scale  # (G, n, P)
                vals = torch.empty(G, P, n, dtype=full.dtype, device=full.device)
                for g in range(G):  # per head: (P, n) indices, not (G, P, n)
                    rows = c[g, :, None] + r[g]
                    vals[g] = full[g].T.gather(1, rows.clamp(max=n - 1)).masked_fill_(rows >= n, 0.0)
                return vals
            rows = c[:, :, None] + r[:, None, :]  # (G, P, R)
            valid = rows < n
            qr = q_rows.index_select(0, (rows.clamp(max=n - 1) + base[..., None]).view(-1))
            vals = torch.bmm(qr.view(G * P, -1, d), kc.view(G * P, d, 1)).view(G, P, -1) * scale
            return vals.masked_fill(~valid, 0.0)
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
    """Columns c[g] (c (G,) or (G, P)) of H from the diagonal down: out[g, (p,) r] = H[c+r, c] (0 for r >= n - c)."""
    r = torch.arange(n, device=c.device).expand(c.shape[0], n)
    return entries(c, r)


def _binary_search(entries: EntryFn, pred: Tensor, lo: Tensor, active: Tensor, *, n: int, eps: float, steps: int) -> Tensor:
    """The first mismatching column after ``lo`` per head, by binary search: up to ``steps`` halvings of
    (lo, hi = n) keeping "column lo matches, column hi mismatches (or is n)", where column c matches
    when H[c+r, c] is within ``eps`` of ``pred[r]`` for r < T (offsets past the last row match).
    Returns hi (G,) long; heads not ``active`` keep hi = n.

    The probe sequence and result are exactly the plain search's (one probe per head and step), but
    ``SEARCH_LEVELS`` steps are resolved per oracle call: all 2^levels - 1 midpoints the next steps could
    probe are evaluated at once, and the path through them is followed on the host (few small ops).
    """
    G, T = pred.shape
    device = pred.device
    offs = torch.arange(T, device=device).expand(G, T)
    eps = pred.new_tensor(eps).cpu().numpy()  # 0-d, pred's dtype: compared in that dtype, as torch would
    pred = pred.detach().cpu().numpy()
    ar = np.arange(G)
    lo = lo.cpu().numpy().astype(np.int64)
    hi = np.full(G, n, dtype=np.int64)
    act = active.cpu().numpy()
    while steps > 0:
        if not (act & (hi - lo > 1)).any():
            break
        levels = min(SEARCH_LEVELS, steps)
        mids, lv_lo, lv_hi = [], lo[:, None], hi[:, None]  # intervals of one level, in heap order
        for _ in range(levels):
            mid = (lv_lo + lv_hi) // 2
            mids.append(mid)  # children: 2i = mismatch (hi = mid), 2i + 1 = match (lo = mid)
            lv_lo = np.stack([lv_lo, mid], axis=-1).reshape(G, -1)
            lv_hi = np.stack([mid, lv_hi], axis=-1).reshape(G, -1)
        cols = np.concatenate(mids, axis=1)  # (G, 2^levels - 1), every one < n
        vals = entries(torch.from_numpy(cols).to(device), offs).detach().cpu().numpy()  # (G, P, T)
        ok = (np.abs(vals - pred[:, None, :]) <= eps) | (np.arange(T) >= (n - cols)[..., None])
        match = ok.all(axis=2)
        node = np.zeros(G, dtype=np.int64)
        for lv in range(levels):
            go = act & (hi - lo > 1)
            at = (1 << lv) - 1 + node
            mid, m = cols[ar, at], match[ar, at]
            lo = np.where(go & m, mid, lo)
            hi = np.where(go & ~m, mid, hi)
            node = 2 * node + m
        steps -= levels
    return torch.from_numpy(hi).to(device)


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
    starts = torch.full((G, k), n, dtype=torch.long, device=device)
    starts[:, 0] = 0
    offs = torch.arange(T, device=device).expand(G, T)
    cur = torch.zeros(G, dtype=torch.long, device=device)
    pred = entries(cur, offs)  # the current segment's first column on its first T offsets
    active = torch.ones(G, dtype=torch.bool, device=device)
    found = torch.ones(G, dtype=torch.long, device=device)
    overflow = torch.zeros(G, dtype=torch.bool, device=device)
    for t in range(1, k + 1):
        hi = _binary_search(entries, pred, cur, active, n=n, eps=eps, steps=log_steps)
        new = active & (hi < n)
        if t == k:
            overflow = new
            break
        if not bool(new.any()):
            break
        starts[:, t] = torch.where(new, hi, starts[:, t])
        found += new.long()
        cur = torch.where(new, hi, cur)
        pred = torch.where(new[:, None], entries(cur, offs), pred)
        active = new
    if fallback == "even" and bool(overflow.any()):
        even = torch.div(torch.arange(k, device=device) * n, k, rounding_mode="floor")
        starts = torch.where(overflow[:, None], even.expand(G, k), starts)
    # all basis columns at once (one pass over Q); unused slots (start n) are zero
    B = _columns(entries, starts.clamp(max=n - 1), n).to(dtype)
    B = B * (torch.arange(n, device=device) < (n - starts)[..., None])
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
    """Causal attention through a k-conv basis recovered from Q, K, exponentiated and applied by FFT
    (long segments) and direct products (segments of at most ``DIRECT_MAX_LEN`` columns).

    Knobs: ``k`` terms (int, or float in (0, 1] as a fraction of n; clipped to n), ``eps`` the
    matching tolerance on scaled scores, ``T`` the number of diagonal offsets compared, ``fallback``
    ('none' or 'even') for heads that need more than k terms, ``fft_dtype`` ('input' or 'float64':
    the precision of the exponentiation and FFT products). See the module docstring for what
    follows the paper and what is this suite's reconstruction.
    """

    supports_causal = True
    supports_bidirectional = False
    supports_cross = False
    version = 2
    version_commits = {2: "114e638fac48"}  # the Conv-Basis arithmetic of that commit

    @classmethod
    def exact_knobs(cls, n: int) -> dict:
        return {"k": n}  # k = n conv matrices represent any lower-triangular matrix

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

        # exp(H)∘M in the basis: segment j's columns all carry W_j = exp(B_j - c), shifted. Evaluated in
        # blocks of heads and of V's channels, each with the ones channel (denominators): an FFT buffer
        # (heads, channels, N ≈ 2n) holds at most SCORE_TILE_ELEMS float64 entries (16 MB).
        pos = torch.arange(n, device=device)
        fdt = torch.float64 if self.fft_dtype == "float64" else dtype
        hb = max(1, min(G, SCORE_TILE_ELEMS // (2 * (dv + 1) * n)))  # heads per block
        cb = max(1, min(dv, SCORE_TILE_ELEMS // (2 * hb * n) - 1))  # channels of V per block
        vt = vf.transpose(1, 2)  # (G, dv, n), a view
        # with autograd recording, the blocks are concatenated rather than written into slices of y: the record
        # of each slice write would copy the whole of y's gradient in the backward (blocks x |y|: quadratic in n)
        recorded = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))
        y = None if recorded else torch.empty(G, n, dv, dtype=dtype, device=device)
        head_blocks = []
        clamped = torch.empty(G, n, dtype=torch.bool, device=device)
        # blocks taken with split, not slicing: the backward of each slice is a zero tensor of the whole input
        for g0, sg, Bg, vg in zip(range(0, G, hb), starts.split(hb), Bv.split(hb), vt.split(hb)):
            g1 = g0 + sg.shape[0]
            valid = pos < (n - sg)[..., None]  # (hb, k, n)
            shift = Bg.masked_fill(~valid, float("-inf")).amax(dim=(1, 2))  # (hb,)
            product = SegmentProduct(sg, torch.exp((Bg - shift[:, None, None]).to(fdt)) * valid)
            channel_blocks = []
            for c0, vc in zip(range(0, dv, cb), vg.split(cb, dim=1)):
                out = product(vc, ones=True)  # (hb, channels + 1, n): [V, 1] in fdt
                num, den = out.split([vc.shape[1], 1], dim=1)
                den = den.squeeze(1)
                floor = den.amax(dim=1, keepdim=True).clamp_min(torch.finfo(fdt).tiny) * torch.finfo(fdt).eps
                if c0 == 0:
                    clamped[g0:g1] = den < floor
                block = (num / torch.maximum(den, floor)[:, None, :]).transpose(1, 2)
                if recorded:
                    channel_blocks.append(block.to(dtype))
                else:
                    y[g0:g1, :, c0 : c0 + vc.shape[1]] = block
            if recorded:
                head_blocks.append(torch.cat(channel_blocks, dim=-1))
        if recorded:
            y = torch.cat(head_blocks, dim=0)

        self._stats = {
            "segments_found": float(found.float().mean()),
            "segments_used": float((starts < n).sum(dim=1).float().mean()),
            "overflow_head_fraction": float(overflow.float().mean()),
            "clamped_row_fraction": float(clamped.float().mean()),
        }
        return y.reshape(Bsz, Hh, n, dv)
