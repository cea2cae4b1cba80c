"""reformer-pytorch's ``LSHAttention`` (lucidrains, tested with 1.4.4) as an attention method.

The package's LSH attention is shared-QK: it takes one ``qk`` tensor (keys are the queries
normalised to unit length, a token sees itself only with score -5e4) and ignores k, as the
suite's ``reformer`` with ``shared_qk: true``. Called as the package's ``LSHSelfAttention`` calls
it: batch and heads folded into its batch axis, defaults otherwise (no dropout, duplicates not
removed, attention across buckets, one rotation per round shared by batch and heads).
``bucket_size`` and ``n_hashes`` are the package's knobs; n_buckets = N_pad / bucket_size.

* Lengths: the package needs N to be a multiple of 2·bucket_size; shorter multiples are padded
  with zero rows that are masked as keys (``input_mask``), as its ``Autopadder`` does.
* Head dims: the package needs Dv = D; the narrower of q and v is padded with zero columns (no
  change to scores, hashes or outputs; the padded output columns are dropped).
* Scale: its scores are (q·k̂)·D^-1/2; q is multiplied by scale·D^1/2 first (hashes and k̂ are
  unchanged by a positive factor), so the scores are scale·q·k̂.
* Randomness: its rotations come from torch's global generator, forked and seeded from this
  method's generator (``PeerMethod.global_rng``).

Differences from the suite's ``reformer`` (shared_qk: true), both the package's: rounds are laid
end to end, so the first chunk of round r > 0 looks back at the last chunk of round r-1 (the
suite wraps within a round), and every round's scores are held at once (n_hashes·N·2·bucket_size
per head; the suite evaluates cache-sized groups of chunks). Causal masking compares positions
after sorting, so later tokens move chunk boundaries (``causal_leak``). No cross-attention.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from attnbench.methods.base import check_positive_int, resolve_budget
from attnbench.methods.peers import PeerMethod


class ReformerPytorch(PeerMethod):
    """reformer-pytorch ``LSHAttention`` (shared-QK) with ``bucket_size`` and ``n_hashes`` rounds."""

    package, module = "reformer-pytorch", "reformer_pytorch.reformer_pytorch"
    version = 1
    supports_cross = False

    def __init__(self, bucket_size: int = 64, n_hashes: int = 8):
        super().__init__()
        resolve_budget("bucket_size", bucket_size, 1 << 30)  # int >= 1 or a fraction of n in (0, 1]
        check_positive_int("n_hashes", n_hashes)
        self.bucket_size = bucket_size
        self.n_hashes = n_hashes

    def causal_leak(self) -> str | None:
        return ("LSH attention sorts all tokens by bucket and cuts the sorted order into chunks, so later tokens "
                "move the chunk boundaries that decide which earlier keys a query sees (as in the package).")

    def _attend(self, q: Tensor, k: Tensor, v: Tensor, *, causal: bool, scale: float) -> Tensor:
        peer = self.peer()
        b, h, n, d = q.shape
        dv = v.shape[-1]
        width = max(d, dv)
        bs = resolve_budget("bucket_size", self.bucket_size, n)
        n_pad = math.ceil(n / (2 * bs)) * 2 * bs
        qk = (q * (scale * math.sqrt(width))).reshape(b * h, n, d)
        vv = v.reshape(b * h, n, dv)
        qk = F.pad(qk, (0, width - d, 0, n_pad - n)) if (width > d or n_pad > n) else qk
        vv = F.pad(vv, (0, width - dv, 0, n_pad - n)) if (width > dv or n_pad > n) else vv
        mask = None
        if n_pad > n:
            mask = torch.zeros(b * h, n_pad, dtype=torch.bool, device=q.device)
            mask[:, :n] = True
        attn = peer.LSHAttention(bucket_size=bs, n_hashes=self.n_hashes, causal=causal).eval()
        with self.global_rng(q.device):
            out, _, _ = attn(qk, vv, input_mask=mask)
        self._stats = {"n_buckets": float(n_pad // bs)}
        return out[:, :n, :dv].reshape(b, h, n, dv)
