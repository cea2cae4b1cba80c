"""One offline English text corpus: docstrings of Python standard-library modules, then pydoc's help
topics (the language reference, ``TEXT_DICTS``), which all go to the training part.

Used wherever a long natural-language text is needed without downloads: the filler of the
``kv_cache`` needle/ppl datasets, the ``smollm2`` q/k/v source of the fidelity task
(``tasks/datasets/sources.py``) and LATTE threshold training (``runners/train_thresholds.py``).

``local_text(min_chars)`` walks ``MODULES`` in order and, per module, takes the module's
docstring and then the docstrings of its public attributes (sorted by name), keeping those over
200 characters; it stops after the first module at which the text reaches ``min_chars``. The
text therefore grows by whole modules and a shorter request is always a prefix of a longer one
(the module list may only be extended at its end, which leaves every text that it already
provided unchanged).

Train / held-out split (``part=``): modules at even positions of ``MODULES`` (0, 2, …) form the
``"train"`` part and modules at odd positions the ``"heldout"`` part. A docstring reachable from
several modules (re-exports, submodule attributes) belongs to the first module that yields it,
and a docstring text already used by an earlier module is not repeated, so the two parts share
no docstring.

The text depends on the Python version (its docstrings) and, beyond the default 200k characters,
on which submodules the process has already imported (they are attributes of their package);
given those, it is the same on every call. (The walk used to remember docstrings by ``id`` without
keeping them alive, so a recycled ``id`` dropped text at random beyond ~200k characters; the
default 200k-character text, which the needle filler uses up to ~33k-token contexts, is
unchanged by the fix.)

Known repetition, kept so that committed tables stay reproducible: ``inspect.getdoc`` returns a new
string for each constant of a module (``int``'s, ``str``'s docstring…), so the ``id`` check lets
those repeat. In the ``"all"`` text a docstring repeats an earlier one for 46 % of the default
200k characters (``int``'s 763 times over the whole walk); the parts drop repeats across modules,
not within one: 8.4 % of the training part's docstring characters, 5.8 % of the held-out part's first 100k
characters. Removing repeats by text would change every table made from this corpus.
"""
from __future__ import annotations

import importlib
import inspect
import warnings

# One module list. The first 80 are the historical ``tasks/sources.py`` list (now tasks/datasets/sources.py) (the needle/ppl
# filler and the fidelity smollm2 capture are prefixes of this walk: keep their order); the last
# four came from ``runners/train_thresholds.py``'s former list.
MODULES: tuple[str, ...] = tuple((
    "abc argparse ast asyncio base64 bisect calendar collections concurrent contextlib copy csv "
    "dataclasses datetime decimal difflib email enum fileinput fnmatch fractions functools getopt "
    "gettext glob gzip hashlib heapq hmac html http inspect io ipaddress itertools json logging "
    "mailbox math mimetypes numbers operator optparse os pathlib pickle pprint queue random re sched "
    "secrets shlex shutil signal smtplib socket sqlite3 statistics string struct subprocess tarfile "
    "tempfile textwrap threading timeit tokenize traceback turtle typing unittest urllib uuid warnings "
    "wave weakref xml zipfile zoneinfo "
    "configparser imaplib multiprocessing platform "
    "pydoc_data.topics"
).split())
# Modules whose text is a {name: text} dict attribute instead of docstrings: pydoc's help topics (the
# language reference, ~465k characters), appended at an even position, so all of it is training text
# (it gave LATTE's adapter recipe ~2.3x more training tokens; the held-out part is unchanged).
TEXT_DICTS: dict[str, str] = {"pydoc_data.topics": "topics"}
PARTS = ("all", "train", "heldout")
MIN_DOC_CHARS = 200  # docstrings of at most this many characters are skipped


def _module_docs(name: str, seen: dict[int, str]) -> list[str]:
    """Docstrings (stripped) contributed by module ``name``: its own, then its public attributes'.

    ``seen`` maps ``id`` to the docstring object already taken (kept alive, so an ``id`` is never
    reused by another object): the same docstring object reached twice is taken once."""
    try:
        mod = importlib.import_module(name)
    except Exception:  # pragma: no cover - optional modules (turtle without tk, …)
        return []
    if name in TEXT_DICTS:
        docs = list(getattr(mod, TEXT_DICTS[name]).values())
    else:
        with warnings.catch_warnings():  # deprecated attributes (typing.io, typing.re, …) warn when read
            warnings.simplefilter("ignore", DeprecationWarning)
            objs = [mod, *(getattr(mod, a, None) for a in sorted(dir(mod)) if not a.startswith("_"))]
            docs = [inspect.getdoc(obj) if obj is not None else None for obj in objs]
    out = []
    for doc in docs:
        if doc and id(doc) not in seen and len(doc) > MIN_DOC_CHARS:
            seen[id(doc)] = doc
            out.append(doc.strip())
    return out


def local_docs(min_chars: int | None = 200_000, part: str = "all") -> list[str]:
    """The docstrings of ``local_text`` (same arguments), in order."""
    if part not in PARTS:
        raise ValueError(f"part must be one of {', '.join(PARTS)}, got {part!r}.")
    parts: list[str] = []
    total = 0
    seen: dict[int, str] = {}
    used_texts: set[str] = set()
    for i, name in enumerate(MODULES):
        docs = _module_docs(name, seen)
        if part != "all":
            fresh = [d for d in docs if d not in used_texts]
            used_texts.update(docs)
            if (i % 2 == 0) != (part == "train"):
                continue
            docs = fresh
        parts += docs
        total += sum(map(len, docs))
        if min_chars is not None and total >= min_chars:
            break
    return parts


def local_text(min_chars: int | None = 200_000, part: str = "all") -> str:
    """At least ``min_chars`` characters (whole modules; all of the part when None or when the
    modules run out) of standard-library docstrings, joined by blank lines.

    ``part``: ``"all"`` (every module), ``"train"`` (modules at even positions of ``MODULES``) or
    ``"heldout"`` (odd positions); the two parts share no docstring."""
    return "\n\n".join(local_docs(min_chars, part))


__all__ = ["MODULES", "PARTS", "TEXT_DICTS", "local_docs", "local_text"]
