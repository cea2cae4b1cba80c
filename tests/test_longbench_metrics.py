"""LongBench metrics (tasks/datasets/longbench.py) against LongBench's own definitions.

ROUGE-L and code similarity are compared with the reference packages LongBench calls (``rouge``,
fuzzywuzzy's ``fuzz.ratio`` through ``thefuzz``) on a few hundred seeded generated pairs; the
other metrics on hand-computed cases. Equalities are exact: the re-implementations perform the
same arithmetic as the packages, in the same order.
"""
from __future__ import annotations

import random
import sys

import pytest

from attnbench.tasks.datasets import longbench as lb
from attnbench.tasks.datasets.longbench import (classification, code_sim, count, first_code_line, fuzz_ratio_python, lcs_length,
                                      lcs_tokens, longbench_score, qa_f1, retrieval, rouge_l, rouge_l_summary)

rouge = pytest.importorskip("rouge")
thefuzz_fuzz = pytest.importorskip("thefuzz.fuzz")

WORDS = ["the", "The", "cat", "sat", "on", "mat", "dog", "ran", "a", "report", "meeting", "budget", "Paris",
         "said", "and", "of", "to", "in", "new", "plan"]


def longbench_rouge(pred: str, gold: str) -> float:
    """LongBench's ``rouge_score``, as its metrics.py defines it."""
    try:
        return rouge.Rouge().get_scores([pred], [gold], avg=True)["rouge-l"]["f"]
    except Exception:
        return 0.0


def random_text(rng: random.Random) -> str:
    """Words from a small vocabulary (so LCSs are non-trivial), with sentence breaks (". ", ".",
    ".."), repeated words, odd spacing and the occasional empty or punctuation-only text."""
    kind = rng.random()
    if kind < 0.03:
        return ""
    if kind < 0.06:
        return rng.choice([".", "...", " . ", "  "])
    out = []
    for _ in range(rng.randint(1, 40)):
        out.append(rng.choice(WORDS))
        r = rng.random()
        if r < 0.12:
            out.append(rng.choice([". ", ".", "..", " . "]))
        elif r < 0.16:
            out.append(rng.choice(["  ", "\n", "\t"]))
        else:
            out.append(" ")
    text = "".join(out)
    return rng.choice(["", " ", "\n"]) + text + rng.choice(["", ".", " ", ". "])


def pairs(seed: int, n: int):
    rng = random.Random(seed)
    for _ in range(n):
        gold = random_text(rng)
        # half the predictions are edits of the gold text (high overlap), half independent
        pred = random_text(rng) if rng.random() < 0.5 else " ".join(
            w for w in gold.split(" ") if rng.random() < 0.8) + rng.choice(["", " extra words. here"])
        yield pred, gold


# ----------------------------------------------------------------------------- ROUGE-L
def test_rouge_l_equals_rouge_package_on_generated_pairs():
    checked = nonzero = 0
    for pred, gold in pairs(0, 400):
        ref = longbench_rouge(pred, gold)
        assert rouge_l(pred, gold) == ref, (pred, gold)
        try:
            ours = rouge_l_summary(pred, gold)
        except ValueError:
            ours = 0.0
        assert ours == ref, (pred, gold)
        checked += 1
        nonzero += 0 < ref < 1
    assert checked == 400 and nonzero > 200  # the pairs exercise partial overlaps, not only 0 and 1


def test_rouge_l_is_summary_level_and_case_sensitive():
    # sentence order swapped: every reference word is in the union LCS, P = R = 1
    assert rouge_l("the cat sat. the dog ran", "the dog ran. the cat sat") == 2.0 * (1.0 / (2.0 + 1e-8))
    # recall/precision count distinct words: ref {a, b, c} (3), hyp {a, b} (2), union LCS {a, b} (2)
    p, r = 2 / 2, 2 / 3
    assert rouge_l("a b a b", "a b c") == 2.0 * ((p * r) / (p + r + 1e-8))
    # no lower-casing (LongBench passes the raw texts to the package)
    assert rouge_l("The Cat", "the cat") == 0.0
    assert rouge_l("The Cat", "The Cat") == longbench_rouge("The Cat", "The Cat") > 0.99


def test_rouge_l_empty_prediction_scores_zero():
    for pred in ("", ".", "...."):
        with pytest.raises(ValueError):
            rouge_l_summary(pred, "a reference.")
        assert rouge_l(pred, "a reference.") == 0.0 == longbench_rouge(pred, "a reference.")
    assert rouge_l("a prediction", "") == 0.0


def test_rouge_l_without_the_package_uses_the_reimplementation(monkeypatch):
    monkeypatch.setitem(sys.modules, "rouge", None)  # import rouge -> ImportError
    assert lb._rouge_package() is None
    monkeypatch.setattr(lb, "_ROUGE", [])
    assert rouge_l("", "x") == 0.0
    assert lb._ROUGE == [rouge_l_summary]
    for pred, gold in pairs(1, 50):
        assert rouge_l(pred, gold) == longbench_rouge(pred, gold)


def test_lcs_tokens_is_a_longest_common_subsequence():
    rng = random.Random(2)
    for _ in range(200):
        x = [rng.choice("abcd") for _ in range(rng.randint(0, 12))]
        y = [rng.choice("abcd") for _ in range(rng.randint(0, 12))]
        got = lcs_tokens(x, y)
        assert len(got) == lcs_length("".join(x), "".join(y))
        for seq in (x, y):  # a subsequence of both
            it = iter(seq)
            assert all(any(c == s for s in it) for c in got)


# ----------------------------------------------------------------------------- code similarity
CODE_TOKENS = ["x", "y", " = ", "(", ")", "self", ".", "foo", "return ", "1", "[i]", ", ", "if ", ":", "  ",
               "é", "λ"]


def random_code(rng: random.Random) -> str:
    return "".join(rng.choice(CODE_TOKENS) for _ in range(rng.randint(0, 25)))


def longbench_code_line(prediction: str) -> str:
    """LongBench's line selection in code_sim_score, loop as written there."""
    line_out = ""
    for line in prediction.lstrip("\n").split("\n"):
        if ("`" not in line) and ("#" not in line) and ("//" not in line):
            line_out = line
            break
    return line_out


def test_code_sim_equals_fuzz_ratio_on_generated_pairs():
    rng = random.Random(3)
    for _ in range(400):
        lines = [rng.choice(["```python", "# comment", "// c", "", random_code(rng)]) for _ in range(rng.randint(1, 4))]
        pred = rng.choice(["", "\n", "\n\n"]) + "\n".join(lines)
        gold = random_code(rng)
        assert first_code_line(pred) == longbench_code_line(pred)
        assert code_sim(pred, gold) == thefuzz_fuzz.ratio(longbench_code_line(pred), gold) / 100, (pred, gold)


def test_pure_python_fuzz_ratio_equals_thefuzz():
    rng = random.Random(4)
    cases = [("", ""), ("", "a"), ("abc", "abc"), ("this is a test", "this is a test!")]
    # exact .5 ties: |a| + |b| = 16 with LCS 1 gives 12.5 (rounded to even: 12)
    cases += [("a" * k, "a" * k + "b" * (t - 2 * k)) for t in range(2, 120) for k in range(0, t // 2 + 1, 3)]
    cases += [(random_code(rng), random_code(rng)) for _ in range(400)]
    for a, b in cases:
        assert fuzz_ratio_python(a, b) == thefuzz_fuzz.ratio(a, b), (a, b)
    assert fuzz_ratio_python("a", "a" + "b" * 14) == 12 == thefuzz_fuzz.ratio("a", "a" + "b" * 14)


def test_lcs_length_matches_dynamic_programming():
    rng = random.Random(5)
    for _ in range(200):
        a = "".join(rng.choice("abcé") for _ in range(rng.randint(0, 15)))
        b = "".join(rng.choice("abcé") for _ in range(rng.randint(0, 15)))
        table = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
        for i in range(1, len(a) + 1):
            for j in range(1, len(b) + 1):
                table[i][j] = table[i - 1][j - 1] + 1 if a[i - 1] == b[j - 1] else max(table[i - 1][j], table[i][j - 1])
        assert lcs_length(a, b) == table[-1][-1]


def test_code_sim_line_selection():
    assert code_sim("```python\n# set x\nx = 1\ny = 2", "x = 1") == 1.0
    assert code_sim("\n\nx = 1 // no", "x = 1") == 0.0  # every line has a marker: "" vs gold
    assert code_sim("", "") == 1.0  # fuzz.ratio of two empty strings is 100


# ----------------------------------------------------------------------------- hand-computed metrics
def test_qa_f1_hand_computed():
    # normalised: [eiffel, tower, in, paris] vs [eiffel, tower]: P = 1/2, R = 1
    assert qa_f1("The Eiffel Tower, in Paris!", "eiffel tower") == 2 * 0.5 * 1.0 / 1.5
    assert qa_f1("an apple", "The apple.") == 1.0
    assert qa_f1("U.S.A.", "usa") == 1.0  # punctuation removed inside words
    assert qa_f1("red red blue", "red") == 2 * (1 / 3) * 1.0 / (1 / 3 + 1.0)  # multiset overlap
    assert qa_f1("nothing shared", "eiffel tower") == 0.0
    assert qa_f1("", "eiffel") == 0.0 and qa_f1("the", "a") == 0.0


def longbench_classification(prediction: str, ground_truth: str, all_classes) -> float:
    """LongBench's classification_score loop as written there (it removes from the list it walks)."""
    em_match_list = [c for c in all_classes if c in prediction]
    for match_term in em_match_list:
        if match_term in ground_truth and match_term != ground_truth:
            em_match_list.remove(match_term)
    return 1.0 / len(em_match_list) if ground_truth in em_match_list else 0.0


def test_classification_hand_computed():
    classes = ["LOC", "HUM", "NUM"]
    assert classification("LOC", "LOC", all_classes=classes) == 1.0
    assert classification("LOC or HUM", "LOC", all_classes=classes) == 0.5
    assert classification("HUM", "LOC", all_classes=classes) == 0.0
    assert classification("anything", "LOC", all_classes=[]) == 0.0
    # a class that is a proper substring of the gold class is dropped ...
    assert classification("Other location", "Other location", all_classes=["location", "Other location"]) == 1.0
    # ... but LongBench's loop skips the item after a removed one: "Other" stays, score 1/2
    cls = ["location", "Other", "Other location", "city"]
    assert classification("Other location", "Other location", all_classes=cls) == 0.5
    assert longbench_classification("Other location", "Other location", cls) == 0.5


def test_classification_equals_longbench_loop_on_generated_cases():
    rng = random.Random(6)
    for _ in range(400):
        classes = ["".join(rng.choice("ab") for _ in range(rng.randint(1, 3))) for _ in range(rng.randint(0, 6))]
        gold = rng.choice(classes) if classes and rng.random() < 0.8 else "ab"
        pred = "".join(rng.choice("ab ") for _ in range(rng.randint(0, 8)))
        assert classification(pred, gold, all_classes=classes) == longbench_classification(pred, gold, classes)


def test_retrieval_and_count_hand_computed():
    assert retrieval("Paragraph 3", "Paragraph 3") == 1.0
    assert retrieval("Paragraph 3 or Paragraph 5", "Paragraph 3") == 0.5
    assert retrieval("12, 12 and 1", "Paragraph 12") == 2 / 3
    assert retrieval("no idea", "Paragraph 3") == 0.0
    assert retrieval("Paragraph 3", "no paragraph number") == 0.0  # LongBench raises here
    assert count("There are 7 passages, 7 unique", "7") == 1.0
    assert count("7 or 8", "7") == 0.5
    assert count("17", "7") == 0.0  # whole numbers only
    assert count("none", "7") == 0.0
    assert count("7", 7) == 1.0


def test_longbench_score_first_line_and_best_answer():
    # trec / triviaqa / samsum: first line after leading newlines
    assert longbench_score("trec", "\n\nLOC\nHUM", ["LOC"], ["LOC", "HUM"]) == 1.0
    assert longbench_score("triviaqa", "Paris\nLondon", ["London"]) == 0.0
    assert longbench_score("samsum", "a b.\nc d", ["c d"]) == longbench_rouge("a b.", "c d") == 0.0
    # other subsets: the whole prediction
    assert longbench_score("qasper", "x\neiffel tower", ["eiffel tower"]) == 2 * (2 / 3) * 1.0 / (2 / 3 + 1.0)
    assert longbench_score("gov_report", "a b.\nc d", ["c d"]) == longbench_rouge("a b.\nc d", "c d") > 0
    # the best over the gold answers; no answers -> 0
    assert longbench_score("qasper", "eiffel tower", ["paris", "the Eiffel tower"]) == 1.0
    assert longbench_score("passage_count", "7", ["8", "7"]) == 1.0
    assert longbench_score("qasper", "eiffel", []) == 0.0
    assert longbench_score("lcc", "```\nx = 1\n", ["x = 1"]) == 1.0
    assert longbench_score("passage_retrieval_en", "Paragraph 3", ["Paragraph 3"]) == 1.0
