"""One conformance suite for every registered method (the pattern of timm's tests/test_models.py).

Per-method test files keep only what is specific to a method. ``CASES`` says, for each method,
the knobs of a small approximating regime (budget below n, so randomness is active) and the knobs
at which the method is exact by construction (None: never exact, e.g. Performer's random features).
"""
from pathlib import Path

import pytest
import torch
import yaml

import methods
from conftest import ROOT, rel_err, tolerance
from methods.exact import dense_attention

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


def test_every_registered_method_has_a_case():
    assert sorted(CASES) == methods.names()


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


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("name", sorted(CASES))
def test_dtype_in_is_dtype_out(name, dtype):
    knobs, _, _, causal = CASES[name]
    out = call(methods.build({"name": name, **knobs}), *qkv(dtype), causal=causal)
    assert out.dtype == dtype and out.shape == (1, 2, N, 16) and bool(torch.isfinite(out).all())


@pytest.mark.parametrize("name", sorted(n for n, c in CASES.items() if c[1] is not None))
def test_exact_at_full_budget(name):
    _, full, _, causal = CASES[name]
    q, k, v = qkv()
    out = call(methods.build({"name": name, **full}), q, k, v, causal=causal)
    ref = dense_attention(q, k, v, causal=causal)
    assert rel_err(out, ref) < tolerance(torch.float64, N), name


@pytest.mark.parametrize("name", sorted(CASES))
def test_large_norm_inputs_give_finite_output_or_a_clear_error(name):
    # logits of order 30^2 * 16 / 4 = 3600: exp overflows unless the method keeps a running max
    knobs, _, _, causal = CASES[name]
    m = methods.build({"name": name, **knobs})
    try:
        out = call(m, *qkv(torch.float32, scale_qk=30.0), causal=causal)
    except (ValueError, FloatingPointError, NotImplementedError) as err:
        assert name in str(err)
    else:
        assert bool(torch.isfinite(out).all()), f"{name} returned non-finite values on large-norm inputs"


@pytest.mark.parametrize("name", sorted(CASES))
def test_gradients_flow_or_a_clear_error(name):
    knobs, _, _, causal = CASES[name]
    m = methods.build({"name": name, **knobs})
    q, k, v = qkv(n=64, grad=True)
    if not m.supports_grad:
        with pytest.raises(NotImplementedError, match=f"{name} does not support gradients"):
            call(m, q, k, v, causal=causal)
        with torch.no_grad():
            call(m, q, k, v, causal=causal)
        return
    call(m, q, k, v, causal=causal).square().sum().backward()
    for t in (q, k, v):
        assert t.grad is not None and bool(torch.isfinite(t.grad).all())
    assert float(v.grad.abs().sum()) > 0


def test_cases_cover_the_method_yaml_files():
    assert sorted(p.stem for p in Path(ROOT / "conf" / "method").glob("*.yaml")) == methods.names()
