"""performer-pytorch's ``FastAttention`` (lucidrains, tested with 1.1.4) as an attention method.

The package's attention core, called as the package calls it inside its ``SelfAttention``:
``FastAttention(dim_heads=D, nb_features=m)`` on (B, H, N, D) q, k, v. Its defaults, which the
suite's ``performer`` matches with ``eps: 1e-4`` (its default) and ``redraw: false``:

* softmax kernel with orthogonal random features (``ortho_scaling=0``: QR blocks, rows scaled by
  chi-distributed norms, as ``methods.performer.draw_orthogonal_features``), m = int(D ln D) when
  ``nb_features`` is null;
* ``eps = 1e-4`` added to every feature, query features shifted by their row max, key features
  by the max over all keys and features (both as the suite's ``performer`` with eps > 0);
* the projection is drawn once, when the module is built, and only redrawn by its
  ``ProjectionUpdater`` in training; ``redraw: true`` here redraws it before every call (the
  package's ``redraw_projection_matrix``), as the suite's ``performer`` with ``redraw: true``.

The kernel hard-codes the scale D^-1/2 (``data_normalizer = D^-1/4`` on q and k); another
``scale`` is passed by multiplying q and k by (scale·D^1/2)^1/2 first. The projection is drawn from
torch's global generator, forked and seeded from this method's generator (``PeerMethod.global_rng``).
Bidirectional only: the package's causal path needs the CUDA kernel of fast-transformers or falls
back to a version that holds N·m·Dv prefix sums (and prints a notice at construction).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from attnbench.methods.base import check_positive_int
from attnbench.methods.peers import PeerMethod


class PerformerPytorch(PeerMethod):
    """performer-pytorch ``FastAttention`` with ``nb_features`` features (null: int(D ln D))."""

    package, module = "performer-pytorch", "performer_pytorch.performer_pytorch"
    version = 1
    supports_causal = False

    def __init__(self, nb_features: int | None = None, redraw: bool = False):
        super().__init__()
        if nb_features is not None:
            check_positive_int("nb_features", nb_features)
        if not isinstance(redraw, bool):
            raise ValueError(f"method.redraw must be true or false, got {redraw!r}.")
        self.nb_features = nb_features
        self.redraw = redraw
        self._modules_by_key: dict[tuple[str, int], torch.nn.Module] = {}

    def reseed(self, seed: int) -> None:
        super().reseed(seed)
        self._modules_by_key = {}  # the next call draws its projection from the new seed

    def fast_attention(self, d: int, device: torch.device) -> torch.nn.Module:
        """The package's module for head dim ``d`` on ``device``: built (projection drawn) on first
        use after ``reseed``; with ``redraw`` its projection is drawn afresh on every call."""
        key = (str(device), d)
        fast = self._modules_by_key.get(key)
        if fast is None:
            peer = self.peer()
            with self.global_rng(device):
                fast = peer.FastAttention(dim_heads=d, nb_features=self.nb_features).to(device)
            self._modules_by_key[key] = fast
        elif self.redraw:
            with self.global_rng(device):
                fast.redraw_projection_matrix(device)
        return fast

    def _attend(self, q: Tensor, k: Tensor, v: Tensor, *, causal: bool, scale: float) -> Tensor:
        d = q.shape[-1]
        fast = self.fast_attention(d, q.device)
        self._stats = {"nb_features": float(fast.nb_features)}
        root = math.sqrt(scale * math.sqrt(d))  # the kernel's fixed D^-1/2 becomes `scale`
        return fast(q * root, k * root, v)
