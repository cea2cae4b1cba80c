"""The GPU check in one command: ``attnbench gpu_check [--out-dir results/gpu] [--quick]``.

``attnbench gpu_check --compile [--out-dir results/gpu] [--targets sm_80,sm_90] [--workers 2]``
needs no GPU: every Triton kernel x config x launch of the suite compiled ahead of time for sm_80,
sm_90 and sm_100 (those the triton wheel's ``ptxas`` supports), with registers, spills and shared
memory (``runners/kernel_compile.py``); ``compile.md`` and ``compile.csv`` in ``<out-dir>``; exit
status 1 when a launched config fails, spills or exceeds the target's shared memory.

Without CUDA (and without ``--compile``) it prints one line and exits 0 (the ``cuda`` tests are
skipped on such a machine). With CUDA it runs these steps, each a subprocess with a timeout; a
step that fails or times out does not stop the later ones, and the folder
``<out-dir>/<gpu name>/`` (e.g. ``results/gpu/nvidia-h200/``) is updated after every step:

1. ``compile``: the compile report above for the device's own target only (``compile.md|csv`` in
   the folder), with up to 16 worker processes; it passes when every launched config compiles
   without spills within the target's shared memory.
2. ``kernel_tests``: ``python -m pytest -q -m cuda tests/test_cuda_kernels.py`` (every Triton kernel
   compiled for real and compared with its PyTorch path on non-divisible shapes in fp16/bf16/fp32);
   JUnit XML in ``kernel_tests.xml``; it passes when some test passed and none failed.
3. ``scaling``, ``scaling_causal``: the scaling experiments (conf/experiment/*.yaml, each a sweep
   over its methods) in bf16, batch 1, 32 heads, head dim 64, n = 4k … 128k, against exact
   attention (SDPA, which takes its flash backend for bf16 on CUDA), with a small meter budget
   (at least 3 samples, 0.2 s to 5 s per measurement); rows in ``runs/`` (a killed sweep keeps the
   rows it finished; a rerun into the same folder skips the finished runs). A sweep exits 0 past
   failed runs (their rows say ``status=error``), so its step is ``partial`` when some rows are
   errors (e.g. out of memory at 128k) and ``failed`` when none is ok.
4. ``report_scaling``, ``report_scaling_causal``: ``attnbench report`` for each experiment:
   ``<experiment>_table.md|csv`` and ``figures/`` in the same folder.

Also written: ``versions.json`` (GPU name, capability, memory, driver, torch, triton, CUDA, cuDNN,
Python, git commit) first, and after every step ``steps.json`` (command, status, seconds, log) and
``README.md`` (what passed, what failed, what is still to run, which n each method has rows for);
each step's output goes to ``logs/<step>.log``. The default timeouts (compile 60 s, tests 110 s,
each sweep 125 s, each report 30 s: 8 min in all; ``--*-timeout-s`` change them) fit a short lease
on one H200. Each sweep runs its methods one after another (one process, Hydra's basic
launcher), every n per method, so a method still running when its sweep's time is up leaves the
later methods unmeasured: README.md lists them as not reached. ``--quick``: n = 4k … 16k and one timed sample
per measurement, a smoke run of the whole chain. Exit status: 0 when every step passed, 1
otherwise.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from attnbench.core.files import replace_atomic
from attnbench.runners import kernel_compile

ROOT = Path(__file__).resolve().parents[1]
NOTICE = "no CUDA device: the GPU check needs one; the `cuda` tests are skipped here"

EXPERIMENTS = ("scaling", "scaling_causal")
N_FULL = [4096, 8192, 16384, 32768, 65536, 131072]
N_QUICK = [4096, 8192, 16384]
HEADS, DTYPE = 32, "bfloat16"
METER_FULL = ["meter.min_samples=3", "meter.min_run_s=0.2", "meter.max_run_s=5"]
METER_QUICK = ["meter.min_samples=1", "meter.max_samples=1", "meter.min_run_s=0", "meter.max_run_s=0"]
COMPILE_TIMEOUT_S, TESTS_TIMEOUT_S, SWEEP_TIMEOUT_S, REPORT_TIMEOUT_S = 60.0, 110.0, 125.0, 30.0  # 8 min in all
DEVICE_COMPILE_WORKERS = 16  # compile processes of the device's compile step (a GPU host has the cores)


@dataclass
class Step:
    name: str
    title: str
    cmd: list[str]
    timeout_s: float


@dataclass
class Result:
    name: str
    status: str  # passed | failed | timeout | error (could not start) | partial (a sweep with error rows)
    returncode: int | None
    seconds: float
    log: str  # relative to the output folder
    cmd: list[str] = field(default_factory=list)
    note: str = ""


# --------------------------------------------------------------------------- the machine
def cuda_available() -> bool:
    try:
        import torch
    except Exception:  # pragma: no cover - torch is a dependency
        return False
    return bool(torch.cuda.is_available())


def _quiet(cmd: list[str]) -> str | None:
    try:
        res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    return res.stdout.strip() if res.returncode == 0 and res.stdout.strip() else None


def git_state() -> dict:
    """HEAD and whether tracked files differ from it, when attnbench runs from its clone; None for both
    otherwise (an installed wheel: a git repository around site-packages is not ours)."""
    if not (ROOT / ".git").exists():
        return {"git_commit": None, "git_dirty": None}
    commit = _quiet(["git", "rev-parse", "HEAD"])
    status = _quiet(["git", "status", "--porcelain", "--untracked-files=no"])
    return {"git_commit": commit, "git_dirty": None if commit is None else bool(status)}


def device_info() -> dict:
    """Versions and the GPU (device 0): what ``versions.json`` holds."""
    import torch

    try:
        import triton

        triton_version = triton.__version__
    except Exception:
        triton_version = None
    props = torch.cuda.get_device_properties(0)
    smi = _quiet(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader", "-i", "0"])
    return {
        "gpu": torch.cuda.get_device_name(0),
        "gpu_count": torch.cuda.device_count(),
        "capability": ".".join(map(str, torch.cuda.get_device_capability(0))),
        "memory_gib": round(props.total_memory / 2**30, 1),
        "driver": smi.splitlines()[0].strip() if smi else None,
        "torch": torch.__version__,
        "triton": triton_version,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
        "flash_sdp_enabled": bool(torch.backends.cuda.flash_sdp_enabled()),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "hostname": platform.node(),
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        **git_state(),
    }


def slug(name: str) -> str:
    """Folder name of a device: ``NVIDIA H200`` -> ``nvidia-h200``."""
    s = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    return s or "gpu"


# --------------------------------------------------------------------------- the steps
def report_flags() -> list[str]:
    """Flags of ``runners.report`` used when it has them: ``--no-grid`` (every row of the experiment:
    the GPU sweep's n differ from the config's CPU grid) and ``--force`` (a committed earlier check
    of this GPU is replaced)."""
    try:
        src = (ROOT / "runners" / "report.py").read_text()
    except OSError:
        return []
    return [f for f in ("--no-grid", "--force") if f'"{f}"' in src]


def sweep_overrides(experiment: str, out: Path, quick: bool = False) -> list[str]:
    """Hydra overrides of one scaling sweep (``python run.py <these>``)."""
    ns = N_QUICK if quick else N_FULL
    return [
        f"+experiment={experiment}", "logger=none", "device=cuda", f"task.dtype={DTYPE}", f"task.heads={HEADS}",
        f"task.n=[{','.join(map(str, ns))}]", f"task.exact_max_n={max(ns)}",
        *(METER_QUICK if quick else METER_FULL),
        f"results_dir={out}", f"hydra.sweep.dir={out / 'hydra' / experiment}",
    ]


def compile_target(capability: str | None) -> str | None:
    """``sm_90`` for a device of capability ``9.0``; None (every default target) when unknown."""
    if not capability:
        return None
    major, _, minor = capability.partition(".")
    return f"sm_{int(major) * 10 + int(minor or 0)}"


def steps(out: Path, *, quick: bool = False, capability: str | None = None,
          compile_timeout_s: float = COMPILE_TIMEOUT_S, tests_timeout_s: float = TESTS_TIMEOUT_S,
          sweep_timeout_s: float = SWEEP_TIMEOUT_S, report_timeout_s: float = REPORT_TIMEOUT_S) -> list[Step]:
    """The check's steps; ``capability`` (``"9.0"``) picks the compile step's target."""
    py = sys.executable
    target = compile_target(capability)
    workers = min(DEVICE_COMPILE_WORKERS, os.cpu_count() or 1)
    compile_ = Step("compile", f"every Triton kernel x config compiled for {target or 'every target'} "
                               "(registers, spills, shared memory)",
                    [py, "-m", "attnbench.runners.gpu_check", "--compile", "--out-dir", str(out),
                     "--workers", str(workers), *(["--targets", target] if target else [])], compile_timeout_s)
    tests = Step("kernel_tests", "Triton kernels vs PyTorch (pytest -m cuda tests/test_cuda_kernels.py)",
                 [py, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider",
                  f"--junitxml={out / 'kernel_tests.xml'}", "tests/test_cuda_kernels.py"], tests_timeout_s)
    ns = ", ".join(f"{n // 1024}k" for n in (N_QUICK if quick else N_FULL))
    sweeps = [Step(e, f"sweep {e} (bf16, {HEADS} heads, n = {ns})", [py, "run.py", *sweep_overrides(e, out, quick)],
                   sweep_timeout_s) for e in EXPERIMENTS]
    reports = [Step(f"report_{e}", f"report {e} (tables, figures)",
                    [py, "-m", "attnbench.runners.report", "--experiment", e, "--results-dir", str(out), "--out-dir", str(out),
                     *report_flags()], report_timeout_s) for e in EXPERIMENTS]
    return [compile_, tests, *sweeps, *reports]


def run_step(step: Step, log_path: Path) -> Result:
    """Run one step, its stdout and stderr going to ``log_path`` as they come; on timeout the step's
    whole process group is killed."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
    t0 = time.perf_counter()
    with open(log_path, "w") as log:
        log.write("$ " + " ".join(step.cmd) + "\n")
        log.flush()
        try:
            proc = subprocess.Popen(step.cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        except OSError as exc:
            log.write(f"could not start: {exc}\n")
            return Result(step.name, "error", None, time.perf_counter() - t0, log_path.name, step.cmd)
        try:
            rc = proc.wait(timeout=step.timeout_s)
            status = "passed" if rc == 0 else "failed"
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            rc = proc.wait()
            status = "timeout"
            log.write(f"\n[gpu_check] killed after the step's timeout of {step.timeout_s:g} s\n")
        except BaseException:  # Ctrl-C (the step has its own session): do not leave it running
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise
    return Result(step.name, status, rc, time.perf_counter() - t0, log_path.name, step.cmd)


def check_outputs(res: Result, out: Path) -> Result:
    """A zero exit is not enough: the compile report must exist with every row compiled, unspilled and
    within the limits, the kernel tests must have passed some test (not all skipped, which
    is what a machine where Triton or CUDA does not work gives), and a sweep (which keeps going past
    failed runs and exits 0) passes only when its rows have no error: ``partial`` with some error
    rows, ``failed`` with no ok row at all."""
    if res.status != "passed":
        return res
    if res.name == "compile":
        try:
            rows = kernel_compile.load_rows(out / "compile.csv")
        except (OSError, ValueError) as exc:
            res.status, res.note = "failed", f"no readable compile.csv ({type(exc).__name__})"
            return res
        if not rows or not all(r.ok for r in rows):
            res.status, res.note = "failed", kernel_compile.summary(rows)
    elif res.name == "kernel_tests":
        counts = junit_counts(out / "kernel_tests.xml")
        if counts is None or counts["passed"] == 0 or counts["failed"]:
            res.status = "failed"
            res.note = "no kernel_tests.xml" if counts is None else junit_summary(out / "kernel_tests.xml")
    elif res.name in EXPERIMENTS:
        cov = sweep_coverage(out, res.name)
        ok = sum(len(c["ok"]) for c in cov.values())
        errors = sum(len(c["error"]) for c in cov.values())
        if ok == 0:
            res.status, res.note = "failed", "no ok row"
        elif errors:
            res.status, res.note = "partial", "some runs have error rows"
    return res


# --------------------------------------------------------------------------- the folder
def write_json(path: Path, data) -> None:
    replace_atomic(path, lambda tmp: Path(tmp).write_text(json.dumps(data, indent=2, default=str) + "\n"))


def sweep_methods(experiment: str) -> list[str]:
    """The methods an experiment sweeps over (its ``hydra.sweeper.params.method``)."""
    import yaml

    try:
        raw = yaml.safe_load((ROOT / "conf" / "experiment" / f"{experiment}.yaml").read_text()) or {}
        spec = raw["hydra"]["sweeper"]["params"]["method"]
    except (OSError, KeyError, TypeError, yaml.YAMLError):
        return []
    return [m.strip() for m in str(spec).split(",") if m.strip()]


def sweep_coverage(out: Path, experiment: str) -> dict[str, dict[str, list]]:
    """Per method of an experiment, from ``<out>/runs/*.json``: the n with an ok row, and the errors
    (``n = 4096, 8192: message``; ``every n`` for a run that failed before its first n); methods of
    the sweep without any row map to empty lists (not reached)."""
    cov: dict[str, dict[str, list]] = {m: {"ok": [], "error": []} for m in sweep_methods(experiment)}
    for f in sorted((out / "runs").glob("*.json")):
        try:
            rows = json.loads(f.read_text()).get("rows", [])
        except (OSError, ValueError, AttributeError):
            continue
        for r in rows:
            if r.get("experiment") != experiment or not r.get("method"):
                continue
            c = cov.setdefault(r["method"], {"ok": [], "error": []})
            if r.get("status") == "ok":
                c["ok"].append(r.get("n"))
            else:
                c["error"].append((r.get("n"), " ".join(str(r.get("error") or r.get("status")).split())[:100]))
    for c in cov.values():
        c["ok"] = sorted({n for n in c["ok"] if n is not None})
        by_msg: dict[str, list] = {}
        for n, msg in c["error"]:
            by_msg.setdefault(msg, []).append(n)
        c["error"] = [f"{_ns(ns)}: {msg}" for msg, ns in by_msg.items()]
    return cov


def _ns(ns: list) -> str:
    known = sorted({n for n in ns if n is not None})
    return "n = " + ", ".join(map(str, known)) if known else "every n"


def coverage_lines(out: Path, experiment: str) -> list[str]:
    cov = sweep_coverage(out, experiment)
    if not cov:
        return []
    lines = ["", f"Rows of {experiment} (`runs/`):", "", "| method | n with rows | errors |", "|---|---|---|"]
    for m, c in cov.items():
        ok = ", ".join(map(str, c["ok"])) or ("none" if c["error"] else "none (not reached)")
        lines.append(f"| {m} | {ok} | {'; '.join(c['error']).replace('|', '/')} |")
    return lines


def junit_counts(path: Path) -> dict | None:
    """Test counts from pytest's JUnit XML: tests, passed, failed (errors included), skipped, failed_names."""
    import xml.etree.ElementTree as ET

    try:
        cases = list(ET.parse(path).getroot().iter("testcase"))
    except (OSError, ET.ParseError):
        return None
    failed = [c.get("name") for c in cases if any(e.tag in ("failure", "error") for e in c)]
    skipped = sum(any(e.tag == "skipped" for e in c) for c in cases)
    return {"tests": len(cases), "passed": len(cases) - len(failed) - skipped, "failed": len(failed),
            "skipped": skipped, "failed_names": failed}


def junit_summary(path: Path) -> str | None:
    """``18 tests: 16 passed, 1 failed, 1 skipped (failed: name, ...)``, or None without the file."""
    c = junit_counts(path)
    if c is None:
        return None
    text = f"{c['tests']} tests: {c['passed']} passed, {c['failed']} failed, {c['skipped']} skipped"
    return text + (f" (failed: {', '.join(c['failed_names'])})" if c["failed"] else "")


def readme(info: dict, plan: list[Step], results: list[Result], *, quick: bool, started: str, out: Path) -> str:
    by_name = {r.name: r for r in results}
    commit = info.get("git_commit") or "unknown"
    dirty = " (with uncommitted changes)" if info.get("git_dirty") else ""
    ns = N_QUICK if quick else N_FULL
    lines = [
        f"# GPU check: {info.get('gpu', 'unknown GPU')}",
        "",
        f"`attnbench gpu_check{' --quick' if quick else ''}`, started {started}, "
        f"commit `{commit[:12]}`{dirty}.",
        f"torch {info.get('torch')}, triton {info.get('triton')}, CUDA {info.get('cuda')}, "
        f"driver {info.get('driver')}; compute capability {info.get('capability')}, "
        f"{info.get('memory_gib')} GiB (all in `versions.json`).",
        "",
        f"Scaling sweeps: {DTYPE}, batch 1, {HEADS} heads, head dim 64, n = {', '.join(map(str, ns))}; "
        "exact = SDPA (its flash backend for bf16 on CUDA); "
        + ("one timed sample per measurement (smoke run: timings are not evidence)." if quick
           else "meter: at least 3 samples, 0.2 s to 5 s per measurement."),
        "",
        "| step | status | seconds | log |",
        "|---|---|---|---|",
    ]
    for s in plan:
        r = by_name.get(s.name)
        if r is None:
            lines.append(f"| {s.title} | not run yet | | |")
        else:
            status = f"{r.status} ({r.note})" if r.note else r.status
            lines.append(f"| {s.title} | {status} | {r.seconds:.0f} | `logs/{r.log}` |")
    bad = [r for r in results if r.status != "passed"]
    lines.append("")
    if len(results) < len(plan):
        lines.append(f"In progress (or stopped): {len(results)}/{len(plan)} steps done.")
    elif bad:
        lines.append("Not passed: " + ", ".join(f"{r.name} ({r.status})" for r in bad) + "; see their logs.")
    else:
        lines.append("Every step passed.")
    if "compile" in by_name:
        try:
            lines += ["", f"Compile report (`compile.md`): "
                          f"{kernel_compile.summary(kernel_compile.load_rows(out / 'compile.csv'))}."]
        except (OSError, ValueError):
            pass  # no (readable) report: the step's status says so
    tests = junit_summary(out / "kernel_tests.xml") if "kernel_tests" in by_name else None
    if tests:
        lines += ["", f"Kernel tests (`kernel_tests.xml`): {tests}."]
    for e in EXPERIMENTS:
        if e in by_name:
            lines += coverage_lines(out, e)
    made = sorted(p.relative_to(out).as_posix() for p in out.glob("*_table.md")) + (
        ["figures/"] if (out / "figures").is_dir() else [])
    if made:
        lines += ["", "Tables and figures: " + ", ".join(f"`{m}`" for m in made) + "."]
    return "\n".join(lines) + "\n"


def record(out: Path, info: dict, plan: list[Step], results: list[Result], *, quick: bool, started: str) -> None:
    write_json(out / "steps.json", [asdict(r) for r in results])
    (out / "README.md").write_text(readme(info, plan, results, quick=quick, started=started, out=out))


# --------------------------------------------------------------------------- main
def compile_report(out_dir: Path, targets: str | None, workers: int) -> int:
    """``--compile``: the compile report into ``out_dir``; 0 when every row is fine, 1 otherwise, 2 on bad input."""
    try:
        caps = None if targets is None else [kernel_compile.parse_target(t) for t in targets.split(",") if t.strip()]
        rows = kernel_compile.report(out_dir, capabilities=caps, workers=workers)
    except (ValueError, RuntimeError) as exc:
        print(f"[compile] {exc}", file=sys.stderr)
        return 2
    return 0 if all(r.ok for r in rows) else 1


def main(argv: list[str] | None = None, *, runner: Callable[[Step, Path], Result] = run_step) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out-dir", default="results/gpu",
                    help="results go to <out-dir>/<gpu name>/ (default results/gpu)")
    ap.add_argument("--quick", action="store_true", help="n = 4k … 16k, one sample per measurement (smoke run)")
    ap.add_argument("--compile", action="store_true",
                    help="no GPU needed: compile every kernel x config for NVIDIA targets -> <out-dir>/compile.md|csv")
    ap.add_argument("--targets", default=None,
                    help="with --compile: comma-separated, e.g. sm_80,sm_90 (default: "
                         + ",".join(kernel_compile.TARGETS[c][0] for c in kernel_compile.DEFAULT_TARGETS) + ")")
    ap.add_argument("--workers", type=int, default=kernel_compile.WORKERS,
                    help=f"with --compile: compile processes (default {kernel_compile.WORKERS})")
    ap.add_argument("--compile-timeout-s", type=float, default=COMPILE_TIMEOUT_S)
    ap.add_argument("--tests-timeout-s", type=float, default=TESTS_TIMEOUT_S)
    ap.add_argument("--sweep-timeout-s", type=float, default=SWEEP_TIMEOUT_S, help="per scaling sweep")
    ap.add_argument("--report-timeout-s", type=float, default=REPORT_TIMEOUT_S, help="per report")
    args = ap.parse_args(argv)
    if args.compile:
        return compile_report(Path(args.out_dir), args.targets, args.workers)
    if not cuda_available():
        print(NOTICE)
        return 0

    started = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    info = device_info()
    given = sys.argv[1:] if argv is None else argv
    info.update(started=started, command=" ".join(["attnbench gpu_check", *given]))
    out = (Path(args.out_dir) / slug(info["gpu"])).resolve()
    (out / "logs").mkdir(parents=True, exist_ok=True)
    (out / "kernel_tests.xml").unlink(missing_ok=True)  # a stale one would be read as this run's
    write_json(out / "versions.json", info)
    (out / "compile.csv").unlink(missing_ok=True)
    plan = steps(out, quick=args.quick, capability=info.get("capability"), compile_timeout_s=args.compile_timeout_s,
                 tests_timeout_s=args.tests_timeout_s, sweep_timeout_s=args.sweep_timeout_s,
                 report_timeout_s=args.report_timeout_s)
    print(f"[gpu_check] {info['gpu']}: {len(plan)} steps, results in {out}", flush=True)
    results: list[Result] = []
    record(out, info, plan, results, quick=args.quick, started=started)
    for step in plan:
        print(f"[gpu_check] {step.name}: {step.title} (timeout {step.timeout_s:g} s) ...", flush=True)
        try:
            res = runner(step, out / "logs" / f"{step.name}.log")
        except Exception as exc:  # the runner itself broke: record it and go on
            res = Result(step.name, "error", None, 0.0, f"{step.name}.log", step.cmd, f"{type(exc).__name__}: {exc}")
            print(f"[gpu_check] {step.name}: {type(exc).__name__}: {exc}", flush=True)
        results.append(check_outputs(res, out))
        record(out, info, plan, results, quick=args.quick, started=started)
        note = f" ({res.note})" if res.note else ""
        print(f"[gpu_check] {step.name}: {res.status}{note} in {res.seconds:.0f} s (log: {out / 'logs' / res.log})",
              flush=True)
    bad = [r.name for r in results if r.status != "passed"]
    print(f"[gpu_check] {'not passed: ' + ', '.join(bad) if bad else 'every step passed'}; see {out / 'README.md'}")
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
