"""Nyströmformer (Xiong et al., AAAI 2021): landmark Nyström approximation of softmax attention.

Follows mlpen/Nystromformer (``code/attention_nystrom.py`` and the T2T-ViT port
``ImageNet/T2T-ViT/models/token_nystromformer.py``):

* landmarks are segment means of the queries and of the keys (``num_landmarks`` segments);
  when n is not a multiple of ``num_landmarks`` the segments are uneven exactly as in the T2T
  port: the first ``(s+1)·L − n`` segments hold s = n // L tokens, the rest s + 1;
* attention ≈ softmax(Q K̃ᵀ) · pinv(softmax(Q̃ K̃ᵀ)) · softmax(Q̃ Kᵀ) V (each softmax row-wise,
  scores scaled by ``scale``), evaluated right to left, never n×n;
* the pseudo-inverse is the reference's iterative Moore–Penrose scheme,
  Z ← ¼ Z (13 I − A Z (15 I − A Z (7 I − A Z))), ``pinv_iters`` = 6 iterations, started from
  Z₀ = Aᵀ / max_j Σ_i A_ij per matrix (the T2T port's "exact" init, 1/‖A‖₁; the older
  ``code/`` version used one max over the whole batch).

Not included: the optional depthwise convolution of V (``conv_kernel_size``), a learned skip
path that is not part of the attention approximation. The reference ``code/`` version returns
exact attention when num_landmarks equals the sequence length; this one always runs the Nyström
formula, so with L = n it is exact only up to the accuracy of the 6-step pseudo-inverse
(small for well-conditioned softmax matrices, large for nearly rank-deficient ones;
``pinv_iters`` lets tests show that it converges). Queries and keys may differ in number
(landmarks are taken separately). Bidirectional only: the landmark means mix future tokens.

Evaluation order (same arithmetic as the reference up to float rounding; the reference builds
the two n×L score matrices whole): softmax(Q̃ Kᵀ) V is accumulated over key chunks with a
running max and sum (flash-style online softmax), and softmax(Q K̃ᵀ) times the small
(L × d_v) product pinv(·) · softmax(Q̃ Kᵀ) V is evaluated per query chunk into one
preallocated output. Chunks hold about ``SCORE_TILE_ELEMS`` scores, so extra memory is
O(n·d + L² + SCORE_TILE_ELEMS) instead of O(n·L) and the score blocks stay cache-sized
(without gradients; autograd still keeps every block for the backward pass).
"""
from __future__ import annotations

import torch
from torch import Tensor

from attnbench.methods import register
from attnbench.methods.base import SCORE_TILE_ELEMS, AttentionMethod, check_positive_int, resolve_budget



def segment_means(x: Tensor, n_segments: int) -> Tensor:
    """(B, H, N, D) -> (B, H, L, D) means of L contiguous segments; the first (s+1)·L − N have s tokens, the rest s + 1."""
    b, h, n, d = x.shape
    s = n // n_segments
    if n % n_segments == 0:
        return x.reshape(b, h, n_segments, s, d).mean(dim=-2)
    n_short = (s + 1) * n_segments - n
    short = x[:, :, : n_short * s].reshape(b, h, n_short, s, d).mean(dim=-2)
    long = x[:, :, n_short * s :].reshape(b, h, n_segments - n_short, s + 1, d).mean(dim=-2)
    return torch.cat([short, long], dim=2)


def iterative_pinv(a: Tensor, n_iter: int) -> Tensor:
    """Moore–Penrose pseudo-inverse of each (L, L) matrix in ``a`` by the reference's cubic iteration."""
    eye = torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)
    z = a.transpose(-1, -2) / a.sum(dim=-2).amax(dim=-1)[..., None, None]
    for _ in range(n_iter):
        az = a @ z
        z = 0.25 * z @ (13 * eye - az @ (15 * eye - az @ (7 * eye - az)))
    return z


@register("nystromformer")
class Nystromformer(AttentionMethod):
    """Nyström attention with ``num_landmarks`` segment-mean landmarks and a ``pinv_iters``-step pseudo-inverse."""

    supports_causal = False
    supports_bidirectional = True
    version = 1
    supports_cross = True

    def __init__(self, num_landmarks: int = 64, pinv_iters: int = 6):
        super().__init__()
        resolve_budget("num_landmarks", num_landmarks, 1 << 30)  # int >= 1 or a fraction of n
        check_positive_int("pinv_iters", pinv_iters)
        self.num_landmarks = num_landmarks
        self.pinv_iters = pinv_iters

    def _attend(self, q: Tensor, k: Tensor, v: Tensor, *, causal: bool, scale: float) -> Tensor:
        nq, nk = q.shape[2], k.shape[2]
        n_land = resolve_budget("num_landmarks", self.num_landmarks, min(nq, nk))
        q_land = segment_means(q, n_land)
        k_land = segment_means(k, n_land)
        kernel_2 = torch.softmax((q_land @ k_land.transpose(-1, -2)) * scale, dim=-1)  # (B, H, L, L)
        step = max(1, SCORE_TILE_ELEMS // (q.shape[0] * q.shape[1] * n_land))  # tokens per chunk
        # softmax(Q̃ Kᵀ) V, accumulated over key chunks with a running max and sum: (B, H, L, Dv)
        q_land_s, k_t = q_land * scale, k.transpose(-1, -2)
        run_max = q.new_full((*q_land.shape[:3], 1), float("-inf"))
        run_sum = q.new_zeros(*q_land.shape[:3], 1)
        acc = q.new_zeros(*q_land.shape[:3], v.shape[-1])
        for c0 in range(0, nk, step):
            scores = q_land_s @ k_t[..., c0 : c0 + step]  # (B, H, L, c)
            new_max = torch.maximum(run_max, scores.amax(dim=-1, keepdim=True))
            p = (scores - new_max).exp_()
            alpha = torch.exp(run_max - new_max)
            run_sum = run_sum * alpha + p.sum(dim=-1, keepdim=True)
            acc = acc * alpha + p @ v[:, :, c0 : c0 + step]
            run_max = new_max
            del scores, p  # free this block before the next one is built
        kv = iterative_pinv(kernel_2, self.pinv_iters) @ (acc / run_sum)  # (B, H, L, Dv)
        # softmax(Q K̃ᵀ) · kv, one query chunk at a time into a preallocated output: (B, H, Nq, Dv)
        out = q.new_empty(*q.shape[:3], v.shape[-1])
        k_land_t = k_land.transpose(-1, -2) * scale
        for c0 in range(0, nq, step):
            kernel_1 = torch.softmax(q[:, :, c0 : c0 + step] @ k_land_t, dim=-1)  # (B, H, c, L)
            out[:, :, c0 : c0 + step] = kernel_1 @ kv
            del kernel_1
        self._stats = {"num_landmarks": float(n_land)}
        return out
