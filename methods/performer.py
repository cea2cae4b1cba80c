"""Performer / FAVOR+ (Choromanski et al., ICLR 2021): positive orthogonal random features.

Follows the reference code (google-research/performer ``fast_attention``, and its PyTorch port
performer-pytorch): blocks of Q from QR decompositions of Gaussian matrices, rows rescaled by
chi-distributed norms (norms of Gaussian rows); features ``m^-1/2 · (exp(w·x' - |x'|²/2 - c) + eps)``
with ``x' = sqrt(scale)·x`` (the reference hard-codes scale = d^-1/2). With ``eps > 0`` the stabiliser c
is, as in performer-pytorch, the max of w·x' (over the row's features for queries, over all keys and
features for keys). With ``eps = 0`` (what the KDEformer/WildCat BigGAN and T2T-ViT settings use) that
shift can underflow: for large inputs |x'|²/2 is far above max w·x', every exp(...) is 0 in float32
and the output 0/0 = NaN. Then the whole exponent is shifted by its max instead: queries by the row
max of w·q' - |q'|²/2 (a per-row constant; |q'|²/2 cancels with it), keys by the global max of
w·k' - |k'|²/2 (bidirectional), or, causal, key j's own max μ_j with query i weighing it by
exp(μ_j - max_{j'≤i} μ_j') (a per-query constant), so early prefixes cannot underflow against later
keys. Every shift is a per-query constant factor on numerator and denominator: the estimator is
unchanged in exact arithmetic (only float rounding differs from the eps > 0-style shift). (The BigGAN
reference, majid-daliri/kdeformer ``Performer.py``, applies no shift at all: exp(w·x - |x|²/2) / sqrt(m).
It also draws plain iid Gaussian w, independently per batch element and head, where this method
draws orthogonal chi-scaled blocks shared by batch and heads.)
Causal attention uses prefix sums computed chunk by chunk: memory O(n·m) rather than
the O(n·m·d) of a naive cumulative sum. Bidirectional attention is evaluated in cache-sized row
chunks (``blocked_linear_attention``; same arithmetic, sums over keys taken chunk by chunk).

Known behaviour, kept as in the reference code: when key norms vary a lot (real LM keys, e.g.
SmolLM2 layer 10), exp(w·k' - |k'|²/2 - global max) falls far below ``eps`` for most keys, so the
features collapse to the constant ``eps`` and the output to the plain mean of V whatever
``nb_features`` is. ``eps=0`` removes that floor.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from attnbench.methods import register
from attnbench.methods.base import SCORE_TILE_ELEMS, AttentionMethod, check_positive_int

FEATURE_TILE_ELEMS = SCORE_TILE_ELEMS // 2  # feature entries per row chunk (bidirectional path)


def draw_orthogonal_features(m: int, d: int, generator: torch.Generator, device, dtype=torch.float32) -> Tensor:
    """(m, d) projection: stacked orthogonal blocks, each row scaled by a chi(d) norm."""
    n_blocks = math.ceil(m / d)
    g = torch.randn(n_blocks, d, d, generator=generator, device=device, dtype=torch.float32)
    qs, r = torch.linalg.qr(g)  # columns orthonormal
    qs = qs * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1)).unsqueeze(-2)  # sign fix: Haar-distributed Q
    blocks = qs.transpose(-1, -2).reshape(n_blocks * d, d)[:m]
    norms = torch.randn(m, d, generator=generator, device=device, dtype=torch.float32).norm(dim=1)
    return (norms[:, None] * blocks).to(dtype)


def softmax_kernel_features(
    x: Tensor, proj: Tensor, scale: float, *, is_query: bool, eps: float = 1e-4, stabilize: bool = True
) -> Tensor:
    """Positive random features φ(x) with E[φ(q)·φ(k)] ∝ exp(scale·q·k).

    x: (B, H, N, D); proj: (m, D). Without stabiliser and eps the estimate is unbiased:
    E[φ(q)·φ(k)] = exp(scale·q·k) exactly.
    """
    m = proj.shape[0]
    xs = x * math.sqrt(scale)
    dash = xs @ proj.T  # (B, H, N, m)
    diag = 0.5 * (xs * xs).sum(-1, keepdim=True)
    if stabilize and eps == 0:
        # Shift the whole exponent by its max (the row's for queries, the global one for keys): the
        # largest feature is 1, so nothing underflows to an all-zero row. Both shifts cancel in the
        # normalised output; for queries |x'|²/2 is itself a per-row constant and cancels with the shift.
        if is_query:
            return m ** -0.5 * torch.exp(dash - dash.amax(dim=-1, keepdim=True))
        z = dash - diag
        return m ** -0.5 * torch.exp(z - z.amax(dim=(-1, -2), keepdim=True))
    if stabilize:  # eps > 0: the reference's shifts (max of w·x' only), which eps does not cancel
        if is_query:
            dash = dash - dash.amax(dim=-1, keepdim=True)
        else:
            dash = dash - dash.amax(dim=(-1, -2), keepdim=True)
    return m ** -0.5 * (torch.exp(dash - diag) + eps)


def key_exponents(k: Tensor, proj: Tensor, scale: float) -> Tensor:
    """w·k' - |k'|²/2 for every key and feature: (B, H, N, m), the log of the unstabilised features."""
    ks = k * math.sqrt(scale)
    return ks @ proj.T - 0.5 * (ks * ks).sum(-1, keepdim=True)


def linear_attention(qf: Tensor, kf: Tensor, v: Tensor) -> Tensor:
    """Bidirectional: (φ(Q) (φ(K)ᵀ V)) / (φ(Q) φ(K)ᵀ 1)."""
    context = kf.transpose(-1, -2) @ v  # (B, H, m, Dv)
    den = qf @ kf.sum(dim=-2).unsqueeze(-1)  # (B, H, N, 1)
    return (qf @ context) / den


def blocked_linear_attention(q: Tensor, k: Tensor, v: Tensor, proj: Tensor, scale: float, eps: float,
                             rows: int) -> Tensor:
    """``linear_attention`` of the stabilised features of q and k, ``rows`` tokens at a time.

    Same arithmetic as ``softmax_kernel_features`` + ``linear_attention`` (the key stabiliser is
    still the global max: of the key projections w·k' for eps > 0, of w·k' - |k'|²/2 for eps = 0).
    The key projections (N × m in all, in chunks) are kept until that max is known, then
    exponentiated chunk by chunk into φ(K)ᵀV and φ(K)ᵀ1, so no full-size exp/feature temporaries are
    made; query features are made and used chunk by chunk. Only the order of the sums over keys
    changes (float rounding).
    """
    m = proj.shape[0]
    root = math.sqrt(scale)
    pt = proj.T
    n_k = k.shape[2]
    if eps == 0:  # stabiliser: global max of the whole exponent w·k' - |k'|²/2 (see softmax_kernel_features)
        dashes = [key_exponents(k[:, :, i : i + rows], proj, scale) for i in range(0, n_k, rows)]
    else:
        dashes = [(k[:, :, i : i + rows] * root) @ pt for i in range(0, n_k, rows)]
    kmax = torch.stack([d_.amax(dim=(-1, -2)) for d_ in dashes]).amax(0)[..., None, None]  # (B, H, 1, 1)
    context = ksum = None
    for i, dash in zip(range(0, n_k, rows), dashes):
        if eps == 0:
            kf = m ** -0.5 * torch.exp(dash - kmax)
        else:
            ks = k[:, :, i : i + rows] * root
            kf = m ** -0.5 * (torch.exp(dash - kmax - 0.5 * (ks * ks).sum(-1, keepdim=True)) + eps)
        c, s_ = kf.transpose(-1, -2) @ v[:, :, i : i + rows], kf.sum(dim=-2)
        context, ksum = (c, s_) if context is None else (context + c, ksum + s_)
    ksum = ksum.unsqueeze(-1)
    outs = []
    for i in range(0, q.shape[2], rows):
        qf = softmax_kernel_features(q[:, :, i : i + rows], proj, scale, is_query=True, eps=eps)
        outs.append((qf @ context) / (qf @ ksum))
    return torch.cat(outs, dim=2)


def causal_linear_attention(qf: Tensor, kf: Tensor, v: Tensor, chunk: int = 128) -> Tensor:
    """Causal prefix-sum linear attention, vectorised over chunks of ``chunk`` tokens.

    Within a chunk the masked (chunk × chunk) product is exact; across chunks the exclusive
    prefix sums of φ(K)ᵀ[V, 1] carry the past. Memory O(n·m + n·chunk), never n×n.
    """
    b, h, n, m = qf.shape
    dv = v.shape[-1]
    pad = (-n) % chunk
    if pad:
        qf = torch.nn.functional.pad(qf, (0, 0, 0, pad))
        kf = torch.nn.functional.pad(kf, (0, 0, 0, pad))
        v = torch.nn.functional.pad(v, (0, 0, 0, pad))
    nc = (n + pad) // chunk
    v1 = torch.cat([v, torch.ones_like(v[..., :1])], dim=-1)  # carry the denominator as a channel
    qc = qf.reshape(b, h, nc, chunk, m)
    kc = kf.reshape(b, h, nc, chunk, m)
    vc = v1.reshape(b, h, nc, chunk, dv + 1)
    state = kc.transpose(-1, -2) @ vc  # (b, h, nc, m, dv+1)
    state = state.cumsum(dim=2) - state  # exclusive prefix sum over chunks
    local = (qc @ kc.transpose(-1, -2)).tril()  # (b, h, nc, chunk, chunk)
    out = qc @ state + local @ vc
    out = out.reshape(b, h, nc * chunk, dv + 1)[:, :, :n]
    return out[..., :dv] / out[..., dv:]


def causal_linear_attention_stable(qf: Tensor, kz: Tensor, v: Tensor, chunk: int = 128) -> Tensor:
    """Causal linear attention from key exponents kz = w·k' - |k'|²/2 (no eps), with running-max shifts.

    A single global key shift lets the few keys of an early prefix underflow against a large later
    key (0/0). Here key j's features are exp(kz_j - μ_j) (μ_j its max over features, so max entry 1)
    and query i weighs key j ≤ i by exp(μ_j - R_i), R_i = max_{j ≤ i} μ_j: a per-query constant
    exp(-R_i) times exp(kz_j), which cancels in the ratio, and the key with μ_j = R_i enters at full
    size. Within a chunk the (chunk × chunk) weights are exact; across chunks the prefix state is
    carried in the scale of the running max at the previous chunk's end (a scan over chunks).
    """
    b, h, n, m = qf.shape
    dv = v.shape[-1]
    mu = kz.amax(-1)  # (b, h, n)
    kf = torch.exp(kz - mu.unsqueeze(-1))
    pad = (-n) % chunk
    if pad:
        qf = torch.nn.functional.pad(qf, (0, 0, 0, pad))
        kf = torch.nn.functional.pad(kf, (0, 0, 0, pad))
        v = torch.nn.functional.pad(v, (0, 0, 0, pad))
        mu = torch.nn.functional.pad(mu, (0, pad), value=float("-inf"))
    nc = (n + pad) // chunk
    run = mu.cummax(dim=-1).values.view(b, h, nc, chunk)  # R_i
    mu = mu.view(b, h, nc, chunk)
    v1 = torch.cat([v, torch.ones_like(v[..., :1])], dim=-1)  # carry the denominator as a channel
    qc = qf.reshape(b, h, nc, chunk, m)
    kc = kf.reshape(b, h, nc, chunk, m)
    vc = v1.reshape(b, h, nc, chunk, dv + 1)
    future = torch.ones(chunk, chunk, dtype=torch.bool, device=qf.device).triu(1)
    rel = (mu.unsqueeze(-2) - run.unsqueeze(-1)).masked_fill(future, float("-inf"))  # μ_j - R_i, j ≤ i
    local = (qc @ kc.transpose(-1, -2)) * torch.exp(rel)  # (b, h, nc, chunk, chunk)
    end = run[..., -1]  # running max at each chunk's end, (b, h, nc)
    own = (kc * torch.exp(mu - end.unsqueeze(-1)).unsqueeze(-1)).transpose(-1, -2) @ vc  # (b, h, nc, m, dv+1)
    states = [torch.zeros_like(own[:, :, 0])]
    for c in range(1, nc):  # state before chunk c, in the scale exp(-end[c-1])
        if c == 1:
            states.append(own[:, :, 0])
        else:
            rescale = torch.exp(end[:, :, c - 2] - end[:, :, c - 1])[..., None, None]  # <= 1
            states.append(states[-1] * rescale + own[:, :, c - 1])
    state = torch.stack(states, dim=2)
    start = torch.cat([torch.full_like(end[:, :, :1], float("-inf")), end[:, :, :-1]], dim=2)  # scale of each state
    carry = torch.exp(start.unsqueeze(-1) - run).unsqueeze(-1)  # exp(R_{chunk start} - R_i) <= 1
    out = (qc @ state) * carry + local @ vc
    out = out.reshape(b, h, nc * chunk, dv + 1)[:, :, :n]
    return out[..., :dv] / out[..., dv:]


@register("performer")
class Performer(AttentionMethod):
    """FAVOR+ with ``nb_features`` positive orthogonal random features (default int(d·ln d)).

    ``redraw=True`` draws fresh features from the run's generator on every call (as the
    papers' BigGAN setting does); ``redraw=False`` draws them once per (device, d) and reuses them.
    ``eps`` is added to every feature (0: none; see the module docstring for the eps = 0 shifts).
    """

    version = 1

    def __init__(self, nb_features: int | None = None, redraw: bool = True, eps: float = 1e-4, chunk_size: int = 128):
        super().__init__()
        if nb_features is not None:
            check_positive_int("nb_features", nb_features)
        check_positive_int("chunk_size", chunk_size)
        if not eps >= 0:
            raise ValueError(f"method.eps must be >= 0, got {eps}.")
        self.nb_features = nb_features
        self.redraw = bool(redraw)
        self.eps = float(eps)
        self.chunk_size = chunk_size
        self._fixed: dict[tuple[str, int], Tensor] = {}

    def features(self, d: int, device: torch.device, dtype: torch.dtype) -> Tensor:
        m = self.nb_features or max(1, int(d * math.log(d)))
        if self.redraw:
            return draw_orthogonal_features(m, d, self.generator(device), device, dtype)
        key = (str(device), d)
        if key not in self._fixed:
            self._fixed[key] = draw_orthogonal_features(m, d, self.generator(device), device, torch.float32)
        return self._fixed[key].to(dtype)

    def reseed(self, seed: int) -> None:
        super().reseed(seed)
        self._fixed.clear()

    def causal_leak(self) -> str | None:
        if self.eps == 0:
            return None  # running-max shifts: prefix-consistent
        return ("with eps > 0 the key features are shifted by the max over all keys (as performer-pytorch), "
                "which eps does not cancel, so later keys rescale earlier ones against eps; eps=0 does not leak.")

    def _attend(self, q: Tensor, k: Tensor, v: Tensor, *, causal: bool, scale: float) -> Tensor:
        proj = self.features(q.shape[-1], q.device, q.dtype)
        self._stats = {"nb_features": float(proj.shape[0])}
        if not causal:  # cache-sized row chunks: no (N × m) feature matrices
            rows = max(1, FEATURE_TILE_ELEMS // (q.shape[0] * q.shape[1] * proj.shape[0]))
            return blocked_linear_attention(q, k, v, proj, scale, self.eps, rows)
        qf = softmax_kernel_features(q, proj, scale, is_query=True, eps=self.eps)
        if self.eps == 0:
            return causal_linear_attention_stable(qf, key_exponents(k, proj, scale), v, self.chunk_size)
        kf = softmax_kernel_features(k, proj, scale, is_query=False, eps=self.eps)
        return causal_linear_attention(qf, kf, v, self.chunk_size)
