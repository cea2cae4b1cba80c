"""Method cards (``runners/card.py``, ``attnbench report --card``) from synthetic rows, and the
card experiment's configs."""
import pandas as pd
import pytest

from attnbench.runners.card import NoCardRows, part_of, points, write_card
from attnbench.runners.check import compose_method


def row(part: dict, **metrics):
    base = {"experiment": "card", "method": "exact", "status": "ok", "error": None, "git_commit": "abc123",
            "load_avg_1m": 0.4, "device": "cpu (x86_64, 2 threads)", "finished_at": "2026-12-03T10:00:00+00:00",
            "preset": "none"}
    return {**base, **part, **metrics}


def smollm2(layer, causal, n, err, speedup):
    return row({"task": "fidelity", "task.source": "smollm2", "task.layer": layer, "task.causal": causal},
               n=n, causal=causal, rel_fro_error=err, rel_spec_error=err / 2, speedup=speedup, speedup_lo=speedup * 0.9,
               speedup_hi=speedup * 1.1, latency_ms=10 / speedup, exact_latency_ms=10.0, peak_mem_mb=5.0,
               exact_peak_mem_mb=4.0)


@pytest.fixture
def rows():
    data = [smollm2(layer, causal, n, 1e-7, 1.0) for layer in (10, 25) for causal in (False, True) for n in (2048, 8192)]
    data += [row({"task": "fidelity", "task.source": "gaussian", "task.causal": "auto"}, n=n, causal=False,
                 latency_ms=n ** 2 / 1e6, exact_latency_ms=n ** 2 / 1e6, speedup=1.0, peak_mem_mb=n / 100,
                 exact_peak_mem_mb=n / 100, rel_fro_error=0.0) for n in (1024, 2048, 4096, 8192, 16384)]
    data.append(row({"task": "lm"}, status="error", error="ValueError: task=lm needs causal attention; method exact is "
                                                          "bidirectional only."))
    # an older row of the same part and n is superseded by the newer one
    old = smollm2(10, False, 2048, 0.5, 0.1)
    old["finished_at"] = "2026-12-01T10:00:00+00:00"
    data.append(old)
    return pd.DataFrame(data)


def test_parts_are_read_from_the_task_columns():
    assert part_of(pd.Series({"task": "fidelity", "task.source": "smollm2", "task.causal": True, "task.layer": 25.0})) \
        == "smollm2_causal_l25"
    assert part_of(pd.Series({"task": "fidelity", "task.source": "gaussian"})) == "scaling"
    assert part_of(pd.Series({"task": "kv_cache", "task.dataset": "recall", "task.compression_ratio": 0.75})) \
        == "kv_recall_75"
    assert part_of(pd.Series({"task": "lm"})) == "lm"


def test_card_writes_points_markdown_and_figure(rows, tmp_path):
    written = write_card("exact", rows=rows, out_dir=tmp_path)
    assert [p.name for p in written] == ["exact.csv", "exact.png", "exact.md"]
    pts = pd.read_csv(tmp_path / "exact.csv")
    first = pts[(pts["part"] == "smollm2_l10") & (pts["n"] == 2048)]
    assert len(first) == 1 and float(first["rel_fro_error"].iloc[0]) == pytest.approx(1e-7)  # the latest row
    md = (tmp_path / "exact.md").read_text()
    assert md.startswith("# Method card: exact")
    assert "| exact_at_full_budget | pass |" in md  # the conformance check ran on the rows' method
    assert "commit abc123" in md and "load average at run starts 0.4–0.4" in md
    assert "Log-log slopes over n ≥ 4,096: latency_ms 2.00, exact_latency_ms 2.00, peak_mem_mb 1.00" in md
    assert "- lm: ValueError: task=lm needs causal attention; method exact is bidirectional only." in md
    assert "- kv_recall_25: no rows yet (`python run.py +experiment=card method=exact +card=kv_recall_25" in md


def test_other_cards_points_enter_the_figure_and_a_method_without_rows_is_an_error(rows, tmp_path):
    other = points(rows.assign(method="other", part=rows.apply(part_of, axis=1), knobs=""))
    other.to_csv(tmp_path / "other.csv", index=False)
    assert not (tmp_path / "other.png").exists()
    assert (tmp_path / "exact.png") in write_card("exact", rows=rows, out_dir=tmp_path, check=False)
    assert (tmp_path / "other.png").is_file()  # the other card's figure is redrawn with exact's points in it
    with pytest.raises(NoCardRows, match=r"no card rows for method 'wildcat'; run: python run.py \+experiment=card "
                                         r"method=wildcat"):
        write_card("wildcat", rows=rows, out_dir=tmp_path)


def test_card_parts_compose_with_any_method_and_preset():
    from hydra import compose, initialize_config_dir

    from attnbench.core.knobs import CONF_DIR

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        lm = compose("config", overrides=["+experiment=card", "method=conv_basis", "+card=lm", "preset=lm_conv_k4"])
        kv = compose("config", overrides=["+experiment=card", "method=wildcat", "+card=kv_recall_75"])
        scaling = compose("config", overrides=["+experiment=card", "method=wildcat", "+card=scaling"])
    assert lm.task.name == "lm" and lm.method.k == 4 and lm.experiment_name == "card"
    assert kv.task.name == "kv_cache" and kv.task.compression_ratio == 0.75 and kv.task.dataset == "recall"
    assert scaling.task.causal == "auto" and list(scaling.task.n)[-1] == 16384
    assert compose_method(["method=wildcat", "method.r=64"])["r"] == 64
