"""Claims runner: each verdict rule on small synthetic tables, missing tables, assets, and the committed page."""
import dataclasses
import math
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from conftest import ROOT
from attnbench.runners import claims, claims_registry as reg

CLAIM = {c.id: c for c in reg.CLAIMS}
NS = [1024, 2048, 4096, 8192, 16384, 32768, 65536]


def verdict(claim_id, tmp_path, **tables):
    """Write ``tables`` ({experiment: DataFrame}) where the registry expects them; evaluate the claim."""
    for exp, df in tables.items():
        df.to_csv(tmp_path / reg.EXPERIMENTS[exp].table, index=False)
    return claims.evaluate(CLAIM[claim_id], tmp_path)


@pytest.fixture
def timed_smollm2(monkeypatch):
    """smollm2_error with no timing note (the verdict rests on the rows alone)."""
    exp = dataclasses.replace(reg.EXPERIMENTS["smollm2_error"], timing_note="")
    monkeypatch.setitem(reg.EXPERIMENTS, "smollm2_error", exp)


# ------------------------------------------------------------------------------ WildCat

def wildcat_bounded(errors, latency=lambda n, r: n * r * (r + 64) * 1e-6, p_spread=0.1):
    rows = []
    for n, e in zip(NS, errors):
        for r in {reg.wildcat_schedule(n), 100}:
            lat = latency(n, r)
            rows.append({"method": "wildcat", "knobs": f"r={r}", "n": n, "task.radius": 2.0,
                         "rel_fro_error_mean": e if r == reg.wildcat_schedule(n) else 0.01,
                         "latency_ms_mean": lat, "latency_p10_ms_mean": lat * (1 - p_spread),
                         "latency_p90_ms_mean": lat * (1 + p_spread)})
    return pd.DataFrame(rows)


def test_wildcat_decay_holds_when_the_decay_steepens_and_time_is_near_linear(tmp_path):
    steep = [math.exp(-math.log(n) * math.sqrt(math.log(math.log(n)))) for n in NS]
    steep = [e * (1 - 0.1 * i) for i, e in enumerate(steep)]  # steepening beyond the theory's rate
    assert verdict("W1", tmp_path, wildcat_bounded=wildcat_bounded(steep)).verdict == reg.HOLDS


def test_wildcat_decay_at_a_steady_polynomial_rate_holds_partly(tmp_path):
    o = verdict("W1", tmp_path, wildcat_bounded=wildcat_bounded([n ** -0.3 for n in NS]))
    assert o.verdict == reg.PARTLY and "polynomial" in o.part


def test_wildcat_decay_does_not_hold_when_the_error_grows(tmp_path):
    assert verdict("W1", tmp_path, wildcat_bounded=wildcat_bounded([n ** 0.1 for n in NS])).verdict == reg.FAILS


def test_wildcat_decay_with_one_sample_timings_leaves_time_unmeasured(tmp_path):
    steep = [math.exp(-0.02 * math.log(n) ** 2) for n in NS]
    o = verdict("W1", tmp_path, wildcat_bounded=wildcat_bounded(steep, p_spread=0.0))
    assert o.verdict == reg.PARTLY and "not measured yet" in o.part and "one timed sample" in o.part


def test_wildcat_decay_with_quadratic_time_holds_partly(tmp_path):
    steep = [math.exp(-0.02 * math.log(n) ** 2) for n in NS]
    o = verdict("W1", tmp_path, wildcat_bounded=wildcat_bounded(steep, latency=lambda n, r: n * n * 1e-6))
    assert o.verdict == reg.PARTLY and "not near-linear" in o.part


def errors_table(errs: dict, lat: dict | None = None):
    rows = []
    for m, es in errs.items():
        for i, (b, e) in enumerate(zip((64, 256, 1024), es)):
            la = (lat or {}).get(m, (1.0, 2.0, 4.0))[i]
            rows.append({"method": m, "knobs": "", "preset.budget": b, "rel_spec_error_mean": e, "latency_ms_mean": la,
                         "latency_p10_ms_mean": la * 0.9, "latency_p90_ms_mean": la * 1.1})
    return pd.DataFrame(rows)


def test_wildcat_frontier(tmp_path, timed_smollm2):
    wc = {"wildcat": (0.4, 0.3, 0.1)}
    worse = {**wc, "performer": (1.0, 0.9, 0.8), "reformer": (0.5, 0.4, 0.2)}
    assert verdict("W2", tmp_path, smollm2_error=errors_table(worse)).verdict == reg.HOLDS
    better = {**wc, "performer": (0.3, 0.2, 0.05)}
    assert verdict("W2", tmp_path, smollm2_error=errors_table(better)).verdict == reg.FAILS
    mixed = {**wc, "performer": (1.0, 0.9, 0.8), "reformer": (0.3, 0.2, 0.05)}
    o = verdict("W2", tmp_path, smollm2_error=errors_table(mixed))
    assert o.verdict == reg.PARTLY and "performer" in o.part
    # a method faster than WildCat's fastest point is not dominated there
    fast = {**wc, "performer": (0.9, 0.9, 0.9)}
    o = verdict("W2", tmp_path, smollm2_error=errors_table(fast, {"performer": (0.5, 0.5, 0.5)}))
    assert o.verdict == reg.FAILS


def test_wildcat_frontier_with_loaded_timings_is_not_measured_yet(tmp_path, monkeypatch):
    exp = dataclasses.replace(reg.EXPERIMENTS["smollm2_error"], timing_note="rows taken at load 8: not evidence")
    monkeypatch.setitem(reg.EXPERIMENTS, "smollm2_error", exp)
    worse = {"wildcat": (0.4, 0.3, 0.1), "performer": (1.0, 0.9, 0.8)}
    o = verdict("W2", tmp_path, smollm2_error=errors_table(worse))
    assert o.verdict == reg.MISSING and "not evidence" in o.part


def test_frontier_interpolates_between_points_in_log_log():
    front = pd.DataFrame({"latency_ms": [1.0, 4.0], "error": [0.4, 0.1]})  # at 2 ms: 0.2
    assert reg.frontier_dominates(front, 2.0, 0.21) and not reg.frontier_dominates(front, 2.0, 0.19)
    assert reg.frontier_dominates(front, 9.0, 0.1) and not reg.frontier_dominates(front, 0.5, 1.0)


def kv_table(wildcat, uniform):
    rows = [{"press": "none", "compression_ratio": 0.0, "score": 100, "digit_accuracy": 90, "ppl": 2.0}]
    for press, vals in (("WildCat", wildcat), ("Uniform", uniform), ("Knorm", (0, 0, 99))):
        for ratio in (0.25, 0.5, 0.75):
            rows.append({"press": press, "compression_ratio": ratio, "score": vals[0], "digit_accuracy": vals[1],
                         "ppl": vals[2]})
    return pd.DataFrame(rows)


def test_wildcat_kv(tmp_path):
    assert verdict("W3", tmp_path, kv_compare=kv_table((90, 60, 3.0), (80, 50, 3.5))).verdict == reg.HOLDS
    assert verdict("W3", tmp_path, kv_compare=kv_table((70, 40, 4.0), (80, 50, 3.5))).verdict == reg.FAILS
    o = verdict("W3", tmp_path, kv_compare=kv_table((90, 60, 4.0), (80, 50, 3.5)))
    assert o.verdict == reg.PARTLY and "recall score % at 0.5" in o.part and "ppl" not in o.part


def test_wildcat_longbench(tmp_path):
    def lb(w):
        return pd.DataFrame({"press": ["none", "WildCat", "SnapKV", "StreamingLLM"],
                             "compression_ratio": [0.0, 0.75, 0.75, 0.75], "score": [50, w, 40, 30]})
    assert verdict("W4", tmp_path, longbench_e=lb(45)).verdict == reg.HOLDS
    assert verdict("W4", tmp_path, longbench_e=lb(35)).verdict == reg.PARTLY
    assert verdict("W4", tmp_path, longbench_e=lb(20)).verdict == reg.FAILS


# ------------------------------------------------------------------------------ KDEformer

def test_kdeformer_spectral(tmp_path):
    base = {"reformer": (0.6, 0.5, 0.4), "performer": (1.4, 1.3, 1.2), "scatterbrain": (0.9, 0.8, 0.7)}
    assert verdict("K1", tmp_path, smollm2_error=errors_table({"kdeformer": (0.5, 0.3, 0.2), **base})).verdict \
        == reg.HOLDS
    assert verdict("K1", tmp_path, smollm2_error=errors_table({"kdeformer": (2, 2, 2), **base})).verdict == reg.FAILS
    o = verdict("K1", tmp_path, smollm2_error=errors_table({"kdeformer": (1.0, 0.7, 0.45), **base}))
    assert o.verdict == reg.PARTLY and "below performer" in o.part and "above reformer" in o.part
    assert "scatterbrain (below it at m = 256, 1024)" in o.part


def test_kdeformer_biggan_and_t2t(tmp_path):
    def gan(fid, sp):
        return pd.DataFrame({"method": ["exact", "kdeformer"], "fid_mean": [32.0, fid], "is_mean_mean": [58, 57],
                             "speedup_mean": [1.0, sp]})
    assert verdict("K2", tmp_path, biggan=gan(30.0, 5.0)).verdict == reg.HOLDS
    assert verdict("K2", tmp_path, biggan=gan(30.0, 3.0)).verdict == reg.PARTLY
    assert verdict("K2", tmp_path, biggan=gan(35.0, 3.0)).verdict == reg.FAILS

    def t2t(top1, sp):
        return pd.DataFrame({"method": ["exact", "kdeformer"], "top1_mean": [82.6, top1],
                             "t2t1_speedup_mean": [1.0, sp]})
    assert verdict("K3", tmp_path, t2t_imagenet=t2t(82.3, 20.0)).verdict == reg.HOLDS
    assert verdict("K3", tmp_path, t2t_imagenet=t2t(81.0, 20.0)).verdict == reg.PARTLY
    assert verdict("K3", tmp_path, t2t_imagenet=t2t(81.0, 2.0)).verdict == reg.FAILS


# ------------------------------------------------------------------------------ Conv-Basis

def test_conv_basis_time_in_n(tmp_path):
    def slopes(s):
        return pd.DataFrame({"method": ["conv_basis", "exact"], "latency_slope_large_n": [s, 1.95],
                             "n_max": [65536, 65536], "speedup_n": [65536, None], "speedup": [15.0, None]})
    assert verdict("C1", tmp_path, scaling_causal=slopes(1.02)).verdict == reg.HOLDS
    assert verdict("C1", tmp_path, scaling_causal=slopes(1.4)).verdict == reg.PARTLY
    assert verdict("C1", tmp_path, scaling_causal=slopes(1.9)).verdict == reg.FAILS


def conv_k_table(power, spread=0.1):
    rows = []
    for fb in ("none", "even"):
        for k in (1, 4, 16, 64, 256):
            lat = 10.0 * k ** power
            rows.append({"method": "conv_basis", "knobs": f"fallback={fb}, k={k}", "n": 16384, "latency_ms_mean": lat,
                         "latency_p10_ms_mean": lat * (1 - spread), "latency_p90_ms_mean": lat * (1 + spread)})
    return pd.DataFrame(rows)


def test_conv_basis_time_in_k(tmp_path):
    assert verdict("C2", tmp_path, conv_basis_k=conv_k_table(1.0)).verdict == reg.HOLDS
    assert verdict("C2", tmp_path, conv_basis_k=conv_k_table(1.5)).verdict == reg.FAILS
    assert verdict("C2", tmp_path, conv_basis_k=conv_k_table(1.0, spread=0.0)).verdict == reg.MISSING


def test_conv_basis_exactness_tolerance_follows_n_and_dtype(tmp_path):
    def exact(err):
        return pd.DataFrame({"method": ["conv_basis"] * 2, "knobs": ["", ""], "n": [512, 2048],
                             "task.source": ["gaussian", "smollm2"], "rel_fro_error_mean": [1e-15, err]})
    assert verdict("C3", tmp_path, conv_basis_exact=exact(1e-14)).verdict == reg.HOLDS
    assert verdict("C3", tmp_path, conv_basis_exact=exact(1e-6)).verdict == reg.FAILS
    assert reg.exact_tolerance(2048, "float64") == pytest.approx(100 * 2048 * np.finfo(np.float64).eps)


def knobs_table(best):
    rows = []
    for layer in (0, 10, 20):
        for k in (4, 16, 64, 256):
            for eps in (0.001, 1.0):
                for fb in ("none", "even"):
                    e = best if (k == 64 and eps == 1.0 and fb == "even") else 0.9
                    rows.append({"method": "conv_basis", "knobs": f"T=8, eps={eps}, fallback={fb}, k={k}",
                                 "task.layer": layer, "rel_fro_error_mean": e + 0.001 * layer})
    return pd.DataFrame(rows)


def test_conv_basis_small_k_best_configuration():
    """The reconstruction's side of C4 (the verdict with the oracle: tests/test_conv_oracle.py)."""
    s = reg.conv_knob_summary(knobs_table(0.05))
    row = s[s["k"] == 64].iloc[0]
    assert row["best_config"] == "eps=1, T=8, fallback=even" and row["best_mean_error"] == pytest.approx(0.06)
    assert row["default_mean_error"] == pytest.approx(0.91)


# ------------------------------------------------------------------------------ LATTE

def backward_tables(power, grad_error=1e-15, spread=0.1):
    ns = [1024, 2048, 4096, 8192, 16384, 32768]
    lat = [1e-3 * n ** power for n in ns]
    timed = pd.DataFrame({"method": "conv_basis", "knobs": "", "n": ns, "latency_ms_mean": lat,
                          "latency_p10_ms_mean": [x * (1 - spread) for x in lat],
                          "latency_p90_ms_mean": [x * (1 + spread) for x in lat],
                          "exact_latency_ms_mean": [1e-6 * n ** 2 for n in ns]})
    exact = pd.DataFrame({"method": "conv_basis", "knobs": "", "n": [256, 1024], "task.source": "gaussian",
                          "grad_rel_fro_error_mean": grad_error})
    return {"conv_basis_backward": timed, "conv_basis_backward_exact": exact}


def test_conv_basis_backward(tmp_path):
    assert verdict("C5", tmp_path, **backward_tables(1.05)).verdict == reg.HOLDS
    assert verdict("C5", tmp_path, **backward_tables(1.4)).verdict == reg.PARTLY
    assert verdict("C5", tmp_path, **backward_tables(1.9)).verdict == reg.FAILS
    o = verdict("C5", tmp_path, **backward_tables(1.05, grad_error=1e-9))
    assert o.verdict == reg.FAILS and "not exact" in o.part
    o = verdict("C5", tmp_path, **backward_tables(1.05, spread=0.0))  # one-sample timings: not evidence
    assert o.verdict == reg.MISSING and "idle" in o.part


def curve(final):
    rows = []
    for lam, (kept, inc) in final.items():
        rows += [{"lambda": lam, "step": 0, "kept_fraction": 0.5, "ppl": 10.0, "ppl_exact": 10.0, "ppl_increase": 0.0},
                 {"lambda": lam, "step": 100, "kept_fraction": kept, "ppl": 10 + inc, "ppl_exact": 10.0,
                  "ppl_increase": inc}]
    return pd.DataFrame(rows)


def lora_curve(final, dense_ppl=9.0, moving=()):
    """The LoRA recipe's curve: a dense run (λ NaN; kept 0.05 and no increase, which would hold if it were
    judged) and per λ (kept, increase over the dense run) at steps 0, 100, 200; ``moving`` λs change
    by 5 % in perplexity between the last two checkpoints."""
    rows = [{"lambda": float("nan"), "step": s, "kept_fraction": 0.05, "ppl": dense_ppl, "ppl_exact": 10.0,
             "ppl_increase": dense_ppl - 10, "ppl_dense_ft": dense_ppl, "ppl_increase_ft": 0.0} for s in (0, 100, 200)]
    for lam, (kept, inc) in final.items():
        for step, k, ppl in ((0, 0.5, 10.0), (100, kept, (dense_ppl + inc) * (1.05 if lam in moving else 1)),
                             (200, kept, dense_ppl + inc)):
            rows.append({"lambda": lam, "step": step, "kept_fraction": k, "ppl": ppl, "ppl_exact": 10.0,
                         "ppl_increase": ppl - 10, "ppl_dense_ft": dense_ppl, "ppl_increase_ft": ppl - dense_ppl})
    return pd.DataFrame(rows)


def test_latte_language(tmp_path):
    """L1 on each recipe (θ only: increase over the untouched model; LoRA: over the dense LoRA run); the
    verdict is the better recipe's, both are shown."""
    failing = lora_curve({0.5: (0.3, 3.0)})
    assert verdict("L1", tmp_path, latte_training_curve=curve({0.5: (0.3, 0.2), 8: (0.09, 0.8)}),
                   latte_training_curve_lora=failing).verdict == reg.HOLDS
    o = verdict("L1", tmp_path, latte_training_curve=curve({0.5: (0.3, 0.2), 8: (0.09, 1.5)}),
                latte_training_curve_lora=failing)
    assert o.verdict == reg.PARTLY and "+1.5" in o.part and "θ only" in o.part
    o = verdict("L1", tmp_path, latte_training_curve=curve({0.5: (0.13, 0.5)}), latte_training_curve_lora=failing)
    assert o.verdict == reg.PARTLY and "87 % filtered" in o.part
    o = verdict("L1", tmp_path, latte_training_curve=curve({0.5: (0.3, 3.0)}), latte_training_curve_lora=failing)
    assert o.verdict == reg.FAILS and "θ only" in o.measured and "LoRA" in o.measured


def test_latte_language_lora_recipe_is_judged_against_its_dense_run(tmp_path):
    # 91 % filtered at +0.5 over the dense fine-tuned run holds; the increase over the untouched model is shown
    o = verdict("L1", tmp_path, latte_training_curve=curve({8: (0.05, 9.0)}),
                latte_training_curve_lora=lora_curve({2: (0.09, 0.5), 8: (0.04, 2.0)}, moving=(8,)))
    assert o.verdict == reg.HOLDS and "LoRA" in o.measured
    assert "λ = 2: 91 % filtered, ppl +0.5 (−0.5 over the untouched model)" in o.measured
    assert "λ = 8: 96 % filtered, ppl +2 (+1 over the untouched model) (9 → 11) after 200 steps, curve not flat" in \
        o.measured
    o = verdict("L1", tmp_path, latte_training_curve=curve({8: (0.05, 9.0)}),
                latte_training_curve_lora=lora_curve({2: (0.09, 1.5)}, dense_ppl=8.0))
    assert o.verdict == reg.PARTLY and "LoRA" in o.part  # +1.5 over dense, −0.5 over the untouched model


def test_latte_vision(tmp_path):
    def vit(kept, drop):
        return pd.DataFrame({"lambda": [float("nan"), 1.0], "steps": [0, 30], "kept_fraction": [0.5, kept],
                             "top1_drop": [0.0, drop]})
    assert verdict("L2", tmp_path, latte_vit=vit(0.14, 0.005)).verdict == reg.HOLDS
    assert verdict("L2", tmp_path, latte_vit=vit(0.30, 0.005)).verdict == reg.FAILS


# ------------------------------------------------------------------------------ missing rows, assets, the page

def test_missing_table_is_not_measured_yet_with_its_commands(tmp_path):
    o = claims.evaluate(CLAIM["C3"], tmp_path)
    assert o.verdict == reg.MISSING and "conv_basis_exact_table.csv" in o.part
    assert "python run.py +experiment=conv_basis_exact" in o.part and "attnbench report" in o.part


def test_missing_table_of_an_asset_experiment_needs_assets_with_the_exact_command(tmp_path):
    o = claims.evaluate(CLAIM["K2"], tmp_path)
    assert o.verdict == reg.ASSETS
    for piece in ("task.weights", "task.fid_stats", "task.is_weights", "CUDA", "+experiment=biggan"):
        assert piece in o.part
    o = claims.evaluate(CLAIM["K3"], tmp_path)
    assert o.verdict == reg.ASSETS and "task.checkpoint" in o.part and "task.data_root" in o.part


def test_every_claim_prints_its_rule_and_every_experiment_has_a_command():
    page = claims.render_claims(ROOT / "nonexistent")
    for c in reg.CLAIMS:
        assert c.rule in page and c.experiments
        assert all(reg.EXPERIMENTS[e].commands for e in c.experiments)
    assert page.count("| W1 |") == 1


def test_run_missing_lists_the_commands_of_tables_that_need_no_assets(tmp_path):
    cmds = claims.run_missing(tmp_path, dry=True)
    assert any("+experiment=conv_basis_knobs" in c for c in cmds)
    assert not any("+experiment=biggan" in c for c in cmds)


def test_unknown_verdict_is_refused():
    with pytest.raises(ValueError, match="verdict must be one of"):
        reg.Outcome("maybe", "")


def test_committed_pages_regenerate_from_committed_tables_without_torch():
    code = ("import sys; from attnbench.runners import claims; changed = claims.write_pages('results', check=True); "
            "print(sorted(m for m in ('torch', 'attnbench.methods', 'attnbench.tasks') if m in sys.modules), "
            "[str(p) for p in changed])")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip() == "[] []", out.stdout + out.stderr


def test_training_curve_page_csv_and_figure(tmp_path):
    """runners.train_thresholds --curve writes what claim L1 reads: a CSV per checkpoint, a page with
    the convergence test of each lambda, and the figure beside it."""
    import argparse

    from attnbench.runners import train_thresholds as tt

    rows = []
    for lam, kept in ((0.5, (0.3, 0.16, 0.158)), (8.0, (0.3, 0.08, 0.05))):
        for step, k in zip((0, 100, 200), kept):
            rows.append({"lambda": lam, "step": step, "train_loss": 3.0, "kept_fraction": k, "ppl": 12.0 + step / 100,
                         "ppl_exact": 11.0, "ppl_increase": 1.0 + step / 100, "theta_mean": 6.0, "train_s": 1.0})
    args = argparse.Namespace(argv=["lm", "--curve", "x.md"], kind="lm", seq_len=256, eval_seq_len=1024,
                              train_seqs=64, eval_seqs=4)
    out = tt.write_curve(rows, [], args, tmp_path / "curve.md")
    assert [p.name for p in out] == ["curve.md", "curve.csv", "curve.png"] and all(p.is_file() for p in out)
    page = (tmp_path / "curve.md").read_text()
    assert "| 0.5 | 200 | 0.1580 |" in page and "| no |" in page  # ppl still moving 8 % between checkpoints
    assert len(pd.read_csv(tmp_path / "curve.csv")) == len(rows)


# ------------------------------------------------------------------------------ the baselines' claims

def hyper_table(ratios, speedups=None, spread=0.05):
    rows = []
    for spec, r, s in zip(("last:1", "last:2", "last:4", "last:8", "last:15", "all"), ratios,
                          speedups or [None] * len(ratios)):
        row = {"method": "hyperattention", "knobs": "", "task.layers": spec, "ppl_mean": 10.0 * r,
               "exact_ppl_mean": 10.0}
        if s is not None:
            row.update(speedup_mean=s, speedup_lo_mean=s * 0.9, speedup_hi_mean=s * 1.1, latency_ms_mean=100.0 / s,
                       latency_p10_ms_mean=100.0 / s * (1 - spread), latency_p90_ms_mean=100.0 / s * (1 + spread))
        rows.append(row)
    return pd.DataFrame(rows)


def test_hyperattention_final_layers(tmp_path):
    ratios = [1.01, 1.05, 1.1, 1.3, 2.0, 4.0]
    assert verdict("H1", tmp_path, lm_hyper_final=hyper_table(ratios, [1.0, 1.1, 1.6, 2.0, 2.5, 3.0])).verdict \
        == reg.HOLDS
    o = verdict("H1", tmp_path, lm_hyper_final=hyper_table(ratios, [1.0, 1.1, 1.2, 1.3, 1.4, 1.45]))
    assert o.verdict == reg.PARTLY and "below 1.5×" in o.part
    o = verdict("H1", tmp_path, lm_hyper_final=hyper_table(ratios, [0.9, 0.95, 0.99, 1.2, 1.6, 2.0]))
    assert o.verdict == reg.PARTLY and "only where perplexity rises" in o.part
    assert verdict("H1", tmp_path, lm_hyper_final=hyper_table(ratios, [0.5] * 6)).verdict == reg.FAILS
    # perplexity-only rows (no forward timing): not measured yet, saying what the perplexity shows
    o = verdict("H1", tmp_path, lm_hyper_final=hyper_table(ratios))
    assert o.verdict == reg.MISSING and "up to the last 4 layers" in o.part and "no forward timing" in o.part
    o = verdict("H1", tmp_path, lm_hyper_final=hyper_table(ratios, [2.0] * 6, spread=0.0))  # one timed sample
    assert o.verdict == reg.MISSING and "one timed sample" in o.part
    assert reg.patched_layers("last:15") == 15 and reg.patched_layers("all") == 30 and reg.patched_layers(7) == 1


def test_hyperattention_single_layer(tmp_path):
    def slopes(sp):
        return pd.DataFrame({"method": ["hyperattention", "exact"], "latency_slope_large_n": [1.05, 1.96],
                             "speedup": [sp, None], "speedup_n": [65536, None], "n_max": [65536, 65536]})
    assert verdict("H2", tmp_path, scaling_causal=slopes(6.0)).verdict == reg.HOLDS
    assert verdict("H2", tmp_path, scaling_causal=slopes(1.1)).verdict == reg.PARTLY
    assert verdict("H2", tmp_path, scaling_causal=slopes(0.7)).verdict == reg.FAILS


def performer_table(per_input):
    """per_input: {label: (slope of the per-draw rms error, rho)} -> the performer_unbiased CSV's columns."""
    rows, seeds = [], 64
    for label, (s, rho) in per_input.items():
        for quantity in ("kernel", "output"):
            for m in (16, 64, 256, 1024):
                rms = 2.0 * m ** s
                rows.append({"input": label, "quantity": quantity, "m": m, "seeds": seeds, "per_draw_error": rms,
                             "per_draw_rms": rms, "mean_of_draws_error": rho * rms / seeds ** 0.5, "rho": rho})
    return pd.DataFrame(rows)


def test_performer_unbiased_estimator(tmp_path):
    good = {"bounded": (-0.5, 1.05), "smollm2": (-0.48, 1.2)}
    assert verdict("P1", tmp_path, performer_unbiased=performer_table(good)).verdict == reg.HOLDS
    o = verdict("P1", tmp_path, performer_unbiased=performer_table({"bounded": (-0.5, 1.05), "smollm2": (0.1, 4.0)}))
    assert o.verdict == reg.PARTLY and "on bounded" in o.part and "neither on smollm2" in o.part
    o = verdict("P1", tmp_path, performer_unbiased=performer_table({"bounded": (-0.5, 3.0)}))  # biased, 1/√m
    assert o.verdict == reg.PARTLY and "one of the two on bounded" in o.part
    assert verdict("P1", tmp_path, performer_unbiased=performer_table({"a": (0.0, 4.0)})).verdict == reg.FAILS


def scaling_table(methods_powers):
    """Per-n rows of the scaling table: {method: (latency exponent, memory exponent)} (exponent 'nlogn' too)."""
    rows = []
    for m, powers in methods_powers.items():
        for n in NS:
            lat, mem = ((n * math.log(n) if p == "nlogn" else n ** p) * 1e-4 for p in powers)
            rows.append({"method": m, "knobs": "", "n": n, "latency_ms_mean": lat, "latency_p10_ms_mean": lat * 0.9,
                         "latency_p90_ms_mean": lat * 1.1, "exact_latency_ms_mean": n ** 2 * 1e-6,
                         "peak_mem_mb_mean": mem, "exact_peak_mem_mb_mean": n * 1e-3})
    return pd.DataFrame(rows)


def test_complexity_claims(tmp_path):
    assert reg.model_slope("n log n", 4096, 65536) == pytest.approx(1 + math.log(16 / 12) / math.log(16))
    assert verdict("R1", tmp_path, scaling=scaling_table({"reformer": ("nlogn", "nlogn")})).verdict == reg.HOLDS
    o = verdict("R1", tmp_path, scaling=scaling_table({"reformer": (1.45, 1.0)}))
    assert o.verdict == reg.PARTLY and "within the n log n slope: memory" in o.part and "only: time" in o.part
    assert verdict("R1", tmp_path, scaling=scaling_table({"reformer": (2.0, 1.9)})).verdict == reg.FAILS
    assert verdict("N1", tmp_path, scaling=scaling_table({"nystromformer": (0.8, 0.6)})).verdict == reg.HOLDS
    assert verdict("N1", tmp_path, scaling=scaling_table({"reformer": (1.0, 1.0)})).verdict == reg.MISSING
    causal = pd.DataFrame({"method": ["performer", "exact"], "latency_slope_large_n": [1.49, 1.96],
                           "n_max": [65536, 65536]})
    o = verdict("P2", tmp_path, scaling=scaling_table({"performer": (1.0, 1.0)}), scaling_causal=causal)
    assert o.verdict == reg.PARTLY and "sub-quadratic only: causal time" in o.part
    causal["latency_slope_large_n"] = [1.02, 1.96]
    o = verdict("P2", tmp_path, scaling=scaling_table({"performer": (1.0, 1.0)}), scaling_causal=causal)
    assert o.verdict == reg.HOLDS


def test_scatterbrain_error_against_its_baselines(tmp_path):
    base = {"reformer": (0.6, 0.5, 0.4), "performer": (1.2, 1.0, 0.8)}
    assert verdict("S1", tmp_path, smollm2_error=errors_table({"scatterbrain": (0.2, 0.2, 0.15), **base})).verdict \
        == reg.HOLDS
    o = verdict("S1", tmp_path, smollm2_error=errors_table({"scatterbrain": (0.7, 0.45, 0.3), **base}))
    assert o.verdict == reg.PARTLY and "below every baseline at m = 256, 1024" in o.part
    o = verdict("S1", tmp_path, smollm2_error=errors_table({"scatterbrain": (0.7, 0.45, 0.5), **{
        "reformer": (0.3, 0.2, 0.1), "performer": (1.5, 1.0, 1.1)}}))
    assert o.verdict == reg.PARTLY and "2.1× below performer" in o.part
    assert verdict("S1", tmp_path, smollm2_error=errors_table({"scatterbrain": (0.9, 0.9, 0.9), **base})).verdict \
        == reg.FAILS


def test_scatterbrain_t2t(tmp_path):
    def t2t(top1, mem):
        return pd.DataFrame({"method": ["exact", "scatterbrain"], "top1_mean": [82.6, top1],
                             "t2t1_peak_mem_mb_mean": [100.0, mem], "exact_t2t1_peak_mem_mb_mean": [100.0, 100.0]})
    assert verdict("S2", tmp_path, t2t_imagenet=t2t(81.9, 1.5)).verdict == reg.HOLDS
    assert verdict("S2", tmp_path, t2t_imagenet=t2t(81.9, 10.0)).verdict == reg.PARTLY
    assert verdict("S2", tmp_path, t2t_imagenet=t2t(80.0, 10.0)).verdict == reg.FAILS


def test_thinformer_against_its_rivals(tmp_path):
    def t2t(top1, sp):
        return pd.DataFrame({"method": ["exact", "thinformer", "kdeformer", "performer"],
                             "top1_mean": [82.6, top1, 82.2, 80.5], "attn_speedup_mean": [1.0, sp, 10.0, 8.0]})
    assert verdict("T1", tmp_path, t2t_imagenet=t2t(82.3, 12.0)).verdict == reg.HOLDS
    o = verdict("T1", tmp_path, t2t_imagenet=t2t(82.3, 9.0))
    assert o.verdict == reg.PARTLY and "behind kdeformer" in o.part
    assert verdict("T1", tmp_path, t2t_imagenet=t2t(81.0, 2.0)).verdict == reg.FAILS

    def gan(fid, is_):
        return pd.DataFrame({"method": ["exact", "thinformer", "kdeformer", "reformer"],
                             "fid_mean": [32.1, fid, 30.6, 72.1], "is_mean_mean": [57.8, is_, 56.6, 19.3]})
    assert verdict("T2", tmp_path, biggan=gan(30.5, 56.8)).verdict == reg.HOLDS
    assert verdict("T2", tmp_path, biggan=gan(31.0, 56.8)).verdict == reg.PARTLY
    assert verdict("T2", tmp_path, biggan=gan(31.0, 50.0)).verdict == reg.FAILS


def test_every_verdict_other_than_holds_names_its_strongest_objection_and_the_answer():
    page = claims.render_claims(ROOT / "results")
    for c in reg.CLAIMS:
        if claims.evaluate(c, ROOT / "results").verdict == reg.HOLDS:
            continue
        assert c.objection.strip() and c.answer.strip(), f"{c.id} names no objection or no answer"
        assert "placeholder" not in c.answer.lower(), f"{c.id}: {c.answer}"
        assert f"- Strongest objection: {c.objection} What the suite did: {c.answer}" in page
    assert {"H1", "P1", "R1", "N1", "S1", "T1"} <= set(CLAIM)  # at least one claim per baseline paper
