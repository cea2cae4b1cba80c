"""Reports (runners.report) and figures (runners.plots) from saved rows; sweeps and their resumption."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import ROOT
from runners import plots
from runners.report import add_derived, build_table, report, select, task_keys

DATA = Path(__file__).parent / "data"


def fixture_rows() -> pd.DataFrame:
    return pd.DataFrame(json.loads((DATA / "rows_small.json").read_text())["rows"])


def write_runs(tmp_path: Path, rows: pd.DataFrame) -> None:
    runs = tmp_path / "runs"
    runs.mkdir(parents=True)
    for rid, d in rows.groupby("run_id"):
        recs = [{k: v for k, v in r.items() if not (isinstance(v, float) and np.isnan(v))} for r in d.to_dict("records")]
        (runs / f"{rid}.json").write_text(json.dumps({"run_id": rid, "status": recs[0]["status"], "rows": recs}))


def test_table_from_fixture_matches_expected(tmp_path):
    write_runs(tmp_path, fixture_rows())
    res = report(tmp_path, "fixture")
    got = pd.read_csv(tmp_path / "fixture_table.csv")
    expected = pd.read_csv(DATA / "expected_table.csv")
    pd.testing.assert_frame_equal(got, expected, check_exact=False, rtol=1e-9)
    # hand-checked values: mean ± sd over two seeds, speed-up from each run's own exact latency
    w64 = got[(got["method"] == "wildcat") & (got["task.budget"] == 64)].iloc[0]
    assert w64["knobs"] == "r=64" and w64["n_seeds"] == 2
    assert w64["rel_spec_error_mean"] == pytest.approx(0.22) and w64["rel_spec_error_sd"] == pytest.approx(0.02 * 2**0.5)
    assert w64["speedup_mean"] == pytest.approx((10 / 4 + 11 / 4) / 2)
    md = (tmp_path / "fixture_table.md").read_text()
    assert "0.22 ± 0.02828" in md and "method.r must be positive" in md  # the error row is listed
    assert "other" not in set(got["method"]) and "exact" not in set(got["method"])  # other experiment left out
    assert len(res["errors"]) == 1


def test_figures_written_and_non_empty(tmp_path):
    write_runs(tmp_path, fixture_rows())
    res = report(tmp_path, "fixture")
    figs = [p for p in res["files"] if p.parent.name == "figures"]
    names = {p.name for p in figs}
    assert {"fixture_error_spec_vs_budget.png", "fixture_error_spec_vs_budget.pdf",
            "fixture_error_spec_vs_latency.png", "fixture_error_spec_vs_latency.pdf"} <= names
    assert all(p.stat().st_size > 1000 for p in figs)


def test_scaling_slopes_and_figures(tmp_path):
    rows = []
    for m, a, p in (("performer", 0.01, 1.0), ("wildcat", 0.02, 1.1)):
        for n in (1024, 2048, 4096, 8192):
            rows.append({"run_id": f"{m}-run", "status": "ok", "experiment": "sc", "method": m, "seed": 0, "n": n,
                         "latency_ms": a * n**p, "peak_mem_mb": 1e-3 * n, "exact_latency_ms": 1e-6 * n**2 if n <= 4096 else None,
                         "exact_peak_mem_mb": 1e-6 * n**2 if n <= 4096 else None, "task.n": "[1024]"})
    res = report(tmp_path, "sc", rows=pd.DataFrame(rows))
    s = res["slopes"].set_index("method")
    assert s.loc["performer", "latency_slope"] == pytest.approx(1.0)
    assert s.loc["wildcat", "latency_slope"] == pytest.approx(1.1)
    assert s.loc["exact", "latency_slope"] == pytest.approx(2.0) and s.loc["exact", "n_max"] == 4096
    assert s.loc["wildcat", "mem_slope"] == pytest.approx(1.0)
    assert set(res["table"]["latency_slope"].round(6)) == {1.0, 1.1}
    for stem in ("sc_latency_vs_n", "sc_memory_vs_n"):
        for ext in ("png", "pdf"):
            assert (tmp_path / "figures" / f"{stem}.{ext}").stat().st_size > 1000


def test_fit_loglog_slope_recovers_known_slope():
    rng = np.random.default_rng(0)
    x = np.array([1e3, 2e3, 4e3, 8e3, 1.6e4, 3.2e4])
    y = 3.0 * x**1.5 * np.exp(rng.normal(0, 0.01, x.size))
    slope, icpt = plots.fit_loglog_slope(x, y)
    assert slope == pytest.approx(1.5, abs=0.02) and np.exp(icpt) == pytest.approx(3.0, rel=0.2)
    assert np.isnan(plots.fit_loglog_slope([5, 5], [1, 2])[0])  # one distinct x: no slope


def test_is_and_fid_degradation_match_exact_by_seed():
    rows = pd.DataFrame([
        {"method": "exact", "seed": 1, "is_mean": 100.0, "fid": 10.0},
        {"method": "exact", "seed": 2, "is_mean": 80.0, "fid": 20.0},
        {"method": "wildcat", "seed": 1, "is_mean": 90.0, "fid": 12.0},   # IS -10 %, FID +20 %
        {"method": "wildcat", "seed": 2, "is_mean": 84.0, "fid": 18.0},   # IS +5 % (negative degradation), FID better -> 0
    ])
    d = add_derived(rows, task_keys(rows)).set_index(["method", "seed"])
    assert d.loc[("wildcat", 1), "is_degradation_pct"] == pytest.approx(10.0)
    assert d.loc[("wildcat", 2), "is_degradation_pct"] == pytest.approx(-5.0)
    assert d.loc[("wildcat", 1), "fid_degradation_pct"] == pytest.approx(20.0)
    assert d.loc[("wildcat", 2), "fid_degradation_pct"] == pytest.approx(0.0)
    assert d.loc[("exact", 1), "is_degradation_pct"] == pytest.approx(0.0)
    table, _ = build_table(rows.assign(status="ok", experiment="g", run_id=[f"r{i}" for i in range(4)]))
    w = table.set_index("method").loc["wildcat"]
    assert w["is_degradation_pct_mean"] == pytest.approx(2.5) and w["fid_degradation_pct_mean"] == pytest.approx(10.0)


SWEEP = ["logger=none", "meter.warmup=0", "meter.repeats=1", "task.heads=2", "task.head_dim=16", "experiment_name=t"]


def sweep(tmp_path, methods: str, ns: str):
    cmd = [sys.executable, "run.py", "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", f"method={methods}",
           "task=fidelity", f"task.n={ns}", *SWEEP, f"results_dir={tmp_path}", f"hydra.sweep.dir={tmp_path}/hydra"]
    env = {**os.environ, "HYDRA_FULL_ERROR": "1"}
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=True, env=env, timeout=300)


def test_sweep_four_configs_then_resume_runs_only_missing(tmp_path):
    # "killed after 2": the first two configs of the sweep finished on their own ...
    first = sweep(tmp_path, "exact", "64,128")
    runs = tmp_path / "runs"
    done = {p.name: p.stat().st_mtime_ns for p in runs.glob("*.json")}
    assert len(done) == 2, first.stdout + first.stderr
    # ... then the whole 4-config sweep: the 2 finished are skipped, only the other 2 run
    out = sweep(tmp_path, "exact,performer", "64,128")
    text = out.stdout + out.stderr
    assert text.count("[attnbench] skip") == 2, text
    files = {p.name: p.stat().st_mtime_ns for p in runs.glob("*.json")}
    assert len(files) == 4
    assert all(files[k] == v for k, v in done.items())  # finished rows untouched
    rows = [r for p in runs.glob("*.json") for r in json.loads(p.read_text())["rows"]]
    assert len(rows) == 4 and all(r["status"] == "ok" and r["experiment"] == "t" for r in rows)
    assert sorted((r["method"], r["n"]) for r in rows) == [("exact", 64), ("exact", 128), ("performer", 64), ("performer", 128)]
    res = subprocess.run([sys.executable, "-m", "runners.report", "--experiment", "t", "--results-dir", str(tmp_path)],
                         cwd=ROOT, capture_output=True, text=True, check=True, timeout=120)
    table = pd.read_csv(tmp_path / "t_table.csv")
    assert sorted(zip(table["method"], table["n"])) == [("exact", 64), ("exact", 128), ("performer", 64), ("performer", 128)]
    assert "wrote" in res.stdout and (tmp_path / "t_table.md").stat().st_size > 0
    assert (tmp_path / "figures" / "t_error_vs_n.png").stat().st_size > 1000


def test_report_without_rows_says_what_to_run(tmp_path):
    (tmp_path / "runs").mkdir()
    with pytest.raises(SystemExit, match="python run.py -m \\+experiment=nothing"):
        report(tmp_path, "nothing")


def test_experiment_configs_compose_with_budget_coupling():
    """glove_error: each method's knobs at budget m come from the preset table."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    import methods

    want = {"reformer": {"bucket_size": 256}, "performer": {"nb_features": 512},
            "scatterbrain": {"local_context": 256, "nb_features": 512},
            "kdeformer": {"bucket_size": 256, "sample_size": 512}, "wildcat": {"r": 512},
            "nystromformer": {"num_landmarks": 512}, "thinformer": {"g": 3}}
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        for name, knobs in want.items():
            cfg = compose("config", overrides=["+experiment=glove_error", f"method={name}", "budget=512"])
            c = OmegaConf.to_container(cfg, resolve=True)
            assert c["experiment_name"] == "glove_error" and c["task"]["budget"] == 512 and c["task"]["dtype"] == "float64"
            hp = methods.build(c["method"]).hparams()
            assert {k: hp[k] for k in knobs} == knobs, name
        cfg = compose("config", overrides=["+experiment=scaling", "method=wildcat"])
        c = OmegaConf.to_container(cfg, resolve=True)
        assert methods.build(c["method"]).hparams()["r"] == 256 and c["task"]["exact_max_n"] == 65536
