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
from attnbench.runners import plots
from attnbench.runners import report as report_mod
from attnbench.runners.report import (OverwriteRefused, UnknownExperiment, add_derived, build_table, load_grid, report,
                            task_keys)

DATA = Path(__file__).parent / "data"
CONF = DATA / "conf"  # conf/experiment/fixture.yaml: the fixture's grid (budget -1 is the failed run's)


def fixture_rows() -> pd.DataFrame:
    return pd.DataFrame(json.loads((DATA / "rows_small.json").read_text())["rows"])


def write_runs(tmp_path: Path, rows: pd.DataFrame, mtime: float | None = None) -> None:
    runs = tmp_path / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    for rid, d in rows.groupby("run_id"):
        recs = [{k: v for k, v in r.items() if not (isinstance(v, float) and np.isnan(v))} for r in d.to_dict("records")]
        path = runs / f"{rid}.json"
        path.write_text(json.dumps({"run_id": rid, "status": recs[0]["status"], "rows": recs}))
        if mtime is not None:
            os.utime(path, (mtime, mtime))


def write_conf(tmp_path: Path, name: str, text: str) -> Path:
    conf = tmp_path / "conf"
    (conf / "experiment").mkdir(parents=True, exist_ok=True)
    (conf / "experiment" / f"{name}.yaml").write_text(text)
    return conf


def test_table_from_fixture_matches_expected(tmp_path):
    write_runs(tmp_path, fixture_rows())
    res = report(tmp_path, "fixture", conf_dir=CONF)
    out = tmp_path / "reports" / "fixture"  # default: an untracked folder, not results/ itself
    assert not (tmp_path / "fixture_table.csv").exists()
    got = pd.read_csv(out / "fixture_table.csv")
    expected = pd.read_csv(DATA / "expected_table.csv")
    pd.testing.assert_frame_equal(got, expected, check_exact=False, rtol=1e-9)
    # hand-checked values: mean ± sd over two seeds, speed-up from each run's own exact latency
    w64 = got[(got["method"] == "wildcat") & (got["task.budget"] == 64)].iloc[0]
    assert w64["knobs"] == "r=64" and w64["n_seeds"] == 2
    assert w64["git_commit"] == "abc" and "git_commit" not in (out / "fixture_table.md").read_text()  # CSV only
    assert w64["rel_spec_error_mean"] == pytest.approx(0.22) and w64["rel_spec_error_sd"] == pytest.approx(0.02 * 2**0.5)
    assert w64["speedup_mean"] == pytest.approx((10 / 4 + 11 / 4) / 2)
    md = (out / "fixture_table.md").read_text()
    assert "0.22 ± 0.02828" in md and "method.r must be positive" in md  # the error row is listed
    assert "other" not in set(got["method"]) and "exact" not in set(got["method"])  # other experiment left out
    assert len(res["errors"]) == 1


def test_figures_written_and_non_empty(tmp_path):
    write_runs(tmp_path, fixture_rows())
    res = report(tmp_path, "fixture", conf_dir=CONF)
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
    conf = write_conf(tmp_path, "sc", "task: {n: [1024, 2048, 4096, 8192]}\n"
                      "hydra: {sweeper: {params: {method: 'performer,wildcat'}}}\n")
    res = report(tmp_path, "sc", rows=pd.DataFrame(rows), conf_dir=conf)
    s = res["slopes"].set_index("method")
    assert s.loc["performer", "latency_slope"] == pytest.approx(1.0)
    assert s.loc["wildcat", "latency_slope"] == pytest.approx(1.1)
    assert s.loc["exact", "latency_slope"] == pytest.approx(2.0) and s.loc["exact", "n_max"] == 4096
    assert s.loc["wildcat", "mem_slope"] == pytest.approx(1.0)
    assert set(res["table"]["latency_slope"].round(6)) == {1.0, 1.1}
    for stem in ("sc_latency_vs_n", "sc_memory_vs_n"):
        for ext in ("png", "pdf"):
            assert (tmp_path / "reports" / "sc" / "figures" / f"{stem}.{ext}").stat().st_size > 1000


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


# ------------------------------------------------------------------ grid filter, overwrite, names

def _row(method, budget, seed, err, run_id, **kw):
    knobs = {"wildcat": {"method.r": budget, "method.num_bins": 1},
             "performer": {"method.nb_features": budget, "method.redraw": True}}.get(method, {})
    return {"run_id": run_id, "status": "ok", "experiment": "fixture", "method": method, "seed": seed, "n": 1024,
            "task.budget": budget, "rel_spec_error": err, "rel_fro_error": err / 2, "latency_ms": 2.0,
            "exact_latency_ms": 10.0, **knobs, **kw}


def test_grid_filter_keeps_latest_run_of_each_config_in_the_grid(tmp_path, capsys):
    base = fixture_rows()
    write_runs(tmp_path, base, mtime=2_000_000)
    extra = pd.DataFrame([
        _row("wildcat", 64, 0, 0.9, "old-wildcat-64-0"),      # same config as fidelity-wildcat-64-0, older
        _row("performer", 128, 0, 0.5, "new-performer-128-0"),  # same config as fidelity-performer-128-0, newer
        _row("reformer", 64, 0, 0.7, "reformer-64-0"),          # method outside the grid
        _row("wildcat", 512, 0, 0.05, "wildcat-512-0"),         # budget outside the grid (an older sweep's)
        {**_row("wildcat", 64, 0, 0.01, "wildcat-64-0-n2048"), "n": 2048},  # n outside the grid
        {**_row("wildcat", 64, 7, 0.01, "wildcat-64-7"), "seed": 7},        # seed outside the grid
    ])
    write_runs(tmp_path, extra.iloc[[0]], mtime=1_000_000)
    write_runs(tmp_path, extra.iloc[1:], mtime=3_000_000)
    res = report(tmp_path, "fixture", conf_dir=CONF)
    t = res["table"].set_index(["method", "task.budget"])
    assert sorted(t.index) == [("performer", 64), ("performer", 128), ("wildcat", 64), ("wildcat", 128)]
    assert t.loc[("wildcat", 64), "rel_spec_error_mean"] == pytest.approx(0.22)  # the older duplicate is ignored
    assert t.loc[("performer", 128), "rel_spec_error_mean"] == pytest.approx((0.5 + 0.28) / 2)  # the newer wins
    assert (t["n_seeds"] == 2).all()
    # the failed run (budget -1) counts as missing; its error is still listed
    assert res["coverage"] == "2/2 methods × 2/3 budgets × 1/1 n × 2/2 seeds = 8/12 configs"
    assert len(res["missing"]) == 4 and all("task.budget=-1" in m for m in res["missing"])
    assert len(res["errors"]) == 1
    md = (tmp_path / "reports" / "fixture" / "fixture_table.md").read_text()
    assert "Grid coverage: 2/2 methods × 2/3 budgets × 1/1 n × 2/2 seeds = 8/12 configs" in md
    assert "2 superseded by later runs, 4 outside the grid" in md and "method.r must be positive" in md
    # the command line prints the coverage
    report_mod.main(["--experiment", "fixture", "--results-dir", str(tmp_path), "--conf-dir", str(CONF)])
    out = capsys.readouterr().out
    assert "grid coverage (fixture): 2/2 methods × 2/3 budgets × 1/1 n × 2/2 seeds = 8/12 configs" in out


def test_grid_filter_latest_without_files_is_the_later_row(tmp_path):
    rows = pd.DataFrame([_row("wildcat", 64, 0, 0.9, "a"), _row("wildcat", 64, 0, 0.3, "b"),
                         _row("wildcat", 64, 1, 0.5, "c")])
    res = report(tmp_path, "fixture", rows=rows, conf_dir=CONF)  # no runs/ folder: table order decides
    assert res["table"]["rel_spec_error_mean"].tolist() == [pytest.approx(0.4)]


def test_load_grid_maps_sweep_keys_to_row_columns(tmp_path):
    conf = write_conf(tmp_path, "g", """
task: {n: [64, 128], budget: '${budget}', press: '${case.press}', ratio: '${case.ratio}'}
hydra: {sweeper: {params: {method: 'a,b,c', budget: '16,32', case: '{press:x,ratio:0.5},{press:y,ratio:0.75}'}}}
""")
    (conf / "config.yaml").write_text("seed: 3\n")
    g = load_grid("g", conf)
    axes = {a.label: a for a in g.axes}
    assert axes["methods"].values == [("a",), ("b",), ("c",)]
    assert axes["budgets"].columns == ("task.budget",) and axes["budgets"].values == [("16",), ("32",)]
    assert axes["case"].columns == ("task.press", "task.ratio") and axes["case"].values == [("x", "0.5"), ("y", "0.75")]
    assert axes["n"].values == [("64",), ("128",)] and axes["seeds"].values == [("3",)]
    assert len(g.configs()) == 3 * 2 * 2 * 2
    real = {a.label: len(a.values) for a in load_grid("scaling").axes}
    assert real["methods"] == 8 and real["n"] == 7


def test_report_refuses_to_overwrite_tracked_files(tmp_path):
    repo = tmp_path / "repo"
    results = repo / "results"
    write_runs(results, fixture_rows())
    committed = results / "fixture_table.csv"
    committed.write_text("committed\n")
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    subprocess.run(["git", "-C", str(repo), "add", "results/fixture_table.csv"], check=True)
    with pytest.raises(OverwriteRefused, match=r"fixture_table\.csv.*--force"):
        report(results, "fixture", out_dir=results, conf_dir=CONF)
    assert committed.read_text() == "committed\n"  # nothing replaced ...
    assert not (results / "fixture_table.md").exists() and not (results / "figures").exists()  # ... nothing written
    cli = subprocess.run([sys.executable, "-m", "attnbench.runners.report", "--experiment", "fixture",
                          "--results-dir", str(results), "--out-dir", str(results), "--conf-dir", str(CONF)],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert cli.returncode == 3 and committed.read_text() == "committed\n"
    err = cli.stderr.strip().splitlines()
    assert len(err) == 1 and "fixture_table.csv" in err[0] and "--force" in err[0]
    # the default folder (results/reports/<name>) is not tracked: written, inside the same repository
    res = report(results, "fixture", conf_dir=CONF)
    assert (results / "reports" / "fixture" / "fixture_table.csv").stat().st_size > 100
    assert all(p.is_relative_to(results / "reports" / "fixture") for p in res["files"])
    # --force replaces
    report(results, "fixture", out_dir=results, conf_dir=CONF, force=True)
    assert pd.read_csv(committed)["method"].tolist()[:1] == ["wildcat"]


def test_unknown_experiment_exits_nonzero_and_lists_names(tmp_path):
    (tmp_path / "runs").mkdir()
    res = subprocess.run([sys.executable, "-m", "attnbench.runners.report", "--experiment", "scalling", "--results-dir",
                          str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 2
    assert "unknown experiment 'scalling'" in res.stderr and "scaling" in res.stderr.split("known:")[1]
    with pytest.raises(UnknownExperiment, match="known: fixture"):
        report(tmp_path, "nosuch", conf_dir=CONF)
    assert not (tmp_path / "reports").exists()
    # an ad-hoc experiment_name (no config) is reported only when asked for without a grid
    rows = pd.DataFrame([_row("wildcat", 64, 0, 0.2, "a")]).assign(experiment="adhoc")
    with pytest.raises(UnknownExperiment):
        report(tmp_path, "adhoc", rows=rows, conf_dir=CONF)
    res = report(tmp_path, "adhoc", rows=rows, conf_dir=CONF, use_grid=False)
    assert res["coverage"] == "no grid filter" and len(res["table"]) == 1


def test_glove_error_and_smollm2_error_name_one_experiment(tmp_path):
    conf = write_conf(tmp_path, "smollm2_error", "task: {n: [1024], budget: '${budget}'}\n"
                      "hydra: {sweeper: {params: {method: 'wildcat,performer', budget: '64'}}}\n")
    rows = pd.DataFrame([{**_row("wildcat", 64, 0, 0.2, "a"), "experiment": "glove_error"},   # older rows' name
                         {**_row("performer", 64, 0, 0.4, "b"), "experiment": "smollm2_error"}])
    for name in ("glove_error", "smollm2_error"):
        res = report(tmp_path, name, rows=rows, conf_dir=conf)
        assert res["experiment"] == "smollm2_error" and sorted(res["table"]["method"]) == ["performer", "wildcat"]
        assert res["coverage"] == "2/2 methods × 1/1 n = 2/2 configs"
    assert (tmp_path / "reports" / "smollm2_error" / "smollm2_error_table.csv").is_file()


def test_preset_axis_matches_older_rows_by_budget(tmp_path):
    conf = write_conf(tmp_path, "e", "task: {n: [1024]}\n"
                      "hydra: {sweeper: {params: {method: wildcat, preset: 'p64,p256'}}}\n")
    (conf / "preset").mkdir()
    for b in (64, 128, 256):
        (conf / "preset" / f"p{b}.yaml").write_text(f"name: p{b}\nbudget: {b}\n")
    rows = pd.DataFrame([{**_row("wildcat", b, 0, 1 / b, f"old{b}"), "experiment": "e"} for b in (64, 128)]
                        + [{**_row("wildcat", None, 0, 0.004, "new256"), "experiment": "e", "preset": "p256",
                            "preset.budget": 256}])
    res = report(tmp_path, "e", rows=rows, conf_dir=conf)
    assert res["coverage"] == "1/1 methods × 2/2 presets × 1/1 n = 2/2 configs"
    assert sorted(res["table"]["preset.budget"]) == [64, 256]  # 128 (not in the grid) left out


# ------------------------------------------------------------------ figures

def test_palette_okabe_ito_with_line_styles_keeps_methods_apart():
    assert len(plots.METHOD_STYLES) == 11
    triples = {(plots.color(m), plots.linestyle(m), plots.marker(m)) for m in plots.METHOD_STYLES}
    assert len(triples) == 11
    assert len({(plots.color(m), plots.linestyle(m)) for m in plots.METHOD_STYLES}) == 11  # apart even without markers
    assert {plots.color(m) for m in plots.METHOD_STYLES} <= set(plots.OKABE_ITO.values())
    assert plots.OKABE_ITO["yellow"] not in {plots.color(m) for m in plots.METHOD_STYLES}


@pytest.fixture
def captured(monkeypatch):
    """The figures' axes, by file stem, as they are saved."""
    figs = {}
    save = plots._save

    def keep(fig, out_dir, stem):
        figs[stem] = fig
        fig.canvas.draw()
        info = {"ax": fig.axes[0], "suptitle": fig._suptitle.get_text() if fig._suptitle else "",
                "texts": [t.get_text() for t in fig.axes[0].texts]}
        figs[stem] = info
        return save(fig, out_dir, stem)

    monkeypatch.setattr(plots, "_save", keep)
    return figs


def _scaling_rows():
    rows = []
    for m, a in (("performer", 0.01), ("wildcat", 0.02)):
        for n in (1024, 2048, 4096):
            lat = a * n
            rows.append({"run_id": f"{m}-run", "status": "ok", "experiment": "sc", "method": m, "seed": 0, "n": n,
                         "batch": 2, "heads": 3, "head_dim": 64, "dtype": "float32", "source": "gaussian",
                         "num_threads": 2, "device": "cpu (test)", "latency_ms": lat, "latency_p10_ms": 0.9 * lat,
                         "latency_p90_ms": 1.2 * lat, "exact_latency_ms": 1e-5 * n**2,
                         "exact_latency_p10_ms": 0.9e-5 * n**2, "exact_latency_p90_ms": 1.1e-5 * n**2,
                         "speedup": 1e-5 * n**2 / lat,
                         "speedup_lo": 0.8e-5 * n**2 / lat, "speedup_hi": 1.3e-5 * n**2 / lat,
                         "peak_mem_mb": 1e-3 * n, "exact_peak_mem_mb": 2e-3 * n, "rel_spec_error": 0.1})
    return pd.DataFrame(rows)


def test_scaling_figures_show_setup_bands_and_dense_reference(tmp_path, captured):
    from matplotlib.collections import PolyCollection
    conf = write_conf(tmp_path, "sc", "task: {n: [1024, 2048, 4096]}\n"
                      "hydra: {sweeper: {params: {method: 'performer,wildcat'}}}\n")
    report(tmp_path, "sc", rows=_scaling_rows(), conf_dir=conf)
    mem = captured["sc_memory_vs_n"]["ax"]
    dense = [ln for ln in mem.get_lines() if ln.get_label().startswith("dense n×n scores")]
    assert len(dense) == 1 and dense[0].get_linestyle() == "--"
    n = np.array([1024, 2048, 4096])
    np.testing.assert_allclose(dense[0].get_ydata(), 2 * 3 * n**2 * 4 / 2**20)  # batch·heads·n²·4 bytes, MiB
    lat = captured["sc_latency_vs_n"]
    assert len([c for c in lat["ax"].collections if isinstance(c, PolyCollection)]) == 3  # p10–p90: 2 methods + exact
    sp = captured["sc_speedup_vs_n"]["ax"]
    assert len([c for c in sp.collections if isinstance(c, PolyCollection)]) == 2  # 95 % intervals
    for stem, info in captured.items():
        assert not info["suptitle"].startswith("sc"), stem  # the measurement, not the experiment id
        sub = info["ax"].get_title(loc="left")
        assert "float32" in sub and "2 threads" in sub and "3 heads" in sub and "d = 64" in sub, sub
        # one tick style for n: powers of two written 1k 2k 4k
        assert [t.get_text() for t in info["ax"].get_xticklabels()] == ["1k", "2k", "4k"], stem
    # one seed: no error bars anywhere, and none in the legend
    from matplotlib.container import ErrorbarContainer
    err_fig = captured["sc_error_vs_n"]["ax"]
    assert not [c for c in err_fig.containers if isinstance(c, ErrorbarContainer)]
    assert not [h for h in err_fig.get_legend().legend_handles if isinstance(h, ErrorbarContainer)]


def test_error_vs_latency_writes_the_budget_at_each_point(tmp_path, captured):
    write_runs(tmp_path, fixture_rows())
    report(tmp_path, "fixture", conf_dir=CONF)
    info = captured["fixture_error_spec_vs_latency"]
    assert sorted(t for t in info["texts"] if not t.startswith("numbers at the points")) == ["128", "128", "64", "64"]
    assert any(t.startswith("numbers at the points: feature budget m") for t in info["texts"])  # 2 methods × 2 budgets
    assert "latency" in info["suptitle"] and "error" in info["suptitle"] and not info["suptitle"].startswith("fixture")
    budget = captured["fixture_error_spec_vs_budget"]["ax"]
    assert [t.get_text() for t in budget.get_xticklabels()] == ["64", "128"]
    # two seeds: ± sd bars drawn (and said under the axes)
    from matplotlib.container import ErrorbarContainer
    assert [c for c in budget.containers if isinstance(c, ErrorbarContainer)]
    assert any("sd over 2 seeds" in t.get_text() for t in budget.texts)


SWEEP = ["logger=none", "meter.warmup=1", "meter.min_samples=1", "meter.min_run_s=0", "meter.max_run_s=1",
         "task.heads=2", "task.head_dim=16", "experiment_name=t"]


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
    conf = write_conf(tmp_path, "t", "task: {n: [64, 128]}\nhydra: {sweeper: {params: {method: 'exact,performer'}}}\n")
    res = subprocess.run([sys.executable, "-m", "attnbench.runners.report", "--experiment", "t", "--results-dir", str(tmp_path),
                          "--conf-dir", str(conf)], cwd=ROOT, capture_output=True, text=True, check=True, timeout=120)
    out_dir = tmp_path / "reports" / "t"
    table = pd.read_csv(out_dir / "t_table.csv")
    assert sorted(zip(table["method"], table["n"])) == [("exact", 64), ("exact", 128), ("performer", 64), ("performer", 128)]
    assert "wrote" in res.stdout and (out_dir / "t_table.md").stat().st_size > 0
    assert "grid coverage (t): 2/2 methods × 2/2 n = 4/4 configs" in res.stdout, res.stdout
    assert (out_dir / "figures" / "t_error_vs_n.png").stat().st_size > 1000


def test_report_without_rows_says_what_to_run(tmp_path):
    (tmp_path / "runs").mkdir()
    conf = write_conf(tmp_path, "nothing", "task: {n: [64]}\n")
    with pytest.raises(SystemExit, match="python run.py -m \\+experiment=nothing"):
        report(tmp_path, "nothing", conf_dir=conf)


def test_experiment_configs_compose_with_budget_coupling():
    """smollm2_error (formerly glove_error): each method's knobs at budget m come from preset budget_m<m>."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from attnbench import methods

    want = {"reformer": {"bucket_size": 256}, "performer": {"nb_features": 512},
            "scatterbrain": {"local_context": 256, "nb_features": 512},
            "kdeformer": {"bucket_size": 256, "sample_size": 512}, "wildcat": {"r": 512},
            "nystromformer": {"num_landmarks": 512}, "thinformer": {"g": 3}}
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        for name, knobs in want.items():
            cfg = compose("config", overrides=["+experiment=smollm2_error", f"method={name}", "preset=budget_m512"])
            c = OmegaConf.to_container(cfg, resolve=True)
            assert c["experiment_name"] == "smollm2_error" and c["preset"]["budget"] == 512
            assert c["task"]["dtype"] == "float64"
            hp = methods.build(c["method"]).hparams()
            assert {k: hp[k] for k in knobs} == knobs, name
        cfg = compose("config", overrides=["+experiment=scaling", "method=wildcat"])
        c = OmegaConf.to_container(cfg, resolve=True)
        assert methods.build(c["method"]).hparams()["r"] == 256 and c["task"]["exact_max_n"] == 65536


def test_grid_leaves_out_uncovered_presets_and_capped_n():
    """lm_ppl sweeps methods × presets (some presets cover one method); scaling_causal caps LATTE's n."""
    lm = load_grid("lm_ppl")
    axes = {a.label: a for a in lm.axes}
    assert axes["n"].columns == ("context_length",) and axes["n"].values == [("2048",), ("8192",)]
    configs = lm.configs()
    cols = lm.columns
    pairs = {(c[cols.index("method")], c[cols.index("preset")]) for c in configs}
    assert ("conv_basis", "lm_conv_k4") in pairs and ("performer", "lm_conv_k4") not in pairs
    assert ("latte", "lm_latte_trained") in pairs and ("exact", "lm_latte_trained") not in pairs
    latte_n = {c[cols.index("context_length")] for c in configs if c[cols.index("method")] == "latte"}
    assert latte_n == {"2048", "8192"}  # no cap: LATTE's cpu path runs 8k
    # 7 methods at scaling_b256 + conv_basis k4, k64 + trained latte; every method at 2 lengths
    assert len(configs) == (7 + 2 + 1) * 2
    causal = load_grid("scaling_causal")
    assert len(causal.configs()) == 6 * 7 - 2  # latte only up to 16k (task.method_max_n)


def test_lm_rows_give_ppl_and_agreement_figures_per_context_and_set_vs_unset_knobs_differ(tmp_path):
    from attnbench.runners.report import figures, knob_string

    rows = pd.DataFrame([
        {"method": m, "n": n, "seed": 0, "status": "ok", "ppl": ppl, "exact_ppl": 6.0, "top1_agreement": agr,
         "attn_speedup": sp, "attn_speedup_lo": sp * 0.9, "attn_speedup_hi": sp * 1.1, "method.thresholds_path": path}
        for n in (2048, 8192)
        for m, ppl, agr, sp, path in (("exact", 6.0, 100.0, 1.0, None), ("latte", 9.0, 80.0, 0.05, "t.pt"),
                                      ("latte", 12.0, 70.0, 0.06, None), ("performer", 3000.0, 5.0, 0.7, None))])
    paths = figures(rows, "lmx", tmp_path, subtitle="s")
    names = sorted(p.name for p in paths if p.suffix == ".png")
    assert names == ["lmx_agreement_vs_speedup_n2048.png", "lmx_agreement_vs_speedup_n8192.png",
                     "lmx_ppl_vs_speedup_n2048.png", "lmx_ppl_vs_speedup_n8192.png"]
    knobs = knob_string(rows[rows["method"] == "latte"])
    assert sorted(set(knobs)) == ["", "thresholds_path=t.pt"]  # trained and untrained LATTE stay apart


def test_per_layer_metric_columns_reach_the_table():
    """ImageNet's per-layer timings (``t2t1_latency_ms``, ``t2t1_peak_mem_mb`` and exact's) are kept: the
    ScatterBrain claim reads the layer-1 attention memory from them."""
    from attnbench.runners.report import build_table

    rows = pd.DataFrame([
        {"method": m, "n": 3136, "seed": s, "status": "ok", "top1": 80.0 + s, "t2t1_latency_ms": 2.0 * f,
         "exact_t2t1_latency_ms": 2.0, "t2t1_peak_mem_mb": 10.0 * f, "exact_t2t1_peak_mem_mb": 10.0}
        for m, f in (("exact", 1.0), ("scatterbrain", 0.1)) for s in (1, 2)])
    table, _ = build_table(rows)
    sb = table[table["method"] == "scatterbrain"].iloc[0]
    assert sb["t2t1_peak_mem_mb_mean"] == pytest.approx(1.0) and sb["exact_t2t1_peak_mem_mb_mean"] == 10.0
    assert sb["t2t1_latency_ms_mean"] == pytest.approx(0.2) and sb["top1_mean"] == 81.5
