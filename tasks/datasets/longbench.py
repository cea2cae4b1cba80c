"""LongBench / LongBench-E (English subsets): the loader and LongBench's own metrics.

The metrics follow the definitions of THUDM/LongBench (``LongBench/metrics.py`` and
``eval.py``'s ``scorer``; NVIDIA kvpress's ``evaluation/benchmarks/longbench`` copies them):

- ``qa_f1``: token F1 after SQuAD normalisation (lower case, punctuation and articles removed,
  whitespace collapsed).
- ``rouge_l``: the ``rouge`` package's ``Rouge().get_scores([pred], [gold], avg=True)["rouge-l"]["f"]``,
  i.e. *summary-level* ROUGE-L: both texts are split into sentences at every ".", tokens are the
  space-separated words (case kept), recall/precision count the distinct words of the union of
  the LCSs between every reference sentence and every predicted sentence, over the distinct words
  of each text, and F = 2PR/(P + R + 1e-8). Any exception (an empty prediction: "Hypothesis is
  empty.") scores 0.0, as in LongBench. When ``rouge`` is not installed, ``rouge_l_summary`` (a
  re-implementation tested equal to the package) is used; it never fails on long sentences,
  where the package's recursive LCS reconstruction can hit Python's recursion limit (LongBench
  then scores 0.0).
- ``classification``: classes of ``all_classes`` found in the prediction, minus those that are a
  proper substring of the gold class, exactly as LongBench's loop does it (it removes items from
  the list it iterates over, so the item after a removed one is not checked); 1/len(kept) when
  the gold class is kept, else 0.
- ``retrieval`` / ``count``: the fraction of the numbers in the prediction equal to the gold
  paragraph number / count (0 without numbers). A gold answer without "Paragraph N" scores 0
  (LongBench raises).
- ``code_sim``: the first line of the prediction (leading newlines removed) that contains no
  "`", "#" or "//" (else ""), then fuzzywuzzy's ``fuzz.ratio`` / 100: ``thefuzz.fuzz.ratio``
  (rapidfuzz; equal to fuzzywuzzy with python-Levenshtein): round(100·2·LCS/(|a|+|b|)) over
  characters. ``fuzz_ratio`` re-implements it when ``thefuzz`` is not installed.

``longbench_score`` takes the best score over the gold answers, after cutting the prediction to
its first line (leading newlines removed) for trec, triviaqa and samsum. Scores are in [0, 1];
LongBench reports 100 × the mean per subset (rounded to 2 decimals there, not here).
"""
from __future__ import annotations

import re
import string
from collections import Counter
from typing import Any, Callable, Sequence

LONGBENCH_E_SUBSETS = ("qasper", "multifieldqa_en", "hotpotqa", "2wikimqa", "gov_report", "multi_news", "trec",
                       "triviaqa", "samsum", "passage_count", "passage_retrieval_en", "lcc", "repobench-p")
LONGBENCH_SUBSETS = ("narrativeqa", "musique", "qmsum") + LONGBENCH_E_SUBSETS
FIRST_LINE_SUBSETS = ("trec", "triviaqa", "samsum")  # (+ lsht, Chinese, not supported)


def load_longbench(path: str, subset: str, e: bool, limit: int | None):
    """The test split of one subset (``<subset>_e`` for LongBench-E) from the local HF cache."""
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


# ----------------------------------------------------------------------------- QA F1
_PUNCTUATION = frozenset(string.punctuation)


def normalize_answer(s: str) -> str:
    """Lower case, drop ASCII punctuation, then the articles a/an/the, then collapse whitespace."""
    s = "".join(ch for ch in s.lower() if ch not in _PUNCTUATION)
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def token_f1(pred: Sequence[str], gold: Sequence[str]) -> float:
    """F1 of the multiset overlap of two token lists (0 when nothing is shared)."""
    same = sum((Counter(pred) & Counter(gold)).values())
    if same == 0:
        return 0.0
    p, r = same / len(pred), same / len(gold)
    return 2 * p * r / (p + r)


def qa_f1(pred: str, gold: str, **_: Any) -> float:
    return token_f1(normalize_answer(pred).split(), normalize_answer(gold).split())


# ----------------------------------------------------------------------------- ROUGE-L (summary level)
def rouge_sentences(text: str) -> list[list[str]]:
    """The ``rouge`` package's tokenisation: pieces between "." that are not empty, whitespace
    collapsed, split on single spaces (a blank piece gives the one token "")."""
    return [" ".join(piece.split()).split(" ") for piece in text.split(".") if piece]


def lcs_tokens(x: Sequence[str], y: Sequence[str]) -> list[str]:
    """One longest common subsequence of ``x`` and ``y`` (the tokens), reconstructed from the end
    by the ``rouge`` package's rule: take a match, else step back in ``x`` when that keeps a
    strictly longer LCS, else step back in ``y``."""
    n, m = len(x), len(y)
    table = [[0] * (m + 1) for _ in range(n + 1)]
    for i in range(1, n + 1):
        row, prev, xi = table[i], table[i - 1], x[i - 1]
        for j in range(1, m + 1):
            row[j] = prev[j - 1] + 1 if xi == y[j - 1] else max(prev[j], row[j - 1])
    out: list[str] = []
    i, j = n, m
    while i > 0 and j > 0:
        if x[i - 1] == y[j - 1]:
            out.append(x[i - 1])
            i, j = i - 1, j - 1
        elif table[i - 1][j] > table[i][j - 1]:
            i -= 1
        else:
            j -= 1
    return out[::-1]


def rouge_l_summary(pred: str, gold: str) -> float:
    """Summary-level ROUGE-L F of the ``rouge`` package (1.0.1, default ``exclusive=True``), in
    pure Python; raises ``ValueError`` when either text has no sentence, as the package does."""
    hyp, ref = rouge_sentences(pred), rouge_sentences(gold)
    if not hyp:
        raise ValueError("Hypothesis is empty.")
    if not ref:
        raise ValueError("Reference is empty.")
    m = len({w for s in ref for w in s})  # distinct reference words
    n = len({w for s in hyp for w in s})  # distinct predicted words
    union: set[str] = set()
    for r in ref:
        for h in hyp:
            union.update(lcs_tokens(r, h))
    r_lcs, p_lcs = len(union) / m, len(union) / n
    return 2.0 * ((p_lcs * r_lcs) / (p_lcs + r_lcs + 1e-8))


def _rouge_package() -> Callable[[str, str], float] | None:
    try:
        from rouge import Rouge
    except ImportError:
        return None
    scorer = Rouge()
    return lambda pred, gold: scorer.get_scores([pred], [gold], avg=True)["rouge-l"]["f"]


_ROUGE: list = []  # [scoring function], resolved on first use


def rouge_l(pred: str, gold: str, **_: Any) -> float:
    """LongBench's ``rouge_score``: the ``rouge`` package's ROUGE-L F, 0.0 on any exception."""
    if not _ROUGE:
        _ROUGE.append(_rouge_package() or rouge_l_summary)
    try:
        return float(_ROUGE[0](pred, gold))
    except Exception:  # LongBench: bare except -> 0.0 (empty prediction, recursion limit)
        return 0.0


# ----------------------------------------------------------------------------- classification, counts
def classification(pred: str, gold: str, all_classes: Sequence[str] = (), **_: Any) -> float:
    matches = [c for c in all_classes if c in pred]
    i = 0
    while i < len(matches):  # LongBench's ``for t in matches: ... matches.remove(t)`` step by step
        term = matches[i]
        i += 1
        if term in gold and term != gold:
            matches.remove(term)  # first equal item; the next item then moves to index i - 1, unchecked
    return 1.0 / len(matches) if gold in matches else 0.0


def _number_matches(pred: str, target: str) -> float:
    nums = re.findall(r"\d+", pred)
    return sum(x == target for x in nums) / len(nums) if nums else 0.0


def retrieval(pred: str, gold: str, **_: Any) -> float:
    m = re.findall(r"Paragraph (\d+)", gold)
    return _number_matches(pred, m[0]) if m else 0.0


def count(pred: str, gold: str, **_: Any) -> float:
    return _number_matches(pred, str(gold))


# ----------------------------------------------------------------------------- code similarity
def first_code_line(pred: str) -> str:
    """LongBench's code line: the first line (after leading newlines) without "`", "#" or "//"."""
    return next((ln for ln in pred.lstrip("\n").split("\n") if "`" not in ln and "#" not in ln and "//" not in ln),
                "")


def lcs_length(a: str, b: str) -> int:
    """Length of a longest common subsequence of two strings (bit-parallel, Hyyrö 2004)."""
    if not a or not b:
        return 0
    masks: dict[str, int] = {}
    for i, ch in enumerate(a):
        masks[ch] = masks.get(ch, 0) | (1 << i)
    full = (1 << len(a)) - 1
    v = full
    for ch in b:
        u = v & masks.get(ch, 0)
        v = ((v + u) | (v - u)) & full
    return len(a) - bin(v).count("1")


def fuzz_ratio_python(a: str, b: str) -> int:
    """fuzzywuzzy/thefuzz ``fuzz.ratio`` (normalised InDel similarity ×100, rounded) in pure Python,
    with rapidfuzz's float steps: round(100·(1 − dist/(|a|+|b|))), dist = |a|+|b| − 2·LCS."""
    total = len(a) + len(b)
    if total == 0:
        return 100
    dist = total - 2 * lcs_length(a, b)
    return int(round(100 * (1 - dist / total)))


def _fuzz_package() -> Callable[[str, str], int] | None:
    try:
        from thefuzz import fuzz
    except ImportError:
        return None
    return fuzz.ratio


_FUZZ: list = []


def fuzz_ratio(a: str, b: str) -> int:
    """``thefuzz.fuzz.ratio`` (fuzzywuzzy's), or its pure-Python equal when thefuzz is missing."""
    if not _FUZZ:
        _FUZZ.append(_fuzz_package() or fuzz_ratio_python)
    return int(_FUZZ[0](a, b))


def code_sim(pred: str, gold: str, **_: Any) -> float:
    return fuzz_ratio(first_code_line(pred), gold) / 100


# ----------------------------------------------------------------------------- per example
METRICS: dict[str, Callable[..., float]] = {
    "narrativeqa": qa_f1, "qasper": qa_f1, "multifieldqa_en": qa_f1, "hotpotqa": qa_f1, "2wikimqa": qa_f1,
    "musique": qa_f1, "gov_report": rouge_l, "qmsum": rouge_l, "multi_news": rouge_l, "trec": classification,
    "triviaqa": qa_f1, "samsum": rouge_l, "passage_retrieval_en": retrieval, "passage_count": count,
    "lcc": code_sim, "repobench-p": code_sim}


def longbench_score(subset: str, pred: str, answers, all_classes=()) -> float:
    """LongBench's per-example score in [0, 1]: the best over the gold ``answers`` (0 if none);
    trec/triviaqa/samsum predictions are cut to their first line (leading newlines removed)."""
    if subset in FIRST_LINE_SUBSETS:
        pred = pred.lstrip("\n").split("\n")[0]
    fn = METRICS[subset]
    classes = list(all_classes or ())
    return max((fn(pred, g, all_classes=classes) for g in answers), default=0.0)


__all__ = ["LONGBENCH_E_SUBSETS", "LONGBENCH_SUBSETS", "FIRST_LINE_SUBSETS", "METRICS", "load_longbench",
           "longbench_score", "normalize_answer", "qa_f1", "rouge_l", "rouge_l_summary", "classification",
           "retrieval", "count", "code_sim", "fuzz_ratio", "first_code_line"]
