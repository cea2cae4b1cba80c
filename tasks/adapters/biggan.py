"""BigGAN's SAGAN self-attention (``pytorch_pretrained_biggan.model.SelfAttn``).

``SwappedSelfAttn`` keeps the module's submodules (same state-dict names): theta/phi/g 1x1
spectral-norm convs and the 2x2 max-pooling as in the original, then
``method(q=(B,1,HW,C/8), k=(B,1,HW/4,C/8), v=(B,1,HW/4,C/2), scale=1.0)`` (one head, no 1/sqrt(d)),
then the original output conv and ``x + gamma * o``. With exact it reproduces the original
generator to float rounding. The generator has one such layer, labelled ``attn``.
"""
from __future__ import annotations

from typing import Any, Mapping

from torch import Tensor, nn

from attnbench.core.measure import Meter
from attnbench.methods.base import AttentionMethod

from attnbench.tasks.adapters import base
from attnbench.tasks.adapters.base import MethodCall, Swapped


def _self_attn_class() -> type:
    from pytorch_pretrained_biggan.model import SelfAttn

    return SelfAttn


class SwappedSelfAttn(Swapped):
    """``SelfAttn`` with the attention itself computed by ``call`` (scale 1.0, one head)."""

    def __init__(self, orig: nn.Module, call: MethodCall) -> None:
        super().__init__(call, 1.0)
        self.in_channels = orig.in_channels
        self.snconv1x1_theta, self.snconv1x1_phi = orig.snconv1x1_theta, orig.snconv1x1_phi
        self.snconv1x1_g, self.snconv1x1_o_conv = orig.snconv1x1_g, orig.snconv1x1_o_conv
        self.maxpool = orig.maxpool
        self.gamma = orig.gamma

    def qkv(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(B, 1, HW, C/8), (B, 1, HW/4, C/8), (B, 1, HW/4, C/2) as the original's theta, phi, g."""
        b, ch, h, w = x.shape
        theta = self.snconv1x1_theta(x).view(b, ch // 8, h * w)
        phi = self.maxpool(self.snconv1x1_phi(x)).view(b, ch // 8, h * w // 4)
        g = self.maxpool(self.snconv1x1_g(x)).view(b, ch // 2, h * w // 4)
        return theta.transpose(1, 2)[:, None], phi.transpose(1, 2)[:, None], g.transpose(1, 2)[:, None]

    def forward(self, x: Tensor) -> Tensor:
        b, ch, h, w = x.shape
        q, k, v = self.qkv(x)
        o = self._attend(q, k, v)  # (B, 1, HW, C/2)
        o = o[:, 0].transpose(1, 2).reshape(b, ch // 2, h, w)
        return x + self.gamma * self.snconv1x1_o_conv(o)


def label(module_name: str) -> str:
    return "attn"


def _match(mod: nn.Module) -> bool:
    return type(mod).__name__ == "SelfAttn" and isinstance(mod, _self_attn_class())


FAMILY = base.Family("biggan", _match, SwappedSelfAttn, label)


def candidates(model: nn.Module) -> dict[str, str]:
    """{label: module name} of the generator's self-attention layers not yet swapped."""
    return base.candidates(model, [FAMILY])


def swap(model: nn.Module, method: AttentionMethod | Mapping[str, AttentionMethod] | None = None,
         layers: Any = None, meter: Meter | None = None) -> dict[str, SwappedSelfAttn]:
    """Swap ``method`` (default exact; or {label: method}) into the layers ``layers`` (default all)."""
    return base.swap(model, method, families=[FAMILY], layers=layers, meter=meter)  # type: ignore[return-value]


def swap_attention(model: nn.Module, method: AttentionMethod | None = None, meter: Meter | None = None) -> SwappedSelfAttn:
    """BigGAN has one attention layer: swap ``method`` (default exact) into it and return its wrapper."""
    swapped = swap(model, method, meter=meter)
    if len(swapped) != 1:
        raise ValueError(f"expected one BigGAN self-attention layer, found {list(swapped)}.")
    return next(iter(swapped.values()))
