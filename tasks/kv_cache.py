"""KV-cache compression of a causal LM's prefill (``task=kv_cache``), on NVIDIA's kvpress.

The context is prefilled under a kvpress press (compressing each layer's cache right after its
attention), then the question is answered greedily from the compressed cache, with kvpress's own
``KVPressTextGenerationPipeline`` (``preprocess`` for chat template and tokenisation,
``generate_answer`` for decoding); prefill and decoding are timed separately.

Presses (``task.press``, see ``tasks/presses.py``): ``method`` (the run's suite method: WildCat's
KV-cache mode for ``method=wildcat``, no compression for ``method=exact``, ``compress()`` of any
other method), ``none``, ``uniform``, ``balance_kv``, kvpress short names (``snapkv``,
``streaming_llm``, ``pyramidkv``, ``knorm``, ``expected_attention``, ``tova``, ``random``, …) or
``kvpress:<ClassName>``. ``task.compression_ratio`` is the fraction of tokens dropped (kvpress);
WildCat/uniform/BalanceKV apply it to the tokens between the exact sink and window, as the
WildCat repository does (``kept_fraction`` reports what was really kept).

Datasets (``task.dataset``):
- ``needle``: a fact "The special magic number for <city> is <7 digits>." placed at each depth of
  ``task.depths`` in ``task.context_length`` tokens of filler (Python standard-library docstrings);
  score = 1 when the generated answer contains the number (RULER-style string match).
- ``ppl``: perplexity of ``task.ppl_tokens`` held-out tokens given a compressed prefix of
  ``task.context_length`` tokens of the same filler.
- ``longbench`` / ``longbench_e``: LongBench(-E) from the local Hugging Face cache
  (``task.dataset_path``, default ``Xnhyacinth/LongBench`` as kvpress / WildCat use), scored with
  the LongBench metrics (re-implemented; see ``longbench_score``).
"""
from __future__ import annotations

import contextlib
import difflib
import math
import re
import string
import time
from collections import Counter
from typing import Any, Iterator, Mapping

import torch

from methods.base import AttentionMethod
from runners.measure import Meter

from . import register
from .base import Task
from .sources import load_smollm2

LONGBENCH_E_SUBSETS = ("qasper", "multifieldqa_en", "hotpotqa", "2wikimqa", "gov_report", "multi_news", "trec",
                       "triviaqa", "samsum", "passage_count", "passage_retrieval_en", "lcc", "repobench-p")
LONGBENCH_SUBSETS = ("narrativeqa", "musique", "qmsum") + LONGBENCH_E_SUBSETS
DATASETS = ("needle", "ppl", "longbench", "longbench_e")
_MODELS: dict[tuple, tuple] = {}  # (model, dtype, device) -> (model, tokenizer): reused across a sweep


# ----------------------------------------------------------------------------- models
def byte_tokenizer():
    """A 256-symbol byte-level tokenizer (exact round trip, no files): for tiny random models."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {ch: i for i, ch in enumerate(pre_tokenizers.ByteLevel.alphabet())}
    vocab["<s>"], vocab["</s>"] = 256, 257
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", model_max_length=8192)


def tiny_llama(seed: int = 0, vocab_size: int = 258):
    """A random 2-layer Llama (hidden 64, 4 heads, 2 KV heads) for tests."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=8192,
                      bos_token_id=256, eos_token_id=257, pad_token_id=257)
    return LlamaForCausalLM(cfg).eval()




def load_model(name: str, dtype: torch.dtype, device: torch.device):
    """(model, tokenizer): ``smollm2`` (packaged GGUF, offline), ``tiny_llama`` (random, byte
    tokenizer) or a Hugging Face name / local folder (local files only)."""
    key = (name, dtype, str(device))
    if key in _MODELS:
        return _MODELS[key]
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if name == "tiny_llama":
        model, tok = tiny_llama(), byte_tokenizer()
    elif name in ("smollm2", "HuggingFaceTB/SmolLM2-135M-Instruct"):
        model, tok = load_smollm2(dtype)
    else:
        try:
            tok = AutoTokenizer.from_pretrained(name, local_files_only=True)
            model = AutoModelForCausalLM.from_pretrained(name, dtype=dtype, local_files_only=True)
        except OSError as e:
            raise RuntimeError(f"task.model={name} is not available locally (no network here): download it into the "
                               f"Hugging Face cache or set task.model to a local folder ({e}).") from e
    model = model.to(device).eval()
    _MODELS.clear()  # keep one model in memory
    _MODELS[key] = (model, tok)
    return model, tok


def cache_mb(cache) -> float:
    return sum(t.numel() * t.element_size() for layer in cache.layers for t in (layer.keys, layer.values)
               if t is not None) / 2**20


# ----------------------------------------------------------------------------- data
CITIES = ("Lisbon", "Nairobi", "Osaka", "Quito", "Tallinn", "Hobart", "Cusco", "Bergen", "Dakar", "Hanoi", "Lyon",
          "Perth", "Tbilisi", "Zagreb", "Accra", "Bilbao", "Cairo", "Denver", "Fez", "Galway")


def filler_ids(tok, n_tokens: int) -> list[int]:
    from .sources import local_text

    text = local_text(min_chars=max(200_000, 6 * n_tokens))
    return tok.encode(text, add_special_tokens=False)


def needle_sample(tok, filler: list[int], length: int, depth: float, rng: torch.Generator) -> dict[str, Any]:
    """A needle-in-a-haystack example of about ``length`` context tokens with the needle after
    ``round(depth·F)`` filler tokens (F = filler tokens used). Returns context, question,
    answer_prefix, answer, needle, position (filler tokens before the needle)."""
    if not 0 <= depth <= 1:
        raise ValueError(f"task.depths must lie in [0, 1], got {depth}.")
    city = CITIES[int(torch.randint(len(CITIES), (1,), generator=rng))]
    value = str(int(torch.randint(1_000_000, 10_000_000, (1,), generator=rng)))
    needle = f" The special magic number for {city} is {value}. "
    n_fill = length - len(tok.encode(needle, add_special_tokens=False))
    if n_fill < 1 or n_fill > len(filler):
        raise ValueError(f"task.context_length={length} is out of range (needle plus 1..{len(filler)} filler tokens).")
    start = int(torch.randint(0, len(filler) - n_fill + 1, (1,), generator=rng))
    f = filler[start:start + n_fill]
    pos = int(round(depth * n_fill))
    context = tok.decode(f[:pos]) + needle + tok.decode(f[pos:])
    return {"context": context, "question": f"What is the special magic number for {city} mentioned in the text?",
            "answer_prefix": f"The special magic number for {city} mentioned in the text is", "answer": value,
            "needle": needle, "position": pos}


def load_longbench(path: str, subset: str, e: bool, limit: int | None):
    from datasets import load_dataset

    data_dir = f"{subset}_e" if e else subset
    try:
        ds = load_dataset(path, data_dir=data_dir, split="test")
    except Exception as err:  # offline, not cached
        raise RuntimeError(f"task.dataset={'longbench_e' if e else 'longbench'} needs {path} (data_dir={data_dir}) in "
                           f"the local Hugging Face cache or task.dataset_path set to a local copy: {err}") from err
    if limit:
        ds = ds.select(range(min(int(limit), len(ds))))
    return ds


# ----------------------------------------------------------------------------- LongBench metrics
# Re-implemented from the LongBench / kvpress ``calculate_metrics.py`` definitions (English subsets).
def _normalize(s: str) -> str:
    s = "".join(ch for ch in s.lower() if ch not in set(string.punctuation))
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def _f1(pred: list, gold: list) -> float:
    same = sum((Counter(pred) & Counter(gold)).values())
    if same == 0:
        return 0.0
    p, r = same / len(pred), same / len(gold)
    return 2 * p * r / (p + r)


def qa_f1(pred: str, gold: str, **_: Any) -> float:
    return _f1(_normalize(pred).split(), _normalize(gold).split())


def rouge_l(pred: str, gold: str, **_: Any) -> float:
    """ROUGE-L F1 over whitespace tokens (LCS); LongBench uses the ``rouge`` package."""
    a, b = pred.lower().split(), gold.lower().split()
    if not a or not b:
        return 0.0
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    lcs = prev[-1]
    if lcs == 0:
        return 0.0
    p, r = lcs / len(a), lcs / len(b)
    return 2 * p * r / (p + r)


def classification(pred: str, gold: str, all_classes=(), **_: Any) -> float:
    hits = [c for c in all_classes if c in pred]
    hits = [c for c in hits if not (c in gold and c != gold)]
    return 1.0 / len(hits) if gold in hits else 0.0


def _count_matches(pred: str, target: str) -> float:
    nums = re.findall(r"\d+", pred)
    return sum(n == target for n in nums) / len(nums) if nums else 0.0


def retrieval(pred: str, gold: str, **_: Any) -> float:
    m = re.findall(r"Paragraph (\d+)", gold)
    return _count_matches(pred, m[0]) if m else 0.0


def count(pred: str, gold: str, **_: Any) -> float:
    return _count_matches(pred, str(gold))


def code_sim(pred: str, gold: str, **_: Any) -> float:
    """First line without ``` / # / // , then fuzzywuzzy's ratio (difflib, as its pure-Python path)."""
    line = next((ln for ln in pred.lstrip("\n").split("\n") if "`" not in ln and "#" not in ln and "//" not in ln), "")
    return round(100 * difflib.SequenceMatcher(None, line, gold).ratio()) / 100


METRICS = {"narrativeqa": qa_f1, "qasper": qa_f1, "multifieldqa_en": qa_f1, "hotpotqa": qa_f1, "2wikimqa": qa_f1,
           "musique": qa_f1, "gov_report": rouge_l, "qmsum": rouge_l, "multi_news": rouge_l, "trec": classification,
           "triviaqa": qa_f1, "samsum": rouge_l, "passage_retrieval_en": retrieval, "passage_count": count,
           "lcc": code_sim, "repobench-p": code_sim}


def longbench_score(subset: str, pred: str, answers, all_classes=()) -> float:
    """Best score over the gold answers (×100 later); few-shot subsets use the first line."""
    if subset in ("trec", "triviaqa", "samsum"):
        pred = pred.lstrip("\n").split("\n")[0]
    fn = METRICS[subset]
    return max((fn(pred, g, all_classes=list(all_classes or ())) for g in answers), default=0.0)


# ----------------------------------------------------------------------------- the task
@register("kv_cache")
class KVCacheTask(Task):
    """Compress the prefill KV cache with a press; score answers, perplexity, memory, latency."""

    def __init__(self, cfg: Mapping[str, Any], device: torch.device, seed: int = 0, *, model=None, tokenizer=None):
        super().__init__(cfg, device, seed)
        self.dataset = cfg.get("dataset", "needle")
        if self.dataset not in DATASETS:
            raise ValueError(f"unknown task.dataset={self.dataset!r}; available: {', '.join(DATASETS)}.")
        dt = cfg.get("dtype", "auto")
        if dt == "auto":
            dt = "bfloat16" if device.type == "cuda" else "float32"
        if dt not in ("float32", "float16", "bfloat16"):
            raise ValueError(f"task.dtype must be auto, float32, float16 or bfloat16, got {dt!r}.")
        self.dtype = getattr(torch, dt)
        self.ratio = float(cfg.get("compression_ratio", 0.5))
        if not 0 <= self.ratio < 1:
            raise ValueError(f"task.compression_ratio must lie in [0, 1), got {self.ratio}.")
        if model is None:
            model, tokenizer = load_model(str(cfg.get("model", "smollm2")), self.dtype, device)
        self.model, self.tok = model, tokenizer
        from kvpress import KVPressTextGenerationPipeline

        from .presses import register_weighted_attention

        self.model.set_attn_implementation(register_weighted_attention())
        self.pipe = KVPressTextGenerationPipeline(model=self.model, tokenizer=self.tok, device=device)

    # --- presses -------------------------------------------------------------------------
    def make_press(self, method: AttentionMethod):
        from .presses import make_press

        cfg = self.cfg
        gen = torch.Generator().manual_seed(self.seed)
        kwargs = cfg.get("press_kwargs") or {}
        if hasattr(kwargs, "items"):
            kwargs = {str(k): v for k, v in kwargs.items()}
        return make_press(str(cfg.get("press", "method")), method, self.ratio, sink_size=int(cfg.get("sink_size", 32)),
                          window_size=int(cfg.get("window_size", 32)), bin_r=int(cfg.get("bin_r", 12)),
                          generator=gen, kwargs=kwargs)

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @torch.no_grad()
    def prefill(self, press, context_ids: torch.Tensor):
        """Prefill under ``press``; returns (cache, last hidden state, seconds, full-cache MB)."""
        from transformers import DynamicCache

        cache = DynamicCache()
        self._sync()
        t0 = time.perf_counter()
        with press(self.model) if press is not None else contextlib.nullcontext():
            out = self.model.model(input_ids=context_ids, past_key_values=cache)
        self._sync()
        secs = time.perf_counter() - t0
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
        kept = float(sum(layer.keys.shape[2] for layer in cache.layers)) / len(cache.layers)
        kept_mb = cache_mb(cache)
        calls = [0]
        hook = self.model.register_forward_pre_hook(lambda *a: calls.__setitem__(0, calls[0] + 1))
        try:
            self._sync()
            t0 = time.perf_counter()
            text = self.pipe.generate_answer(question_ids=inp["questions_ids"][0].to(self.device), cache=cache,
                                             context_length=ctx.shape[1], max_new_tokens=max_new_tokens)
            self._sync()
            dec_s = time.perf_counter() - t0
        finally:
            hook.remove()
        return {"text": text, "n": ctx.shape[1], "kept": kept, "full_mb": full_mb, "kept_mb": kept_mb,
                "prefill_s": pre_s, "decode_s": dec_s, "decode_steps": max(1, calls[0])}

    @staticmethod
    def _summary(recs: list[dict[str, Any]]) -> dict[str, Any]:
        med = lambda xs: sorted(xs)[len(xs) // 2]  # noqa: E731
        mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
        return {
            "kept_tokens": mean([r["kept"] for r in recs]),
            "kept_fraction": mean([r["kept"] / r["n"] for r in recs]),
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
        press = self.make_press(method)
        if self.dataset == "needle":
            yield from self.run_needle(press)
        elif self.dataset == "ppl":
            yield from self.run_ppl(press)
        else:
            yield from self.run_longbench(press, e=self.dataset == "longbench_e")

    def _lengths(self) -> list[int]:
        lengths = self.cfg.get("context_length", 1024)
        lengths = [int(lengths)] if isinstance(lengths, (int, float, str)) else [int(x) for x in lengths]
        limit = int(getattr(self.model.config, "max_position_embeddings", 10**9))
        for n in lengths:
            if not 1 <= n <= limit:
                raise ValueError(f"task.context_length={n} must lie in [1, {limit}] (the model's context).")
        return lengths

    def run_needle(self, press) -> Iterator[dict[str, Any]]:
        depths = [float(d) for d in (self.cfg.get("depths") or [0.1, 0.3, 0.5, 0.7, 0.9])]
        per_depth = int(self.cfg.get("needles_per_depth", 1))
        lengths = self._lengths()
        filler = filler_ids(self.tok, max(lengths) + 64)
        for length in lengths:
            rng = torch.Generator().manual_seed(self.seed * 7919 + length)
            recs, by_depth = [], {}
            for d in depths:
                for _ in range(per_depth):
                    s = needle_sample(self.tok, filler, length, d, rng)
                    r = self.answer(press, s["context"], s["question"], s["answer_prefix"],
                                    int(self.cfg.get("max_new_tokens", 12)), None)
                    r["hit"] = float(s["answer"] in r["text"])
                    recs.append(r)
                    by_depth.setdefault(d, []).append(r["hit"])
            row = {"n": recs[0]["n"], "context_length": length, **self._common(press), **self._summary(recs),
                   "score": 100 * sum(r["hit"] for r in recs) / len(recs)}
            row.update({f"score_d{round(100 * d):02d}": 100 * sum(v) / len(v) for d, v in by_depth.items()})
            row["answers"] = " | ".join(r["text"].strip().replace("\n", " ")[:40] for r in recs)
            yield row

    @torch.no_grad()
    def run_ppl(self, press) -> Iterator[dict[str, Any]]:
        t = int(self.cfg.get("ppl_tokens", 128))
        samples = int(self.cfg.get("num_samples", 4))
        lengths = self._lengths()
        filler = filler_ids(self.tok, (max(lengths) + t) * samples)
        bos = [self.tok.bos_token_id] if self.tok.bos_token_id is not None else []
        for length in lengths:
            span = length - len(bos) + t
            if span * samples > len(filler):
                raise ValueError(f"local text has {len(filler)} tokens; task.context_length={length} + task.ppl_tokens={t}"
                                 f" × task.num_samples={samples} is too long.")
            nll, count_, recs = 0.0, 0, []
            for i in range(samples):
                ids = torch.tensor([bos + filler[i * span:(i + 1) * span]], device=self.device)
                ctx, cont = ids[:, :length], ids[:, length:]
                cache, h_last, pre_s, full_mb = self.prefill(press, ctx)
                kept = float(sum(layer.keys.shape[2] for layer in cache.layers)) / len(cache.layers)
                kept_mb = cache_mb(cache)
                self._sync()
                t0 = time.perf_counter()
                logits0 = self.model.lm_head(h_last)
                pos = torch.arange(length, length + t - 1, device=self.device).unsqueeze(0)
                out = self.model(input_ids=cont[:, :-1], past_key_values=cache, position_ids=pos)
                self._sync()
                dec_s = time.perf_counter() - t0
                logits = torch.cat((logits0, out.logits), 1).float()
                nll += torch.nn.functional.cross_entropy(logits[0], cont[0], reduction="sum").item()
                count_ += cont.shape[1]
                recs.append({"n": length, "kept": kept, "full_mb": full_mb, "kept_mb": kept_mb, "prefill_s": pre_s,
                             "decode_s": dec_s, "decode_steps": 1})
            yield {"n": length, "context_length": length, **self._common(press), **self._summary(recs),
                   "ppl": math.exp(nll / count_), "nll": nll / count_}

    def run_longbench(self, press, e: bool) -> Iterator[dict[str, Any]]:
        subsets = list(self.cfg.get("subsets") or (LONGBENCH_E_SUBSETS if e else LONGBENCH_SUBSETS))
        unknown = [s for s in subsets if s not in METRICS]
        if unknown:
            raise ValueError(f"task.subsets has unknown LongBench subsets {unknown}; available: {', '.join(METRICS)}.")
        path = str(self.cfg.get("dataset_path") or "Xnhyacinth/LongBench")
        limit = self.cfg.get("limit")
        max_ctx = self.cfg.get("max_context_length")
        scores, all_recs = {}, []
        for sub in subsets:
            ds = load_longbench(path, sub, e, limit)
            recs = []
            for ex in ds:
                r = self.answer(press, ex["context"], ex["question"], ex.get("answer_prefix") or "",
                                int(ex.get("max_new_tokens") or self.cfg.get("max_new_tokens", 64)),
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
