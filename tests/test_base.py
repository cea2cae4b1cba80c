import pytest
import torch

from attnbench import methods
from attnbench.methods.base import resolve_budget


def qkv(b=1, h=2, n=16, d=8, dv=None, dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    return (torch.randn(b, h, n, d, generator=g, dtype=dtype), torch.randn(b, h, n, d, generator=g, dtype=dtype),
            torch.randn(b, h, n, dv or d, generator=g, dtype=dtype))


@pytest.mark.parametrize("name", ["exact", "performer"])
def test_bad_inputs_raise_value_error(name):
    m = methods.build(name)
    q, k, v = qkv()
    with pytest.raises(ValueError, match="4-D"):
        m(q[0], k, v)
    with pytest.raises(ValueError, match="head dim"):
        m(q, k[..., :4], v)
    with pytest.raises(ValueError, match="batch and heads"):
        m(q, k[:, :1], v[:, :1])
    with pytest.raises(ValueError, match="same number of tokens"):
        m(q, k, v[:, :, :8])
    with pytest.raises(ValueError, match="one dtype"):
        m(q, k.double(), v)
    with pytest.raises(ValueError, match="floating"):
        m(q.long(), k.long(), v.long())
    bad = q.clone()
    bad[0, 0, 3, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        m(bad, k, v)
    with pytest.raises(ValueError, match="scale"):
        m(q, k, v, scale=-1.0)
    with pytest.raises(ValueError, match="causal"):
        m(q[:, :, :4], k, v, causal=True)


def test_registry_errors_list_names():
    with pytest.raises(ValueError, match="available: .*exact.*performer"):
        methods.build("nope")
    with pytest.raises(ValueError, match="no parameter"):
        methods.build({"name": "performer", "bogus": 1})
    with pytest.raises(ValueError, match="nb_features"):
        methods.build({"name": "performer", "nb_features": 0})
    assert {"exact", "performer"} <= set(methods.names())


def test_resolve_budget():
    assert resolve_budget("r", 64, 100) == 64
    assert resolve_budget("r", 0.25, 100) == 25
    assert resolve_budget("r", 500, 100) == 100
    with pytest.raises(ValueError, match="exceeds"):
        resolve_budget("r", 500, 100, allow_exceed=False)
    with pytest.raises(ValueError, match="fraction"):
        resolve_budget("r", 1.5, 100)
    with pytest.raises(ValueError, match="positive integer"):
        resolve_budget("r", -3, 100)


def test_rebuild_keeps_knobs_and_seed():
    m = methods.build({"name": "performer", "nb_features": 32})
    m.reseed(7)
    m2 = methods.rebuild(m, eps=0.0)
    assert m2.nb_features == 32 and m2.eps == 0.0 and m2._seed == 7


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_returns_input_dtype(dtype):
    q, k, v = qkv(dtype=dtype)
    for name in ["exact", "performer"]:
        assert methods.build(name)(q, k, v).dtype == dtype


def test_preset_files_resolve_for_every_method_they_cover():
    """Every conf/method/preset/<preset>/<method>.yaml names knobs its method accepts."""
    from attnbench.core.knobs import CONF_DIR, preset_knobs, preset_methods

    presets = sorted(p.stem for p in (CONF_DIR / "preset").glob("*.yaml") if p.stem != "none")
    assert {"biggan", "t2t_layer1", "t2t_layer2", "scaling_b256"} <= set(presets)
    for preset in presets:
        for name in preset_methods(preset):
            methods.build({"name": name, **preset_knobs(preset, name)})
    assert preset_knobs("biggan", "latte") is None
    with pytest.raises(ValueError, match="unknown preset 'nope'; available: "):
        preset_knobs("nope", "wildcat")
