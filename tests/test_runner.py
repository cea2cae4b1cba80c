"""The runner, the results rows, Hydra sweeps and their resumption."""
import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import torch

from conftest import ROOT
from attnbench.methods.exact import dense_attention
from attnbench.runners.collect import load_rows, write_tables
from attnbench.core.measure import cpu_peak_memory_mb
from attnbench.runners.run import run

QUICK = {"warmup": 1, "min_samples": 1, "max_samples": 1, "min_run_s": 0.0, "max_run_s": 0.0, "memory": False}

BASE = ["logger=none", "meter=quick", "task.heads=2", "task.head_dim=16"]


def cli(tmp_path, *args, check=True, **kw):
    cmd = [sys.executable, "run.py", *args, *BASE, f"results_dir={tmp_path}"]
    env = {**os.environ, "HYDRA_FULL_ERROR": "1"}
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=check, env=env, **kw)


def records(tmp_path):
    return [json.loads(p.read_text()) for p in sorted((tmp_path / "runs").glob("*.json"))]


def cfg(tmp_path, **task):
    return {
        "method": {"name": "performer", "nb_features": 16}, "seed": 3, "device": "cpu", "results_dir": str(tmp_path),
        "meter": QUICK, "logger": {"name": "none"},
        "task": {"name": "fidelity", "source": "gaussian", "n": [32, 48], "heads": 2, "head_dim": 8, **task},
    }


def test_run_writes_contract_columns_and_one_row_per_n(tmp_path):
    rows = run(cfg(tmp_path))
    assert [r["n"] for r in rows] == [32, 48]
    for r in rows:
        for col in ["run_id", "status", "method", "task", "seed", "rel_fro_error", "rel_spec_error", "max_abs_error",
                    "latency_ms", "latency_p10_ms", "latency_p90_ms", "exact_latency_ms", "speedup", "device",
                    "torch_version", "git_commit", "wall_s", "method.nb_features", "task.source", "batch", "heads"]:
            assert col in r, col
        assert r["status"] == "ok" and r["method.nb_features"] == 16 and r["heads"] == 2
        assert 0 < r["rel_fro_error"] < 10


def test_seeded_runs_repeat_and_skip_finished(tmp_path, capsys):
    first = run(cfg(tmp_path))
    again = run(cfg(tmp_path))  # finished: skipped, same rows returned
    assert "skip" in capsys.readouterr().out
    assert again == first
    forced = run({**cfg(tmp_path), "rerun": True})
    assert [r["rel_fro_error"] for r in forced] == [r["rel_fro_error"] for r in first]
    other_seed = run({**cfg(tmp_path), "seed": 4})
    assert other_seed[0]["rel_fro_error"] != first[0]["rel_fro_error"]


def test_error_becomes_a_row(tmp_path):
    rows = run({**cfg(tmp_path), "method": {"name": "performer", "nb_features": -1}})
    assert rows[-1]["status"] == "error" and "nb_features" in rows[-1]["error"]
    assert records(tmp_path)[0]["status"] == "error"


def test_multirun_two_jobs_two_rows_and_collect(tmp_path):
    out = cli(tmp_path, "-m", "method=exact,performer", "task=fidelity", "task.n=64")
    recs = records(tmp_path)
    assert sorted(r["rows"][0]["method"] for r in recs) == ["exact", "performer"], out.stdout
    assert all(r["status"] == "ok" and len(r["rows"]) == 1 for r in recs)
    df = load_rows(tmp_path)
    paths = write_tables(df, tmp_path)
    assert len(pd.read_csv(paths[0])) == 2 and len(pd.read_parquet(paths[1])) == 2
    res = subprocess.run([sys.executable, "-m", "attnbench.runners.collect", "--results-dir", str(tmp_path)], cwd=ROOT,
                         capture_output=True, text=True, check=True)
    assert "performer" in res.stdout and "2 rows" in res.stdout


def test_failing_method_in_sweep_keeps_going(tmp_path):
    # nb_features=0 is rejected by performer; the sweep must still run exact and exit 0
    out = cli(tmp_path, "-m", "method=performer", "method.nb_features=0,8", "task.n=32")
    recs = {r["rows"][0].get("method.nb_features"): r for r in records(tmp_path)}
    assert recs[0]["status"] == "error" and "nb_features" in recs[0]["error"], out.stdout
    assert recs[8]["status"] == "ok"


def test_single_run_error_exits_nonzero(tmp_path):
    res = cli(tmp_path, "method=nope", check=False)
    assert res.returncode != 0 and "available options in 'method'" in (res.stdout + res.stderr).lower()


def test_killed_sweep_resumes_where_it_stopped(tmp_path):
    args = ["-m", "method=exact", "seed=0,1,2,3", "task.n=1024", "meter.min_samples=30", "meter.max_samples=30"]
    cmd = [sys.executable, "run.py", *args, *BASE, f"results_dir={tmp_path}"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.time() + 240
    done = []
    while time.time() < deadline and not done:
        done = [r for r in records(tmp_path) if r["status"] == "ok"] if (tmp_path / "runs").exists() else []
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done = {r["run_id"] for r in records(tmp_path) if r["status"] == "ok"}
    assert 1 <= len(done) < 4, "the sweep should have been killed part-way"
    mtimes = {p.stem: p.stat().st_mtime_ns for p in (tmp_path / "runs").glob("*.json")}
    out = cli(tmp_path, *args).stdout
    assert out.count("skip") == len(done)
    after = records(tmp_path)
    assert len(after) == 4 and all(r["status"] == "ok" for r in after)
    for rid in done:  # finished rows untouched
        assert (tmp_path / "runs" / f"{rid}.json").stat().st_mtime_ns == mtimes[rid]


def test_cpu_peak_memory_shows_quadratic_growth_of_dense_attention():
    peaks = []
    for n in (512, 1024):
        q = torch.randn(1, 2, n, 32)
        peaks.append(cpu_peak_memory_mb(lambda: dense_attention(q, q, q))[1])
    assert 3.0 < peaks[1] / peaks[0] < 5.0, peaks
