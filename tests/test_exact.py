import pytest
import torch

from attnbench import methods
from attnbench.methods.exact import dense_attention


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("scale", [None, 1.0, 0.05])
def test_exact_matches_float64_reference(causal, scale):
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(2, 3, 37, 16, generator=g) for _ in range(3))
    out = methods.build("exact")(q, k, v, causal=causal, scale=scale)
    ref = dense_attention(q.double(), k.double(), v.double(), causal=causal, scale=scale)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), ref, atol=1e-5, rtol=1e-5)


def test_exact_cross_attention_and_value_dim():
    g = torch.Generator().manual_seed(2)
    q = torch.randn(1, 2, 50, 16, generator=g)
    k = torch.randn(1, 2, 20, 16, generator=g)
    v = torch.randn(1, 2, 20, 40, generator=g)
    out = methods.build("exact")(q, k, v, scale=1.0)
    assert out.shape == (1, 2, 50, 40)
    torch.testing.assert_close(out.double(), dense_attention(q.double(), k.double(), v.double(), scale=1.0),
                               atol=1e-5, rtol=1e-5)
