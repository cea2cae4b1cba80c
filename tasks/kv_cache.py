"""KV-cache compression of a causal LM's prefill (``task=kv_cache``), on NVIDIA's kvpress.

The context is prefilled under a kvpress press (compressing each layer's cache right after its
attention), then the question is answered greedily from the compressed cache, with kvpress's own
``KVPressTextGenerationPipeline`` (``preprocess`` for chat template and tokenisation,
``generate_answer`` for decoding); prefill and decoding are timed separately.

Presses (``task.press``, see ``tasks/adapters/presses.py``): ``method`` (the run's suite method: WildCat's
KV-cache mode for ``method=wildcat``, no compression for ``method=exact``, ``compress()`` of any
other method), ``none``, ``uniform``, ``balance_kv``, kvpress short names (``snapkv``,
``streaming_llm``, ``pyramidkv``, ``knorm``, ``expected_attention``, ``tova``, ``random``, …) or
``kvpress:<ClassName>``, or ``per_layer`` (a press per layer, ``task.press_kwargs``).
``task.compression_ratio`` is the fraction of tokens dropped: every press keeps int(n·(1-ratio))
tokens per layer (kvpress's contract; WildCat/uniform/BalanceKV count their exact sink and window
in it). ``task.ratio_of=middle`` is the official WildCat convention instead: those presses apply
the ratio to the tokens between sink and window (``kept_fraction`` reports what was really kept).

Every row of needle / recall / ppl also carries the uncompressed cache's metrics on the same
windows (``baseline_score``, ``baseline_ppl``, …: press none, measured once per process and
model, see ``_baseline``), so a row shows its press against no compression.

Datasets (``task.dataset``):
- ``needle``: a fact "The special magic number for <city> is <7 digits>." placed at each depth of
  ``task.depths`` in ``task.context_length`` tokens of filler (Python standard-library docstrings,
  ``tasks/datasets/needle.py`` and ``local_text.py``); score = 1 when the generated answer contains
  the number (RULER-style string match; ``task.num_digits`` digits).
- ``recall``: the same facts, one per depth of ``task.depths`` (distinct cities) in each of
  ``task.num_samples`` windows of ``task.context_length`` tokens, scored by teacher-forced
  likelihood instead of generation, so that a partly damaged recall still counts: each question is
  asked with ``task.num_choices`` candidate numbers of ``task.num_digits`` digits (the true one and
  random others); ``score`` = % of questions whose true number has the highest total
  log-likelihood of its answer tokens (chance 100/num_choices), ``digit_accuracy`` = % of the true
  answer's digit tokens that are the argmax under teacher forcing, ``answer_nll`` = mean NLL per
  token of the true answer. Each candidate is scored on its own copy of the compressed cache
  (``fork_cache``), so the compressed cache itself is never changed.
- ``ppl``: perplexity of ``task.ppl_tokens`` held-out tokens given a compressed prefix of
  ``task.context_length`` tokens of the same filler.
- ``longbench`` / ``longbench_e``: LongBench(-E) from the local Hugging Face cache
  (``task.dataset_path``, default ``Xnhyacinth/LongBench`` as kvpress / WildCat use), scored with
  LongBench's own metrics (``tasks/datasets/longbench.py``: ROUGE-L through the ``rouge`` package,
  code similarity through ``thefuzz``, as LongBench does).

This module keeps the model loading and the task; data and metrics live in ``tasks/datasets/``
(their names are re-exported here for older imports).
"""
from __future__ import annotations

import contextlib
import copy
import json
import math
import weakref
from typing import Any, Callable, Iterator, Mapping

import torch

from attnbench.core.knobs import Choice, Float, Int, ListOf, Mapping_, Str
from attnbench.methods.base import AttentionMethod
from attnbench.core.measure import Meter

from attnbench.tasks import register
from attnbench.tasks.base import Task
from attnbench.tasks.datasets.longbench import (LONGBENCH_E_SUBSETS, LONGBENCH_SUBSETS, METRICS, classification, code_sim,  # noqa: F401
                                 count, load_longbench, longbench_score, qa_f1, retrieval, rouge_l)
from attnbench.tasks.datasets.needle import CITIES, check_recall, filler_ids, needle_sample, recall_sample  # noqa: F401
from attnbench.tasks.models.causal_lm import byte_tokenizer, load_model, tiny_llama  # noqa: F401 (older imports)

DATASETS = ("needle", "recall", "ppl", "longbench", "longbench_e")
PRESS_KNOBS = ("press", "compression_ratio", "sink_size", "window_size", "bin_r", "press_kwargs", "ratio_of")
BASELINE_METRICS = ("score", "digit_accuracy", "answer_nll", "ppl", "nll")  # copied as baseline_<name>
# uncompressed rows per model (weakly held: a model freed drops its rows), then per config key
_baselines: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def cache_mb(cache) -> float:
    return sum(t.numel() * t.element_size() for layer in cache.layers for t in (layer.keys, layer.values)
               if t is not None) / 2**20


def kept_per_layer(cache) -> list[int]:
    """Cached tokens of each layer (after compression)."""
    return [int(layer.keys.shape[2]) for layer in cache.layers if getattr(layer, "keys", None) is not None]


# ----------------------------------------------------------------------------- the task
@register("kv_cache")
class KVCacheTask(Task):
    """Compress the prefill KV cache with a press; score answers, perplexity, memory, latency."""

    knobs = {
        "model": Str(),
        "dtype": Choice("auto", "float32", "float16", "bfloat16"),
        "press": Str(),
        "compression_ratio": Float(0, 1, hi_open=True),
        "ratio_of": Choice("all", "middle"),
        "sink_size": Int(0),
        "window_size": Int(0),
        "bin_r": Int(1),
        "press_kwargs": Mapping_(),
        "dataset": Choice(*DATASETS),
        "context_length": ListOf(Int(1)),
        "depths": ListOf(Float(0, 1)),
        "needles_per_depth": Int(1),
        "num_digits": Int(1, 18),
        "num_choices": Int(2),
        "max_new_tokens": Int(1),
        "ppl_tokens": Int(2),
        "num_samples": Int(1),
        "dataset_path": Str(),
        "subsets": ListOf(Choice(*METRICS), optional=True),  # null: all of the dataset's subsets
        "limit": Int(1, optional=True),
        "max_context_length": Int(1, optional=True),
    }

    def num_rows(self) -> int | None:
        return len(self.cfg["context_length"]) if self.dataset in ("needle", "recall", "ppl") else None

    def __init__(self, cfg: Mapping[str, Any], device: torch.device, seed: int = 0, *, model=None, tokenizer=None):
        super().__init__(cfg, device, seed)
        cfg = self.cfg
        self.dataset = cfg["dataset"]
        dt = cfg["dtype"]
        if dt == "auto":
            dt = "bfloat16" if device.type == "cuda" else "float32"
        self.dtype = getattr(torch, dt)
        self.ratio = cfg["compression_ratio"]
        if self.dataset == "recall":
            check_recall(cfg["depths"], cfg["num_digits"], cfg["num_choices"])
        self.meter = Meter.quick(device)  # replaced by the run's meter in run()
        if model is None:
            model, tokenizer = load_model(cfg["model"], self.dtype, device)
        self.model, self.tok = model, tokenizer
        from kvpress import KVPressTextGenerationPipeline

        from attnbench.tasks.adapters.presses import register_weighted_attention

        self.model.set_attn_implementation(register_weighted_attention())
        self.pipe = KVPressTextGenerationPipeline(model=self.model, tokenizer=self.tok, device=device)

    # --- presses -------------------------------------------------------------------------
    def make_press(self, method: AttentionMethod):
        from attnbench.tasks.adapters.presses import make_press

        cfg = self.cfg
        gen = torch.Generator().manual_seed(self.seed)
        kwargs = {str(k): v for k, v in cfg["press_kwargs"].items()}
        return make_press(cfg["press"], method, self.ratio, sink_size=cfg["sink_size"], window_size=cfg["window_size"],
                          bin_r=cfg["bin_r"], ratio_of=cfg["ratio_of"], generator=gen, kwargs=kwargs)

    def _timed(self, label: str, fn):
        """Run ``fn`` once through the meter (synchronised); return its output and seconds."""
        out = self.meter.timed(label, fn)
        return out, self.meter.results[label].samples_ms[-1] / 1e3

    @torch.no_grad()
    def prefill(self, press, context_ids: torch.Tensor):
        """Prefill under ``press``; returns (cache, last hidden state, seconds, full-cache MB)."""
        from transformers import DynamicCache

        cache = DynamicCache()

        def run_prefill():
            with press(self.model) if press is not None else contextlib.nullcontext():
                return self.model.model(input_ids=context_ids, past_key_values=cache)

        out, secs = self._timed("prefill", run_prefill)
        n = context_ids.shape[1]
        cfg = self.model.config
        kvh = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
        hd = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        full_mb = 2 * len(cache.layers) * context_ids.shape[0] * kvh * n * hd * self.dtype.itemsize / 2**20
        return cache, out.last_hidden_state[:, -1:], secs, full_mb

    @torch.no_grad()
    def answer(self, press, context: str, question: str, answer_prefix: str, max_new_tokens: int,
               max_context_length: int | None) -> dict[str, Any]:
        """One question: prefill (compressed) then kvpress's greedy ``generate_answer``."""
        if max_context_length is None:
            max_context_length = int(getattr(self.model.config, "max_position_embeddings", 10**9))
        inp = self.pipe.preprocess(context, [question], answer_prefix, max_context_length)
        ctx = inp["context_ids"].to(self.device)
        cache, _, pre_s, full_mb = self.prefill(press, ctx)
        kept = kept_per_layer(cache)
        kept_mb = cache_mb(cache)
        calls = [0]
        hook = self.model.register_forward_pre_hook(lambda *a: calls.__setitem__(0, calls[0] + 1))
        try:
            text, dec_s = self._timed("decode", lambda: self.pipe.generate_answer(
                question_ids=inp["questions_ids"][0].to(self.device), cache=cache, context_length=ctx.shape[1],
                max_new_tokens=max_new_tokens))
        finally:
            hook.remove()
        return {"text": text, "n": ctx.shape[1], "kept": kept, "full_mb": full_mb, "kept_mb": kept_mb,
                "prefill_s": pre_s, "decode_s": dec_s, "decode_steps": max(1, calls[0])}

    @staticmethod
    def _summary(recs: list[dict[str, Any]]) -> dict[str, Any]:
        """Row columns over examples; each record's ``kept`` is its cache's tokens per layer."""
        med = lambda xs: sorted(xs)[len(xs) // 2]  # noqa: E731
        mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
        return {
            "kept_tokens": mean([mean(r["kept"]) for r in recs]),
            "kept_tokens_per_layer": [mean(list(ks)) for ks in zip(*(r["kept"] for r in recs))],
            "kept_fraction": mean([mean(r["kept"]) / r["n"] for r in recs]),
            "cache_full_mb": mean([r["full_mb"] for r in recs]),
            "cache_kept_mb": mean([r["kept_mb"] for r in recs]),
            "prefill_latency_ms": 1e3 * med([r["prefill_s"] for r in recs]),
            "decode_latency_ms": 1e3 * med([r["decode_s"] / r["decode_steps"] for r in recs]),
            "latency_ms": 1e3 * med([r["prefill_s"] + r["decode_s"] for r in recs]),
            "num_samples": len(recs),
        }

    def _common(self, press) -> dict[str, Any]:
        return {"press": type(press).__name__ if press is not None else "none", "batch": 1,
                "heads": self.model.config.num_attention_heads, "causal": True}

    # --- datasets ------------------------------------------------------------------------
    def run(self, method: AttentionMethod, meter: Meter) -> Iterator[dict[str, Any]]:
        """Prefill and decoding are timed once per example through ``meter.timed`` (a generation
        cannot be repeated on the same cache); rows carry medians over the examples."""
        self.meter = meter
        press = self.make_press(method)
        if self.dataset in ("longbench", "longbench_e"):
            yield from self.run_longbench(press, e=self.dataset == "longbench_e")
            return
        row_of = {"needle": self.needle_row, "recall": self.recall_row, "ppl": self.ppl_row}[self.dataset]
        lengths = self._lengths()
        data = self._filler(lengths)
        for length in lengths:
            row = row_of(press, length, data)
            base = self._baseline(row_of, length, data, row if press is None else None)
            row.update({f"baseline_{k}": base[k] for k in BASELINE_METRICS if k in base})
            yield row

    def _filler(self, lengths: list[int]) -> list[int]:
        """The local text's token ids the examples of every length are cut from."""
        if self.dataset == "ppl":
            return filler_ids(self.tok, (max(lengths) + self.cfg["ppl_tokens"]) * self.cfg["num_samples"])
        return filler_ids(self.tok, max(lengths) + 64)

    def _baseline(self, row_of: Callable, length: int, data: list[int], row: dict | None = None) -> dict[str, Any]:
        """The uncompressed cache's row (press none) on the same windows, kept per model and config
        (less the press knobs), seed, dtype, device and length: ``row`` when this run is the
        uncompressed one, else the kept row or a new measurement. A sweep over presses in one
        process measures it once."""
        cfg = {k: v for k, v in self.cfg.items() if k not in PRESS_KNOBS}
        key = json.dumps([cfg, self.seed, length, str(self.dtype), str(self.device)], sort_keys=True, default=str)
        rows = _baselines.setdefault(self.model, {})
        if row is not None:
            rows[key] = dict(row)
        elif key not in rows:
            rows[key] = row_of(None, length, data)
        return rows[key]

    def _lengths(self) -> list[int]:
        lengths = self.cfg["context_length"]
        limit = int(getattr(self.model.config, "max_position_embeddings", 10**9))
        for n in lengths:
            if not 1 <= n <= limit:
                raise ValueError(f"task.context_length={n} must lie in [1, {limit}] (the model's context).")
        return lengths

    def needle_row(self, press, length: int, filler: list[int]) -> dict[str, Any]:
        """The needle row of one context length (examples drawn from a generator seeded by seed and length)."""
        depths = self.cfg["depths"]
        per_depth = self.cfg["needles_per_depth"]
        rng = torch.Generator().manual_seed(self.seed * 7919 + length)
        recs, by_depth = [], {}
        for d in depths:
            for _ in range(per_depth):
                s = needle_sample(self.tok, filler, length, d, rng, self.cfg["num_digits"])
                r = self.answer(press, s["context"], s["question"], s["answer_prefix"],
                                self.cfg["max_new_tokens"], None)
                r["hit"] = float(s["answer"] in r["text"])
                recs.append(r)
                by_depth.setdefault(d, []).append(r["hit"])
        row = {"n": recs[0]["n"], "context_length": length, **self._common(press), **self._summary(recs),
               "score": 100 * sum(r["hit"] for r in recs) / len(recs)}
        row.update({f"score_d{round(100 * d):02d}": 100 * sum(v) / len(v) for d, v in by_depth.items()})
        row["answers"] = " | ".join(r["text"].strip().replace("\n", " ")[:40] for r in recs)
        return row

    # --- recall: multiple choice by likelihood ------------------------------------------------
    def fork_cache(self, cache):
        """A deep copy of ``cache`` that forward passes may extend without touching ``cache``. A
        weighted layer's attention module keeps a pointer to its cache layer (for WildCat's value
        clamp, ``presses.weighted_sdpa``): it is pointed at the copy's layer."""
        new = copy.deepcopy(cache)
        self._point_to(new)
        return new

    def _point_to(self, cache) -> None:
        """Point the attention modules' weighted-layer pointers at ``cache``'s layers."""
        for m in self.model.modules():
            if hasattr(m, "_attnbench_layer") and hasattr(m, "layer_idx") and m.layer_idx < len(cache.layers):
                layer = cache.layers[m.layer_idx]
                if hasattr(layer, "vmin"):
                    m._attnbench_layer = layer

    @torch.no_grad()
    def choice_logprobs(self, cache, context_length: int, question_ids: torch.Tensor,
                        choices: list[str]) -> list[dict[str, Any]]:
        """Per candidate answer: the log-probability of each of its tokens (`` <number>``) after the
        question, teacher-forced on a copy of the (compressed) ``cache`` of ``context_length``
        context tokens. Returns ids, token_logprobs, logprob (their sum) and argmax_hit (per token:
        it is the model's argmax).

        One forward pass scores every candidate: the question, then each candidate's tokens as its
        own branch (a tree mask: a branch sees the cache, the question and itself, causally; its
        positions continue the question's), as if each were decoded alone on its own copy. (One
        difference: WildCat's value clamp uses the running value range of everything appended, so
        other branches' values count in it too; it matters only where they set a new extreme.) When
        the layers kept different numbers of tokens (one mask cannot serve them), each candidate is
        decoded on its own copy instead."""
        try:
            return self._choice_logprobs(cache, context_length, question_ids, choices)
        finally:
            self._point_to(cache)  # the pointers back at the cache itself, not at a discarded copy

    def _choice_logprobs(self, cache, context_length: int, question_ids: torch.Tensor, choices: list[str],
                         tree: bool = True) -> list[dict[str, Any]]:
        dev = self.device
        q = question_ids.reshape(-1).tolist()
        answers = [self.tok.encode(" " + c, add_special_tokens=False) for c in choices]
        kept = {layer.keys.shape[2] for layer in cache.layers}
        rows: list[list[int]] = []  # per candidate: rows of the logits that predict its tokens
        if tree and len(kept) == 1:
            ids, pos, owner = list(q), list(range(len(q))), [-1] * len(q)
            for i, a in enumerate(answers):
                rows.append([len(q) - 1] + list(range(len(ids), len(ids) + len(a) - 1)))
                ids += a[:-1]
                pos += range(len(q), len(q) + len(a) - 1)
                owner += [i] * (len(a) - 1)
            t = len(ids)
            own = torch.tensor(owner)
            r = torch.arange(t)
            allowed = (r[:, None] >= r[None, :]) & ((own[:, None] == own[None, :]) | (own[None, :] == -1))
            allowed = torch.cat((torch.ones(t, kept.pop(), dtype=torch.bool), allowed), 1)
            mask = torch.zeros(allowed.shape, dtype=self.dtype).masked_fill(~allowed, float("-inf"))[None, None]
            logits = self.model(input_ids=torch.tensor([ids], device=dev), past_key_values=self.fork_cache(cache),
                                position_ids=(context_length + torch.tensor([pos])).to(dev),
                                attention_mask=mask.to(dev)).logits[0].float()
            per = [logits[rw] for rw in rows]
        else:
            per = []
            for a in answers:
                ids = torch.tensor([q + a[:-1]], device=dev)
                p = torch.arange(context_length, context_length + ids.shape[1], device=dev).unsqueeze(0)
                per.append(self.model(input_ids=ids, past_key_values=self.fork_cache(cache), position_ids=p,
                                      logits_to_keep=len(a)).logits[0].float())
        out = []
        for a, lg in zip(answers, per):
            ids = torch.tensor(a, device=dev)
            lp = lg.log_softmax(-1).gather(-1, ids.unsqueeze(-1)).squeeze(-1)
            out.append({"ids": a, "token_logprobs": lp.tolist(), "logprob": float(lp.sum()),
                        "argmax_hit": (lg.argmax(-1) == ids).tolist()})
        return out

    @torch.no_grad()
    def recall_window(self, press, sample: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """Prefill one ``recall_sample`` window under ``press`` and score every question of it:
        (the window's record for ``_summary``, one record per question: depth, logprobs, pred,
        label, correct, digit_accuracy, answer_nll)."""
        max_ctx = int(getattr(self.model.config, "max_position_embeddings", 10**9))
        inps = [self.pipe.preprocess(sample["context"], [it["question"]], it["answer_prefix"], max_ctx)
                for it in sample["items"]]
        ctx = inps[0]["context_ids"].to(self.device)
        cache, _, pre_s, full_mb = self.prefill(press, ctx)
        kept = kept_per_layer(cache)
        kept_mb = cache_mb(cache)
        n = ctx.shape[1]
        scored, dec_s = self._timed("decode", lambda: [
            self.choice_logprobs(cache, n, inp["questions_ids"][0], it["choices"]) for inp, it in zip(inps, sample["items"])])
        questions = []
        for it, cands in zip(sample["items"], scored):
            lps = [c["logprob"] for c in cands]
            pred = max(range(len(lps)), key=lambda i: lps[i])
            true = cands[it["label"]]
            toks = [self.tok.decode([t]) for t in true["ids"]]
            digit = [i for i, t in enumerate(toks) if any(ch.isdigit() for ch in t)] or list(range(len(toks)))
            questions.append({"depth": it["depth"], "logprobs": lps, "pred": pred, "label": it["label"],
                              "correct": float(pred == it["label"]),
                              "digit_accuracy": sum(true["argmax_hit"][i] for i in digit) / len(digit),
                              "answer_nll": -sum(true["token_logprobs"]) / len(true["token_logprobs"])})
        rec = {"n": n, "kept": kept, "full_mb": full_mb, "kept_mb": kept_mb, "prefill_s": pre_s, "decode_s": dec_s,
               "decode_steps": len(questions)}
        return rec, questions

    def recall_row(self, press, length: int, filler: list[int]) -> dict[str, Any]:
        """The recall row of one context length (windows drawn from a generator seeded by seed and length)."""
        cfg = self.cfg
        rng = torch.Generator().manual_seed(self.seed * 7919 + length)
        recs, qs = [], []
        for _ in range(cfg["num_samples"]):
            s = recall_sample(self.tok, filler, length, cfg["depths"], rng, cfg["num_digits"], cfg["num_choices"])
            rec, questions = self.recall_window(press, s)
            recs.append(rec)
            qs += questions
        mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
        row = {"n": length, "context_length": length, "context_tokens": mean([r["n"] for r in recs]),
               **self._common(press), **self._summary(recs),
               "score": 100 * mean([q["correct"] for q in qs]),
               "digit_accuracy": 100 * mean([q["digit_accuracy"] for q in qs]),
               "answer_nll": mean([q["answer_nll"] for q in qs]),
               "chance": 100 / cfg["num_choices"], "num_questions": len(qs)}
        by_depth: dict[float, list[float]] = {}
        for q in qs:
            by_depth.setdefault(q["depth"], []).append(q["correct"])
        row.update({f"score_d{round(100 * d):02d}": 100 * mean(v) for d, v in by_depth.items()})
        return row

    def ppl_window(self, filler: list[int], length: int, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The i-th ppl window of the local text: (BOS + ``length`` - 1 context tokens, the next
        ``task.ppl_tokens``), cut at ``i·span`` (span = the window's length less BOS)."""
        t = self.cfg["ppl_tokens"]
        bos = [self.tok.bos_token_id] if self.tok.bos_token_id is not None else []
        span = length - len(bos) + t
        if (i + 1) * span > len(filler):
            raise ValueError(f"local text has {len(filler)} tokens; task.context_length={length} + "
                             f"task.ppl_tokens={t} × {i + 1} windows (task.num_samples) is too long.")
        ids = torch.tensor([bos + filler[i * span:(i + 1) * span]], device=self.device)
        return ids[:, :length], ids[:, length:]

    @torch.no_grad()
    def ppl_row(self, press, length: int, filler: list[int]) -> dict[str, Any]:
        """The ppl row of one context length: windows 0 .. num_samples-1 (``ppl_window``)."""
        t = self.cfg["ppl_tokens"]
        samples = self.cfg["num_samples"]
        self.ppl_window(filler, length, samples - 1)  # the text is long enough for all of them
        nll, count_, recs = 0.0, 0, []
        for i in range(samples):
            ctx, cont = self.ppl_window(filler, length, i)
            cache, h_last, pre_s, full_mb = self.prefill(press, ctx)
            kept = kept_per_layer(cache)
            kept_mb = cache_mb(cache)
            pos = torch.arange(length, length + t - 1, device=self.device).unsqueeze(0)
            (logits0, out), dec_s = self._timed("decode", lambda: (
                self.model.lm_head(h_last), self.model(input_ids=cont[:, :-1], past_key_values=cache, position_ids=pos)))
            logits = torch.cat((logits0, out.logits), 1).float()
            nll += torch.nn.functional.cross_entropy(logits[0], cont[0], reduction="sum").item()
            count_ += cont.shape[1]
            recs.append({"n": length, "kept": kept, "full_mb": full_mb, "kept_mb": kept_mb, "prefill_s": pre_s,
                         "decode_s": dec_s, "decode_steps": 1})
        return {"n": length, "context_length": length, **self._common(press), **self._summary(recs),
                "ppl": math.exp(nll / count_), "nll": nll / count_}

    def run_longbench(self, press, e: bool) -> Iterator[dict[str, Any]]:
        subsets = list(self.cfg["subsets"] or (LONGBENCH_E_SUBSETS if e else LONGBENCH_SUBSETS))
        unknown = [s for s in subsets if s not in METRICS]
        if unknown:
            raise ValueError(f"task.subsets has unknown LongBench subsets {unknown}; available: {', '.join(METRICS)}.")
        path = self.cfg["dataset_path"]
        limit = self.cfg["limit"]
        max_ctx = self.cfg["max_context_length"]
        scores, all_recs = {}, []
        for sub in subsets:
            ds = load_longbench(path, sub, e, limit)
            recs = []
            for ex in ds:
                r = self.answer(press, ex["context"], ex["question"], ex.get("answer_prefix") or "",
                                int(ex.get("max_new_tokens") or self.cfg["max_new_tokens"]),
                                int(max_ctx) if max_ctx else None)
                r["score"] = longbench_score(sub, r["text"], list(ex["answers"]), ex.get("all_classes") or ())
                recs.append(r)
            scores[sub] = 100 * sum(r["score"] for r in recs) / max(1, len(recs))
            all_recs += recs
            # one row per subset as it finishes (partial sweeps keep their rows)
            yield {"subset": sub, "n": int(sum(r["n"] for r in recs) / max(1, len(recs))), **self._common(press),
                   **self._summary(recs), "score": scores[sub], f"score_{sub}": scores[sub]}
        yield {"subset": "all", "n": int(sum(r["n"] for r in all_recs) / max(1, len(all_recs))), **self._common(press),
               **self._summary(all_recs), "score": sum(scores.values()) / len(scores),
               **{f"score_{k}": v for k, v in scores.items()}}
