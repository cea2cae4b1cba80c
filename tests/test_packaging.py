"""The installed distribution: one namespace (``attnbench``), configs inside it, a CLI that runs
from any directory, the public API, and one name per module."""
import json
import re
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
from conftest import ROOT

import attnbench
from attnbench import cli

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
MAPPED = {"core", "methods", "tasks", "runners", "conf"}


def run(args, cwd, check=True, **kw):
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, check=check, timeout=300, **kw)


def test_package_list_names_every_folder_with_an_init():
    """pyproject's explicit package list (needed by the package-dir mapping) misses no subpackage."""
    found = {"attnbench"}
    for top in MAPPED:
        for init in (ROOT / top).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT).parts
            found.add(".".join(("attnbench", *rel)))
    setup = PYPROJECT["tool"]["setuptools"]
    assert set(setup["packages"]) == found
    assert setup["package-dir"] == {"attnbench": "attnbench", **{f"attnbench.{t}": t for t in MAPPED}}


def test_wheel_holds_only_the_attnbench_namespace_with_every_config(tmp_path):
    run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(tmp_path), str(ROOT)],
        cwd=tmp_path)
    (wheel,) = tmp_path.glob("attnbench-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names} == {"attnbench", f"attnbench-{attnbench.__version__}.dist-info"}
    yamls = {n for n in names if n.endswith(".yaml")}
    expected = {f"attnbench/{p.relative_to(ROOT)}" for p in (ROOT / "conf").rglob("*.yaml")}
    expected |= {f"attnbench/{p.relative_to(ROOT)}" for p in (ROOT / "methods" / "peers" / "conf").rglob("*.yaml")}
    assert yamls == expected
    meta = zipfile.ZipFile(wheel).read(f"attnbench-{attnbench.__version__}.dist-info/entry_points.txt").decode()
    assert "attnbench = attnbench.cli:main" in meta
    assert all(v.strip().startswith("attnbench.") for line in meta.splitlines() if "=" in line
               for v in [line.split("=", 1)[1]])


def test_version_from_the_console_script_and_the_module():
    out = run([sys.executable, "-m", "attnbench", "--version"], cwd=ROOT).stdout
    assert out.strip() == f"attnbench {attnbench.__version__}" == f"attnbench {PYPROJECT['project']['version']}"


def test_every_command_line_runner_is_a_subcommand():
    """A runner module with a ``__main__`` block is reachable as ``attnbench NAME``."""
    mains = {p.stem for p in (ROOT / "runners").glob("*.py") if 'if __name__ == "__main__":' in p.read_text()}
    assert mains == set(cli.COMMANDS)
    for name in cli.COMMANDS:
        assert callable(cli.runner(name))


def test_help_lists_commands_and_an_unknown_word_is_one_line(tmp_path):
    res = run([sys.executable, "-m", "attnbench", "colect"], cwd=tmp_path, check=False)
    assert res.returncode != 0 and "unknown command 'colect'" in res.stderr and "collect" in res.stderr
    assert "Traceback" not in res.stderr


def test_subcommand_runs_a_runner_from_another_directory(tmp_path):
    (tmp_path / "runs").mkdir()
    res = run([sys.executable, "-m", "attnbench", "collect", "--results-dir", str(tmp_path)], cwd=tmp_path, check=False)
    assert res.returncode == 0, res.stdout + res.stderr


def test_job_from_another_directory_writes_results_there(tmp_path):
    """The Hydra job reads the package's configs (not ./conf) and writes under the current directory."""
    res = run([sys.executable, "-m", "attnbench", "method=exact", "task.n=[64]", "task.heads=1", "task.head_dim=8",
               "meter=quick", "logger=none", "quiet=true"], cwd=tmp_path)
    assert "exact" in res.stdout
    (run_file,) = (tmp_path / "results" / "runs").glob("*.json")
    assert (tmp_path / "results" / "hydra").is_dir()
    row = json.loads(run_file.read_text())["rows"][0]
    assert row["attnbench_version"] == attnbench.__version__ and row["git_commit"] not in ("", "unknown")


def test_an_installed_copy_inside_someone_elses_repository_records_no_commit(tmp_path, monkeypatch):
    """Outside its clone (a wheel in site-packages), attnbench never reports the commit of a git
    repository that happens to surround it."""
    from attnbench.runners import run as run_module

    site = tmp_path / "project" / "venv" / "site-packages"
    site.mkdir(parents=True)
    subprocess.run(["git", "init", "-q", str(tmp_path / "project")], check=True)
    monkeypatch.setattr(run_module, "PROJECT_ROOT", site)
    assert run_module.git_commit() == "unknown"
    monkeypatch.setattr(run_module, "PROJECT_ROOT", ROOT)
    assert run_module.git_commit() != "unknown"


def test_failed_run_ends_with_its_error_not_with_suggestions(tmp_path):
    res = run([sys.executable, "run.py", "method=performer", "method.nb_features=-1", "task.n=[64]", "logger=none",
               "meter=quick", f"results_dir={tmp_path}"], cwd=ROOT, check=False)
    out = res.stdout + res.stderr
    assert res.returncode == 1 and "nb_features" in out and "next:" not in out


def test_successful_run_suggests_in_the_form_it_was_run(tmp_path):
    res = run([sys.executable, "run.py", "method=exact", "task.n=[64]", "task.heads=1", "task.head_dim=8", "logger=none",
               "meter=quick", f"results_dir={tmp_path}"], cwd=ROOT)
    assert "next:" in res.stdout and "python run.py -m method=" in res.stdout and "attnbench report" in res.stdout


def test_wandb_offline_runs_land_beside_the_rows_once(tmp_path):
    pytest.importorskip("wandb")
    run([sys.executable, "run.py", "method=exact", "task.n=[64]", "task.heads=1", "task.head_dim=8", "logger=wandb",
         "meter=quick", "quiet=true", f"results_dir={tmp_path}"], cwd=ROOT, env={**__import__("os").environ,
                                                                                 "WANDB_MODE": "offline"})
    assert list((tmp_path / "wandb").glob("offline-run-*")), sorted(p.name for p in tmp_path.rglob("*"))[:20]
    assert not (tmp_path / "wandb" / "wandb").exists()


@pytest.mark.parametrize("bare", ["core", "methods", "tasks", "runners"])
def test_a_bare_top_level_import_is_refused_with_the_namespaced_name(bare):
    res = run([sys.executable, "-c", f"import {bare}"], cwd=ROOT, check=False)
    assert res.returncode != 0 and f"import attnbench.{bare}, not {bare}" in res.stderr


def test_no_source_file_imports_a_bare_top_level_name():
    """ruff's banned-api rule enforces this in CI; this test says the same without ruff."""
    bare = re.compile(r"^\s*(from|import) (core|methods|tasks|runners)\b", re.M)
    files = [p for top in ("attnbench", *MAPPED, "tests", "examples") for p in (ROOT / top).rglob("*.py")]
    offenders = [str(p.relative_to(ROOT)) for p in files if bare.search(p.read_text())]
    assert not offenders and (ROOT / "run.py").read_text().count("from attnbench") == 1


def test_public_api_builds_registered_methods_and_subclasses(tmp_path):
    import torch

    from attnbench import AttentionMethod, build_method, check_positive_int, list_methods

    names = list_methods()
    assert {"exact", "wildcat", "kdeformer", "conv_basis", "latte", "performer"} <= set(names)
    exact = build_method("exact")
    assert isinstance(exact, AttentionMethod)
    q = torch.randn(1, 2, 16, 8)
    torch.testing.assert_close(exact(q, q, q), torch.nn.functional.scaled_dot_product_attention(q, q, q))
    with pytest.raises(ValueError, match="method.r must be a positive integer"):
        build_method("wildcat", r=0)
    assert check_positive_int("k", 3) == 3
    with pytest.raises(AttributeError):
        attnbench.nothing_here  # noqa: B018


def test_example_plugin_uses_only_the_public_api():
    src = "\n".join(p.read_text() for p in (ROOT / "examples").rglob("*.py"))
    imports = set(re.findall(r"^from (attnbench[\w.]*) import", src, re.M))
    assert imports == {"attnbench"}, imports
    toml = tomllib.loads((ROOT / "examples" / "attnbench_topk" / "pyproject.toml").read_text())
    assert any(d.startswith("attnbench") for d in toml["project"]["dependencies"])


def test_schema_import_stays_free_of_torch():
    code = "import sys, attnbench, attnbench.core.schema; print(json.dumps('torch' in sys.modules))"
    out = run([sys.executable, "-c", "import json; " + code], cwd=ROOT).stdout
    assert json.loads(out) is False


def test_metadata_a_registry_accepts():
    project = PYPROJECT["project"]
    for key in ("license", "readme", "classifiers", "urls", "authors", "scripts", "requires-python"):
        assert project.get(key), key
    assert (ROOT / project["license-files"][0]).is_file()
    assert all(re.search(r"[<>=]", d) for d in project["optional-dependencies"]["peers"])
    assert not any("==" in d for extra in project["optional-dependencies"].values() for d in extra)
    assert Path(ROOT / project["readme"]).is_file()
