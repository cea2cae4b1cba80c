"""The fidelity task and its q/k/v sources."""
import pytest
import torch

from attnbench import methods
from attnbench import tasks
from attnbench.methods.exact import dense_attention
from attnbench.core.measure import Meter
from attnbench.tasks.fidelity import errors
from attnbench.tasks.datasets.sources import capture_hf, load_minilm, load_smollm2, make_qkv, _token_batch


def run_task(method, **cfg):
    task = tasks.build({"name": "fidelity", **cfg}, "cpu", seed=0)
    return list(task.run(methods.build(method), Meter.quick(samples=1)))


def test_exact_has_zero_error_and_rows_per_n():
    rows = run_task("exact", n=[16, 40], heads=2, head_dim=8)
    assert [r["n"] for r in rows] == [16, 40]
    assert all(r["rel_fro_error"] == 0 and r["max_abs_error"] == 0 for r in rows)


def test_errors_metrics():
    e = torch.randn(2, 3, 20, 4, dtype=torch.float64)
    d = torch.zeros_like(e)
    d[0, 0, 0, 0] = 0.5
    out = errors(e + d, e)
    assert out["max_abs_error"] == pytest.approx(0.5)
    assert out["rel_fro_error"] == pytest.approx(0.5 / float(e.norm()))
    spec = torch.stack([0.5 / torch.linalg.matrix_norm(e[b, h], ord=2) for b in range(2) for h in range(3)
                        if (b, h) == (0, 0)])
    assert out["rel_spec_error"] == pytest.approx(float(spec[0]) / 6)


def test_bounded_source_row_norms():
    data = make_qkv({"source": "bounded", "radius": 1.5, "heads": 2, "head_dim": 8}, 30, 0, torch.device("cpu"),
                    torch.float32)
    torch.testing.assert_close(data["k"].norm(dim=-1), torch.full((1, 2, 30), 1.5))


def test_source_errors_are_clear():
    with pytest.raises(ValueError, match=r"task.source must be one of \[.gaussian"):
        make_qkv({"source": "nope"}, 8, 0, torch.device("cpu"), torch.float32)
    with pytest.raises(ValueError, match="task.glove_path"):
        make_qkv({"source": "glove"}, 8, 0, torch.device("cpu"), torch.float32)
    with pytest.raises(ValueError, match="task.dtype"):
        run_task("exact", n=8, dtype="int8")


@pytest.mark.slow
def test_smollm2_capture_reproduces_the_models_attention():
    model, tok = load_smollm2()
    ids = _token_batch(tok, 128, 1)
    cap = capture_hf(model, ids, layer=5)
    assert cap["q"].shape == (1, 9, 128, 64) and cap["k"].shape == cap["q"].shape  # GQA heads expanded
    out = methods.build("exact")(cap["q"], cap["k"], cap["v"], causal=True, scale=cap["scale"])
    torch.testing.assert_close(out, cap["out"], atol=1e-5, rtol=1e-4)
    ref = dense_attention(cap["q"].double(), cap["k"].double(), cap["v"].double(), causal=True, scale=cap["scale"])
    torch.testing.assert_close(cap["out"].double(), ref, atol=1e-4, rtol=1e-3)


@pytest.mark.slow
def test_minilm_capture_reproduces_the_models_attention():
    model, tok = load_minilm()
    cap = capture_hf(model, _token_batch(tok, 64, 2), layer=2)
    assert cap["q"].shape == (2, 12, 64, 32)
    out = methods.build("exact")(cap["q"], cap["k"], cap["v"], scale=cap["scale"])
    torch.testing.assert_close(out, cap["out"], atol=1e-5, rtol=1e-4)


@pytest.mark.slow
def test_smollm2_source_is_cached(tmp_path):
    cfg = {"source": "smollm2", "layer": 3, "cache_dir": str(tmp_path)}
    a = make_qkv(cfg, 64, 0, torch.device("cpu"), torch.float32)
    assert (tmp_path / "smollm2_L3_n64_b1.pt").is_file()
    b = make_qkv(cfg, 64, 0, torch.device("cpu"), torch.float32)
    assert torch.equal(a["q"], b["q"]) and a["scale"] == b["scale"] == 0.125


def test_exact_measured_once_per_process_and_shared():
    """A second method on identical inputs reuses exact's measurement and output (exact_shared);
    different inputs (another seed here via n) or share_exact=false measure again."""
    import attnbench.tasks.fidelity as fid

    fid._exact_cache.clear()
    cfg = dict(n=[24], heads=2, head_dim=8, source="gaussian")
    first = run_task("exact", **cfg)[0]
    second = run_task("performer", **cfg)[0]
    assert first["exact_shared"] is False and second["exact_shared"] is True
    assert second["exact_latency_ms"] == first["exact_latency_ms"]
    assert second["rel_fro_error"] > 0  # compared with the shared exact output
    assert run_task("performer", **{**cfg, "n": [32]})[0]["exact_shared"] is False
    assert run_task("performer", **cfg, share_exact=False)[0]["exact_shared"] is False


def test_method_max_n_skips_larger_n_for_that_method_only(capsys):
    from attnbench.core.measure import Meter

    cfg = {"name": "fidelity", "n": [16, 32], "heads": 1, "head_dim": 4, "method_max_n": {"performer": 16}}
    task = tasks.build(cfg)
    rows = list(task.run(methods.build("performer", nb_features=4), Meter.quick(torch.device("cpu"))))
    assert [r["n"] for r in rows] == [16]
    assert "performer: n = [32] skipped (task.method_max_n.performer=16)" in capsys.readouterr().out
    assert [r["n"] for r in task.run(methods.build("exact"), Meter.quick(torch.device("cpu")))] == [16, 32]
    with pytest.raises(ValueError, match="task.method_max_n.exact must be an integer >= 1"):
        list(tasks.build({**cfg, "method_max_n": {"exact": 0}}).run(methods.build("exact"), Meter.quick(torch.device("cpu"))))
