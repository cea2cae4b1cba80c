"""Hugging Face transformers models whose attention goes through ``AttentionInterface``
(Llama-family decoders such as SmolLM2, BERT-style encoders such as MiniLM).

HF attention modules compute q, k, v themselves (projections, rotary embedding, KV cache) and
hand them to the function registered under ``config._attn_implementation``. ``swap`` attaches a
hook (``HFAttention``: ``call``, ``capture``, ``captured``, ``label``, ``name``, ``scale``) to each
selected attention module and switches the model to the function ``attnbench`` registered here:

- in a layer with a hook whose ``call`` is set, the method runs on (B, H, N, D) q, k, v with the
  key/value heads expanded to the query heads (GQA), ``scale`` = the module's ``scaling``, and
  ``causal`` = the module's ``is_causal`` when there is more than one query (a decoding step
  attends to the whole cache). Attention masks (padding, chunked prefill over a cache), sliding
  windows and soft-capping are not supported there and raise ``NotImplementedError``;
- every other layer (no hook, or a hook with ``call=None``, as ``capture`` installs) runs HF's
  own SDPA attention, with the masks HF builds for SDPA.

Labels are ``layer<i>`` with ``i`` the module's ``layer_idx``; ``layers`` may also give indices
(``[0, 4, 8]``), ``"every:K"`` or module names. ``set_native(model, True)`` runs the model's own
attention implementation again (hooks kept), ``unswap(model)`` removes the hooks.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

import torch
from torch import Tensor, nn

from attnbench.core.measure import Meter
from attnbench.methods.base import AttentionMethod

from attnbench.tasks.adapters import base
from attnbench.tasks.adapters.base import HF_HOOK_ATTR, Captured, MethodCall

ATTN_NAME = "attnbench"
_NATIVE_ATTR = "_attnbench_native"  # on the model: the attention implementation before swap


class HFAttention:
    """Hook on one HF attention module: the swapped-in ``call`` (None: HF's SDPA) and capture."""

    def __init__(self, call: MethodCall | None, label: str, name: str, module: nn.Module) -> None:
        self.call = call
        self.label, self.name = label, name
        self.layer_idx = getattr(module, "layer_idx", None)
        self.scale: float | None = getattr(module, "scaling", None)  # updated at each call
        self.capture = False
        self.captured: Captured | None = None
        self._saved_call: tuple[Any] | None = None  # set_exact's stash


def register_function(name: str, fn: Callable) -> str:
    """Register ``fn`` with transformers' ``AttentionInterface`` under ``name``, with SDPA's mask
    function under the same name (without one, HF builds no mask at all for a custom attention:
    padded inputs would be silently wrong and SDPA's is_causal is top-left aligned when queries <
    keys). Idempotent; returns ``name``."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(name, fn)
    AttentionMaskInterface.register(name, sdpa_mask)
    return name


def _expand(t: Tensor, groups: int) -> Tensor:
    return t.repeat_interleave(groups, dim=1) if groups > 1 else t


def attention(module: nn.Module, query: Tensor, key: Tensor, value: Tensor, attention_mask: Tensor | None,
              dropout: float = 0.0, scaling: float | None = None, **kwargs: Any) -> tuple[Tensor, None]:
    """The registered attention function (see the module docstring)."""
    hook: HFAttention | None = getattr(module, HF_HOOK_ATTR, None)
    groups = query.shape[1] // key.shape[1]
    nq, nk = query.shape[2], key.shape[2]
    causal = bool(getattr(module, "is_causal", False)) and nq > 1
    scale = float(scaling) if scaling is not None else query.shape[-1] ** -0.5
    if hook is None or hook.call is None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        out = sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                     **kwargs)
        if hook is not None:
            hook.scale = scale
            if hook.capture:
                hook.captured = Captured(query.detach().clone(), _expand(key.detach(), groups).clone(),
                                         _expand(value.detach(), groups).clone(), scale, causal,
                                         out[0].detach().transpose(1, 2).clone())
        return out
    where = f"the method swapped into {hook.name}"
    if attention_mask is not None:
        raise NotImplementedError(f"{where} gets no attention mask: pass unpadded inputs "
                                  f"(no padding, no chunked prefill over a cache).")
    for knob in ("sliding_window", "softcap"):
        if kwargs.get(knob) is not None:
            raise NotImplementedError(f"{where} does not support {knob}={kwargs[knob]}.")
    if causal and nq != nk:
        raise NotImplementedError(f"{where} needs as many queries as keys when causal (got {nq} and {nk}).")
    key, value = _expand(key, groups), _expand(value, groups)
    hook.scale = scale
    out = hook.call(query, key, value, causal=causal, scale=scaling)
    if hook.capture:
        hook.captured = Captured(query.detach().clone(), key.detach().clone(), value.detach().clone(), scale,
                                 causal, out.detach().clone())
    return out.transpose(1, 2).contiguous(), None


def candidates(model: nn.Module) -> dict[str, str]:
    """{``layer<i>``: module name} of the attention modules (an integer ``layer_idx``, "attention"
    in the class name; per index the innermost such module), in model order."""
    by_idx: dict[int, str] = {}
    for name, mod in model.named_modules():
        idx = getattr(mod, "layer_idx", None)
        if isinstance(idx, int) and "attention" in type(mod).__name__.lower():
            if idx not in by_idx or name.startswith(by_idx[idx] + "."):
                by_idx[idx] = name
    names = sorted(by_idx.items(), key=lambda kv: kv[0])
    return base.label_candidates((name, f"layer{idx}") for idx, name in names)


def _install(model: nn.Module, hooks: Mapping[str, HFAttention]) -> None:
    register_function(ATTN_NAME, attention)
    for hook in hooks.values():
        setattr(model.get_submodule(hook.name), HF_HOOK_ATTR, hook)
    current = model.config._attn_implementation
    if current != ATTN_NAME:
        setattr(model, _NATIVE_ATTR, current)
        model.set_attn_implementation(ATTN_NAME)


def swap(model: nn.Module, method: AttentionMethod | Mapping[str, AttentionMethod] | None = None,
         layers: Any = None, meter: Meter | None = None, what: str = "layers") -> dict[str, HFAttention]:
    """Swap ``method`` (default exact; or {label: method}) into the layers ``layers`` (default all,
    or the keys of a mapping; see ``base.resolve_layers``; ``what`` names the setting in its
    errors); return {label: hook}. Layers swapped before stay swapped (a layer swapped again gets
    the new method)."""
    cands = candidates(model)
    if not cands:
        raise ValueError(f"{type(model).__name__} has no Hugging Face attention module (with an integer layer_idx).")
    labels = base.resolve_layers(cands, base.default_layers(method, layers), what=what)
    calls = base.per_layer(method, labels)
    hooks = {lab: HFAttention(MethodCall(calls[lab], lab, meter), lab, cands[lab], model.get_submodule(cands[lab]))
             for lab in labels}
    _install(model, hooks)
    return hooks


def set_native(model: nn.Module, native: bool = True) -> None:
    """``native=True``: run the model's own attention implementation everywhere (the hooks stay);
    ``False``: the swapped methods again."""
    if not hasattr(model, _NATIVE_ATTR):
        raise ValueError("set_native needs a model swapped with tasks.adapters.hf.swap.")
    model.set_attn_implementation(getattr(model, _NATIVE_ATTR) if native else ATTN_NAME)


def unswap(model: nn.Module) -> None:
    """Remove every hook and give the model its own attention implementation back."""
    for mod in model.modules():
        if hasattr(mod, HF_HOOK_ATTR):
            delattr(mod, HF_HOOK_ATTR)
    if hasattr(model, _NATIVE_ATTR):
        model.set_attn_implementation(getattr(model, _NATIVE_ATTR))
        delattr(model, _NATIVE_ATTR)


@torch.no_grad()
def capture(model: nn.Module, layers: Any, run: Callable[[], Any]) -> dict[str, Captured]:
    """{label: Captured} of the layers ``layers`` in one ``run()`` (a forward of ``model``): q, k,
    v with GQA heads expanded, scale, causal flag and the layer's attention output (B, H, N, Dv).
    Layers not swapped keep HF's SDPA during the run; the model is left as it was."""
    cands = candidates(model)
    labels = base.resolve_layers(cands, layers)
    hooks: dict[str, HFAttention] = {}
    added: list[nn.Module] = []
    for lab in labels:
        mod = model.get_submodule(cands[lab])
        hook = getattr(mod, HF_HOOK_ATTR, None)
        if hook is None:
            hook = HFAttention(None, lab, cands[lab], mod)
            added.append(mod)
        hooks[lab] = hook
    previous = model.config._attn_implementation
    had_native = hasattr(model, _NATIVE_ATTR)
    _install(model, hooks)
    try:
        return base.capture(hooks, run)
    finally:
        for mod in added:
            delattr(mod, HF_HOOK_ATTR)
        if previous != ATTN_NAME:
            model.set_attn_implementation(previous)
            if not had_native:
                delattr(model, _NATIVE_ATTR)
