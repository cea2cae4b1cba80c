"""The Tokens-to-Token layers of T2T-ViT (``tasks/models/t2t_vit.py``).

- ``SwappedTokenAttention`` replaces a ``TokenAttention`` (T2T-ViT-t): q/k/v from the input width,
  scale = the module's own quirky ``(input width)^-0.5``, output ``v + proj(attention)``.
- ``SwappedTokenPerformer`` replaces a whole ``TokenPerformer`` (non-t variants): the method
  replaces its built-in random-feature estimate of exp(q·k) (scale 1); ``w`` is kept, unused, for
  the state dict.

Labels: ``tokens_to_token.attention1[.attn]`` -> ``t2t1``, ``…attention2…`` -> ``t2t2``. The ViT
blocks after the T2T module are timm attention (``timm_vit``); a T2T-ViT swaps both families.
"""
from __future__ import annotations

from typing import Any, Mapping

from torch import Tensor, nn

from attnbench.core.measure import Meter
from attnbench.methods.base import AttentionMethod

from attnbench.tasks.models.t2t_vit import TokenAttention, TokenPerformer
from attnbench.tasks.adapters import base
from attnbench.tasks.adapters.base import MethodCall, Swapped


class SwappedTokenAttention(Swapped):
    """Replaces a T2T ``TokenAttention``: qkv from the input width, v + proj(attention)."""

    def __init__(self, orig: TokenAttention, call: MethodCall) -> None:
        super().__init__(call, orig.scale)  # the T2T quirk: (input width)^-0.5, kept as is
        self.num_heads, self.in_dim = orig.num_heads, orig.in_dim
        self.qkv, self.attn_drop, self.proj, self.proj_drop = orig.qkv, orig.attn_drop, orig.proj, orig.proj_drop

    def forward(self, x: Tensor) -> Tensor:
        q, k, v = TokenAttention.qkv_heads(self, x)
        return TokenAttention.finish(self, self._attend(q, k, v), v)


class SwappedTokenPerformer(Swapped):
    """Replaces a whole ``TokenPerformer`` (non-t T2T-ViT): the method replaces its built-in
    random-feature estimate of exp(q·k) (scale 1). ``w`` is kept, unused, for the state dict."""

    def __init__(self, orig: TokenPerformer, call: MethodCall) -> None:
        super().__init__(call, 1.0)
        self.emb = orig.emb
        self.kqv, self.dp, self.proj = orig.kqv, orig.dp, orig.proj
        self.norm1, self.norm2, self.mlp, self.w = orig.norm1, orig.norm2, orig.mlp, orig.w

    def forward(self, x: Tensor) -> Tensor:
        q, k, v = TokenPerformer.split(self, self.norm1(x))
        y = self._attend(q[:, None], k[:, None], v[:, None])[:, 0]
        x = v + self.dp(self.proj(y))
        return x + self.mlp(self.norm2(x))


def label(module_name: str) -> str:
    parts = module_name.split(".")
    if parts[0] == "tokens_to_token" and len(parts) > 1 and parts[1].startswith("attention"):
        return "t2t" + parts[1][len("attention"):]
    return module_name.replace(".", "_")


def _match(mod: nn.Module) -> bool:
    return isinstance(mod, (TokenAttention, TokenPerformer))


def _wrap(mod: nn.Module, call: MethodCall) -> Swapped:
    return SwappedTokenAttention(mod, call) if isinstance(mod, TokenAttention) else SwappedTokenPerformer(mod, call)


FAMILY = base.Family("t2t_vit", _match, _wrap, label)


def candidates(model: nn.Module) -> dict[str, str]:
    """{label: module name} of the T2T token layers not yet swapped, in model order."""
    return base.candidates(model, [FAMILY])


def swap(model: nn.Module, method: AttentionMethod | Mapping[str, AttentionMethod] | None = None,
         layers: Any = None, meter: Meter | None = None) -> dict[str, Swapped]:
    """Swap ``method`` (default exact; or {label: method}) into the token layers ``layers`` (default all)."""
    return base.swap(model, method, families=[FAMILY], layers=layers, meter=meter)
