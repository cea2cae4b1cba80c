"""task=lm: a causal LM with the method swapped into its attention, on a tiny random Llama."""
from __future__ import annotations

import math

import pytest
import torch

from attnbench import methods
from attnbench.core.measure import Meter
from attnbench.runners.run import run
from attnbench.tasks.adapters import hf
from attnbench.tasks.lm import LanguageModelTask
from attnbench.tasks.models.causal_lm import byte_tokenizer, tiny_llama

CPU = torch.device("cpu")
QUICK = {"warmup": 1, "min_samples": 1, "max_samples": 1, "min_run_s": 0.0, "max_run_s": 0.0, "memory": False}


def make_task(**cfg):
    base = dict(name="lm", model="tiny_llama", context_length=[96], num_samples=2, timed_layers=0,
                time_forward_max_n=1024)
    base.update(cfg)
    return LanguageModelTask(base, CPU, 0, model=tiny_llama(seed=1), tokenizer=byte_tokenizer())


def rows_of(task, method):
    return list(task.run(method, Meter.quick(CPU)))


def test_exact_swapped_in_reproduces_the_untouched_model():
    task = make_task()
    ids = task.windows(96)[0]
    with torch.no_grad():
        hf.set_native(task.model, True)
        native = task.model(ids).logits
        hf.set_native(task.model, False)  # exact in both layers through the hooks
        swapped = task.model(ids).logits
    assert swapped.abs().max() > 0
    torch.testing.assert_close(swapped, native, rtol=1e-5, atol=1e-5)  # fp32, 2 layers: same SDPA up to rounding
    (row,) = rows_of(task, methods.build("exact"))
    assert row["ppl"] == pytest.approx(row["exact_ppl"], rel=1e-5)
    assert row["top1_agreement"] == 100.0
    assert row["tokens"] == 2 * 95 and row["layers"] == "layer0,layer1" and row["layers_swapped"] == 2


def test_the_method_runs_in_every_selected_layer_and_nowhere_else(monkeypatch):
    calls: list[int] = []
    cls = methods.get("performer")
    real = cls._attend

    def spy(self, q, k, v, **kw):
        calls.append(id(self))
        assert kw["causal"] and q.shape[2] == k.shape[2]
        return real(self, q, k, v, **kw)

    monkeypatch.setattr(cls, "_attend", spy)
    for layers, expect in (("all", ["layer0", "layer1"]), ([1], ["layer1"]), ("every:2", ["layer0"])):
        task = make_task(layers=layers, num_samples=1, timed_layers=1, time_forward_max_n=0)
        calls.clear()
        (row,) = rows_of(task, methods.build("performer", nb_features=8))
        assert list(task.hooks) == expect and row["layers"] == ",".join(expect)
        instances = {id(task.hooks[lab].call.method) for lab in expect}
        assert len(instances) == len(expect)  # one instance per layer
        assert set(calls) == instances  # every selected layer called the method, no other did
        assert row["ppl"] != row["exact_ppl"] and math.isfinite(row["ppl"])
        assert "attn_speedup" in row and "speedup" not in row  # forward not timed (time_forward_max_n=0)


def test_approximation_error_grows_with_fewer_features_and_rows_carry_timing():
    task = make_task(num_samples=1)
    exact_row = rows_of(task, methods.build("exact"))[0]
    (row,) = rows_of(task, methods.build("conv_basis", k=2))
    assert row["ppl_increase"] == pytest.approx(row["ppl"] - exact_row["ppl"], rel=1e-6)
    assert row["top1_agreement"] < 100.0
    for col in ("attn_latency_ms", "exact_attn_latency_ms", "attn_speedup", "latency_ms", "exact_latency_ms", "speedup"):
        assert row[col] > 0, col
    # at full budget Conv-Basis (k = n) is exact causal attention
    (full,) = rows_of(task, methods.build("conv_basis", k=96))
    assert full["ppl"] == pytest.approx(exact_row["ppl"], rel=1e-4)


def test_latte_reads_each_layers_thresholds_from_the_file(tmp_path):
    path = tmp_path / "theta.pt"
    torch.save({"model.layers.0.self_attn": torch.zeros(4), "model.layers.1.self_attn": torch.full((4,), 50.0)}, path)
    task = make_task(num_samples=1)
    (row,) = rows_of(task, methods.build("latte", thresholds_path=str(path)))
    theta = {lab: task.hooks[lab].call.method.theta.detach() for lab in task.hooks}
    assert theta["layer0"].tolist() == [0.0] * 4 and theta["layer1"].tolist() == [50.0] * 4
    assert 0 < row["kept_fraction"] < 1  # layer 0 keeps only row maxima, layer 1 everything


def test_bad_input_gives_one_line_errors():
    task = make_task()
    with pytest.raises(ValueError, match="task=lm needs causal attention; method wildcat is bidirectional only"):
        rows_of(task, methods.build("wildcat"))
    with pytest.raises(ValueError, match=r"task.context_length=9000 is longer than the model's context \(8192 tokens\)"):
        make_task(context_length=[9000])
    with pytest.raises(ValueError, match="task.layers names 'layer7'"):
        make_task(layers=["layer7"])


def test_method_max_n_skips_longer_contexts(capsys):
    task = make_task(context_length=[64, 96], num_samples=1, method_max_n={"conv_basis": 64})
    rows = rows_of(task, methods.build("conv_basis", k=4))
    assert [r["n"] for r in rows] == [64]
    assert "conv_basis: context_length = [96] skipped" in capsys.readouterr().out


def test_runner_end_to_end_on_tiny_llama(tmp_path):
    cfg = {"method": {"name": "hyperattention", "block_size": 16, "sample_size": 16, "min_seq_len": 32}, "seed": 0,
           "device": "cpu", "results_dir": str(tmp_path), "meter": QUICK, "logger": {"name": "none"},
           "task": {"name": "lm", "model": "tiny_llama", "context_length": [128], "num_samples": 1}}
    (row,) = run(cfg)
    assert row["status"] == "ok", row.get("error")
    assert row["task.layers"] == "all" and row["ppl"] > 1 and row["exact_ppl"] > 1


def test_rows_do_not_depend_on_the_meter_of_earlier_rows():
    """Randomised methods are reseeded per context length: the timing calls of a shorter context
    (their number depends on the meter) leave the next row's perplexity unchanged."""
    def ppl_at_96(**meter):
        task = make_task(context_length=[64, 96], num_samples=1, timed_layers=0, time_forward_max_n=0)
        m = methods.build("performer", nb_features=8, redraw=True)
        m.reseed(0)
        return [r["ppl"] for r in task.run(m, Meter(CPU, **meter))][-1]

    one = ppl_at_96(warmup=1, min_samples=1, max_samples=1, min_run_s=0.0, max_run_s=0.0, memory=False)
    many = ppl_at_96(warmup=2, min_samples=4, max_samples=4, min_run_s=0.0, max_run_s=0.0, memory=False)
    assert one == many


def test_first_and_last_layer_specs_select_the_ends_of_the_model():
    for spec, expect in (("first:1", ["layer0"]), ("last:1", ["layer1"]), ("first:2", ["layer0", "layer1"])):
        task = make_task(layers=spec, num_samples=1, timed_layers=None, time_forward_max_n=0)
        (row,) = rows_of(task, methods.build("performer", nb_features=8))
        assert row["layers"] == ",".join(expect)
        assert not any(c.startswith(("attn_", "latency", "speedup")) for c in row)  # nothing timed
    with pytest.raises(ValueError, match=r"task.layers='last:3' asks for 3 layers; the model has 2"):
        make_task(layers="last:3")
    from attnbench import tasks

    with pytest.raises(ValueError, match=r"task.layers='first:0': 'first:K' needs an integer K >= 1"):
        tasks.resolve({"name": "lm", "layers": "first:0"})
    with pytest.raises(ValueError, match=r"task.timed_layers must be an integer >= 0 or null"):
        tasks.resolve({"name": "lm", "timed_layers": -1})
