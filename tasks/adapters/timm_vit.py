"""timm ViT / DeiT attention (``timm.models.vision_transformer.Attention``, also the T2T-ViT blocks).

``SwappedTimmAttention`` keeps the module's own q/k/v path: qkv projection, q/k norm, output
norm and the sigmoid gate when the module has them, then ``proj``; only the attention itself goes
through the method (scale = the module's ``scale``; ``is_causal`` is passed on as ``causal``).
Labels: ``blocks.3.attn`` -> ``block3``, any other module name with dots as underscores.
"""
from __future__ import annotations

from typing import Any, Mapping

from torch import Tensor, nn

from attnbench.core.measure import Meter
from attnbench.methods.base import AttentionMethod

from attnbench.tasks.adapters import base
from attnbench.tasks.adapters.base import MethodCall, Swapped

try:  # timm's ViT attention (ViT, DeiT and the T2T-ViT backbone blocks)
    from timm.models.vision_transformer import Attention as TimmAttention
except ImportError:  # pragma: no cover
    TimmAttention = None


class SwappedTimmAttention(Swapped):
    """Replaces timm's ``vision_transformer.Attention`` (ViT, DeiT, T2T-ViT blocks)."""

    def __init__(self, orig: nn.Module, call: MethodCall) -> None:
        super().__init__(call, orig.scale)
        self.num_heads = orig.num_heads
        self.head_dim = getattr(orig, "head_dim", orig.qkv.out_features // (3 * orig.num_heads))
        self.attn_dim = getattr(orig, "attn_dim", self.num_heads * self.head_dim)
        self.qkv, self.q_norm, self.k_norm = orig.qkv, orig.q_norm, orig.k_norm
        self.attn_drop, self.proj, self.proj_drop = orig.attn_drop, orig.proj, orig.proj_drop
        self.norm = getattr(orig, "norm", nn.Identity())
        self.gate = getattr(orig, "gate", None)

    def forward(self, x: Tensor, attn_mask: Tensor | None = None, is_causal: bool = False) -> Tensor:
        if attn_mask is not None:
            raise NotImplementedError("a method swapped into a timm attention layer gets no attention mask.")
        b, n, _ = x.shape
        gate = self.gate(x).sigmoid() if self.gate is not None else None
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        out = self._attend(q, k, v, causal=is_causal)
        out = self.norm(out.transpose(1, 2).reshape(b, n, self.attn_dim))
        if gate is not None:
            out = out * gate
        return self.proj_drop(self.proj(out))


def label(module_name: str) -> str:
    parts = module_name.split(".")
    if len(parts) == 3 and parts[0] == "blocks" and parts[2] == "attn":
        return f"block{parts[1]}"
    return module_name.replace(".", "_")


def _match(mod: nn.Module) -> bool:
    return TimmAttention is not None and isinstance(mod, TimmAttention)


FAMILY = base.Family("timm_vit", _match, SwappedTimmAttention, label)


def candidates(model: nn.Module) -> dict[str, str]:
    """{label: module name} of the timm attention modules not yet swapped, in model order."""
    return base.candidates(model, [FAMILY])


def swap(model: nn.Module, method: AttentionMethod | Mapping[str, AttentionMethod] | None = None,
         layers: Any = None, meter: Meter | None = None) -> dict[str, SwappedTimmAttention]:
    """Swap ``method`` (default exact; or {label: method}) into the layers ``layers`` (default all)."""
    return base.swap(model, method, families=[FAMILY], layers=layers, meter=meter)  # type: ignore[return-value]
