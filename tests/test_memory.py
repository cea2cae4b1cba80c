"""No sub-quadratic method materialises an n×n tensor: peak memory roughly doubles (not
quadruples) when n doubles. Budgets are kept small so the O(n) terms dominate."""
import pytest
import torch

from attnbench import methods
from attnbench.core.measure import cpu_peak_memory_mb

SUBQUADRATIC = {
    "performer": ({"nb_features": 32}, False),
    "wildcat": ({"r": 32}, False),
    "kdeformer": ({"sample_size": 32, "bucket_size": 32}, False),
    "conv_basis": ({"k": 4}, True),
    "reformer": ({"bucket_size": 32, "n_hashes": 2}, False),
    "scatterbrain": ({"local_context": 32, "nb_features": 32}, False),
    "thinformer": ({"g": 1}, False),
    "hyperattention": ({"block_size": 32, "sample_size": 32, "min_seq_len": 64}, False),
    "nystromformer": ({"num_landmarks": 32}, False),
}


def peak(name, knobs, causal, n):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, n, 32, generator=g) * 0.5 for _ in range(3))
    m = methods.build({"name": name, **knobs})
    m(q, k, v, causal=causal)  # warm-up (lazy state)
    return cpu_peak_memory_mb(lambda: m(q, k, v, causal=causal))[1]


@pytest.mark.parametrize("name", sorted(SUBQUADRATIC))
def test_peak_memory_grows_subquadratically(name):
    knobs, causal = SUBQUADRATIC[name]
    small, large = peak(name, knobs, causal, 4096), peak(name, knobs, causal, 8192)
    assert large / small < 2.8, f"{name}: {small:.1f} MB at n=4096, {large:.1f} MB at n=8192"


def test_the_check_detects_quadratic_memory():
    from attnbench.methods.exact import dense_attention

    g = torch.Generator().manual_seed(0)
    sizes = []
    for n in (1024, 2048):
        q = torch.randn(1, 2, n, 32, generator=g)
        sizes.append(cpu_peak_memory_mb(lambda: dense_attention(q, q, q))[1])
    assert sizes[1] / sizes[0] > 3.5
