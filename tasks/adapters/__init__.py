"""Swapping an attention method into a model's attention layers, and capturing their q, k, v.

One module per model family, each with the same two functions:

- ``candidates(model) -> {label: module name}``: the swappable attention layers, in model order;
- ``swap(model, method=None, layers=None, meter=None) -> {label: wrapper}``: route the attention
  of the layers selected by ``layers`` through ``method`` (an ``AttentionMethod``, a
  ``{label: method}`` mapping for per-layer methods, or None for exact).

``layers`` (``base.resolve_layers``): None or ``"all"``, ``"every:K"``, ``"first:K"`` / ``"last:K"``, or a list / comma string of
labels, module names or integer positions (for Hugging Face models: layer indices). A name that
is not a candidate raises ``ValueError`` listing the candidates.

Families:

- ``timm_vit``: timm ``vision_transformer.Attention`` (ViT, DeiT, T2T-ViT blocks); ``block<i>``;
- ``t2t_vit``: T2T-ViT's ``TokenAttention`` / ``TokenPerformer``; ``t2t1``, ``t2t2``;
- ``biggan``: the SAGAN ``SelfAttn`` of pytorch_pretrained_biggan; ``attn``;
- ``hf``: Hugging Face models through ``AttentionInterface`` (SmolLM2, MiniLM); ``layer<i>``.

A model mixing families (T2T-ViT: token layers + timm blocks) uses the generic
``swap(model, method, families=[t2t_vit.FAMILY, timm_vit.FAMILY], layers=...)`` and
``candidates(model, families)`` of this package.

Every wrapper (a module replacing the original, with the same state-dict names; for ``hf`` a hook
object attached to the HF module) has

- ``call``: the ``MethodCall`` in use (settable; ``call.method`` is the method);
- ``scale``: the scale passed to the method; ``label`` and ``name`` (module name);
- ``capture`` (bool) / ``captured``: with capture on, each forward stores a ``Captured``
  (q, k, v with heads expanded, scale, causal, out).

Generic helpers on {label: wrapper} dicts (what ``swap`` returns, or ``wrappers(model)``):
``set_method(ws, method_or_per_layer, meter, prefix=, timing=)``, ``set_exact(ws, True/False)``
(exact attention in, methods kept aside / back), ``capturing(ws)`` (context manager) and
``capture(ws, run) -> {label: Captured}``. ``hf`` adds ``set_native`` (the model's own attention
implementation), ``unswap`` and ``capture(model, layers, run)`` (capture without swapping).

Example (a causal LM, every other layer)::

    from attnbench.tasks.adapters import hf, set_exact
    ws = hf.swap(model, methods.build("wildcat"), layers="every:2")
    loss = model(input_ids=ids, labels=ids).loss
    set_exact(ws)            # exact in the same layers;  hf.set_native(model) for HF's own SDPA
"""
from attnbench.tasks.adapters.base import (
    Captured,
    Family,
    MethodCall,
    Swapped,
    candidates,
    capture,
    capturing,
    copy_weights,
    replace_modules,
    resolve_layers,
    set_exact,
    set_method,
    swap,
    wrappers,
)

__all__ = [
    "Captured", "Family", "MethodCall", "Swapped", "candidates", "capture", "capturing", "copy_weights",
    "replace_modules", "resolve_layers", "set_exact", "set_method", "swap", "wrappers",
]
