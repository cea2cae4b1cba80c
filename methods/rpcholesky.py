"""WildCat's compression core: randomly pivoted Cholesky and the weighted coreset (Nyström weights
of the exponential kernel) of contiguous key bins.

Used by ``methods/wildcat.py`` (the method, its weighted attention and KV-cache mode); the
algorithm, its sources in the official code (github.com/microsoft/wildcat, MIT) and every departure
from them are described in that module's docstring. In short: keys rescaled by √β/τ (``kernel_temperature``),
RPCholesky on the Gaussian kernel with pivots ∝ residual × e^{|x|²} (``rp_cholesky``: plain with
Gumbel-max pivots, or accelerated by block rejection sampling), then Ṽ = W V, w = W 1 with
W = G_SS⁻¹ G_S· ∘ e^{h_j - h_s} (``compress_bins``, ``compress_sequence``).
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

RHO = 3.94582  # official compress_kv.py: τ² = ρ·k_scale/q_scale
TWO_RHO_0 = 6.383202050647408  # official compresskv.py (Lambert-W rule): 2·sqrt(1+exp(2W(2/e²)+2))
NOISE = 64  # residual-diagonal entries ≤ NOISE·machine-eps are rounding noise and set to 0
TEMPERATURE_RULES = ("rho", "lambert")
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


def _rpc_plain(x: Tensor, hsq: Tensor, r: int, gen: torch.Generator | None, noise_floor: Tensor | None = None):
    """Plain RPCholesky (Gumbel-max pivots); ``noise_floor`` (B,): per-row residual threshold
    (default NOISE·eps, see ``_noise_floor``)."""
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
    thr = NOISE * torch.finfo(dt).eps if noise_floor is None else noise_floor.unsqueeze(-1)
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
                     workspace: dict[str, Tensor] | None = None,
                     noise_floor: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Accelerated RPCholesky (rejection sampling in blocks of b candidates) on Z = [x, 1, -h].

    Same contract as ``rp_cholesky``. A round costs one (b × (E+2)) × ((E+2) × n) product for
    the kernel rows (h folded in as two extra coordinates, see ``_augment``), one (b × m) × (m × n)
    update and one (b × b) × (b × n) product whose rows are permuted so that the accepted
    candidates come first: they are written straight after the rows accepted so far (in place
    when B = 1), and F holds r + b rows at most. ``workspace["F"]``, when given, lends F's memory
    (reused between calls on row groups; the returned F is then a view of it). ``noise_floor`` (B,):
    per-row residual threshold (default NOISE·eps, see ``_noise_floor``).

    The residual diagonal d is kept by subtraction (as Epperly's code), but each drawn
    candidate's entry is then replaced by the residual its acceptance was judged on (the block's
    diagonal, from its kernel row, less this round's rows). The two are equal in exact arithmetic,
    so the pivot distribution is unchanged; in floating point they differ by rounding, and a key
    whose d sat just above the noise floor while its recomputed residual was below it was drawn and
    rejected in every round, so the loop, for the whole batch, ran to its 2r + 8 cap (tiny BigGAN's
    attention, E = 4, n = 256, r = 128: half the calls took 264 rounds instead of 10).
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
    thr = NOISE * torch.finfo(dt).eps if noise_floor is None else noise_floor.unsqueeze(-1)
    R = torch.empty(B, b, n, device=dev, dtype=dt)  # buffers reused every round
    sq = torch.empty(B, b, n, device=dev, dtype=dt)
    Fnew = None if B == 1 else torch.empty(B, b, n, device=dev, dtype=dt)
    dsub = torch.empty(B, n, device=dev, dtype=dt)
    hit = torch.empty(B, n, device=dev, dtype=dt)
    slots = torch.arange(b, device=dev)
    base = (torch.arange(B, device=dev) * cap).unsqueeze(1)
    for _ in range(2 * r + 8):  # every round accepts its first candidate (exact arithmetic): ≤ r rounds
        # exhausted or full elements stop
        logp = torch.log(d) + logw
        mx = logp.amax(-1, keepdim=True)
        done |= ~torch.isfinite(mx.squeeze(-1)) | (count >= r)
        if bool(done.all()):
            break
        p = torch.where(done.unsqueeze(-1), torch.ones_like(logp),
                        torch.exp(logp - torch.where(torch.isfinite(mx), mx, 0)))
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
        Linv, acc = _block_factor(H, d.gather(1, cand), u, cand, count, done, r,
                                  thr if noise_floor is None else noise_floor)
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
        # drawn candidates: d = the residual their acceptance was judged on, less this round's rows
        fresh = H.diagonal(dim1=1, dim2=2) - dsub.gather(1, cand)
        d.sub_(dsub)
        d.scatter_(1, cand, torch.where(done.unsqueeze(-1), d.gather(1, cand), fresh))
        d.masked_fill_(d <= thr, 0.0)
        hit.zero_().scatter_add_(1, cand, acc.to(dt))
        d.masked_fill_(hit > 0, 0.0)
        count = count + n_acc
    if B == 1 and int(count) < r:  # exhausted: the remaining rows are empty
        F[:, int(count) : r].zero_()
    return pivots[:, :r], F[:, :r], d


def _block_factor(H: Tensor, d_drawn: Tensor, u: Tensor, cand: Tensor, count: Tensor, done: Tensor, r: int,
                  thr: float | Tensor) -> tuple[Tensor, Tensor]:
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
    if isinstance(thr, Tensor):  # per-row noise floor (B,)
        thr = thr.detach().to("cpu", torch.float64).numpy()
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
    floor = _noise_floor(h)
    if block == 1:
        pivots, F, _ = _rpc_plain(x, h, r, generator, floor)
    else:
        pivots, F, _ = _rpc_accelerated(Z, r, generator, block, workspace, floor)
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
    # very peaked attention (h spans more than the float range): redo those rows in the log domain
    bad = ~torch.isfinite(sol).flatten(1).all(1)  # (B,)
    if bool(bad.any()):
        rows = bad.nonzero().squeeze(1)
        sol[rows] = _log_domain_weights(x[rows], pivots[rows], values[rows], empty[rows])
    k_s = keys.gather(1, pivots.unsqueeze(-1).expand(B, r, E))
    if key_mean is not None:
        k_s = k_s - key_mean
    return k_s, sol[..., :-1], sol[..., -1]


def _noise_floor(h: Tensor) -> Tensor | None:
    """Per-row residual threshold for RPCholesky, or None (everywhere NOISE·eps).

    G(i, j) = exp(x_i·x_j - h_i - h_j) is computed with an exponent error of a few u·(h_i + h_j),
    so when h reaches the thousands a copy of a pivot keeps a residual of ~1e-4 in float32 instead
    of 0, and its weight e^{|x|²} makes RPCholesky draw the same key again and again. Rows whose
    h spans more than twice the log of the float range use NOISE·eps·max h instead: there e^{h - mid}
    overflows, so the split-exponent result is certain to be non-finite and the row certain to go to
    ``_log_domain_weights``. Other rows keep NOISE·eps, so their pivots (and outputs) do not change;
    within one call, the random draws of other rows do not depend on the threshold either."""
    lim = math.log(torch.finfo(h.dtype).max)
    hmax = h.amax(-1)
    over = 0.5 * (hmax - h.amin(-1)) > lim
    if not bool(over.any()):
        return None
    eps = torch.finfo(h.dtype).eps
    return torch.where(over, NOISE * eps * hmax.clamp_min(1.0), torch.full_like(hmax, NOISE * eps))


def _log_domain_weights(x: Tensor, pivots: Tensor, values: Tensor, empty: Tensor) -> Tensor:
    """[Ṽ, w] (B, r, D+1) for rows where the split-exponent path overflows (h spans more than the
    float range: logits in the hundreds or thousands). The official formula W_sj·e^{h_j - h_s} with
    W = G_SS⁻¹ G_S·, with two changes: each entry is formed as sign(W_sj)·exp(log|W_sj| + h_j - h_s
    - c_s), c_s its row maximum, so no factor overflows and an underflowed W_sj = 0 gives 0 (the
    official product gives ∞·0 = NaN); and G, the solve and the sums run in float64, because
    e^{h_j - h_s} (up to e^{|x|·|x_j - x_s|}) amplifies the solve's rounding error: in float32 it
    swamps the result on clustered keys. [Ṽ_s, w_s] = e^{c_s} Σ_j (...)_sj [v_j, 1]. Should some
    c_s exceed CAP (a quarter of the log of the float range), all of that row's entries are divided
    by one common factor, which cancels in Σ P Ṽ / Σ P w and in the weight-channel decoding.
    x: (B, n, E) rescaled keys; costs O(r·n·E + r³ + r²·n) per row, rows done a few at a time."""
    B, n, E = x.shape
    r = pivots.shape[1]
    dt = x.dtype
    cap = math.log(torch.finfo(dt).max) / 4
    out = values.new_empty(B, r, values.shape[-1] + 1)
    step = max(1, (GROUP_ELEMS // 8) // (r * n))
    for a in range(0, B, step):
        xs, piv, e = x[a : a + step].double(), pivots[a : a + step], empty[a : a + step]
        b = xs.shape[0]
        h = 0.5 * xs.square().sum(-1)
        G = _gaussian_rows(xs, h, piv)  # (b, r, n)
        G.masked_fill_(e.unsqueeze(-1), 0.0)
        Gss = G.gather(2, piv.unsqueeze(1).expand(b, r, r))
        Gss = Gss.masked_fill(e.unsqueeze(1), 0.0) + torch.diag_embed(e.to(Gss.dtype))  # empty pivots: identity
        W, info = torch.linalg.solve_ex(Gss, G)  # (b, r, n) Gaussian-kernel Nyström weights
        sing = info != 0
        if bool(sing.any()):  # exactly singular G_SS (not expected: pivots have a positive residual)
            W[sing] = torch.linalg.pinv(Gss[sing], hermitian=True) @ G[sing]
        del G
        logm = W.abs().log_()
        logm += h.unsqueeze(1)
        logm -= h.gather(1, piv).unsqueeze(-1)
        c = logm.amax(-1, keepdim=True)  # (b, r, 1)
        c = torch.where(torch.isfinite(c), c, torch.zeros_like(c))  # all-zero rows
        We = torch.copysign(logm.sub_(c).exp_(), W)  # |entries| ≤ 1
        del W, logm
        ve = torch.cat((values[a : a + step].double(), torch.ones_like(h).unsqueeze(-1)), -1)
        sol = torch.bmm(We, ve)
        shift = (c.amax(1, keepdim=True) - cap).clamp_min(0.0)  # 0 unless astronomically large
        sol *= torch.exp(c - shift)
        out[a : a + step] = sol.masked_fill_(e.unsqueeze(-1), 0.0)
    return out


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
