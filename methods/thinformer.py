"""Thinformer: attention over a kernel-thinned coreset of keys and values.

Low-Rank Thinning (Carrell, Gong, Shetty, Dwivedi, Mackey, ICML 2025); follows the official
``microsoft/thinformer`` package (``thinformer/thinformer.py``: ``khcompress``, ``halve``,
``halve_K``, ``ThinformerAttention``), re-written here in PyTorch over (batch, heads, buckets).

Algorithm (as in the official code):

1. Standard thinning: ``n`` = the largest power of four <= Nk; keep keys/values at positions
   ``0, s, 2s, …`` with stride ``s = Nk // n`` (deterministic).
2. If ``n < 4**(g+1)`` the ``n`` kept pairs are the coreset. Otherwise KH-Compress(g), run
   bottom-up as Compress++ does: split the ``n`` pairs into consecutive buckets of ``4**(g+1)``,
   halve every bucket by kernel halving, double the bucket size, repeat; ``log4(n) - g`` rounds
   leave ``2**g * sqrt(n)`` pairs.
3. Kernel halving of a bucket uses the weighted attention kernel on (key, value) pairs
   ``k((a, v), (b, w)) = exp(<a, b>·scale - shift) · (<v, w> + b²)`` with ``shift`` = the largest
   squared scaled key norm and ``b`` = the largest |value entry| (per batch and head). Pairs
   (2i, 2i+1) are split by a self-balancing signed walk with truncated-uniform thresholds
   (failure parameter ``delta`` spread over rounds and buckets as in ``khcompress``); with
   probability 1/2 the complement is kept (``symmetrize``).
4. Output: exact softmax attention of all queries over the coreset (SDPA), unweighted.

Departures: the symmetrising coin is drawn per (batch, head, bucket) (the official code draws one
coin for the whole call although its docstring says per batch); no ``torch.compile``/CUDA graphs.
The signed walk inside kernel halving is sequential by nature: it is a Python loop over the pair
positions of a bucket (at most ``2**g·sqrt(n)`` steps per round, ~``2**(g+1)·sqrt(n)`` in all),
vectorised over batch, heads and buckets (the kernel, which only picks indices, is computed
without autograd and in place). The final attention of all Nq queries over ~``2**g·sqrt(n)``
coreset keys costs O(Nq·2**g·sqrt(n)·d): at fixed ``g`` latency grows like n^1.5 by design.
Memory per round is ``n · 4**(g+1)`` kernel entries per
(batch, head), never Nk × Nk unless ``4**(g+1) >= n``. Bidirectional only (the official code has
no causal variant); Nq != Nk is fine since only keys are thinned.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from attnbench.methods import register
from attnbench.methods.base import AttentionMethod


def _largest_power_of_four_log(n: int) -> int:
    """log4 of the largest power of four <= n (n >= 1)."""
    return (n.bit_length() - 1) // 2


def _halve(key: Tensor, value: Tensor, shift: Tensor, b_sqd: Tensor, delta_k: float,
           gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """Kernel halving of every bucket: key (G, A, S, E), value (G, A, S, Dv) -> half of each bucket.

    ``shift``/``b_sqd``: (G, 1, 1, 1). ``delta_k``: failure parameter of this halving
    (thresholds are uniform on ±(0.5 + log(2S/delta_k))·|d_i|·max_{j<=i}|d_j|).
    """
    G, A, S, E = key.shape
    m = S // 2
    # weighted attention kernel on the bucket (it only picks indices: no autograd, in place)
    with torch.no_grad():
        kern = (key @ key.transpose(-1, -2)).sub_(shift).exp_().mul_((value @ value.transpose(-1, -2)).add_(b_sqd))
        # kernel between pair differences x_{2i} - x_{2i+1}
        kd = kern[..., 0::2] - kern[..., 1::2]
        del kern
        kd = kd[..., 0::2, :] - kd[..., 1::2, :]  # (G, A, m, m), contiguous
    diag_rt = kd.diagonal(dim1=-2, dim2=-1).clamp_min(0).sqrt()
    log_mult = 0.5 + math.log(2 * S / delta_k)
    u = torch.rand(G, A, m, device=key.device, dtype=key.dtype, generator=gen)
    thresh = (2 * u - 1) * log_mult * diag_rt * torch.cummax(diag_rt, dim=-1).values
    run = kd[..., 0, :].clone()  # inner products of the signed running sum with every pair difference
    plus, minus = run.new_ones(()), -run.new_ones(())
    steps = [torch.zeros(G, A, device=key.device, dtype=torch.bool)]
    for i in range(1, m):  # three tensor ops per step: the loop is launch-bound
        s_i = thresh[..., i] <= run[..., i]
        steps.append(s_i)
        run.addcmul_(torch.where(s_i, minus, plus).unsqueeze(-1), kd[..., i, :])
    swap = torch.stack(steps, dim=-1)
    coin = torch.rand(G, A, 1, device=key.device, generator=gen) < 0.5
    swap = swap ^ coin
    idx = swap.long() + torch.arange(0, S, 2, device=key.device)
    key = key.gather(2, idx.unsqueeze(-1).expand(G, A, m, E))
    value = value.gather(2, idx.unsqueeze(-1).expand(G, A, m, value.shape[-1]))
    return key, value


def kh_compress(key: Tensor, value: Tensor, g: int, delta: float, gen: torch.Generator
                ) -> tuple[Tensor, Tensor, int]:
    """KH-Compress(g) of key (G, S, E) (already multiplied by sqrt(scale)) and value (G, S, Dv).

    Returns the coreset keys, values and ``n`` (the standard-thinned length).
    """
    G, S, E = key.shape
    log4_n = _largest_power_of_four_log(S)
    n = 4 ** log4_n
    stride = S // n
    key = key[:, 0 : n * stride : stride]
    value = value[:, 0 : n * stride : stride]
    bucket = 4 ** (g + 1)
    if n < bucket:
        return key, value, n
    rounds = log4_n - g
    halve_prob = delta / bucket / rounds / n
    shift = key.square().sum(-1).amax(-1).view(G, 1, 1, 1)
    b_sqd = value.abs().amax(dim=(-1, -2)).square().view(G, 1, 1, 1)
    for _ in range(rounds):
        k4 = key.reshape(G, -1, bucket, E)
        v4 = value.reshape(G, -1, bucket, value.shape[-1])
        k4, v4 = _halve(k4, v4, shift, b_sqd, halve_prob * bucket * bucket, gen)
        key = k4.reshape(G, -1, E)
        value = v4.reshape(G, -1, value.shape[-1])
        bucket *= 2
    return key, value, n


@register("thinformer")
class Thinformer(AttentionMethod):
    """Attention over a KH-Compress(g) coreset of ~2**g·sqrt(n) keys (n = largest power of 4 <= Nk).

    ``g`` is the Compress oversampling parameter (paper: T2T-ViT g=2 layer 1, g=4 layer 2;
    BigGAN g=2); ``delta`` the kernel-halving failure parameter (official default 0.5).
    """

    supports_causal = False
    supports_bidirectional = True
    version = 1
    supports_cross = True

    @classmethod
    def exact_knobs(cls, n: int) -> dict | None:
        """n a power of four: g = log4(n) keeps all n pairs (stride 1, no halving round)."""
        a = round(math.log(n, 4)) if n > 0 else 0
        return {"g": a} if 4 ** a == n else None

    def __init__(self, g: int = 2, delta: float = 0.5) -> None:
        super().__init__()
        if isinstance(g, bool) or not isinstance(g, int) or g < 0:
            raise ValueError(f"method.g must be a non-negative integer, got {g!r}.")
        if isinstance(delta, bool) or not isinstance(delta, (int, float)) or not 0 < float(delta) <= 1:
            raise ValueError(f"method.delta must be a number in (0, 1], got {delta!r}.")
        self.g = g
        self.delta = float(delta)

    def _attend(self, q: Tensor, k: Tensor, v: Tensor, *, causal: bool, scale: float) -> Tensor:
        B, H, Nk, E = k.shape
        root = math.sqrt(scale)
        kc, vc, n = kh_compress((k * root).reshape(B * H, Nk, E), v.reshape(B * H, Nk, v.shape[-1]),
                                self.g, self.delta, self.generator(q.device))
        m = kc.shape[1]
        kc = kc.reshape(B, H, m, E)
        vc = vc.reshape(B, H, m, v.shape[-1])
        self._stats = {"coreset_size": float(m), "kept_fraction": m / Nk, "standard_thin_n": float(n)}
        # keys already carry sqrt(scale): multiply by it once more and attend with scale 1
        return F.scaled_dot_product_attention(q, kc * root, vc, scale=1.0)
