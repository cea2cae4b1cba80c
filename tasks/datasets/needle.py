"""Needle-in-a-haystack prompts (``task=kv_cache dataset=needle``) and the filler they sit in.

A fact "The special magic number for <city> is <7 digits>." is placed at a relative depth of a
window of filler tokens (``tasks.datasets.local_text``, standard-library docstrings); the answer
is scored by string match (RULER-style).
"""
from __future__ import annotations

from typing import Any

import torch

CITIES = ("Lisbon", "Nairobi", "Osaka", "Quito", "Tallinn", "Hobart", "Cusco", "Bergen", "Dakar", "Hanoi", "Lyon",
          "Perth", "Tbilisi", "Zagreb", "Accra", "Bilbao", "Cairo", "Denver", "Fez", "Galway")


def filler_ids(tok, n_tokens: int) -> list[int]:
    """Token ids of the local text (at least ``max(200_000, 6·n_tokens)`` characters of it)."""
    from .local_text import local_text

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


__all__ = ["CITIES", "filler_ids", "needle_sample"]
