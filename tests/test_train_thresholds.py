"""runners.train_thresholds: the recipes that train the model's weights with LATTE's thresholds (LoRA,
full), their dense baseline, the saved files and a killed run's resume, on the tiny random Llama."""
import math
from pathlib import Path

import pandas as pd
import pytest
import torch

from attnbench.methods.latte import Latte
from attnbench.runners import train_thresholds as tt
from attnbench.tasks.models.causal_lm import byte_tokenizer, tiny_llama


def _sharp_llama():
    """The tiny random Llama with q, k scaled up: a random model attends almost uniformly, which no
    threshold can filter; sharper scores make the filter (and its training) matter."""
    model = tiny_llama()
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.q_proj.weight.mul_(6)
            layer.self_attn.k_proj.weight.mul_(6)
    return model


def _batches(n: int = 3, length: int = 48) -> list[torch.Tensor]:
    ids = byte_tokenizer()("def add(a, b):\n    return a + b\n" * 40, return_tensors="pt").input_ids[0]
    return [ids[i * length:(i + 1) * length].unsqueeze(0) for i in range(n)]


def _patch(model):
    return tt.patch_hf(model, lambda name, heads: Latte(threshold=2.0, heads=heads, score="int8", backend="torch"))


def test_lora_adapter_starts_as_the_base_model_and_names_bad_targets():
    model, ids = _sharp_llama(), _batches(1)[0]
    with torch.no_grad():
        ref = model(input_ids=ids).logits
        adapters = tt.add_lora(model, rank=4, alpha=8.0)
        torch.testing.assert_close(model(input_ids=ids).logits, ref, rtol=0, atol=0)
    assert sorted(adapters) == sorted(f"model.layers.{i}.self_attn.{p}" for i in range(2) for p in tt.LORA_TARGETS)
    with pytest.raises(ValueError, match="no nn.Linear named"):
        tt.add_lora(tiny_llama(), rank=4, alpha=8.0, targets=("qkv",))
    with pytest.raises(ValueError, match="rank >= 1"):
        tt.add_lora(tiny_llama(), rank=0, alpha=8.0)


@pytest.mark.parametrize("recipe", ["lora", "full"])
def test_recipe_trains_weights_and_thresholds_and_the_files_load_back(recipe, tmp_path):
    model = _sharp_llama()
    methods = _patch(model)
    weights, adapters = tt.trainable_weights(model, recipe, rank=4, alpha=8.0)
    before = [w.detach().clone() for w in weights]
    theta0 = {n: m.theta.detach().clone() for n, m in methods.items()}
    hist = tt.train(model, methods, _batches(), tt._lm_loss, lam=2.0, steps=4, lr=0.3, weights=weights,
                    weight_lr=1e-2, schedule="cosine", log=lambda s: None)
    assert all(math.isfinite(h["task_loss"]) for h in hist)
    moved = [not torch.equal(w, b) for w, b in zip(weights, before)]
    assert sum(moved) >= len(weights) // 2  # every adapter's B (lora); most weights (full: some get no gradient)
    assert all(not torch.equal(m.theta.detach(), theta0[n]) for n, m in methods.items())
    assert all(not p.requires_grad for p in model.parameters())
    assert all(not m.theta.requires_grad for m in methods.values())

    ids = _batches(1, 64)[0]
    with torch.no_grad():
        ref = model(input_ids=ids).logits
    tt.save_thresholds(methods, tmp_path / "theta.pt")
    other = tiny_llama()  # the base weights (a LoRA file holds only the adapter)
    if recipe == "lora":
        tt.save_lora(adapters, tmp_path / "lora.pt")
        with torch.no_grad():
            for layer in other.model.layers:
                layer.self_attn.q_proj.weight.mul_(6)
                layer.self_attn.k_proj.weight.mul_(6)
        loaded = tt.load_lora(other, tmp_path / "lora.pt")
        assert sorted(loaded) == sorted(adapters)
    else:
        other.load_state_dict(model.state_dict())
    tt.patch_hf(other, lambda name, heads: Latte(thresholds_path=str(tmp_path / "theta.pt"), threshold_layer=name,
                                                backend="torch"))
    with torch.no_grad():
        torch.testing.assert_close(other(input_ids=ids).logits, ref, rtol=1e-5, atol=1e-5)


def test_dense_run_has_no_kept_term_and_nothing_to_train_is_an_error():
    model = tiny_llama()
    weights, _ = tt.trainable_weights(model, "lora", rank=2, alpha=4.0)
    hist = tt.train(model, {}, _batches(), tt._lm_loss, lam=5.0, steps=2, lr=0.1, weights=weights, weight_lr=1e-2,
                    log=lambda s: None)
    assert [h["kept"] for h in hist] == [1.0, 1.0]
    with pytest.raises(ValueError, match="nothing to train"):
        tt.train(model, {}, _batches(), tt._lm_loss, lam=1.0, steps=1, lr=0.1, log=lambda s: None)
    with pytest.raises(ValueError, match="recipe must be one of"):
        tt.trainable_weights(model, "adapter")


def test_cosine_schedule_anneals_to_zero():
    f = tt.lr_factor("cosine", 100)
    assert f(0) == 1.0 and f(50) == pytest.approx(0.5) and f(100) == pytest.approx(0.0) and f(120) == f(100)
    assert tt.lr_factor("constant", 100)(70) == 1.0


def _cli(out, *extra):
    return ["lm", "--recipe", "lora", "--lambdas", "0.5", "4", "--steps", "4", "--eval-at", "2", "--lr", "0.3",
            "--weight-lr", "1e-2", "--seq-len", "48", "--train-seqs", "3", "--eval-seqs", "2", "--init-threshold", "2",
            "--schedule", "cosine", "--out-dir", str(out / "th"), "--curve", str(out / "curve.md"), *extra]


def test_cli_lora_curve_dense_baseline_and_resume(tmp_path, monkeypatch):
    """The whole lm path on the tiny model: the dense run first, each lambda's increase over it at the
    same step, the page's convergence table; a run killed mid-lambda and resumed gives the same curve."""
    monkeypatch.setattr(tt, "load_smollm2", lambda: (_sharp_llama(), byte_tokenizer()))
    rows = tt.main(_cli(tmp_path / "a"))
    assert [tt._run_key(r["lambda"]) for r in rows] == ["dense", "dense", "0.5", "4"]
    dense = rows[1]
    assert dense["ppl_dense_ft"] == dense["ppl"] and dense["kept_fraction"] == 1.0
    for r in rows[2:]:
        assert r["ppl_dense_ft"] == dense["ppl"] and r["ppl_increase_ft"] == pytest.approx(r["ppl"] - dense["ppl"])
        assert r["kept_fraction"] < 1.0 and torch.load(r["thresholds"]) and torch.load(r["adapter"])["rank"] == 8
    curve = pd.read_csv(tmp_path / "a" / "curve.csv")
    assert len(curve) == 3 * 3 and curve["lambda"].isna().sum() == 3  # steps 0, 2, 4 per run
    page = (tmp_path / "a" / "curve.md").read_text()
    assert "| dense (no LATTE) | 4 |" in page and "ppl increase over dense FT" in page
    assert (tmp_path / "a" / "figures" / "curve.png").is_file()
    assert not (tmp_path / "a" / "th" / "resume.pt").exists()  # removed once finished

    real, calls = tt.eval_lm, []

    def killed_at_lambda4_step4(*a, **k):  # evaluations: exact, step 0, dense 2 and 4, λ 0.5 2 and 4, λ 4 2, λ 4 4
        calls.append(1)
        if len(calls) == 8:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(tt, "eval_lm", killed_at_lambda4_step4)
    with pytest.raises(KeyboardInterrupt):
        tt.main(_cli(tmp_path / "b"))
    monkeypatch.setattr(tt, "eval_lm", real)
    assert torch.load(tmp_path / "b" / "th" / "resume.pt", weights_only=False)["current"]["step"] == 2
    with pytest.raises(ValueError, match="other settings"):
        tt.main(_cli(tmp_path / "b", "--resume", "--lora-rank", "4"))
    tt.main(_cli(tmp_path / "b", "--resume"))
    resumed = pd.read_csv(tmp_path / "b" / "curve.csv")
    pd.testing.assert_frame_equal(resumed.drop(columns="train_s"), curve.drop(columns="train_s"))
    resumed_page = (tmp_path / "b" / "curve.md").read_text()
    assert "--resume" not in resumed_page  # the page names the command that reproduces it
    settings = [[ln for ln in p.splitlines() if ln.startswith("Settings:")] for p in (page, resumed_page)]
    assert settings[1] == [ln.replace("/a/", "/b/") for ln in settings[0]]


def test_resume_state_survives_a_kill_while_saving(tmp_path, monkeypatch):
    """The resume file is replaced only once the new state is written whole: a run killed mid-save keeps the last."""
    path = tmp_path / "resume.pt"
    save = lambda step: tt.replace_atomic(path, lambda tmp: tt.torch.save({"step": step}, tmp))  # noqa: E731
    save(1)

    def killed_mid_write(obj, f):
        Path(f).write_bytes(b"\x80 half a pickle")
        raise KeyboardInterrupt

    monkeypatch.setattr(tt.torch, "save", killed_mid_write)
    with pytest.raises(KeyboardInterrupt):
        save(2)
    monkeypatch.undo()
    assert torch.load(path)["step"] == 1
    assert [f.name for f in tmp_path.iterdir()] == ["resume.pt"]  # the half-written file is gone


def test_shuffle_trains_on_the_same_sequences_in_a_seeded_order(tmp_path, monkeypatch):
    monkeypatch.setattr(tt, "load_smollm2", lambda: (_sharp_llama(), byte_tokenizer()))
    orders = []

    def record(model, methods, batches, *a, **k):  # the first run's training order is all this test needs
        orders.append([b.flatten().tolist() for b in batches])
        raise KeyboardInterrupt

    monkeypatch.setattr(tt, "train", record)
    for extra in ((), ("--shuffle",), ("--shuffle",), ("--shuffle", "--seed", "1")):
        argv = _cli(tmp_path / str(len(orders)), *extra)
        argv[argv.index("--train-seqs") + 1] = "8"
        with pytest.raises(KeyboardInterrupt):
            tt.main(argv)
    text, first, again, other = orders
    assert sorted(first) == sorted(text) and first != text  # same sequences, another order
    assert again == first and other != first  # fixed by the seed
