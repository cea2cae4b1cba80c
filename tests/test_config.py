"""Configs that say exactly what ran: presets before the command line, checked task knobs,
normalised run identity, visible unreadable run files, non-finite outputs named."""
import json
import warnings
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from attnbench import tasks
from conftest import ROOT
from attnbench.runners.collect import UnreadableRunFile, load_rows
from attnbench.runners.run import resolve_config, run, run_id_of, run_identity

QUICK = ["logger=none", "meter=quick", "device=cpu"]


def composed(*overrides, tmp_path=None):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=[*QUICK, *overrides], return_hydra_config=True)
    cfg = OmegaConf.to_container(cfg, resolve=False)
    hydra_cfg = cfg.pop("hydra")
    if tmp_path is not None:
        cfg["results_dir"] = str(tmp_path)
    return cfg, hydra_cfg


def test_command_line_wins_over_the_preset_and_the_row_says_so(tmp_path):
    cfg, _ = composed("method=kdeformer", "preset=t2t_layer1", "method.sample_size=100",
                      "task.n=[64]", "task.heads=1", "task.head_dim=8", tmp_path=tmp_path)
    assert cfg["method"]["sample_size"] == 100  # what --cfg job prints
    assert cfg["method"]["bucket_size"] == 32 and cfg["method"]["num_projs"] == 7  # from the preset
    (row,) = run(cfg)
    assert row["status"] == "ok", row["error"]
    assert row["method.sample_size"] == 100 and row["method.bucket_size"] == 32 and row["preset"] == "t2t_layer1"


def test_preset_that_does_not_cover_the_method_is_an_error(tmp_path):
    cfg, _ = composed("method=latte", "preset=biggan", tmp_path=tmp_path)
    with pytest.raises(ValueError, match="preset 'biggan' has no settings for method 'latte'; it covers"):
        resolve_config(cfg)


@pytest.mark.parametrize("key,value,message", [
    ("n", [], "task.n must list at least 1 value(s), got []."),
    ("n", -1, "task.n[0] must be an integer >= 1, got -1."),
    ("n", 0, "task.n[0] must be an integer >= 1, got 0."),
    ("heads", 0, "task.heads must be an integer >= 1, got 0."),
    ("dtype", "int8", "task.dtype must be one of ['float32', 'float64', 'float16', 'bfloat16'], got 'int8'."),
    ("causal", "yes", "task.causal must be true, false or auto, got 'yes'."),
    ("std", -1.0, "task.std must be a number > 0, got -1.0."),
])
def test_bad_task_values_name_the_key_and_range(key, value, message):
    with pytest.raises(ValueError) as err:
        tasks.resolve({"name": "fidelity", key: value})
    assert str(err.value) == message


def test_unknown_task_knob_lists_the_accepted_ones():
    with pytest.raises(ValueError, match=r"task 'fidelity' has no knob\(s\) \['nn'\]; it accepts \["):
        tasks.resolve({"name": "fidelity", "nn": 3})
    with pytest.raises(ValueError, match=r"task 'imagenet' has no knob\(s\) \['layer_overrides_by_method'\]"):
        tasks.resolve({"name": "imagenet", "layer_overrides_by_method": {}})


def test_every_task_yaml_is_complete_and_valid():
    for name in tasks.names():
        resolved = tasks.resolve(name)  # yaml defaults alone pass every check
        assert set(resolved) - {"name"} == set(tasks.get(name).knobs), name


def test_scalar_and_one_element_list_are_the_same_run():
    a, _ = composed("task.n=1024")
    b, _ = composed("task.n=[1024]")
    assert run_id_of(run_identity(resolve_config(a))) == run_id_of(run_identity(resolve_config(b)))
    c, _ = composed("task.n=[1024,2048]")
    assert run_id_of(run_identity(resolve_config(a))) != run_id_of(run_identity(resolve_config(c)))


def test_empty_n_is_an_error_row_and_not_a_finished_run(tmp_path):
    cfg, _ = composed("task.n=[]", tmp_path=tmp_path)
    rows = run(cfg)
    assert rows[-1]["status"] == "error" and "task.n must list at least 1" in rows[-1]["error"]
    (rec,) = [json.loads(p.read_text()) for p in (tmp_path / "runs").glob("*.json")]
    assert rec["status"] == "error"


def test_collect_warns_about_unreadable_run_files(tmp_path):
    cfg, _ = composed("method=exact", "task.n=[32]", "task.heads=1", "task.head_dim=8", tmp_path=tmp_path)
    run(cfg)
    (tmp_path / "runs" / "broken.json").write_text('{"rows": [')
    with pytest.warns(UnreadableRunFile, match="broken.json"):
        df = load_rows(tmp_path)
    assert len(df) == 1 and df.attrs["unreadable"] == [str(tmp_path / "runs" / "broken.json")]


def test_rerun_over_an_unreadable_file_says_so(tmp_path, capsys):
    cfg, _ = composed("method=exact", "task.n=[32]", "task.heads=1", "task.head_dim=8", tmp_path=tmp_path)
    (row,) = run(cfg)
    path = Path(tmp_path) / "runs" / f"{row['run_id']}.json"
    path.write_text("{not json")
    with warnings.catch_warnings():
        run(cfg)
    assert f"run file {path} is unreadable" in capsys.readouterr().out
    assert json.loads(path.read_text())["status"] == "ok"


def test_non_finite_method_output_is_an_error_row_naming_the_method(tmp_path, monkeypatch):
    from attnbench.methods.performer import Performer

    monkeypatch.setattr(Performer, "_attend", lambda self, q, k, v, *, causal, scale: torch.full_like(q, float("nan")))
    cfg, _ = composed("method=performer", "task.n=[16]", "task.heads=1", "task.head_dim=8", tmp_path=tmp_path)
    rows = run(cfg)
    assert rows[-1]["status"] == "error"
    assert rows[-1]["error"] == "FloatingPointError: method performer returned non-finite values at n=16."


def test_budget_above_n_is_kept_and_flagged(tmp_path, capsys):
    cfg, _ = composed("method=wildcat", "method.r=1000000000", "task.n=[32]", "task.heads=1", "task.head_dim=8",
                      tmp_path=tmp_path)
    (row,) = run(cfg)
    assert row["status"] == "ok" and row["budget_clipped"] is True and row["method.r"] == 10**9
    assert row["rel_fro_error"] < 1e-4  # r = n: every key is in the coreset
    assert "budget_clipped=true" in capsys.readouterr().out


def test_experiment_files_sweep_on_their_own():
    for path in sorted((ROOT / "conf" / "experiment").glob("*.yaml")):
        _, hydra_cfg = composed(f"+experiment={path.stem}")
        assert getattr(hydra_cfg["mode"], "name", hydra_cfg["mode"]) == "MULTIRUN", path.name
        assert hydra_cfg["sweeper"]["params"], path.name


def test_a_sweep_skips_a_preset_that_does_not_cover_the_method_and_a_single_run_fails(tmp_path, capsys):
    from attnbench.runners.run import uncovered_preset

    cfg = {"method": {"name": "performer"}, "preset": {"name": "lm_conv_k4"}, "seed": 0, "device": "cpu",
           "results_dir": str(tmp_path), "logger": {"name": "none"}, "meter": {"min_samples": 1, "max_samples": 1},
           "task": {"name": "fidelity", "n": [16], "heads": 1, "head_dim": 4}}
    assert "preset 'lm_conv_k4' has no settings for method 'performer'; it covers ['conv_basis']" in uncovered_preset(cfg)
    assert run(cfg, sweep_dir=str(tmp_path / "sweep")) == []
    assert "skip: preset 'lm_conv_k4' has no settings for method 'performer'" in capsys.readouterr().out
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").glob("*.json"))
    (row,) = run(cfg)  # a single run: an error row naming the pair
    assert row["status"] == "error" and "it covers ['conv_basis']" in row["error"]
    assert uncovered_preset({**cfg, "method": {"name": "conv_basis"}}) is None
