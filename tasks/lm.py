"""Causal language modelling with the method swapped into the model's attention (``task=lm``).

The question: what does an attention approximation cost a language model? A causal decoder
(SmolLM2-135M-Instruct from the packaged GGUF by default, ``tiny_llama`` for tests, or any local
Hugging Face decoder) reads windows of held-out local text (``tasks/datasets/local_text.py``) of
``task.context_length`` tokens; in the layers ``task.layers`` the run's method replaces causal
attention during the forward (``tasks/adapters/hf.py``), every other layer keeps the model's own.
``task.layers`` takes the adapters' layer specs (``all``, ``every:K``, ``first:K`` / ``last:K``, indices;
``last:K`` is HyperAttention's patching of the final layers, ``patch_config='last'``).

One row per context length, on ``task.num_samples`` windows (the same windows for every method):

- ``ppl`` (and ``nll``) of the next-token predictions, ``exact_ppl`` of the untouched model
  (its own attention implementation) on the same windows, ``ppl_increase`` = the difference;
- ``top1_agreement``: percent of positions whose most likely next token equals the untouched
  model's;
- ``kept_fraction`` (methods that report one: LATTE), averaged over the swapped layers and windows;
- ``attn_latency_ms`` / ``exact_attn_latency_ms`` / ``attn_speedup`` [``_lo``, ``_hi``]: the
  swapped attention calls of the first ``task.timed_layers`` selected layers, on the q, k, v they
  received in a forward of the first window, method and exact timed interleaved (one sample = all
  those calls); ``task.timed_layers: null`` times none (no capture forward: perplexity only);
- ``latency_ms`` / ``exact_latency_ms`` / ``speedup``: the whole forward (decoder, no LM head),
  method against the untouched model, interleaved, for contexts up to ``task.time_forward_max_n``.

Per-layer instances: each swapped layer gets its own instance of the method (``methods.rebuild``,
same seed). LATTE with ``method.thresholds_path`` and no ``method.threshold_layer`` reads each
layer's thresholds from the file's entry named after the layer's module (as
``runners/train_thresholds.py`` writes them).

The untouched model's scores are computed once per process for each (model, window) and reused
by the later jobs of a sweep. Logits are formed in chunks of 1,024 positions from the decoder's
last hidden state through the output embedding (no n × vocabulary tensor at 8k contexts); models
whose head does more than that projection (logit soft-capping) are not supported.
"""
from __future__ import annotations

import math
import weakref
from typing import Any, Iterator, Mapping

import torch
from torch import Tensor

from attnbench import methods
from attnbench.core.knobs import Choice, Int, ListOf, Mapping_, Str
from attnbench.core.measure import Meter
from attnbench.core.progress import Progress
from attnbench.methods.base import AttentionMethod

from attnbench.tasks import adapters, register
from attnbench.tasks.adapters import hf
from attnbench.tasks.adapters.base import end_spec
from attnbench.tasks.base import Task, capped
from attnbench.tasks.datasets.local_text import PARTS, local_text
from attnbench.tasks.models.causal_lm import load_model

LOGIT_CHUNK = 1024  # positions per LM-head chunk
# {model: {(text, L, num_samples, window): scores of the untouched model}}, reused across a sweep's jobs
_EXACT_SCORES: "weakref.WeakKeyDictionary[torch.nn.Module, dict[tuple, tuple[float, int, Tensor]]]" = weakref.WeakKeyDictionary()


def check_layers(key: str, v: Any) -> Any:
    """``task.layers``: 'first:K' / 'last:K' need an integer K >= 1 (checked here, before the model
    loads); every spec is resolved against the model by ``tasks.adapters.base.resolve_layers``."""
    end_spec(v, key)
    return v


@register("lm")
class LanguageModelTask(Task):
    """Perplexity and next-token agreement of a causal LM with the method in ``task.layers``."""

    knobs = {
        "model": Str(),
        "dtype": Choice("auto", "float32", "float16", "bfloat16"),
        "layers": check_layers,  # 'all' | 'every:K' | 'first:K' | 'last:K' | layer indices / labels (checked against the model)
        "context_length": ListOf(Int(2)),
        "num_samples": Int(1),
        "text": Choice(*PARTS),
        "timed_layers": Int(0, optional=True),
        "time_forward_max_n": Int(0),
        "method_max_n": Mapping_(),
    }

    def num_rows(self) -> int:
        return len(self.cfg["context_length"])

    def __init__(self, cfg: Mapping[str, Any], device: torch.device, seed: int = 0, *, model=None, tokenizer=None):
        super().__init__(cfg, device, seed)
        cfg = self.cfg
        dt = cfg["dtype"]
        if dt == "auto":
            dt = "bfloat16" if device.type == "cuda" else "float32"
        self.dtype = getattr(torch, dt)
        if model is None:
            model, tokenizer = load_model(cfg["model"], self.dtype, device)
        self.model, self.tok = model, tokenizer
        self.limit = int(getattr(model.config, "max_position_embeddings", 0) or 10**9)
        for n in cfg["context_length"]:
            if n > self.limit:
                raise ValueError(f"task.context_length={n} is longer than the model's context ({self.limit} tokens).")
        # hooks on the selected layers (exact until run() sets the method); the untouched model
        # is the one with its own attention implementation (hf.set_native). A model kept from an
        # earlier job of the sweep loses that job's hooks first.
        hf.unswap(self.model)
        self.hooks = hf.swap(self.model, None, layers=cfg["layers"], what="task.layers")
        self.labels = list(self.hooks)
        self._windows: dict[int, list[Tensor]] = {}

    # --- data ------------------------------------------------------------------------------
    def windows(self, length: int) -> list[Tensor]:
        """``task.num_samples`` (1, length) token windows of consecutive local text (BOS first
        when the tokenizer has one)."""
        if length not in self._windows:
            count = self.cfg["num_samples"]
            bos = [self.tok.bos_token_id] if self.tok.bos_token_id is not None else []
            span = length - len(bos)
            text = local_text(min_chars=8 * span * count + 10_000, part=self.cfg["text"])
            ids = self.tok.encode(text, add_special_tokens=False)
            if span * count > len(ids):
                raise ValueError(f"the local text ({self.cfg['text']} part) has {len(ids)} tokens; "
                                 f"task.context_length={length} × task.num_samples={count} needs {span * count}.")
            self._windows[length] = [torch.tensor([bos + ids[i * span:(i + 1) * span]], device=self.device)
                                     for i in range(count)]
        return self._windows[length]

    # --- model passes ----------------------------------------------------------------------
    def _hidden(self, ids: Tensor) -> Tensor:
        return self.model.get_decoder()(input_ids=ids, use_cache=False).last_hidden_state

    def _scores(self, ids: Tensor) -> tuple[float, int, Tensor]:
        """(summed NLL of tokens 1..L-1, their count, the argmax next token at positions 0..L-2)."""
        h = self._hidden(ids)
        head = self.model.get_output_embeddings()
        targets = ids[0, 1:]
        nll, top = 0.0, []
        for s in range(0, targets.numel(), LOGIT_CHUNK):
            logits = head(h[0, s:s + LOGIT_CHUNK][: targets.numel() - s]).float()
            nll += float(torch.nn.functional.cross_entropy(logits, targets[s:s + LOGIT_CHUNK], reduction="sum"))
            top.append(logits.argmax(-1))
        return nll, targets.numel(), torch.cat(top)

    def _exact_scores(self, length: int, i: int, ids: Tensor) -> tuple[float, int, Tensor]:
        known = _EXACT_SCORES.setdefault(self.model, {})
        key = (self.cfg["text"], length, self.cfg["num_samples"], i)
        if key not in known:
            hf.set_native(self.model, True)
            try:
                known[key] = self._scores(ids)
            finally:
                hf.set_native(self.model, False)
        return known[key]

    def _per_layer(self, method: AttentionMethod) -> dict[str, AttentionMethod]:
        """One instance per swapped layer; LATTE's thresholds file entry named after the layer."""
        hp = method.hparams()
        per_file = bool(hp.get("thresholds_path")) and "threshold_layer" in hp and hp["threshold_layer"] is None
        return {lab: methods.rebuild(method, **({"threshold_layer": self.hooks[lab].name} if per_file else {}))
                for lab in self.labels}

    # --- the run ---------------------------------------------------------------------------
    @torch.no_grad()
    def run(self, method: AttentionMethod, meter: Meter) -> Iterator[dict[str, Any]]:
        if not method.supports_causal:
            raise ValueError(f"task=lm needs causal attention; method {method.name} is bidirectional only.")
        lengths = capped(self.cfg, method.name, self.cfg["context_length"], "context_length")
        approx = self._per_layer(method)
        adapters.set_method(self.hooks, approx, meter, timing=False)
        hf.set_native(self.model, False)
        cfg = self.model.config
        heads = cfg.num_attention_heads
        for length in lengths:
            for m in approx.values():  # every row's outputs independent of how often the meter called before
                m.reseed(method._seed)
            windows = self.windows(length)
            progress = Progress(f"lm: {method.name} at {length} tokens, window", len(windows))
            nll = ex_nll = 0.0
            count = agree = 0
            kept: list[float] = []
            for i, ids in enumerate(windows):
                e_nll, _, e_top = self._exact_scores(length, i, ids)
                m_nll, c, m_top = self._scores(ids)
                nll, ex_nll, count = nll + m_nll, ex_nll + e_nll, count + c
                agree += int((m_top == e_top).sum())
                kept += [m.extra_stats()["kept_fraction"] for m in approx.values() if "kept_fraction" in m.extra_stats()]
                progress.step()
            row: dict[str, Any] = {
                "n": length, "context_length": length, "batch": 1, "heads": heads,
                "head_dim": getattr(cfg, "head_dim", None) or cfg.hidden_size // heads, "causal": True,
                "layers": ",".join(self.labels), "layers_swapped": len(self.labels),
                "num_layers": len(hf.candidates(self.model)), "num_samples": len(windows), "tokens": count,
                "nll": nll / count, "exact_nll": ex_nll / count,
                "ppl": math.exp(nll / count), "exact_ppl": math.exp(ex_nll / count),
            }
            row["ppl_increase"] = row["ppl"] - row["exact_ppl"]
            row["top1_agreement"] = 100.0 * agree / count
            first = next(iter(approx.values())).extra_stats()
            row.update({k: v for k, v in first.items() if not k.startswith("kept_fraction")})
            if kept:
                row["kept_fraction"] = sum(kept) / len(kept)
            row.update(self._timing(approx, windows[0], meter, length))
            yield row

    def _timing(self, approx: Mapping[str, AttentionMethod], ids: Tensor, meter: Meter, length: int) -> dict[str, Any]:
        """Paired latencies: the timed layers' attention calls on captured inputs (none when
        ``task.timed_layers`` is null), then the forward."""
        row: dict[str, Any] = {}
        if self.cfg["timed_layers"] is not None:
            row.update(self._attention_timing(approx, ids, meter, length))
        if length <= self.cfg["time_forward_max_n"]:
            def forward(native: bool) -> Tensor:
                hf.set_native(self.model, native)
                return self._hidden(ids)

            try:
                _, _, fwd = meter.compare(lambda: forward(False), lambda: forward(True), label=f"forward{length}")
            finally:
                hf.set_native(self.model, False)
            row.update(fwd.columns())
            row["tokens_per_s"] = length / (fwd.method.median_ms / 1e3) if fwd.method.median_ms > 0 else math.nan
        return row

    def _attention_timing(self, approx: Mapping[str, AttentionMethod], ids: Tensor, meter: Meter,
                          length: int) -> dict[str, Any]:
        """The first ``task.timed_layers`` swapped layers' attention calls (0: all), method and exact
        interleaved on the q, k, v they received in a forward of ``ids``."""
        row: dict[str, Any] = {}
        k = self.cfg["timed_layers"] or len(self.labels)
        timed = {lab: self.hooks[lab] for lab in self.labels[:k]}
        captured = adapters.capture(timed, lambda: self._hidden(ids))
        exact = methods.build("exact")

        def calls(per_layer: Mapping[str, AttentionMethod] | None, caps=captured) -> list[Tensor]:
            return [(per_layer[lab] if per_layer else exact)(c.q, c.k, c.v, causal=c.causal, scale=c.scale)
                    for lab, c in caps.items()]

        _, _, comp = meter.compare(lambda: calls(approx), lambda: calls(None), label=f"attn{length}")
        row.update(comp.columns("attn_"))
        row["timed_layers"] = ",".join(captured)
        return row
