"""kvpress presses for the KV-cache task: suite methods, WildCat, uniform, BalanceKV, kvpress's own.

Not a task (no ``@register``); ``tasks/kv_cache.py`` builds presses with ``make_press``.

Weighted caches. A weighted press stores, per layer, keys k_c and values ``[v_c·w, w]`` (one
extra value channel, as microsoft/wildcat ``examples/kvcache/presses/compress_kv_press.py``).
Decoding then runs an unmodified SDPA over the cache and divides the first D output channels by
the last: ``softmax(s)·[v·w, w]`` gives ``Σ e^{s_i} w_i v_i / Σ e^{s_i} w_i = softmax(s + log w)·v``.
Two pieces make Hugging Face models do this without touching their modules:

- ``weighted_attention`` is registered with ``AttentionInterface`` as ``attnbench_weighted``:
  plain SDPA when the values have the model's head dim, SDPA + divide (+ WildCat's value-range
  clamp when the layer has one) when they have one channel more. The task sets it as the model's
  attention implementation for every press, so all presses are timed through the same code.
- ``make_weighted`` gives the compressed cache layer an ``update`` that appends a weight-1
  channel to the values of tokens added after prefill (question and generated tokens) and keeps
  the running per-channel value range, as the official code does in its patched forward.

The official code patches each attention module's ``forward`` instead; this keeps kvpress's
pipeline, hooks and HF modules unchanged.

kvpress's press contracts, kept by every press here (``tests/test_press_contracts.py``):
- a press at ``compression_ratio`` r leaves ``int(n·(1-r))`` tokens per layer (at least 1; all at
  r = 0), sink and window included (``ratio_of="all"``, the default). ``ratio_of="middle"`` is the
  official WildCat convention instead: r is the fraction of the tokens between sink and window
  that is dropped, and a context of fewer than sink + window + 2 tokens is not compressed;
- compression runs under ``torch.no_grad()`` (the cache holds no graph, and a forward with
  autograd on works), for any batch size and in fp32, fp16 and bf16;
- ``with press(model)`` adds one forward hook per attention layer and removes them on exit.
  Presses that write weighted caches switch the model to ``attnbench_weighted`` attention in
  ``post_init_from_model`` (it stays: decoding after the ``with`` block reads the weighted cache;
  on plain caches it is SDPA).
"""
from __future__ import annotations

import math
import types
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from kvpress import BasePress
from kvpress.attention_patch import attention_patch

from attnbench.methods.base import AttentionMethod

WEIGHTED_ATTN = "attnbench_weighted"

# short names of kvpress presses (the WildCat paper's baselines and a few more); any other kvpress
# press is reachable as "kvpress:<ClassName>".
KVPRESS_NAMES = {
    "snapkv": "SnapKVPress",
    "streaming_llm": "StreamingLLMPress",
    "pyramidkv": "PyramidKVPress",
    "knorm": "KnormPress",
    "expected_attention": "ExpectedAttentionPress",
    "tova": "TOVAPress",
    "random": "RandomPress",
    "keydiff": "KeyDiffPress",
    "observed_attention": "ObservedAttentionPress",
    "lagkv": "LagKVPress",
}
OWN_PRESSES = ("method", "none", "uniform", "balance_kv", "per_layer")
RATIO_OF = ("all", "middle")  # what compression_ratio is a fraction of (sink-window presses)


# ----------------------------------------------------------------------------- decoding
def weighted_sdpa(module: nn.Module, query: Tensor, key: Tensor, value: Tensor, attention_mask: Tensor | None,
                  dropout: float = 0.0, scaling: float | None = None, **kwargs: Any) -> tuple[Tensor, None]:
    """HF attention function: SDPA, and for weighted caches (values with head_dim + 1 channels)
    divide the output by its last channel (0 where it is <= 1e-20, as the official code) and clamp
    to the layer's running value range when one is recorded (WildCat)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    out, _ = sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                    **kwargs)
    if value.shape[-1] != query.shape[-1] + 1:
        return out, None
    # out: (B, q, H, D+1); running range (B, Hkv, 1, D) -> (B, 1, H, D)
    den = out[..., -1:]
    ok = den > 1e-20
    res = torch.where(ok, out[..., :-1] / torch.where(ok, den, torch.ones_like(den)), torch.zeros_like(out[..., :-1]))
    layer = getattr(module, "_attnbench_layer", None)
    if getattr(layer, "vmin", None) is not None and layer.values is value:
        vmin, vmax = value_range(layer, value)
        groups = query.shape[1] // vmin.shape[1]
        lo = vmin.repeat_interleave(groups, dim=1).transpose(1, 2).to(res.dtype)
        hi = vmax.repeat_interleave(groups, dim=1).transpose(1, 2).to(res.dtype)
        res = torch.maximum(torch.minimum(res, hi), lo)
    return res, None


def value_range(layer: Any, value: Tensor) -> tuple[Tensor, Tensor]:
    """WildCat's running value range of a weighted cache layer: the prefill's range (``vmin``,
    ``vmax``, per KV head and channel) widened by the tokens appended after prefill (positions
    ``n_prefill:`` of ``value``, weight channel left out). Derived from the cache contents, so
    cropping the cache (kvpress's pipeline removes each answer) restores it."""
    new = value[:, :, layer.n_prefill:, :-1]
    if new.shape[2] == 0:
        return layer.vmin, layer.vmax
    return (torch.minimum(layer.vmin, new.amin(-2, keepdim=True).to(layer.vmin.dtype)),
            torch.maximum(layer.vmax, new.amax(-2, keepdim=True).to(layer.vmax.dtype)))


weighted_attention = attention_patch(weighted_sdpa)  # keeps kvpress's head-wise masking support


def register_weighted_attention() -> str:
    """Register ``attnbench_weighted`` with transformers, with SDPA's masks (idempotent); returns its name."""
    from attnbench.tasks.adapters.hf import register_function

    return register_function(WEIGHTED_ATTN, weighted_attention)


def _weighted_update(layer: Any, key_states: Tensor, value_states: Tensor, *args: Any, **kwargs: Any):
    """Cache-layer ``update`` for weighted caches: a weight-1 channel on new values. A weighted layer
    whose values lost their weight channel (a kvpress press ran after the weighted press in a
    ``ComposedPress`` and kept ``head_dim`` channels) is refused: decoding would read v·w as v."""
    if layer.values is not None and layer.values.shape[-1] == value_states.shape[-1] + 1:
        value_states = torch.cat((value_states, torch.ones_like(value_states[..., :1])), -1)
    elif layer.values is not None and layer.values.shape[-1] == value_states.shape[-1]:
        by = getattr(layer, "weighted_by", "the weighted press")
        raise ValueError(f"a press after {by} dropped its weight channel from the cache; in a ComposedPress put "
                         f"{by} last, e.g. ComposedPress([KnormPress(0.5), {by}(...)]).")
    return type(layer).update(layer, key_states, value_states, *args, **kwargs)


def make_weighted(layer: Any, vmin: Tensor | None = None, vmax: Tensor | None = None, by: str = "") -> None:
    """Make a cache layer whose values now carry a weight channel append weight-1 channels to new
    values (an instance-level ``update``; the layer's class, e.g. ``DynamicLayer``, is unchanged)
    and record the prefill's value range for WildCat's clamp (``value_range``) and the press that
    wrote it (``by``, for the composition error)."""
    layer.update = types.MethodType(_weighted_update, layer)
    layer.vmin, layer.vmax, layer.n_prefill = vmin, vmax, layer.keys.shape[2]
    layer.weighted_by = by or "the weighted press"


def pack_weights(values: Tensor, log_w: Tensor) -> Tensor:
    """[v·w, w] with w = exp(log_w): (..., n, D), (..., n) -> (..., n, D+1)."""
    w = log_w.exp().unsqueeze(-1).to(values.dtype)
    return torch.cat((values * w, w), -1)


def weighted_reference(q: Tensor, k: Tensor, v: Tensor, log_w: Tensor, scale: float) -> Tensor:
    """softmax(q kᵀ·scale + log_w) v, explicitly (for tests)."""
    s = torch.einsum("bhqd,bhkd->bhqk", q, k) * scale + log_w.unsqueeze(-2)
    return torch.softmax(s, -1) @ v


# ----------------------------------------------------------------------------- presses
def kept_count(n: int, ratio: float) -> int:
    """Tokens a press keeps of ``n`` at ``compression_ratio=ratio``: kvpress's ``compute_n_kept``,
    int(n·(1-ratio)) and at least 1 (all n at ratio 0)."""
    from kvpress.utils import compute_n_kept

    return n if ratio == 0 else compute_n_kept(n, ratio)


def split_sink_window(keep: int, sink: int, window: int) -> tuple[int, int]:
    """Sink and window sizes within a budget of ``keep`` tokens: as given when sink + window <=
    keep, else shrunk in proportion (sink ⌊keep·sink/(sink+window)⌋, the rest window)."""
    if sink + window <= keep:
        return sink, window
    s = keep * sink // (sink + window)
    return s, keep - s


def use_weighted_attention(model: nn.Module) -> None:
    """Switch ``model`` to ``attnbench_weighted`` attention (plain SDPA on plain caches)."""
    name = register_weighted_attention()
    if getattr(model.config, "_attn_implementation", None) != name:
        model.set_attn_implementation(name)


@dataclass
class _SinkWindowPress(BasePress):
    """Keeps the first ``sink_size`` and last ``window_size`` tokens exact and compresses the
    tokens between them, as the official WildCat, uniform and BalanceKV presses. ``ratio_of``:
    ``all`` (default, kvpress's contract) keeps int(n·(1-ratio)) tokens in all, sink and window
    included (both shrunk in proportion when they alone exceed that: ``split_sink_window``);
    ``middle`` (the official convention) drops the fraction ``ratio`` of the middle tokens and
    leaves a context of fewer than sink + window + 2 tokens alone. Subclasses implement
    ``compress_middle(module, keys, values, budget)`` returning (keys, values, log_w or None) with
    ``budget`` entries. In a ``ComposedPress`` a weighted press must come last (kvpress's presses
    would cut the weight channel)."""

    compression_ratio: float = 0.0
    sink_size: int = 32
    window_size: int = 32
    ratio_of: str = "all"
    weighted: ClassVar[bool] = False  # writes a weight channel: needs attnbench_weighted attention

    def __post_init__(self) -> None:
        if not 0 <= self.compression_ratio < 1:
            raise ValueError(f"task.compression_ratio must lie in [0, 1), got {self.compression_ratio}.")
        if self.ratio_of not in RATIO_OF:
            raise ValueError(f"task.ratio_of must be one of {RATIO_OF}, got {self.ratio_of!r}.")
        for key, val in (("task.sink_size", self.sink_size), ("task.window_size", self.window_size)):
            if isinstance(val, bool) or not isinstance(val, int) or val < 0:
                raise ValueError(f"{key} must be an integer >= 0, got {val!r}.")

    def post_init_from_model(self, model) -> None:
        if self.weighted:
            use_weighted_attention(model)

    def plan(self, n: int) -> tuple[int, int, int] | None:
        """(sink, window, middle budget) for a context of ``n`` tokens; None: left uncompressed."""
        if self.compression_ratio == 0:
            return None
        if self.ratio_of == "middle":
            n_mid = n - self.sink_size - self.window_size
            return None if n_mid < 2 else (self.sink_size, self.window_size, self.middle_budget(n_mid))
        keep = kept_count(n, self.compression_ratio)
        if keep >= n:
            return None
        s, w = split_sink_window(keep, self.sink_size, self.window_size)
        return s, w, keep - s - w

    def middle_budget(self, n_mid: int) -> int:
        """Official convention: entries kept of ``n_mid`` middle tokens."""
        return max(1, math.floor(n_mid * (1 - self.compression_ratio)))

    def compress_middle(self, module, keys, values, budget):  # pragma: no cover - abstract
        raise NotImplementedError

    def compress(self, module, hidden_states, keys, values, attentions, kwargs):
        plan = self.plan(keys.shape[2])
        if plan is None:
            return keys, values
        s, w, m = plan
        n = keys.shape[2]
        ks, kw, vs, vw = keys[:, :, :s], keys[:, :, n - w:], values[:, :, :s], values[:, :, n - w:]
        if m == 0:
            return torch.cat((ks, kw), 2), torch.cat((vs, vw), 2)
        k_mid, v_mid, log_w = self.compress_middle(module, keys[:, :, s:n - w], values[:, :, s:n - w], m)
        keys = torch.cat((ks, k_mid, kw), 2)
        if log_w is None:
            return keys, torch.cat((vs, v_mid, vw), 2)
        zeros = lambda t: torch.zeros(t.shape[:3], dtype=log_w.dtype, device=t.device)  # noqa: E731
        log_w = torch.cat((zeros(vs), log_w, zeros(vw)), 2)
        return keys, pack_weights(torch.cat((vs, v_mid, vw), 2), log_w)

    def forward_hook(self, module, input, kwargs, output):
        from kvpress.presses.base_press import is_prefilling

        if not is_prefilling(kwargs["cache_position"], kwargs["hidden_states"].shape[1]):
            return output
        self._vrange = None
        with torch.no_grad():  # the compressed cache holds no autograd graph
            output = super().forward_hook(module, input, kwargs, output)
        layer = kwargs["past_key_values"].layers[module.layer_idx]
        if layer.values.shape[-1] == layer.keys.shape[-1] + 1:
            make_weighted(layer, *(self._vrange or (None, None)), by=type(self).__name__)
            module._attnbench_layer = layer
        return output


def _default_wildcat() -> AttentionMethod:
    from attnbench import methods

    return methods.build("wildcat")


@dataclass
class WildCatPress(_SinkWindowPress):
    """WildCat's KV-cache mode (``methods.wildcat.compress_kv_cache``, the official
    ``compress_kv_press.py``): sink and window exact, the middle cut into bins of which each keeps
    ``bin_r`` weighted RPCholesky points; signed Nyström weights in the extra value channel; output
    clamped to the running value range. RPCholesky knobs and the random stream come from
    ``method`` (default: WildCat with its default knobs, seed 0). With ``ratio_of="all"`` the bins
    keep ⌊R/bins⌋ or ⌊R/bins⌋ + 1 points so that the cache keeps exactly int(n·(1-ratio))
    entries (``compress_kv_cache``'s ``keep``)."""

    method: AttentionMethod | None = field(default_factory=_default_wildcat)
    bin_r: int = 12
    weighted: ClassVar[bool] = True

    def compress(self, module, hidden_states, keys, values, attentions, kwargs):
        from attnbench.methods.wildcat import compress_kv_cache

        if self.compression_ratio == 0:
            return keys, values
        sink, window, keep = self.sink_size, self.window_size, None
        if self.ratio_of == "all":
            plan = self.plan(keys.shape[2])
            if plan is None:
                return keys, values
            sink, window, mid = plan
            keep = sink + window + mid
        m = self.method
        c = compress_kv_cache(keys, values, module.scaling, compression_ratio=self.compression_ratio, sink=sink,
                              window=window, bin_r=self.bin_r, temperature=m.temperature, rho=m.rho, block=m.block,
                              generator=m.generator(keys.device), keep=keep)
        self._vrange = (c.vmin, c.vmax)
        return c.keys, c.values


@dataclass
class MethodPress(_SinkWindowPress):
    """Any suite method implementing ``compress(k, v, budget) -> (k_c, v_c, log_w)``: the middle
    tokens are compressed to the middle budget, log-weights carried as a value channel. A method
    that returns another number of entries than its budget is an error."""

    method: AttentionMethod | None = None
    weighted: ClassVar[bool] = True

    def compress_middle(self, module, keys, values, budget):
        k_c, v_c, log_w = self.method.compress(keys, values, budget)
        if k_c.shape[2] != budget:
            raise ValueError(f"method={self.method.name}: compress(k, v, budget={budget}) returned {k_c.shape[2]} "
                             f"entries; a press keeps exactly its budget.")
        return k_c.to(keys.dtype), v_c.to(values.dtype), log_w.float()


@dataclass
class UniformPress(_SinkWindowPress):
    """Uniform baseline of the WildCat paper: sink and window exact, a uniformly random subset
    (without replacement, independent per batch element and KV head) of the middle tokens,
    unweighted. The official ``uniform_press.py`` halves ⌈log2 1/(1-ratio)⌉ times with random
    signs; we draw the budget's number of tokens (official convention: floor(n_mid·(1-ratio))) in
    one exact uniform draw (the official halving prefers earlier positions when a sign class
    overflows)."""

    generator: torch.Generator | None = None

    def compress_middle(self, module, keys, values, budget):
        b, h, n, d = keys.shape
        u = torch.rand(b, h, n, generator=self.generator, device=keys.device if self.generator is None
                       else self.generator.device).to(keys.device)
        idx = u.topk(budget, dim=-1).indices.sort(-1).values
        return (keys.gather(2, idx.unsqueeze(-1).expand(-1, -1, -1, d)),
                values.gather(2, idx.unsqueeze(-1).expand(-1, -1, -1, values.shape[-1])), None)


@dataclass
class BalanceKVPress(_SinkWindowPress):
    """BalanceKV (Han et al. 2025) as in the WildCat repository's ``balance_press.py``: sink and
    window exact; the middle is halved ⌈log2 1/(1-ratio)⌉ times. Each halving splits the tokens
    into blocks of ``block_size`` and, within each block, runs a self-balancing walk
    (Alweiss-Liu-Sawhney) over the kernel K_ij = exp(temp·<k̄_i,k̄_j>/√d - beta)·(<v_i,v_j> + 0.025)
    (k̄: keys centred per block; v: values times their current weights): token 1 gets sign +1,
    token i gets +1 with probability 1/2 - gamma·Σ_{j<i} K_ij s_j. Scanning in order, once one
    sign class holds n/2 tokens (index c), the other class's tokens up to c are kept with weight ×2
    and every token after c with weight ×1 (they were not split), giving n/2 tokens.
    Vectorised over batch, heads and blocks; sequential over the positions of a block.
    Departures: the official press multiplies the values by weight/2^T without a normaliser; we
    carry the weights exactly as WildCat does (extra value channel), so numerator and
    denominator of the softmax are estimated alike, as in the BalanceKV paper. For an exact budget
    (``ratio_of="all"``), full halvings run while they leave at least the budget, then a last
    halving of the oldest 2x remaining tokens (x = the excess) lands on it."""

    generator: torch.Generator | None = None
    gamma: float = 4.0
    temp: float = 1.0
    beta: float = 0.0
    block_size: int = 256
    weighted: ClassVar[bool] = True

    def middle_budget(self, n_mid: int) -> int:
        """Official: what ⌈log2 1/(1-ratio)⌉ halvings leave of ``n_mid`` tokens."""
        c = n_mid
        for _ in range(math.ceil(-math.log2(1 - self.compression_ratio) - 1e-12)):
            if c < 2:
                break
            c -= c // 2
        return c

    def compress_middle(self, module, keys, values, budget):
        b, h, n, d = keys.shape
        idx = torch.arange(n, device=keys.device).expand(b, h, n)
        weight = torch.ones(b, h, n, device=keys.device, dtype=torch.float32)
        while idx.shape[-1] > budget:
            c = idx.shape[-1]
            part = c if c - c // 2 >= budget else 2 * (c - budget)  # the last round halves the oldest 2x only
            k = keys.gather(2, idx[..., :part].unsqueeze(-1).expand(-1, -1, -1, d)).float()
            v = values.gather(2, idx[..., :part].unsqueeze(-1).expand(-1, -1, -1, values.shape[-1])).float()
            keep, mult = self._halve(k, v * weight[..., :part].unsqueeze(-1))
            idx = torch.cat((idx[..., :part].gather(2, keep), idx[..., part:]), -1)
            weight = torch.cat((weight[..., :part].gather(2, keep) * mult, weight[..., part:]), -1)
        return (keys.gather(2, idx.unsqueeze(-1).expand(-1, -1, -1, d)),
                values.gather(2, idx.unsqueeze(-1).expand(-1, -1, -1, values.shape[-1])), weight.log())

    def _halve(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        b, h, n, d = k.shape
        bs = self.block_size
        nb = math.ceil(n / bs)
        pad = nb * bs - n
        kp = nn.functional.pad(k, (0, 0, 0, pad)).view(b, h, nb, bs, d)
        vp = nn.functional.pad(v, (0, 0, 0, pad)).view(b, h, nb, bs, v.shape[-1])
        kc = kp - kp.mean(-2, keepdim=True)
        kern = torch.exp(self.temp * kc @ kc.transpose(-1, -2) / math.sqrt(d) - self.beta)
        kern = kern * (vp @ vp.transpose(-1, -2) + 0.025 + 1e-8)
        gen = self.generator
        u = torch.rand(b, h, nb, bs, generator=gen, device=gen.device if gen is not None else k.device).to(k.device)
        signs = torch.zeros(b, h, nb, bs, device=k.device)
        signs[..., 0] = 1
        for i in range(1, bs):
            p = 0.5 - self.gamma * (kern[..., i, :i] * signs[..., :i]).sum(-1)
            signs[..., i] = torch.where(u[..., i] < p, 1.0, -1.0)
        signs = signs.view(b, h, -1)[..., :n]
        half = n // 2
        c_neg = ((signs < 0).cumsum(-1) == half).float().argmax(-1)
        c_pos = ((signs > 0).cumsum(-1) == half).float().argmax(-1)
        # class reaching n/2 first: its index c; keep the other class up to c (x2) and all after c (x1)
        has_neg = ((signs < 0).sum(-1) >= half) & (half > 0)
        has_pos = ((signs > 0).sum(-1) >= half) & (half > 0)
        c_neg = torch.where(has_neg, c_neg, n)
        c_pos = torch.where(has_pos, c_pos, n)
        c = torch.minimum(c_neg, c_pos)
        full_sign = torch.where(c_pos <= c_neg, 1.0, -1.0)  # the class that filled first
        pos = torch.arange(n, device=k.device)
        before = pos <= c.unsqueeze(-1)
        keep_mask = torch.where(before, signs != full_sign.unsqueeze(-1), torch.ones_like(before))
        mult_all = torch.where(before, 2.0, 1.0)
        # exactly n - n//2 >= n/2 candidates; keep the first `n - half` of them in position order
        order = torch.argsort((~keep_mask).float(), dim=-1, stable=True)[..., : n - half]
        order = order.sort(-1).values
        return order, mult_all.gather(2, order)


# ----------------------------------------------------------------------------- factory
@dataclass
class PerLayerPress(BasePress):
    """One press per attention layer: ``presses[i]`` compresses layer i, ``default`` (None: no
    compression) every other layer. ``compression_ratio`` is the default press's (for kvpress's
    ``ComposedPress`` and rows)."""

    presses: dict[int, BasePress] = field(default_factory=dict)
    default: BasePress | None = None

    def __post_init__(self) -> None:
        self.compression_ratio = getattr(self.default, "compression_ratio", 0.0)

    def post_init_from_model(self, model) -> None:
        for p in {id(p): p for p in [*self.presses.values(), self.default] if p is not None}.values():
            p.post_init_from_model(model)

    def forward_hook(self, module, input, kwargs, output):
        press = self.presses.get(module.layer_idx, self.default)
        return output if press is None else press.forward_hook(module, input, kwargs, output)


def kvpress_class(name: str):
    """kvpress press class from a short name (``snapkv``) or ``kvpress:<ClassName>``."""
    import kvpress

    cls_name = name.split(":", 1)[1] if name.startswith("kvpress:") else KVPRESS_NAMES.get(name)
    if cls_name is None or not hasattr(kvpress, cls_name):
        known = ", ".join([*OWN_PRESSES, *KVPRESS_NAMES, "kvpress:<ClassName>"])
        raise ValueError(f"unknown task.press={name!r}; available: {known}.")
    return getattr(kvpress, cls_name)


def make_press(name: str, method: AttentionMethod, ratio: float, *, sink_size: int = 32, window_size: int = 32,
               bin_r: int = 12, ratio_of: str = "all", generator: torch.Generator | None = None,
               kwargs: dict | None = None):
    """The press for ``task.press=name`` (None for no compression). ``method``: the run's suite
    method (used when name is ``method``). ``per_layer``: ``kwargs`` maps ``default`` to a press
    name and press names to lists of layer indices (``{default: streaming_llm, method: [3, 7]}``);
    each is built with the same ratio and knobs."""
    kwargs = dict(kwargs or {})
    if not 0 <= float(ratio) < 1:
        raise ValueError(f"task.compression_ratio must lie in [0, 1), got {ratio}.")
    common = dict(compression_ratio=float(ratio), sink_size=int(sink_size), window_size=int(window_size),
                  ratio_of=ratio_of)
    if name == "none":
        return None
    if name == "per_layer":
        return _per_layer(method, ratio, dict(sink_size=sink_size, window_size=window_size, bin_r=bin_r,
                                              ratio_of=ratio_of, generator=generator), kwargs)
    if name == "method":
        if method.name == "exact":
            return None  # the uncompressed baseline
        if method.name == "wildcat":
            return WildCatPress(method=method, bin_r=int(bin_r), **common, **kwargs)
        if type(method).compress is AttentionMethod.compress:
            raise ValueError(f"method={method.name} does not implement compress(); choose a method with a KV-cache "
                             f"mode (wildcat) or set task.press to a press name ({', '.join(OWN_PRESSES[1:])}, "
                             f"{', '.join(KVPRESS_NAMES)}).")
        return MethodPress(method=method, **common, **kwargs)
    if name == "uniform":
        return UniformPress(generator=generator, **common, **kwargs)
    if name == "balance_kv":
        return BalanceKVPress(generator=generator, **common, **kwargs)
    cls = kvpress_class(name)
    try:
        return cls(compression_ratio=float(ratio), **kwargs)
    except TypeError as e:
        raise ValueError(f"task.press={name} ({cls.__name__}) cannot be built with compression_ratio and "
                         f"task.press_kwargs={kwargs}: {e}") from e


def _per_layer(method: AttentionMethod, ratio: float, knobs: dict, spec: dict) -> PerLayerPress:
    """``task.press=per_layer`` from ``task.press_kwargs`` (see ``make_press``)."""
    spec = dict(spec)
    default = spec.pop("default", "none")
    if not isinstance(default, str) or default == "per_layer":
        raise ValueError(f"task.press_kwargs.default must be a press name, got {default!r}.")
    built, seen = {}, set()
    for name, layers in spec.items():
        if name == "per_layer" or not isinstance(layers, (list, tuple)) or not all(
                isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in layers):
            raise ValueError(f"task.press_kwargs.{name} must be a list of layer indices >= 0 (per_layer), got {layers!r}.")
        if seen & set(layers):
            raise ValueError(f"task.press_kwargs: layers {sorted(seen & set(layers))} are given two presses.")
        seen |= set(layers)
        press = make_press(str(name), method, ratio, **knobs)
        built.update({int(i): press for i in layers})
    return PerLayerPress(presses=built, default=make_press(default, method, ratio, **knobs))
