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
- The official loop keeps G(S,·) and a running G_SS⁻¹ and forms W (r×n) explicitly. We keep the
  Cholesky factor F (r×n, G ≈ FᵀF) instead: W = U⁻¹F with U = F[:, S] upper triangular, so Ṽ = U⁻¹(F V) and w = U⁻¹(F 1) cost O(n·r·d) and one r×r triangular solve
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
- For speed on long sequences (same mathematics): the coreset is built for a few (batch·head) rows
  at a time when F would exceed ``GROUP_ELEMS`` entries (its memory is reused between groups),
  and the weighted attention runs over blocks of queries (``QUERY_TILE`` scores at a time).
- Residual-diagonal entries ≤ 64·machine-eps (G's diagonal is 1, so this is rounding noise) are
  set to 0, and a pivot drawn when the residual is exhausted (every key represented exactly, e.g.
  duplicated keys) is left empty: a zero row of F, weight 0, value 0. The official code would
  pick noise pivots and divide by ~0 there.
- Cross-attention (Nq ≠ Nk) works; causal attention is not supported (the paper's method is
  bidirectional).
"""
from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch
from torch import Tensor

from . import register
from .base import AttentionMethod, check_positive_int, check_scale, resolve_budget

RHO = 3.94582  # official compress_kv.py: τ² = ρ·k_scale/q_scale
TWO_RHO_0 = 6.383202050647408  # official compresskv.py (Lambert-W rule): 2·sqrt(1+exp(2W(2/e²)+2))
DENOM_EPS = 1e-20  # official threshold below which the output is set to 0
NOISE = 64  # residual-diagonal entries ≤ NOISE·machine-eps are rounding noise and set to 0
TEMPERATURE_RULES = ("rho", "lambert")
QUERY_TILE = 1 << 21  # scores per query block in the PyTorch weighted attention (8 MB in fp32)
GROUP_ELEMS = 1 << 24  # entries of the Cholesky factor built at once (64 MB in fp32); see compress_bins


# ----------------------------------------------------------------------------- temperature
def lambert_w(x: Tensor, iterations: int = 8) -> Tensor:
    """Principal branch W(x) for x > 0 (Halley iterations from a log-based start)."""
    lx = torch.log(x)
    w = torch.where(x > math.e, lx - torch.log(lx.clamp_min(1e-30)), x / (1 + x))
    for _ in range(iterations):
        ew = torch.exp(w)
        f = w * ew - x
        w = w - f / (ew * (w + 1) - (w + 2) * f / (2 * w + 2))
    return w


def kernel_temperature(
    scale: float, q_scale: Tensor, k_scale: Tensor, n: int, rule: str = "rho", rho: float = RHO
) -> Tensor:
    """τ such that keys are rescaled by √scale/τ (and queries, implicitly, by √scale·τ).

    ``rho``: τ = √(ρ·k_scale/q_scale) (official ``compress_kv.py``, ρ = 3.94582).
    ``lambert``: b = log(n)/(scale·q_scale·k_scale) + 2, τ = √(k_scale/q_scale · b / (2 W(b/(2ρ₀))))
    (official ``compresskv.py``).
    """
    if rule == "rho":
        return torch.sqrt(rho * k_scale / q_scale)
    b = math.log(max(n, 2)) / (scale * q_scale * k_scale) + 2.0
    upper = b / (2 * lambert_w(b / TWO_RHO_0))
    return torch.sqrt(k_scale / q_scale * upper)


# ----------------------------------------------------------------------------- RPCholesky
def _gaussian_rows(x: Tensor, hsq: Tensor, idx: Tensor, out: Tensor | None = None) -> Tensor:
    """G(idx, :) = exp(x_idx·x - h_idx - h), clamped at 1. idx: (B, m) -> (B, m, n)."""
    xs = x.gather(1, idx.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
    rows = torch.bmm(xs, x.transpose(1, 2), out=out)
    rows -= hsq.gather(1, idx).unsqueeze(-1)
    rows -= hsq.unsqueeze(1)
    return rows.exp_().clamp_(max=1.0)


def rp_cholesky(
    x: Tensor, r: int, generator: torch.Generator | None = None, block: int = 1, hsq: Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """Randomly pivoted Cholesky of G(i,j) = exp(-|x_i-x_j|²/2), pivots ∝ residual·exp(|x_i|²).

    x: (B, n, E) rescaled keys, r ≤ n. Returns ``pivots`` (B, r) long, ``F`` (B, r, n) with
    G ≈ FᵀF (row t of F is the t-th Cholesky column; F[t, pivots[u]] = 0 for u < t), and
    ``res_diag`` (B, n), the final residual diagonal of G (≥ 0; 0 at the pivots).
    Empty pivots (residual exhausted) have a zero row in F and pivot index 0.
    """
    if hsq is None:
        hsq = 0.5 * x.square().sum(-1)  # (B, n)
    if block == 1:
        return _rpc_plain(x, hsq, r, generator)
    return _rpc_accelerated(_augment(x, hsq), r, generator, block)


def _augment(x: Tensor, hsq: Tensor) -> Tensor:
    """Z = [x, 1, -h] (B, n, E+2): Z'_c·Z_j = x_c·x_j - h_c - h_j with Z'_c = [x_c, -h_c, 1]."""
    B, n, E = x.shape
    Z = x.new_empty(B, n, E + 2)
    Z[..., :E] = x
    Z[..., E] = 1.0
    Z[..., E + 1] = -hsq
    return Z


def _rpc_plain(x: Tensor, hsq: Tensor, r: int, gen: torch.Generator | None):
    B, n, _ = x.shape
    dev, dt = x.device, x.dtype
    F = torch.zeros(B, r, n, device=dev, dtype=dt)
    d = torch.ones(B, n, device=dev, dtype=dt)
    pivots = torch.zeros(B, r, device=dev, dtype=torch.long)
    logw = 2 * hsq  # log of the exponential kernel's diagonal factor
    noise = torch.empty(B, n, device=dev, dtype=dt)
    scores = torch.empty(B, n, device=dev, dtype=dt)
    f = torch.empty(B, 1, n, device=dev, dtype=dt)
    tiny = torch.finfo(dt).tiny
    thr = NOISE * torch.finfo(dt).eps
    for i in range(r):
        # Gumbel-max, as the official code: argmax log d + |x|² - log(-log U), U ~ U(0, 1)
        noise.uniform_(generator=gen).clamp_(min=tiny).log_().neg_().log_()
        torch.log(d, out=scores)
        scores += logw
        scores -= noise
        s = scores.argmax(-1, keepdim=True)  # (B, 1)
        ds = d.gather(1, s)  # (B, 1)
        row = _gaussian_rows(x, hsq, s)  # (B, 1, n)
        if i > 0:
            c = F[:, :i, :].gather(2, s.view(B, 1, 1).expand(B, i, 1))  # (B, i, 1)
            torch.baddbmm(row, c.transpose(1, 2), F[:, :i, :], beta=1.0, alpha=-1.0, out=f)
        else:
            f.copy_(row)
        live = ds > thr
        f *= torch.where(live, ds, torch.ones_like(ds)).rsqrt().mul_(live).unsqueeze(-1)
        F[:, i : i + 1, :] = f
        pivots[:, i : i + 1] = torch.where(live, s, torch.zeros_like(s))
        d.sub_(f.squeeze(1).square())
        d.masked_fill_(d <= thr, 0.0)
        d.scatter_(1, s, 0.0)
    return pivots, F, d


def _rpc_accelerated(Z: Tensor, r: int, gen: torch.Generator | None, b: int,
                     workspace: dict[str, Tensor] | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Accelerated RPCholesky (rejection sampling in blocks of b candidates) on Z = [x, 1, -h].

    Same contract as ``rp_cholesky``. A round costs one (b × (E+2)) × ((E+2) × n) product for
    the kernel rows (h folded in as two extra coordinates, see ``_augment``), one (b × m) × (m × n)
    update and one (b × b) × (b × n) product whose rows are permuted so that the accepted
    candidates come first: they are written straight after the rows accepted so far (in place
    when B = 1), and F holds r + b rows at most. ``workspace["F"]``, when given, lends F's memory
    (reused between calls on row groups; the returned F is then a view of it).
    """
    B, n, E2 = Z.shape
    E = E2 - 2
    dev, dt = Z.device, Z.dtype
    hsq = -Z[..., E + 1]
    key_side = Z.transpose(1, 2)  # (B, E+2, n)
    swap = torch.arange(E2, device=dev)
    swap[E], swap[E + 1] = E + 1, E  # [x_c, 1, -h_c] -> [x_c, -h_c, 1]
    cap = r + b
    F = None if workspace is None else workspace.get("F")
    if F is None or F.shape != (B, cap, n) or F.dtype != dt or F.device != dev:
        F = torch.empty(B, cap, n, device=dev, dtype=dt)
        if workspace is not None:
            workspace["F"] = F
    if B > 1:  # invariant: rows at and after an element's count are 0 (elements fill at different rates)
        F.zero_()
    pivots = torch.zeros(B, cap, device=dev, dtype=torch.long)
    d = torch.ones(B, n, device=dev, dtype=dt)
    logw = 2 * hsq
    count = torch.zeros(B, device=dev, dtype=torch.long)
    done = torch.zeros(B, device=dev, dtype=torch.bool)
    thr = NOISE * torch.finfo(dt).eps
    R = torch.empty(B, b, n, device=dev, dtype=dt)  # buffers reused every round
    sq = torch.empty(B, b, n, device=dev, dtype=dt)
    Fnew = None if B == 1 else torch.empty(B, b, n, device=dev, dtype=dt)
    dsub = torch.empty(B, n, device=dev, dtype=dt)
    hit = torch.empty(B, n, device=dev, dtype=dt)
    slots = torch.arange(b, device=dev)
    base = (torch.arange(B, device=dev) * cap).unsqueeze(1)
    for _ in range(2 * r + 8):  # every round accepts its first candidate, so ≤ r rounds are needed
        # exhausted or full elements stop
        logp = torch.log(d) + logw
        mx = logp.amax(-1, keepdim=True)
        done |= ~torch.isfinite(mx.squeeze(-1)) | (count >= r)
        if bool(done.all()):
            break
        p = torch.where(done.unsqueeze(-1), torch.ones_like(logp), torch.exp(logp - torch.where(torch.isfinite(mx), mx, 0)))
        cand = torch.multinomial(p, b, replacement=True, generator=gen)  # (B, b)
        u = torch.rand(B, b, device=dev, dtype=dt, generator=gen)
        m = int(count.max())
        zc = Z.gather(1, cand.unsqueeze(-1).expand(B, b, E2))[..., swap]
        torch.bmm(zc, key_side, out=R)
        R.clamp_(max=0.0).exp_()  # G(cand, :) ≤ 1
        if m > 0:
            Fa = F[:, :m, :]
            Fc = Fa.gather(2, cand.unsqueeze(1).expand(B, m, b))  # (B, m, b)
            R.baddbmm_(Fc.transpose(1, 2), Fa, beta=1.0, alpha=-1.0)
        H = R.gather(2, cand.unsqueeze(1).expand(B, b, b))  # (B, b, b) residual block
        Linv, acc = _block_factor(H, d.gather(1, cand), u, cand, count, done, r, thr)
        order = (~acc).to(torch.uint8).argsort(dim=1, stable=True)  # accepted candidates first, in draw order
        Lp = (Linv * acc.unsqueeze(1).to(dt)).gather(1, order.unsqueeze(-1).expand(B, b, b))
        n_acc = acc.sum(1)
        if B == 1:
            rows = F[:, m : m + b, :]
            torch.bmm(Lp, R, out=rows)  # the new Cholesky rows, then zero rows for the rejected
        else:
            rows = torch.bmm(Lp, R, out=Fnew)
            dest = (base + count.unsqueeze(1) + slots).reshape(-1)
            F.view(B * cap, n).index_copy_(0, dest, rows.reshape(B * b, n))
        new_piv = torch.where(slots < n_acc.unsqueeze(1), cand.gather(1, order), 0)
        pivots.scatter_(1, count.unsqueeze(1) + slots, new_piv)
        torch.sum(torch.mul(rows, rows, out=sq), 1, out=dsub)
        d.sub_(dsub)
        d.masked_fill_(d <= thr, 0.0)
        hit.zero_().scatter_add_(1, cand, acc.to(dt))
        d.masked_fill_(hit > 0, 0.0)
        count = count + n_acc
    if B == 1 and int(count) < r:  # exhausted: the remaining rows are empty
        F[:, int(count) : r].zero_()
    return pivots[:, :r], F[:, :r], d


def _block_factor(H: Tensor, d_drawn: Tensor, u: Tensor, cand: Tensor, count: Tensor, done: Tensor, r: int,
                  thr: float) -> tuple[Tensor, Tensor]:
    """Sequential rejection step of accelerated RPCholesky on the b×b residual blocks.

    Candidate j is accepted iff u_j·d_drawn_j < (its residual after the accepted candidates before
    it), it is not a repeat of an accepted candidate, and the element still needs pivots. Returns
    the inverse of the lower-triangular factor (identity rows/columns for rejected candidates)
    and the accepted mask. Runs in float64 NumPy on the CPU: the blocks are tiny and the loop is sequential, so
    per-operation overhead, not arithmetic, is what costs here.
    """
    import numpy as np

    Hn = H.detach().to("cpu", torch.float64).numpy().copy()
    Hn = 0.5 * (Hn + Hn.transpose(0, 2, 1))
    thresh = (u.detach().to("cpu", torch.float64) * d_drawn.detach().to("cpu", torch.float64)).numpy()
    cn = cand.cpu().numpy()
    room = (r - count.cpu().numpy()) * (~done.cpu().numpy())
    B, b, _ = Hn.shape
    L = np.zeros_like(Hn)
    acc = np.zeros((B, b), dtype=bool)
    for j in range(b):
        hjj = Hn[:, j, j]
        a = (thresh[:, j] < hjj) & (hjj > thr) & (acc.sum(1) < room)
        if j:
            a &= ~((cn[:, :j] == cn[:, j : j + 1]) & acc[:, :j]).any(1)
        col = Hn[:, j:, j] * (a / np.sqrt(np.where(a, hjj, 1.0)))[:, None]
        L[:, j:, j] = col
        Hn[:, j:, j:] -= col[:, :, None] * col[:, None, :]
        acc[:, j] = a
    idx = np.arange(b)
    L[:, idx, idx] = np.where(acc, L[:, idx, idx], 1.0)
    L *= ~(~acc[:, :, None] & (idx[None, None, :] < idx[None, :, None]))  # rejected rows: no coupling
    Lt = torch.from_numpy(L)
    Linv = torch.linalg.solve_triangular(Lt, torch.eye(b, dtype=Lt.dtype).expand(B, b, b), upper=False)
    return Linv.to(H.device, H.dtype), torch.from_numpy(acc).to(H.device)


# ----------------------------------------------------------------------------- compression
def compress_bins(
    keys: Tensor,
    values: Tensor,
    r: int,
    scale: float,
    q_scale: Tensor | None = None,
    *,
    temperature: str = "rho",
    rho: float = RHO,
    block: int = 1,
    generator: torch.Generator | None = None,
    key_mean: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Weighted coreset of each row of a batch: keys (B, n, E), values (B, n, D) -> (k_S, Ṽ, w).

    Keys must be centred, or ``key_mean`` (B, 1, E) is subtracted first. ``q_scale`` (B, 1): the
    largest query norm (default: the largest key norm, the official KV-cache mode). Returns k_S
    (B, r, E) centred unscaled keys, Ṽ (B, r, D) and w (B, r) such that Σ_j exp(β q·k_j) v_j ≈
    Σ_s exp(β q·k_s) Ṽ_s and Σ_j exp(β q·k_j) ≈ Σ_s exp(β q·k_s) w_s. If n ≤ r the input is
    returned with w = 1 (exact).
    """
    B, n, E = keys.shape
    if n <= r:
        keys = keys if key_mean is None else keys - key_mean
        return keys, values, torch.ones(B, n, device=keys.device, dtype=keys.dtype)
    # rows are independent: large problems run a few rows at a time so that the factor F
    # (rows × ~r × n) stays near GROUP_ELEMS entries and its memory is reused between groups
    rows = max(1, GROUP_ELEMS // ((r + 2 * block) * n))
    kw = dict(temperature=temperature, rho=rho, block=block, generator=generator)
    if rows >= B:
        return _compress_rows(keys, values, r, scale, q_scale, key_mean, None, **kw)
    workspace: dict[str, Tensor] = {}
    parts = [
        _compress_rows(keys[s : s + rows], values[s : s + rows], r, scale,
                       None if q_scale is None else q_scale[s : s + rows],
                       None if key_mean is None else key_mean[s : s + rows], workspace, **kw)
        for s in range(0, B, rows)
    ]
    return tuple(torch.cat(p, 0) for p in zip(*parts))  # type: ignore[return-value]


def _compress_rows(
    keys: Tensor, values: Tensor, r: int, scale: float, q_scale: Tensor | None, key_mean: Tensor | None,
    workspace: dict[str, Tensor] | None, *, temperature: str, rho: float, block: int,
    generator: torch.Generator | None,
) -> tuple[Tensor, Tensor, Tensor]:
    """``compress_bins`` on one group of rows (n > r); ``workspace`` keeps F's memory between groups."""
    B, n, E = keys.shape
    D = values.shape[-1]
    tiny = torch.finfo(keys.dtype).tiny ** 0.5
    # Z = [x, 1, -h] with x = centred keys · √β/τ, h = |x|²/2, built in one buffer (see _augment)
    Z = keys.new_empty(B, n, E + 2)
    x = Z[..., :E]
    if key_mean is None:
        x.copy_(keys)
    else:
        torch.sub(keys, key_mean, out=x)
    sq = torch.linalg.vector_norm(x, dim=-1).square_()  # (B, n) |centred key|²
    k_scale = sq.amax(-1, keepdim=True).sqrt().clamp_min(tiny)
    q_scale = k_scale if q_scale is None else q_scale.clamp_min(tiny)
    tau = kernel_temperature(scale, q_scale, k_scale, n, temperature, rho)
    mult = math.sqrt(scale) / tau  # (B, 1)
    x.mul_(mult.unsqueeze(-1))
    h = (0.5 * mult.square()) * sq  # (B, n): |x|²/2
    Z[..., E] = 1.0
    Z[..., E + 1] = -h
    if block == 1:
        pivots, F, _ = _rpc_plain(x, h, r, generator)
    else:
        pivots, F, _ = _rpc_accelerated(Z, r, generator, block, workspace)
    del Z, x
    # Ṽ = diag(e^{-h_S}) U⁻¹ F diag(e^{h}) [V, 1], exponents split around the midpoint of h
    mid = 0.5 * (h.amax(-1, keepdim=True) + h.amin(-1, keepdim=True))
    e = torch.exp(h - mid).unsqueeze(-1)  # (B, n, 1)
    ve = values.new_empty(B, n, D + 1)
    torch.mul(values, e, out=ve[..., :D])
    ve[..., D:] = e
    rhs = torch.bmm(F, ve)  # (B, r, D+1)
    del ve
    U = F.gather(2, pivots.unsqueeze(1).expand(B, r, r))  # upper triangular (its lower part is not read)
    empty = U.diagonal(dim1=1, dim2=2) == 0  # exhausted pivots
    if bool(empty.any()):
        U = U.masked_fill(empty.unsqueeze(-1) | empty.unsqueeze(1), 0.0) + torch.diag_embed(empty.to(U.dtype))
    sol = torch.linalg.solve_triangular(U, rhs, upper=True)
    sol *= torch.exp(mid - h.gather(1, pivots)).unsqueeze(-1)
    sol.masked_fill_(empty.unsqueeze(-1), 0.0)
    k_s = keys.gather(1, pivots.unsqueeze(-1).expand(B, r, E))
    if key_mean is not None:
        k_s = k_s - key_mean
    return k_s, sol[..., :-1], sol[..., -1]


def compress_sequence(
    keys: Tensor,
    values: Tensor,
    r: int,
    num_bins: int,
    scale: float,
    q_scale: Tensor | None = None,
    key_mean: Tensor | None = None,
    **kw: Any,
) -> tuple[Tensor, Tensor, Tensor]:
    """Bin a (B, n, ·) sequence into ``num_bins`` contiguous bins and compress each (official
    ``WildCat.forward``): r is padded to a multiple of the bin count, each bin keeps r/num_bins
    points, a leftover partial bin (n mod num_bins keys) is compressed to r/num_bins points too.
    Bins are capped at n. ``key_mean`` (B, 1, E): subtracted from the keys (default: already
    centred). Returns k_S (centred), Ṽ, w with r' = r (+ one leftover bin) entries.
    """
    B, n, E = keys.shape
    D = values.shape[-1]
    C = min(num_bins, n)
    r = r + (-r) % C
    bin_r = r // C
    rem = n % C
    main = n - rem
    if q_scale is not None:
        q_bins = q_scale.reshape(B, 1, 1).expand(B, C, 1).reshape(B * C, 1)
    else:
        q_bins = None
    kb = keys[:, :main].reshape(B * C, main // C, E)
    vb = values[:, :main].reshape(B * C, main // C, D)
    km = None if key_mean is None else key_mean.reshape(B, 1, 1, E).expand(B, C, 1, E).reshape(B * C, 1, E)
    ks, vs, w = compress_bins(kb, vb, bin_r, scale, q_bins, key_mean=km, **kw)
    ks, vs, w = ks.reshape(B, -1, E), vs.reshape(B, -1, D), w.reshape(B, -1)
    if rem:
        kr, vr, wr = compress_bins(keys[:, main:], values[:, main:], bin_r, scale, q_scale, key_mean=key_mean, **kw)
        ks, vs, w = torch.cat((ks, kr), 1), torch.cat((vs, vr), 1), torch.cat((w, wr), 1)
    return ks, vs, w


def weighted_attention(
    q: Tensor, k_s: Tensor, v_s: Tensor, w: Tensor, scale: float, vmin: Tensor, vmax: Tensor,
    tile: int = QUERY_TILE,
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
        from .kernels import wildcat as _k  # noqa: F401
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
        from .kernels.wildcat import weighted_attention_triton

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
    bins = int(math.floor(n_mid * (1 - compression_ratio))) // bin_r if n_mid > 0 else 0
    if bins < 1 or n_mid // bins <= bin_r:
        return CompressedKV(keys, with_weight_channel(values), vmin, vmax)
    bin_n = n_mid // bins
    n_in = bins * bin_n
    win = window + n_mid - n_in
    mid_k = kc[..., sink : sink + n_in, :].reshape(B * H * bins, bin_n, E)
    mid_v = values[..., sink : sink + n_in, :].reshape(B * H * bins, bin_n, D)
    work = torch.float32 if keys.dtype in (torch.float16, torch.bfloat16) else keys.dtype
    ks, vs, w = compress_bins(mid_k.to(work), mid_v.to(work), bin_r, scale, None, temperature=temperature,
                              rho=rho, block=block, generator=generator)
    ks = ks.to(keys.dtype).reshape(B, H, bins * bin_r, E)
    vw = torch.cat((vs, w.unsqueeze(-1)), -1).to(values.dtype).reshape(B, H, bins * bin_r, D + 1)
    k_out = torch.cat((keys[..., :sink, :], ks + kbar, keys[..., N - win :, :]), -2)
    v_out = torch.cat((with_weight_channel(values[..., :sink, :]), vw, with_weight_channel(values[..., N - win :, :])), -2)
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

    supports_causal = False
    supports_bidirectional = True
    supports_cross = True

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
