"""Knob checks by kind, generated: every declared knob of every method and task yaml, given a value of
the wrong kind (a word for a number, a negative count, a list for a scalar, a non-boolean for a
boolean), is refused before anything is built, with one sentence naming the key."""
import subprocess
import sys

import pytest
import yaml
from conftest import ROOT

from attnbench import methods, tasks

# knobs whose yaml default is a scalar but which take a list too (the yaml comment says so)
LISTS_ALLOWED = {
    ("task", "imagenet", "layers"): "a list of layer labels or module names",
    ("task", "lm", "layers"): "a list of layer indices",
    ("task", "kv_cache", "context_length"): "one row per length",
}


def wrong_values(default):
    """Values of the wrong kind for a knob whose yaml default is ``default``."""
    if isinstance(default, bool):
        return ["maybe", 2, [1, 2]]
    if isinstance(default, int):
        return ["abc", -1, [1, 2]]
    if isinstance(default, float):
        return ["abc", [1.0, 2.0]]
    if isinstance(default, (str, type(None))):
        return [[1, 2]]
    if isinstance(default, list):
        return ["abc"] if default and all(isinstance(x, (int, float)) for x in default) else []
    return []


def cases():
    for group in ("method", "task"):
        for path in sorted((ROOT / "conf" / group).glob("*.yaml")):
            cfg = yaml.safe_load(path.read_text())
            if cfg.get("name") in (None, "target"):
                continue
            for key, default in cfg.items():
                if key == "name":
                    continue
                for value in wrong_values(default):
                    if isinstance(value, list) and (group, cfg["name"], key) in LISTS_ALLOWED:
                        continue
                    yield pytest.param(group, cfg["name"], key, value, id=f"{group}={cfg['name']}-{key}={value!r}")


CASES = list(cases())


def test_the_generated_cases_cover_every_kind():
    assert len(CASES) > 200
    assert {type(c.values[3]) for c in CASES} >= {str, int, list}


@pytest.mark.parametrize("group,name,key,value", CASES)
def test_wrong_kind_is_one_sentence_naming_the_key(group, name, key, value):
    with pytest.raises(ValueError) as info:
        if group == "method":
            methods.build({"name": name, key: value})
        else:
            tasks.resolve({"name": name, key: value})
    msg = str(info.value)
    assert f"{group}.{key}" in msg and "\n" not in msg, msg


def test_command_line_names_the_key_and_exits_nonzero(tmp_path):
    res = subprocess.run([sys.executable, "run.py", "method=performer", "method.redraw=maybe", "task.n=[64]",
                          "logger=none", "meter=quick", f"results_dir={tmp_path}"], cwd=ROOT, capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 1 and "method.redraw must be true or false, got 'maybe'." in res.stdout + res.stderr
