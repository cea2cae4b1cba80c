"""Tests for runners/gpu_check.py, on the CPU.

The CUDA path is covered in three parts: its compile step (``--compile``) is
``runners/kernel_compile.py``, compiled for real in ``tests/test_kernel_compile.py`` and faked
here; ``tests/test_cuda_kernels.py`` (its kernel-test step) runs here in a subprocess under
``TRITON_INTERPRET=1``, where its comparisons go through the Triton interpreter on CPU tensors;
the rest of the check (steps, output folder, failures that do not stop the later steps,
timeouts) runs with a fake GPU and a fake step runner, so nothing heavy starts.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from attnbench.runners import gpu_check as G

ROOT = Path(__file__).resolve().parents[1]

FAKE_INFO = {"gpu": "NVIDIA H200", "gpu_count": 1, "capability": "9.0", "memory_gib": 139.8, "driver": "570.86",
             "torch": "2.14.0", "triton": "3.6.0", "cuda": "12.9", "cudnn": 91000, "flash_sdp_enabled": True,
             "python": "3.11.7", "git_commit": "0123456789abcdef" * 2 + "01234567", "git_dirty": True}


# --------------------------------------------------------------------------- no CUDA
def test_no_cuda_one_line_exit_0(tmp_path):
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(ROOT)}
    env.pop("TRITON_INTERPRET", None)
    res = subprocess.run([sys.executable, "-m", "attnbench.runners.gpu_check", "--out-dir", str(tmp_path / "gpu")], cwd=ROOT,
                         env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.splitlines() == [G.NOTICE] and "Traceback" not in res.stderr
    assert not (tmp_path / "gpu").exists()


def test_no_cuda_in_process(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(G, "cuda_available", lambda: False)
    calls = []
    assert G.main(["--out-dir", str(tmp_path)], runner=lambda s, p: calls.append(s)) == 0
    assert capsys.readouterr().out == G.NOTICE + "\n" and not calls and not any(tmp_path.iterdir())


# --------------------------------------------------------------------------- the CUDA tests, in the interpreter
def test_cuda_kernel_tests_pass_in_interpreter(tmp_path):
    """The kernel-test step of the check, as the check runs it (``-m cuda``), with TRITON_INTERPRET=1."""
    pytest.importorskip("triton")
    junit = tmp_path / "junit.xml"
    env = {**os.environ, "TRITON_INTERPRET": "1", "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(ROOT)}
    res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider",
                          f"--junitxml={junit}", "tests/test_cuda_kernels.py"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-2000:]
    cases = ET.parse(junit).getroot().iter("testcase")
    outcome = {}
    for c in cases:
        bad = [e for e in c if e.tag in ("failure", "error")]
        skip = [e for e in c if e.tag == "skipped"]
        outcome[c.get("name")] = "failed" if bad else ("skipped: " + skip[0].get("message", "")) if skip else "passed"
    assert len(outcome) == 18, outcome  # 3 kernels x 3 dtypes x 2 head dims
    assert G.junit_summary(junit) == "18 tests: 16 passed, 0 failed, 2 skipped"
    skipped = {k: v for k, v in outcome.items() if v != "passed"}
    # only KDEformer in bf16: the interpreter has no bfloat16 (the others upcast to fp32 first)
    assert set(skipped) == {"test_kdeformer_kernel_matches_torch[bf16-d64]",
                            "test_kdeformer_kernel_matches_torch[bf16-d80]"}, skipped
    assert all("bfloat16" in v for v in skipped.values())
    assert sum(k.endswith("-autotuned]") for k in outcome) == 3


def test_cuda_kernel_tests_skip_without_cuda_or_interpreter():
    """Here (no CUDA, no TRITON_INTERPRET) every test of tests/test_cuda_kernels.py is marked
    ``cuda`` and skipped, with a reason."""
    import importlib.util

    import torch

    if torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1":
        pytest.skip("CUDA or the interpreter is available: the tests run")
    spec = importlib.util.spec_from_file_location("_cuda_kernels", ROOT / "tests" / "test_cuda_kernels.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    marks = {m.name: m for m in mod.pytestmark}
    assert "cuda" in marks and marks["skipif"].args == (True,) and "no CUDA device" in marks["skipif"].kwargs["reason"]
    assert not mod.CUDA and mod.DEVICE == "cpu"


# --------------------------------------------------------------------------- steps
def test_steps_commands(tmp_path):
    plan = G.steps(tmp_path)
    assert [s.name for s in plan] == ["compile", "kernel_tests", "scaling", "scaling_causal", "report_scaling",
                                      "report_scaling_causal"]
    comp = plan[0].cmd
    assert comp[:4] == [sys.executable, "-m", "attnbench.runners.gpu_check", "--compile"]
    assert comp[comp.index("--out-dir") + 1] == str(tmp_path) and "--targets" not in comp  # device unknown: all
    assert 1 <= int(comp[comp.index("--workers") + 1]) <= G.DEVICE_COMPILE_WORKERS
    on_h200 = G.steps(tmp_path, capability="9.0")[0]
    assert on_h200.cmd[-2:] == ["--targets", "sm_90"] and "sm_90" in on_h200.title
    assert G.compile_target("10.0") == "sm_100" and G.compile_target(None) is None
    tests = plan[1].cmd
    assert tests[:3] == [sys.executable, "-m", "pytest"] and ["-m", "cuda"] == tests[4:6]
    assert tests[-1] == "tests/test_cuda_kernels.py" and f"--junitxml={tmp_path / 'kernel_tests.xml'}" in tests
    for s, exp in zip(plan[2:4], G.EXPERIMENTS):
        assert s.cmd[:2] == [sys.executable, "run.py"] and "-m" not in s.cmd  # the experiments sweep on their own
        for o in (f"+experiment={exp}", "logger=none", "device=cuda", "task.dtype=bfloat16", "task.heads=32",
                  "task.n=[4096,8192,16384,32768,65536,131072]", "task.exact_max_n=131072",
                  "meter.min_samples=3", "meter.min_run_s=0.2", "meter.max_run_s=5", f"results_dir={tmp_path}"):
            assert o in s.cmd, (o, s.cmd)
    for s, exp in zip(plan[4:], G.EXPERIMENTS):
        assert s.cmd[:3] == [sys.executable, "-m", "attnbench.runners.report"]
        i = s.cmd.index
        assert s.cmd[i("--experiment") + 1] == exp and s.cmd[i("--results-dir") + 1] == str(tmp_path)
        assert s.cmd[i("--out-dir") + 1] == str(tmp_path)
    assert sum(s.timeout_s for s in plan) <= 8 * 60  # fits a short lease on one GPU
    quick = G.steps(tmp_path, quick=True, sweep_timeout_s=60)
    assert "task.n=[4096,8192,16384]" in quick[2].cmd and "meter.max_samples=1" in quick[2].cmd
    assert quick[2].timeout_s == 60


@pytest.mark.parametrize("quick", [False, True])
@pytest.mark.parametrize("experiment", G.EXPERIMENTS)
def test_sweep_overrides_compose(tmp_path, experiment, quick):
    """The sweep's overrides are valid for the configs and land where meant."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=G.sweep_overrides(experiment, tmp_path, quick), return_hydra_config=True)
    ns = G.N_QUICK if quick else G.N_FULL
    assert cfg.experiment_name == experiment and cfg.device == "cuda" and cfg.results_dir == str(tmp_path)
    assert cfg.task.dtype == "bfloat16" and cfg.task.heads == 32 and list(cfg.task.n) == ns
    assert cfg.task.exact_max_n == max(ns) and cfg.task.batch == 1 and cfg.task.head_dim == 64
    assert cfg.task.causal == (experiment == "scaling_causal")
    assert (cfg.meter.min_samples, cfg.meter.max_run_s) == ((1, 0) if quick else (3, 5))
    assert cfg.hydra.sweep.dir == str(tmp_path / "hydra" / experiment) and cfg.hydra.sweeper.params.method


def test_report_flags_exist_in_report():
    src = (ROOT / "runners" / "report.py").read_text()
    for f in G.report_flags():
        assert f'"{f}"' in src


def test_sweep_methods_and_coverage(tmp_path):
    assert G.sweep_methods("scaling")[0] == "performer" and "latte" in G.sweep_methods("scaling_causal")
    assert G.sweep_methods("no_such_experiment") == []
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "bad.json").write_text("{not json")
    rows = [{"experiment": "scaling_causal", "method": "latte", "n": 4096, "status": "ok"},
            {"experiment": "other", "method": "latte", "n": 8192, "status": "ok"}]
    (tmp_path / "runs" / "r.json").write_text(json.dumps({"rows": rows}))
    cov = G.sweep_coverage(tmp_path, "scaling_causal")
    assert cov["latte"] == {"ok": [4096], "error": []} and cov["performer"] == {"ok": [], "error": []}
    assert list(cov) == G.sweep_methods("scaling_causal")


def test_slug():
    assert G.slug("NVIDIA H200") == "nvidia-h200"
    assert G.slug("NVIDIA A100-SXM4-80GB") == "nvidia-a100-sxm4-80gb"
    assert G.slug("  Tesla T4 (MIG 1g.5gb) ") == "tesla-t4-mig-1g-5gb" and G.slug("***") == "gpu"


def test_git_state():
    st = G.git_state()
    if st["git_commit"] is None:
        pytest.skip("not a git checkout")
    assert len(st["git_commit"]) == 40 and isinstance(st["git_dirty"], bool)


def test_git_state_of_an_installed_copy_inside_someone_elses_repository_is_none(tmp_path, monkeypatch):
    site = tmp_path / "project" / "venv" / "site-packages"
    site.mkdir(parents=True)
    subprocess.run(["git", "init", "-q", str(tmp_path / "project")], check=True)
    monkeypatch.setattr(G, "ROOT", site)
    assert G.git_state() == {"git_commit": None, "git_dirty": None}


# --------------------------------------------------------------------------- the run, with a fake GPU
def test_main_fake_gpu_writes_folder_and_goes_on_after_failures(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(G, "cuda_available", lambda: True)
    monkeypatch.setattr(G, "device_info", lambda: dict(FAKE_INFO))
    out = tmp_path / "gpu" / "nvidia-h200"
    seen = []

    def runner(step, log_path):
        # results are written as each step finishes: the earlier steps are on disk already
        assert [r["name"] for r in json.loads((out / "steps.json").read_text())] == seen
        assert json.loads((out / "versions.json").read_text())["gpu"] == "NVIDIA H200"
        assert log_path == out / "logs" / f"{step.name}.log"
        seen.append(step.name)
        if step.name == "compile":  # what gpu_check --compile writes, for the device's target
            assert step.cmd[-2:] == ["--targets", "sm_90"]
            write_compile_csv(out)
        if step.name == "scaling_causal":
            raise RuntimeError("runner broke")
        log_path.write_text("ok\n")
        if step.name == "kernel_tests":  # what pytest --junitxml writes
            (out / "kernel_tests.xml").write_text(
                '<testsuites><testsuite><testcase name="a"/><testcase name="b"><failure message="x"/></testcase>'
                '<testcase name="c"><skipped message="y"/></testcase></testsuite></testsuites>')
        if step.name == "scaling":  # a sweep stopped in its second method
            rows = [{"experiment": "scaling", "method": "performer", "n": n, "status": "ok"} for n in (8192, 4096)]
            rows.append({"experiment": "scaling", "method": "wildcat", "n": 4096, "status": "error",
                         "error": "CUDA out of memory | x"})
            (out / "runs").mkdir()
            (out / "runs" / "a.json").write_text(json.dumps({"status": "running", "rows": rows}))
        if step.name == "report_scaling":  # what the report writes
            (out / "scaling_table.md").write_text("| t |\n")
            (out / "figures").mkdir()
        status = "failed" if step.name == "kernel_tests" else "timeout" if step.name == "scaling" else "passed"
        return G.Result(step.name, status, 1 if status == "failed" else 0, 1.5, log_path.name, step.cmd)

    rc = G.main(["--out-dir", str(tmp_path / "gpu")], runner=runner)
    assert rc == 1
    printed = capsys.readouterr().out
    assert "not passed: kernel_tests, scaling, scaling_causal" in printed
    versions = json.loads((out / "versions.json").read_text())
    for key in ("gpu", "torch", "triton", "cuda", "driver", "git_commit", "started"):
        assert key in versions
    steps = json.loads((out / "steps.json").read_text())
    assert [(s["name"], s["status"]) for s in steps] == [
        ("compile", "passed"), ("kernel_tests", "failed"), ("scaling", "timeout"), ("scaling_causal", "error"),
        ("report_scaling", "passed"), ("report_scaling_causal", "passed")]
    assert all(s["cmd"] for s in steps)
    readme = (out / "README.md").read_text()
    assert readme.startswith("# GPU check: NVIDIA H200")
    assert "commit `0123456789ab` (with uncommitted changes)" in readme
    assert "Not passed: kernel_tests (failed), scaling (timeout), scaling_causal (error)" in readme
    assert "| error (RuntimeError: runner broke) |" in readme and "scaling_causal: error (RuntimeError" in printed
    assert "`scaling_table.md`" in readme and "`figures/`" in readme and "n = 4096, 8192" in readme
    assert "| performer | 4096, 8192 |  |" in readme and "| thinformer | none (not reached) |  |" in readme
    assert "| wildcat | none | n = 4096: CUDA out of memory / x |" in readme
    assert "Kernel tests (`kernel_tests.xml`): 3 tests: 1 passed, 1 failed, 1 skipped (failed: b)." in readme
    assert "Rows of scaling_causal" in readme and "| latte | none (not reached) |  |" in readme
    assert "Compile report (`compile.md`): 2 kernel x case x config x target: 1 compiled, 1 pruned" in readme
    for s in G.steps(out, capability="9.0"):
        assert s.title in readme


def compile_rows(spill: int = 0) -> list:
    K = G.kernel_compile
    return [K.Row("_k", "wildcat", "fp32", 64, "", "BLOCK_M=64,w4,s3", "sm_90", "compiled", registers=128,
                  spill_stores=spill, spill_loads=spill, stack_bytes=0, shared_bytes=1024, shared_limit=227 * 1024,
                  compile_s=1.25),
            K.Row("_k", "wildcat", "fp32", 128, "", "BLOCK_M=64,w4,s3", "sm_90", "pruned", shared_limit=227 * 1024)]


def write_compile_csv(out: Path, spill: int = 0) -> None:
    info = {"triton": "3.8.0", "ptxas": {"sm_90": "12.9"}, "git_commit": "abc"}
    G.kernel_compile.write_csv(out / "compile.csv", compile_rows(spill), info)


def test_compile_csv_round_trip(tmp_path):
    write_compile_csv(tmp_path)
    rows = G.kernel_compile.load_rows(tmp_path / "compile.csv")
    assert [r.__dict__ for r in rows] == [r.__dict__ for r in compile_rows()]
    assert all(r.ok for r in rows)
    (tmp_path / "bad.csv").write_text("kernel,module\nx,y\n")
    with pytest.raises(ValueError, match="no column"):
        G.kernel_compile.load_rows(tmp_path / "bad.csv")


def test_compile_flag_needs_no_gpu(tmp_path, monkeypatch, capsys):
    """``--compile`` runs the compile report (here a fake) without looking for CUDA; exit 0 when every
    row is fine, 1 on a spill, 2 on a bad target."""
    monkeypatch.setattr(G, "cuda_available", lambda: pytest.fail("--compile must not need CUDA"))
    seen = {}

    def fake_report(out_dir, *, capabilities=None, workers=2):
        seen.update(out_dir=out_dir, capabilities=capabilities, workers=workers)
        return compile_rows(seen.get("spill", 0))

    monkeypatch.setattr(G.kernel_compile, "report", fake_report)
    assert G.main(["--compile", "--out-dir", str(tmp_path), "--targets", "sm_80,sm_90", "--workers", "1"]) == 0
    assert seen == {"out_dir": tmp_path, "capabilities": [80, 90], "workers": 1}
    assert G.main(["--compile", "--out-dir", str(tmp_path)]) == 0 and seen["capabilities"] is None
    seen["spill"] = 8
    assert G.main(["--compile", "--out-dir", str(tmp_path)]) == 1
    assert G.main(["--compile", "--targets", "sm_75"]) == 2
    assert "unknown target 'sm_75'" in capsys.readouterr().err


JUNIT_OK = '<testsuite><testcase name="a"/><testcase name="b"><skipped message="y"/></testcase></testsuite>'


def write_rows(out: Path, experiment: str, rows: list[dict]) -> None:
    (out / "runs").mkdir(parents=True, exist_ok=True)
    rows = [{"experiment": experiment, "status": "ok", **r} for r in rows]
    (out / "runs" / f"{experiment}.json").write_text(json.dumps({"status": "ok", "rows": rows}))


def test_check_outputs(tmp_path):
    res = lambda name, status="passed": G.Result(name, status, 0, 1.0, "x.log")  # noqa: E731
    assert G.check_outputs(res("kernel_tests"), tmp_path).status == "failed"  # no junit file
    (tmp_path / "kernel_tests.xml").write_text('<testsuite><testcase name="b"><skipped/></testcase></testsuite>')
    r = G.check_outputs(res("kernel_tests"), tmp_path)
    assert (r.status, r.note) == ("failed", "1 tests: 0 passed, 0 failed, 1 skipped")  # all skipped: not a pass
    (tmp_path / "kernel_tests.xml").write_text(JUNIT_OK)
    assert G.check_outputs(res("kernel_tests"), tmp_path).status == "passed"
    assert G.check_outputs(res("kernel_tests", "timeout"), tmp_path).status == "timeout"
    r = G.check_outputs(res("scaling"), tmp_path)
    assert (r.status, r.note) == ("failed", "no ok row")
    write_rows(tmp_path, "scaling", [{"method": "performer", "n": 4096}])
    assert G.check_outputs(res("scaling"), tmp_path).status == "passed"
    write_rows(tmp_path, "scaling", [{"method": "performer", "n": 4096},
                                     {"method": "reformer", "n": 131072, "status": "error", "error": "OOM"},
                                     {"method": "reformer", "n": 65536, "status": "error", "error": "OOM"}])
    r = G.check_outputs(res("scaling"), tmp_path)
    assert (r.status, r.note) == ("partial", "some runs have error rows")
    assert G.sweep_coverage(tmp_path, "scaling")["reformer"] == {"ok": [], "error": ["n = 65536, 131072: OOM"]}
    assert G.check_outputs(res("report_scaling"), tmp_path).status == "passed"
    r = G.check_outputs(res("compile"), tmp_path)
    assert (r.status, r.note) == ("failed", "no readable compile.csv (FileNotFoundError)")
    write_compile_csv(tmp_path, spill=4)
    r = G.check_outputs(res("compile"), tmp_path)
    assert r.status == "failed" and "1 spilled" in r.note
    write_compile_csv(tmp_path)
    assert G.check_outputs(res("compile"), tmp_path).status == "passed"


def test_main_all_passed(tmp_path, monkeypatch):
    monkeypatch.setattr(G, "cuda_available", lambda: True)
    monkeypatch.setattr(G, "device_info", lambda: dict(FAKE_INFO, gpu="Tesla T4", git_dirty=False))
    out = tmp_path / "tesla-t4"

    def ok(step, log):
        if step.name == "compile":
            write_compile_csv(out)
        if step.name == "kernel_tests":
            (out / "kernel_tests.xml").write_text(JUNIT_OK)
        if step.name in G.EXPERIMENTS:
            write_rows(out, step.name, [{"method": m, "n": 4096} for m in G.sweep_methods(step.name)])
        return G.Result(step.name, "passed", 0, 0.1, log.name, step.cmd)

    assert G.main(["--out-dir", str(tmp_path), "--quick"], runner=ok) == 0
    readme = (tmp_path / "tesla-t4" / "README.md").read_text()
    assert "Every step passed." in readme and "--quick" in readme and "smoke run" in readme
    assert "2 tests: 1 passed, 0 failed, 1 skipped." in readme and "| latte | 4096 |  |" in readme


# --------------------------------------------------------------------------- the real step runner
def _step(code: str, timeout_s: float = 60) -> G.Step:
    return G.Step("s", "title", [sys.executable, "-c", code], timeout_s)


def test_run_step_passed_failed_and_log(tmp_path):
    res = G.run_step(_step("import sys; print('hello'); print('oops', file=sys.stderr)"), tmp_path / "logs" / "a.log")
    assert (res.status, res.returncode, res.log) == ("passed", 0, "a.log")
    log = (tmp_path / "logs" / "a.log").read_text()
    assert log.startswith("$ ") and "hello" in log and "oops" in log
    res = G.run_step(_step("raise SystemExit(3)"), tmp_path / "b.log")
    assert (res.status, res.returncode) == ("failed", 3)
    res = G.run_step(G.Step("s", "t", [str(tmp_path / "no-such-program")], 5), tmp_path / "c.log")
    assert res.status == "error" and "could not start" in (tmp_path / "c.log").read_text()


def test_run_step_timeout_kills_the_group(tmp_path):
    # the child starts a grandchild; both must be gone after the timeout
    code = ("import subprocess, sys, time; "
            "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
            "print(p.pid, flush=True); time.sleep(60)")
    res = G.run_step(_step(code, timeout_s=3), tmp_path / "t.log")
    assert res.status == "timeout" and res.seconds < 30
    log = (tmp_path / "t.log").read_text()
    assert "killed after the step's timeout of 3 s" in log
    pid = int(log.splitlines()[1])

    def alive() -> bool:
        try:
            return "zombie" not in Path(f"/proc/{pid}/status").read_text()
        except OSError:
            return False

    deadline = time.monotonic() + 10  # SIGKILL is delivered asynchronously
    while alive() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not alive()
