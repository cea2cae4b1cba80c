"""Performer / FAVOR+ (Choromanski et al., ICLR 2021): positive orthogonal random features.

Follows the reference code (google-research/performer ``fast_attention``, and its PyTorch port
performer-pytorch): blocks of Q from QR decompositions of Gaussian matrices, rows rescaled by
chi-distributed norms (norms of Gaussian rows); features ``m^-1/2 · (exp(w·x' - |x'|²/2 - c) + eps)``
with ``x' = sqrt(scale)·x`` (the reference hard-codes scale = d^-1/2), the stabiliser c being the
row max for queries and the global max for keys (both cancel in the normalised output).
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

from . import register
from .base import AttentionMethod, check_positive_int

_BLOCK_ELEMS = 1 << 20  # feature entries per row chunk (bidirectional path)


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
    if stabilize:
        if is_query:
            dash = dash - dash.amax(dim=-1, keepdim=True)
        else:
            dash = dash - dash.amax(dim=(-1, -2), keepdim=True)
    return m ** -0.5 * (torch.exp(dash - diag) + eps)


def linear_attention(qf: Tensor, kf: Tensor, v: Tensor) -> Tensor:
    """Bidirectional: (φ(Q) (φ(K)ᵀ V)) / (φ(Q) φ(K)ᵀ 1)."""
    context = kf.transpose(-1, -2) @ v  # (B, H, m, Dv)
    den = qf @ kf.sum(dim=-2).unsqueeze(-1)  # (B, H, N, 1)
    return (qf @ context) / den


def blocked_linear_attention(q: Tensor, k: Tensor, v: Tensor, proj: Tensor, scale: float, eps: float,
                             rows: int) -> Tensor:
    """``linear_attention`` of the stabilised features of q and k, ``rows`` tokens at a time.

    Same arithmetic as ``softmax_kernel_features`` + ``linear_attention`` (the key stabiliser is
    still the global max of the key projections). The key projections (N × m in all, in chunks)
    are kept until that max is known, then exponentiated chunk by chunk into φ(K)ᵀV and φ(K)ᵀ1,
    so no full-size exp/feature temporaries are made; query features are made and used chunk by
    chunk. Only the order of the sums over keys changes (float rounding).
    """
    m = proj.shape[0]
    root = math.sqrt(scale)
    pt = proj.T
    n_k = k.shape[2]
    dashes = [(k[:, :, i : i + rows] * root) @ pt for i in range(0, n_k, rows)]
    kmax = torch.stack([d_.amax(dim=(-1, -2)) for d_ in dashes]).amax(0)[..., None, None]  # (B, H, 1, 1)
    context = ksum = None
    for i, dash in zip(range(0, n_k, rows), dashes):
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


@register("performer")
class Performer(AttentionMethod):
    """FAVOR+ with ``nb_features`` positive orthogonal random features (default int(d·ln d)).

    ``redraw=True`` draws fresh features from the run's generator on every call (as the
    papers' BigGAN setting does); ``redraw=False`` draws them once per (device, d) and reuses them.
    """

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

    def _attend(self, q: Tensor, k: Tensor, v: Tensor, *, causal: bool, scale: float) -> Tensor:
        proj = self.features(q.shape[-1], q.device, q.dtype)
        self._stats = {"nb_features": float(proj.shape[0])}
        if not causal:  # cache-sized row chunks: no (N × m) feature matrices
            rows = max(1, _BLOCK_ELEMS // (q.shape[0] * q.shape[1] * proj.shape[0]))
            return blocked_linear_attention(q, k, v, proj, scale, self.eps, rows)
        qf = softmax_kernel_features(q, proj, scale, is_query=True, eps=self.eps)
        kf = softmax_kernel_features(k, proj, scale, is_query=False, eps=self.eps)
        return causal_linear_attention(qf, kf, v, self.chunk_size)
