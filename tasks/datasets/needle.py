"""Needle-in-a-haystack prompts (``task=kv_cache dataset=needle`` / ``recall``) and their filler.

``needle_sample``: a fact "The special magic number for <city> is <7 digits>." placed at a relative
depth of a window of filler tokens (``tasks.datasets.local_text``, standard-library docstrings);
the generated answer is scored by string match (RULER-style).

``recall_sample``: one such fact (a different city each) at every depth of a list in one window
(RULER's multi-key needle), each with a question and ``num_choices`` candidate numbers of the
same length, the true one among them (``dataset=recall`` scores them by likelihood).
"""
from __future__ import annotations

from typing import Any

import torch

CITIES = ("Lisbon", "Nairobi", "Osaka", "Quito", "Tallinn", "Hobart", "Cusco", "Bergen", "Dakar", "Hanoi", "Lyon",
          "Perth", "Tbilisi", "Zagreb", "Accra", "Bilbao", "Cairo", "Denver", "Fez", "Galway")


def filler_ids(tok, n_tokens: int) -> list[int]:
    """Token ids of the local text (at least ``max(200_000, 6·n_tokens)`` characters of it)."""
    from attnbench.tasks.datasets.local_text import local_text

    text = local_text(min_chars=max(200_000, 6 * n_tokens))
    return tok.encode(text, add_special_tokens=False)


def _number(digits: int, rng: torch.Generator) -> str:
    """A random ``digits``-digit number (no leading zero)."""
    return str(int(torch.randint(10 ** (digits - 1), 10 ** digits, (1,), generator=rng)))


def needle_sample(tok, filler: list[int], length: int, depth: float, rng: torch.Generator,
                  digits: int = 7) -> dict[str, Any]:
    """A needle-in-a-haystack example of about ``length`` context tokens with the needle after
    ``round(depth·F)`` filler tokens (F = filler tokens used). Returns context, question,
    answer_prefix, answer (a ``digits``-digit number), needle, position (filler tokens before the needle)."""
    if not 0 <= depth <= 1:
        raise ValueError(f"task.depths must lie in [0, 1], got {depth}.")
    city = CITIES[int(torch.randint(len(CITIES), (1,), generator=rng))]
    value = _number(digits, rng)
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


def check_recall(depths: list[float], digits: int, num_choices: int) -> None:
    """ValueError naming the knob when ``recall_sample`` cannot build a window from these values."""
    if not 1 <= digits <= 18:
        raise ValueError(f"task.num_digits must lie in [1, 18], got {digits}.")
    if not 2 <= num_choices <= 9 * 10 ** (digits - 1):
        raise ValueError(f"task.num_choices={num_choices} must lie in [2, {9 * 10 ** (digits - 1)}] "
                         f"(distinct {digits}-digit numbers).")
    if not 1 <= len(depths) <= len(CITIES):
        raise ValueError(f"task.depths must hold 1..{len(CITIES)} depths for recall (one city each), got {len(depths)}.")
    for d in depths:
        if not 0 <= d <= 1:
            raise ValueError(f"task.depths must lie in [0, 1], got {d}.")


def recall_sample(tok, filler: list[int], length: int, depths: list[float], rng: torch.Generator, digits: int = 7,
                  num_choices: int = 4) -> dict[str, Any]:
    """One window of about ``length`` context tokens holding one needle per entry of ``depths``
    (distinct cities; the needle of depth d after ``round(d·F)`` filler tokens, F = filler tokens
    used). Returns context and ``items``: per needle its depth, city, needle, position, question,
    answer_prefix, answer (``digits`` digits) and ``choices``: ``num_choices`` distinct numbers of
    ``digits`` digits, the answer at index ``label`` (random), the others random."""
    check_recall(depths, digits, num_choices)
    cities = [CITIES[int(i)] for i in torch.randperm(len(CITIES), generator=rng)[:len(depths)]]
    items = []
    for d, city in zip(depths, cities):
        value = _number(digits, rng)
        choices = [value]
        while len(choices) < num_choices:
            c = _number(digits, rng)
            if c not in choices:
                choices.append(c)
        label = int(torch.randint(num_choices, (1,), generator=rng))
        choices[0], choices[label] = choices[label], choices[0]
        items.append({"depth": float(d), "city": city, "answer": value, "choices": choices, "label": label,
                      "needle": f" The special magic number for {city} is {value}. ",
                      "question": f"What is the special magic number for {city} mentioned in the text?",
                      "answer_prefix": f"The special magic number for {city} mentioned in the text is"})
    n_fill = length - sum(len(tok.encode(it["needle"], add_special_tokens=False)) for it in items)
    if n_fill < 1 or n_fill > len(filler):
        raise ValueError(f"task.context_length={length} is out of range ({len(items)} needles plus 1..{len(filler)} "
                         f"filler tokens).")
    start = int(torch.randint(0, len(filler) - n_fill + 1, (1,), generator=rng))
    f = filler[start:start + n_fill]
    order = sorted(range(len(items)), key=lambda i: items[i]["depth"])  # needles in depth order (stable)
    parts, prev = [], 0
    for i in order:
        pos = int(round(items[i]["depth"] * n_fill))
        items[i]["position"] = pos
        parts += [tok.decode(f[prev:pos]), items[i]["needle"]]
        prev = pos
    parts.append(tok.decode(f[prev:]))
    return {"context": "".join(parts), "items": items}


__all__ = ["CITIES", "check_recall", "filler_ids", "needle_sample", "recall_sample"]
