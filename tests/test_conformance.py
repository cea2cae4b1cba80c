"""One conformance suite for every registered method (the pattern of timm's tests/test_models.py).

Per-method test files keep only what is specific to a method. ``CASES`` says, for each method,
the knobs of a small approximating regime (budget below n, so randomness is active) and the knobs
at which the method is exact by construction (None: never exact, e.g. Performer's random features).
"""
from pathlib import Path

import pytest
import torch
import yaml

from attnbench import methods
from conftest import ROOT
from attnbench.runners.check import CHECKS, Subject, run_check

N = 256
CASES = {
    # name: (approximating knobs, knobs at which the method is exact at n=N, randomised, causal only)
    "exact": ({}, {}, False, False),
    "performer": ({"nb_features": 32}, None, True, False),
    "wildcat": ({"r": 32}, {"r": N}, True, False),
    "kdeformer": ({"bucket_size": 32, "sample_size": 32}, {"bucket_size": N}, True, False),
    "conv_basis": ({"k": 4}, {"k": N}, False, True),
    "latte": ({"threshold": 0.0}, {"threshold": 1e9, "score": "float"}, False, False),
    "reformer": ({"bucket_size": 32, "n_hashes": 2}, {"bucket_size": N, "n_hashes": 1}, True, False),
    "scatterbrain": ({"local_context": 32, "nb_features": 32}, {"local_context": 2 * N}, True, False),
    "thinformer": ({"g": 1}, {"g": 4}, True, False),
    "hyperattention": ({"block_size": 32, "sample_size": 32, "min_seq_len": 1}, {"block_size": N, "min_seq_len": 1},
                       True, False),
    "nystromformer": ({"num_landmarks": 16}, None, False, False),
}


def test_every_built_in_method_has_a_case():
    assert sorted(CASES) == methods.builtin_names()


def qkv(dtype=torch.float64, n=N, scale_qk=1.0, seed=0, grad=False):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(1, 2, n, 16, generator=g, dtype=torch.float64) for _ in range(3))
    q, k = q * scale_qk, k * scale_qk
    out = [t.to(dtype) for t in (q, k, v)]
    if grad:
        out = [t.requires_grad_(True) for t in out]
    return out


def call(m, q, k, v, seed=0, causal=False):
    m.reseed(seed)
    return m(q, k, v, causal=causal)


@pytest.mark.parametrize("name", sorted(CASES))
def test_yaml_defaults_equal_constructor_defaults(name):
    yaml_cfg = yaml.safe_load((ROOT / "conf" / "method" / f"{name}.yaml").read_text())
    assert methods.resolve(name) == yaml_cfg


@pytest.mark.parametrize("name", sorted(CASES))
def test_unknown_knob_is_a_clear_error(name):
    with pytest.raises(ValueError, match=f"method '{name}' has no parameter"):
        methods.build({"name": name, "no_such_knob": 1})


@pytest.mark.parametrize("name", sorted(CASES))
def test_seed_repeats_bit_for_bit_and_seeds_differ_when_random(name):
    knobs, _, randomised, causal = CASES[name]
    m = methods.build({"name": name, **knobs})
    q, k, v = qkv()
    a, b = call(m, q, k, v, 0, causal), call(m, q, k, v, 0, causal)
    assert torch.equal(a, b)
    assert (not torch.equal(a, call(m, q, k, v, 1, causal))) == randomised


@pytest.mark.parametrize("check", list(CHECKS))
@pytest.mark.parametrize("name", sorted(CASES))
def test_conformance_check(name, check):
    """The checks of ``attnbench check`` (shapes and dtypes, independence, causality,
    determinism, exactness at the declared full budget, large inputs, gradients, bad inputs), at
    each method's approximating knobs; a declared causal leak is reported as known, not failed."""
    knobs, _, _, _ = CASES[name]
    result = run_check(Subject({"name": name, **knobs}, n=N), check)
    assert result.status != "fail", f"{name}: {check}: {result.detail}"
    if check == "exact_at_full_budget" and CASES[name][1] is not None:
        assert result.status == "pass", result.detail


@pytest.mark.parametrize("name", sorted(n for n, c in CASES.items() if c[1] is not None))
def test_declared_exact_knobs_are_the_cases_full_budget(name):
    assert methods.get(name).exact_knobs(N) == CASES[name][1]


def test_cases_cover_the_method_yaml_files():
    stems = sorted(p.stem for p in Path(ROOT / "conf" / "method").glob("*.yaml"))
    assert stems == sorted([*methods.builtin_names(), methods.TARGET])
