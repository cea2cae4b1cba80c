"""nystrom-attention's ``NystromAttention`` (lucidrains, tested with 0.0.14) as an attention method.

The package has no attention function apart from its layer: ``NystromAttention.forward`` projects
x to q, k, v, runs the Nyström attention math, adds a depthwise convolution of v (``residual``)
and projects back. The wrapper runs that forward with the projections bypassed, so only the
attention math is the package's and is compared: ``to_qkv`` is replaced by a module that returns
the call's q, k, v (in the package's (B, N, H·D) layout, front-padded as the package pads x),
``to_out`` by the identity, ``residual=False``, and the layer's ``scale`` set to the call's.
What then runs is the package's code: segment-sum landmarks divided by the segment length,
softmax(Q K̃ᵀ) · pinv(softmax(Q̃ K̃ᵀ)) · (softmax(Q̃ Kᵀ) V), its ``moore_penrose_iter_pinv``.

Differences from the suite's ``nystromformer``, all the package's:

* When N is not a multiple of ``num_landmarks`` the package pads q, k, v with zero rows at the
  front (they stay in the landmark means and the softmaxes as keys with score 0 and value 0);
  the suite uses uneven segments as the official T2T port.
* The pseudo-inverse starts from Z₀ = Aᵀ / (max row sum · max column sum) with both maxima over
  the whole batch and every head, so one head's output depends on the other heads' inputs (the
  suite's start is per matrix; the two agree for one head, and after enough iterations).
* It builds the N × L score matrices whole (the suite evaluates them in cache-sized chunks), and
  the layout change costs one copy of q, k, v and of the output.

``num_landmarks`` above N is clipped to N (as the suite's; the row says budget_clipped).
Bidirectional self-attention only (Nq = Nk).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from attnbench.methods.base import check_positive_int, resolve_budget
from attnbench.methods.peers import PeerMethod


class _Split(tuple):
    """(q, k, v) as the result of the package's ``to_qkv(x).chunk(3, dim=-1)`` (Dv may differ from D)."""

    def chunk(self, chunks: int, dim: int = -1) -> tuple:
        return tuple(self)


class _GivenQKV(torch.nn.Module):
    """Stands in for ``to_qkv``: returns the q, k, v set for this call, zero-padded at the front to
    the length of the (padded) x the package passes."""

    def __init__(self) -> None:
        super().__init__()
        self.qkv: tuple[Tensor, Tensor, Tensor] | None = None

    def forward(self, x: Tensor) -> _Split:
        pad = x.shape[1] - self.qkv[0].shape[1]
        return _Split(F.pad(t, (0, 0, pad, 0)) if pad else t for t in self.qkv)


class NystromAttentionPeer(PeerMethod):
    """nystrom-attention ``NystromAttention`` core with ``num_landmarks`` landmarks and ``pinv_iters``
    pseudo-inverse iterations (the package's defaults: 256 and 6)."""

    package, module = "nystrom-attention", "nystrom_attention.nystrom_attention"
    version = 1
    supports_causal = False
    supports_cross = False

    def __init__(self, num_landmarks: int = 256, pinv_iters: int = 6):
        super().__init__()
        resolve_budget("num_landmarks", num_landmarks, 1 << 30)  # int >= 1 or a fraction of n
        check_positive_int("pinv_iters", pinv_iters)
        self.num_landmarks = num_landmarks
        self.pinv_iters = pinv_iters

    def _attend(self, q: Tensor, k: Tensor, v: Tensor, *, causal: bool, scale: float) -> Tensor:
        peer = self.peer()
        b, h, n, d = q.shape
        dv = v.shape[-1]
        m = resolve_budget("num_landmarks", self.num_landmarks, n)
        with self.global_rng(q.device):  # building the layer draws its (bypassed) weights
            layer = peer.NystromAttention(dim=1, dim_head=d, heads=h, num_landmarks=m,
                                          pinv_iterations=self.pinv_iters, residual=False)
        given = _GivenQKV()
        layer.to_qkv, layer.to_out, layer.scale = given, torch.nn.Identity(), scale
        given.qkv = tuple(t.transpose(1, 2).reshape(b, n, -1) for t in (q, k, v))
        out = layer(q.new_empty(b, n, 1))  # x: only its length is read (and padded)
        self._stats = {"num_landmarks": float(m)}
        return out.reshape(b, n, h, dv).transpose(1, 2)
