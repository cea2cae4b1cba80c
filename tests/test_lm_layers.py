"""The layer map (runners/lm_layers.py) on synthetic rows, and its experiment's grid."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from attnbench.runners import lm_layers
from attnbench.runners.grid import load_grid

SPECS = [str(i) for i in range(30)] + [f"{e}:{k}" for e in ("first", "last") for k in (2, 4, 8, 15)] + ["all"]


def rows(methods=("performer", "latte"), bad_layer=3):
    """ok rows of experiment lm_layers: ppl = exact · (1 + 0.001 per layer), layer ``bad_layer`` costs 50 %."""
    out = []
    for m in methods:
        for preset in (("scaling_b256", "lm_latte_trained") if m == "latte" else ("scaling_b256",)):
            for spec in SPECS:
                kind, layer, count = lm_layers._kind(spec, 30)
                idx = [int(layer)] if kind == "layer" else list(range(30)) if kind == "all" else \
                    list(range(int(count))) if kind == "first" else list(range(30 - int(count), 30))
                ratio = 1 + 0.001 * len(idx) + (0.5 if bad_layer in idx else 0)
                out.append({"status": "ok", "experiment": "lm_layers", "method": m, "preset": preset,
                            "task.layers": int(spec) if spec.isdigit() else spec, "n": 2048, "context_length": 2048,
                            "seed": 0, "ppl": 6.0 * ratio, "exact_ppl": 6.0, "ppl_increase": 6.0 * (ratio - 1),
                            "top1_agreement": 99.0, "layers_swapped": len(idx), "num_layers": 30,
                            "device": "cpu (x86_64, 1 threads)", "num_threads": 1, "torch_version": "2.x",
                            "git_commit": "abc", "run_id": f"lm-{m}-{preset}-{spec}", "finished_at": 1.0})
    return pd.DataFrame(out)


def test_the_experiment_grid_covers_one_layer_at_a_time_and_both_ends():
    g = load_grid("lm_layers")
    axes = {a.label: [v[0] for v in a.values] for a in g.axes}
    assert axes["task.layers"] == SPECS
    assert set(axes["methods"]) == {"conv_basis", "latte", "performer", "hyperattention", "reformer", "scatterbrain"}
    assert len(g.configs()) == 7 * len(SPECS)  # lm_latte_trained covers latte only


def test_table_page_and_figure(tmp_path):
    paths = lm_layers.write(tmp_path, tmp_path / "out", rows=rows())
    assert [p.name for p in paths] == ["lm_layers_table.csv", "lm_layers_table.md", "lm_layers_heatmap.png",
                                       "lm_layers_heatmap.pdf"]
    t = pd.read_csv(paths[0])
    assert len(t) == 3 * len(SPECS) and set(t["label"]) == {"performer", "latte (untrained)", "latte (trained λ = 0.5)"}
    for col in ("seed", "device", "torch_version", "git_commit", "run_id", "ppl_ratio"):
        assert t[col].notna().all(), col
    # first / last l: l = 1 is the single layer 0 / 29, l = 30 the 'all' row
    c = lm_layers.end_curve(t, "performer", "first")
    assert c[1] == pytest.approx(1.001) and c[4] == pytest.approx(1.504) and c[30] == pytest.approx(1.53)
    assert lm_layers.end_curve(t, "performer", "last")[15] == pytest.approx(1.015)
    page = paths[1].read_text()
    assert "| performer | 29/30: 0–2, 4–29 | 29/30: 0–2, 4–29 | 3 (+3.006) | 2 | 15 |" in page
    assert "| 3 | +3.006 | +3.006 | +3.006 |" in page and "| 4 | 1.504 | 1.004 |" in page
    assert page.index("latte (untrained)") < page.index("latte (trained")


def test_refuses_rows_of_no_grid_config(tmp_path):
    with pytest.raises(SystemExit, match="no ok rows of experiment lm_layers"):
        lm_layers.write(tmp_path, tmp_path / "out", rows=rows().assign(experiment="other"))


def test_ranges():
    assert lm_layers._ranges([0, 1, 2, 5, 7, 8]) == "0–2, 5, 7–8" and lm_layers._ranges([]) == "none"
    kind, layer, count = lm_layers._kind("last:4", 30)
    assert (kind, count) == ("last", 4.0) and np.isnan(layer)
    assert lm_layers._kind(7, 30) == ("layer", 7.0, 1.0) and lm_layers._kind("all", 30)[2] == 30.0
    with pytest.raises(ValueError, match="not a lm_layers spec"):
        lm_layers._kind("every:2", 30)
