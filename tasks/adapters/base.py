"""The family-independent part of the adapters: method calls, wrappers, layer selection, swapping.

See the package docstring (``tasks/adapters/__init__.py``) for the API.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Mapping, NamedTuple

import torch
from torch import Tensor, nn

from attnbench.core.measure import Meter
from attnbench.methods.base import AttentionMethod

# Attribute of a Hugging Face attention module holding its hook (see hf.py); ``wrappers`` finds them.
HF_HOOK_ATTR = "_attnbench_hook"


class MethodCall:
    """Calls ``method`` on (q, k, v); when a meter is attached and ``timing`` is on, records
    the call's latency under ``label`` (synchronised on GPU)."""

    def __init__(self, method: AttentionMethod, label: str, meter: Meter | None = None) -> None:
        self.method = method
        self.label = label
        self.meter = meter
        self.timing = meter is not None

    def __call__(self, q: Tensor, k: Tensor, v: Tensor, *, causal: bool = False, scale: float | None = None) -> Tensor:
        if self.timing and self.meter is not None:
            return self.meter.timed(self.label, lambda: self.method(q, k, v, causal=causal, scale=scale))
        return self.method(q, k, v, causal=causal, scale=scale)


class Captured(NamedTuple):
    """What a layer's attention received in its last forward with ``capture`` on: q (B, H, Nq, D),
    k (B, H, Nk, D), v (B, H, Nk, Dv) (GQA heads expanded), the scale and causal flag it used, and
    its output (B, H, Nq, Dv)."""

    q: Tensor
    k: Tensor
    v: Tensor
    scale: float
    causal: bool
    out: Tensor | None = None


class Swapped(nn.Module):
    """Base of the module wrappers: same submodules (so the same state-dict names) as the module
    they replace, q, k, v computed exactly as there, the attention itself through ``self.call``.

    ``label``/``name``: the layer's label and module name (set by ``swap``); ``scale``: the scale
    passed to the method; ``capture``: when true, each forward stores a ``Captured`` in ``captured``.
    """

    def __init__(self, call: MethodCall, scale: float) -> None:
        super().__init__()
        self.call = call
        self.scale = float(scale)
        self.capture = False
        self.captured: Captured | None = None
        self.label = ""
        self.name = ""
        self._saved_call: tuple[Any] | None = None  # set_exact's stash

    def _attend(self, q: Tensor, k: Tensor, v: Tensor, causal: bool = False) -> Tensor:
        out = self.call(q, k, v, causal=causal, scale=self.scale)
        if self.capture:
            self.captured = Captured(q.detach(), k.detach(), v.detach(), self.scale, causal, out.detach())
        return out


@dataclass(frozen=True)
class Family:
    """A model family whose attention modules are replaced by wrappers: ``match(module)`` tells a
    swappable module, ``wrap(module, call)`` builds its wrapper, ``label(module_name)`` its short
    column-safe label."""

    name: str
    match: Callable[[nn.Module], bool]
    wrap: Callable[[nn.Module, MethodCall], Swapped]
    label: Callable[[str], str]


# --------------------------------------------------------------------------------------------
# Module replacement
# --------------------------------------------------------------------------------------------
def replace_modules(
    model: nn.Module,
    match: Callable[[str, nn.Module], bool],
    make: Callable[[str, nn.Module], nn.Module],
    layers: Iterable[str] | None = None,
) -> list[str]:
    """Replace each submodule for which ``match(name, module)`` holds (and whose name is in
    ``layers`` when given) by ``make(name, module)``; return the replaced names.

    Raises ``ValueError`` naming the candidates when a requested layer does not exist.
    """
    candidates = [name for name, mod in model.named_modules() if name and match(name, mod)]
    wanted = list(candidates) if layers is None else [str(x) for x in layers]
    missing = [w for w in wanted if w not in candidates]
    if missing:
        raise ValueError(f"task.layers names {missing}, which are not attention layers; candidates: {candidates}.")
    for name in wanted:
        old = model.get_submodule(name)
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, attr, make(name, old))
    return wanted


@torch.no_grad()
def copy_weights(src: nn.Module, dst: nn.Module) -> None:
    """Load ``src``'s state into ``dst`` (wrappers keep the original parameter names)."""
    dst.load_state_dict(src.state_dict())


# --------------------------------------------------------------------------------------------
# Layer selection
# --------------------------------------------------------------------------------------------
def label_candidates(named: Iterable[tuple[str, str]]) -> dict[str, str]:
    """{label: module name} from (module name, label) pairs in model order; a label met twice
    falls back to the module name with dots as underscores."""
    out: dict[str, str] = {}
    for name, label in named:
        out[label if label not in out else name.replace(".", "_")] = name
    return out


def candidates(model: nn.Module, families: Iterable[Family]) -> dict[str, str]:
    """{label: module name} of every not yet swapped attention module of ``families``, in model order."""
    fams = tuple(families)
    named = []
    for name, mod in model.named_modules():
        fam = _family_of(mod, fams) if name and not isinstance(mod, Swapped) else None
        if fam is not None:
            named.append((name, fam.label(name)))
    return label_candidates(named)


def _family_of(mod: nn.Module, families: tuple[Family, ...]) -> Family | None:
    for fam in families:
        if fam.match(mod):
            return fam
    return None


ENDS = ("first", "last")  # layer specs 'first:K' / 'last:K'


def end_spec(spec: Any, what: str = "layers") -> tuple[str, int] | None:
    """('first' | 'last', K) for a ``'first:K'`` / ``'last:K'`` layer spec, None for any other spec;
    ValueError (naming ``what``) unless K is an integer >= 1. Needs no model: a config check can call it."""
    if not (isinstance(spec, str) and spec.split(":", 1)[0] in ENDS):
        return None
    end, _, k = spec.partition(":")
    if not k.isdigit() or int(k) < 1:
        raise ValueError(f"{what}={spec!r}: '{end}:K' needs an integer K >= 1.")
    return end, int(k)


def resolve_layers(cands: Mapping[str, str], spec: Any = None, what: str = "layers") -> list[str]:
    """Labels selected by ``spec`` among ``cands`` ({label: module name}, model order):

    - ``None`` or ``"all"``: every candidate;
    - ``"every:K"``: every K-th candidate, starting with the first (K=2: 0, 2, 4 …);
    - ``"first:K"`` / ``"last:K"``: the first / last K candidates (HyperAttention patches an LLM's
      final layers: ``patch_config='last'``);
    - a list (or a comma-separated string) of labels, module names or integer positions in
      model order (for Hugging Face models: the layer index).

    An item that names no candidate raises ``ValueError`` listing the candidates (``what``
    names the setting in the message, e.g. ``task.layers``)."""
    labels = list(cands)
    if spec is None or spec == "all":
        return labels
    if isinstance(spec, str) and spec.startswith("every:"):
        try:
            step = int(spec.split(":", 1)[1])
        except ValueError:
            step = 0
        if step < 1:
            raise ValueError(f"{what}={spec!r}: 'every:K' needs an integer K >= 1; candidates: {labels}.")
        return labels[::step]
    ends = end_spec(spec, what)
    if ends is not None:
        end, k = ends
        if k > len(labels):
            raise ValueError(f"{what}={spec!r} asks for {k} layers; the model has {len(labels)}.")
        return labels[:k] if end == "first" else labels[-k:]
    if isinstance(spec, (str, int)):
        items: list[Any] = [s.strip() for s in spec.split(",")] if isinstance(spec, str) else [spec]
    else:
        items = list(spec)
    by_module = {mod: lab for lab, mod in cands.items()}
    out: list[str] = []
    for it in items:
        lab = None
        if isinstance(it, int) or (isinstance(it, str) and it.isdigit() and it not in cands):
            i = int(it)
            lab = labels[i] if 0 <= i < len(labels) else None
        else:
            it = str(it)
            lab = it if it in cands else by_module.get(it)
        if lab is None:
            raise ValueError(f"{what} names {it!r}, which is not an attention layer; candidates: {labels}.")
        if lab not in out:
            out.append(lab)
    return out


def per_layer(method: AttentionMethod | Mapping[str, AttentionMethod] | None, labels: list[str]) -> dict[str, AttentionMethod]:
    """{label: method} for ``labels``: one method for all (default: one shared exact instance),
    or a mapping that must cover every label."""
    if method is None:
        from attnbench import methods

        method = methods.build("exact")
    if isinstance(method, Mapping):
        missing = [lab for lab in labels if lab not in method]
        if missing:
            raise ValueError(f"no method given for layers {missing} (methods given for {list(method)}).")
        return {lab: method[lab] for lab in labels}
    return {lab: method for lab in labels}


def default_layers(method: Any, layers: Any) -> Any:
    """The layer spec when ``swap`` got a per-layer mapping and no ``layers``: the mapping's keys."""
    return list(method) if layers is None and isinstance(method, Mapping) else layers


# --------------------------------------------------------------------------------------------
# Swapping (module families)
# --------------------------------------------------------------------------------------------
def swap(
    model: nn.Module,
    method: AttentionMethod | Mapping[str, AttentionMethod] | None = None,
    *,
    families: Iterable[Family],
    layers: Any = None,
    meter: Meter | None = None,
) -> dict[str, Swapped]:
    """Replace the attention modules of ``families`` selected by ``layers`` (see ``resolve_layers``;
    default: all, or the keys of a per-layer mapping) by wrappers calling ``method`` (one method,
    a {label: method} mapping, or None for exact) through a ``MethodCall`` labelled with the
    layer's label; return {label: wrapper} in selection order."""
    fams = tuple(families)
    cands = candidates(model, fams)
    if not cands:
        raise ValueError(f"{type(model).__name__} has no attention module of the kinds "
                         f"{[f.name for f in fams]} to swap.")
    labels = resolve_layers(cands, default_layers(method, layers))
    calls = per_layer(method, labels)
    label_of = {cands[lab]: lab for lab in labels}
    made: dict[str, Swapped] = {}

    def make(name: str, mod: nn.Module) -> nn.Module:
        lab = label_of[name]
        fam = _family_of(mod, fams)
        assert fam is not None
        w = fam.wrap(mod, MethodCall(calls[lab], lab, meter))
        w.label, w.name = lab, name
        made[lab] = w
        return w

    replace_modules(model, lambda n, m: n in label_of, make, layers=list(label_of))
    return {lab: made[lab] for lab in labels}


# --------------------------------------------------------------------------------------------
# Working with swapped layers (every family, Hugging Face hooks included)
# --------------------------------------------------------------------------------------------
def wrappers(model: nn.Module) -> dict[str, Any]:
    """{label: wrapper} of every swapped layer of ``model`` (module wrappers and Hugging Face hooks)."""
    found: dict[str, Any] = {}
    for _, mod in model.named_modules():
        w = mod if isinstance(mod, Swapped) else getattr(mod, HF_HOOK_ATTR, None)
        if w is not None:
            found[w.label] = w
    return found


def set_method(
    swapped: Mapping[str, Any],
    method: AttentionMethod | Mapping[str, AttentionMethod],
    meter: Meter | None = None,
    *,
    prefix: str = "",
    timing: bool | None = None,
) -> None:
    """Give every wrapper of ``swapped`` ({label: wrapper}) a new ``MethodCall`` of ``method`` (one
    for all, or {label: method}) labelled ``prefix + label``; ``timing`` overrides the call's
    default (timed when a meter is attached)."""
    calls = per_layer(method, list(swapped))
    for lab, w in swapped.items():
        call = MethodCall(calls[lab], prefix + lab, meter)
        if timing is not None:
            call.timing = timing
        w.call = call


_EXACT: list[AttentionMethod] = []


def set_exact(swapped: Mapping[str, Any], exact: bool = True) -> None:
    """``exact=True``: run exact attention in every wrapper of ``swapped``, keeping its method
    aside; ``exact=False``: give the kept methods back. (Hugging Face models can also go back to
    their own attention implementation with ``hf.set_native``.)"""
    if not _EXACT:
        from attnbench import methods

        _EXACT.append(methods.build("exact"))
    for lab, w in swapped.items():
        if exact:
            if w._saved_call is None:
                w._saved_call = (w.call,)
            old = w._saved_call[0]
            w.call = MethodCall(_EXACT[0], "exact_" + lab, getattr(old, "meter", None))
        elif w._saved_call is not None:
            w.call = w._saved_call[0]
            w._saved_call = None


@contextlib.contextmanager
def capturing(swapped: Mapping[str, Any]) -> Iterator[None]:
    """Within the block, every wrapper of ``swapped`` stores what its attention gets in ``captured``."""
    for w in swapped.values():
        w.capture = True
    try:
        yield
    finally:
        for w in swapped.values():
            w.capture = False


def capture(swapped: Mapping[str, Any], run: Callable[[], Any]) -> dict[str, Captured]:
    """Run ``run()`` (a forward of the model) with capture on; return {label: Captured} of
    ``swapped`` and clear their ``captured``. Raises ``RuntimeError`` for a layer ``run`` did not reach."""
    for w in swapped.values():
        w.captured = None
    with capturing(swapped):
        run()
    out: dict[str, Captured] = {}
    for lab, w in swapped.items():
        if w.captured is None:
            raise RuntimeError(f"layer {lab!r} was not called during the capture run.")
        out[lab] = w.captured
        w.captured = None
    return out
