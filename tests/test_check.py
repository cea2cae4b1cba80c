"""``runners.check`` and the plugin seam: each check fails, by name, for a method broken in that
one way; plugins are found through entry points and import targets, with one-line errors."""
import importlib.util

import pytest
import torch

from attnbench import methods
from attnbench.core import registry
from attnbench.methods.base import AttentionMethod
from attnbench.runners.check import CHECKS, Subject, main, run_check, run_checks

HAS_TOPK = importlib.util.find_spec("attnbench_topk") is not None


def softmax_attention(q, k, v, causal, scale):
    s = torch.matmul(q, k.transpose(-1, -2)) * scale
    if causal:
        n = s.shape[-1]
        s = s.masked_fill(torch.ones(n, n, dtype=torch.bool).triu(1), float("-inf"))
    return torch.softmax(s, dim=-1) @ v


class Good(AttentionMethod):
    """Exact attention written out (a correct method: every check passes)."""

    name = "good_attention"

    @classmethod
    def exact_knobs(cls, n):
        return {}

    def _attend(self, q, k, v, *, causal, scale):
        return softmax_attention(q, k, v, causal, scale)


# one method broken in one way per check
class WrongShape(Good):
    name = "wrong_shape"

    def _attend(self, q, k, v, *, causal, scale):
        return softmax_attention(q, k, q, causal, scale)  # q in place of v: head dim D, not Dv


class MixesHeads(Good):
    name = "mixes_heads"

    def _attend(self, q, k, v, *, causal, scale):
        return softmax_attention(q, k.mean(dim=(0, 1), keepdim=True).expand_as(k), v, causal, scale)


class IgnoresCausal(Good):
    name = "ignores_causal"

    def _attend(self, q, k, v, *, causal, scale):
        return softmax_attention(q, k, v, False, scale)


class GlobalRandomness(Good):
    name = "global_randomness"

    @classmethod
    def exact_knobs(cls, n):
        return None

    def _attend(self, q, k, v, *, causal, scale):
        keep = torch.rand(k.shape[2]) < 0.5  # torch's global generator, not self.generator(device)
        keep[0] = True
        return softmax_attention(q, k[:, :, keep], v[:, :, keep], False, scale)


class OffByOne(Good):
    name = "off_by_one"

    def __init__(self, k: int = 8):
        super().__init__()
        self.k = k

    @classmethod
    def exact_knobs(cls, n):
        return {"k": n}

    def _attend(self, q, k, v, *, causal, scale):
        keep = min(self.k, k.shape[2]) - 1  # drops one key too many
        return softmax_attention(q, k[:, :, :keep], v[:, :, :keep], False, scale)


class NoMaxShift(Good):
    name = "no_max_shift"

    def _attend(self, q, k, v, *, causal, scale):
        w = torch.exp(torch.matmul(q, k.transpose(-1, -2)) * scale)  # overflows for large logits
        if causal:
            w = w.tril()
        return (w @ v) / w.sum(-1, keepdim=True)


class CutsTheGraph(Good):
    name = "cuts_the_graph"

    def _attend(self, q, k, v, *, causal, scale):
        with torch.no_grad():
            return softmax_attention(q, k, v, causal, scale)


class SkipsValidation(Good):
    name = "skips_validation"

    def forward(self, q, k, v, *, causal=False, scale=None):  # no input checks
        return softmax_attention(q, k, v, causal, scale or q.shape[-1] ** -0.5)


BROKEN = {
    "shapes_and_dtypes": WrongShape, "batch_head_independence": MixesHeads, "causal_masking": IgnoresCausal,
    "seed_determinism": GlobalRandomness, "exact_at_full_budget": OffByOne, "large_inputs": NoMaxShift,
    "gradients": CutsTheGraph, "bad_inputs": SkipsValidation,
}


def target(cls):
    return {"name": "target", "target": f"{__name__}:{cls.__name__}"}


def test_every_check_has_a_broken_method():
    assert sorted(BROKEN) == sorted(CHECKS)


def test_a_correct_method_passes_every_check():
    results = run_checks(target(Good), n=64)
    assert [r.status for r in results] == ["pass"] * len(CHECKS), results


@pytest.mark.parametrize("check", sorted(BROKEN))
def test_the_broken_method_fails_the_named_check(check):
    subject = Subject(target(BROKEN[check]), n=64)
    result = run_check(subject, check)
    assert result.status == "fail", result
    assert result.detail


def test_main_exit_codes_and_table(capsys):
    assert main(["method=exact", "--n", "64"]) == 0
    out = capsys.readouterr().out
    assert "conformance check: exact" in out and "8/8 passed" in out
    assert main(["method=target", f"method.target={__name__}:NoMaxShift", "--n", "64"]) == 1
    out = capsys.readouterr().out
    assert "large_inputs" in out and "FAIL" in out and "FAILED: large_inputs" in out
    assert main(["method=no_such_method"]) == 2


class NeedsAMissingPackage(Good):
    name = "needs_a_missing_package"

    def _attend(self, q, k, v, *, causal, scale):
        import no_such_attention_package  # noqa: F401

        return super()._attend(q, k, v, causal=causal, scale=scale)


def test_a_missing_package_stops_the_check_with_one_line(capsys, monkeypatch):
    """An ImportError is not a finding of any one check: the check stops with one line (not one per check)."""
    assert main(["method=target", f"method.target={__name__}:NeedsAMissingPackage", "--n", "64"]) == 2
    out, err = capsys.readouterr()
    assert "PASS" not in out and "FAIL" not in out
    assert err.strip().count("\n") == 0 and "No module named 'no_such_attention_package'" in err
    from attnbench.methods.peers import PeerMethod

    monkeypatch.setattr(PeerMethod, "missing", classmethod(lambda cls: f"{cls.package} is not installed: pip install x"))
    assert main(["method=performer_pytorch", "--n", "64"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.strip() == "[attnbench] check: performer_pytorch: performer-pytorch is not installed: pip install x"


# --- the plugin seam ------------------------------------------------------------------------------------------
@pytest.fixture
def entry_points(monkeypatch):
    """Pretend these ``(name, "module:attr")`` entry points are installed in group attnbench.methods."""
    installed = []
    real = registry.installed_entry_points

    def fake(group):
        return [*real(group), *installed] if group == "attnbench.methods" else real(group)

    monkeypatch.setattr(registry, "installed_entry_points", fake)
    methods.REGISTRY.refresh()
    yield installed
    methods.REGISTRY.refresh()


def test_entry_point_plugin_is_found_built_and_named(entry_points):
    entry_points.append(("good_plugin", f"{__name__}:Good"))
    assert "good_plugin" in methods.names() and "good_plugin" not in methods.builtin_names()
    m = methods.build({"name": "good_plugin"})
    assert m.name == "good_plugin" and isinstance(m, Good)
    assert Good.name == "good_attention"  # the plugin's own class is not renamed
    assert all(r.status == "pass" for r in run_checks("good_plugin", n=64))


def test_entry_point_knobs_are_checked(entry_points):
    entry_points.append(("topk_like", f"{__name__}:OffByOne"))
    assert methods.resolve({"name": "topk_like", "k": 3}) == {"name": "topk_like", "k": 3}
    with pytest.raises(ValueError, match=r"method 'topk_like' has no parameter\(s\) \['r'\]; it accepts \['k'\]"):
        methods.resolve({"name": "topk_like", "r": 3})


@pytest.mark.parametrize("spec, message", [
    ("no_such_package.attention:Mine", r"method plugin 'mine': 'no_such_package.attention:Mine' does not import: "
                                       r"ModuleNotFoundError"),
    ("torch.nn:Linear", r"torch.nn:Linear is not an attention method: a class must subclass"),
    ("torch:add", r"torch:add does not take SDPA's call"),
    (f"{__name__}:softmax_attention", r"has the wrong signature for an attention function: softmax_attention\(q, k, v, "
                                      r"causal, scale\) needs keyword argument\(s\) is_causal"),
    ("torch:__version__", r"is not an attention method: expected an AttentionMethod subclass or a function"),
])
def test_bad_plugins_are_one_line_errors(entry_points, spec, message):
    entry_points.append(("mine", spec))
    with pytest.raises(ValueError, match=message) as err:
        methods.get("mine")
    assert "\n" not in str(err.value)


def test_a_plugin_named_like_a_built_in_is_an_error(entry_points):
    entry_points.append(("exact", f"{__name__}:Good"))
    with pytest.raises(ValueError, match=r"method plugin 'exact' \(.*:Good, entry point group 'attnbench.methods'\) "
                                         r"clashes with the built-in method 'exact'"):
        methods.get("exact")


def test_function_plugins_wrap_sdpa_and_expose_keyword_knobs(entry_points):
    entry_points.append(("sdpa", "torch.nn.functional:scaled_dot_product_attention"))
    q, k, v = (torch.randn(1, 2, 16, 8, generator=torch.Generator().manual_seed(i)) for i in range(3))
    m = methods.build("sdpa")
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    assert torch.equal(m(q, k, v, causal=True), ref)
    assert methods.resolve("sdpa") == {"name": "sdpa"}

    def windowed(q, k, v, is_causal=False, scale=None, window: int = 4):
        n = k.shape[2]
        i = torch.arange(n)
        mask = (i[None, :] > i[:, None] - window) & ((i[None, :] <= i[:, None]) | (not is_causal))
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)

    cls = methods.plugins.function_method("windowed", windowed, "tests:windowed")
    assert methods.resolve({"name": "target", "target": f"{__name__}:Good"})["knobs"] == {}
    w = cls(window=2)
    assert w.hparams() == {"window": 2} and w(q, k, v).shape == q.shape


def test_target_method_runs_in_a_task_and_rows_name_it(tmp_path):
    from attnbench.runners.run import run

    meter = {"max_samples": 1, "min_samples": 1, "warmup": 1, "memory": False, "min_run_s": 0.0}
    cfg = {"method": {**target(Good), "knobs": None}, "task": {"name": "fidelity", "n": [32], "heads": 1, "head_dim": 8},
           "meter": meter, "logger": {"name": "none"}, "results_dir": str(tmp_path), "quiet": True, "seed": 0}
    rows = run(cfg, raise_errors=True)
    assert rows[0]["method"] == "good_attention" and rows[0]["method.target"] == f"{__name__}:Good"
    assert rows[0]["rel_fro_error"] < 1e-5


def test_target_errors_name_the_key():
    with pytest.raises(ValueError, match=r"method=target needs method.target=package.module:attribute"):
        methods.resolve({"name": "target"})
    with pytest.raises(ValueError, match=r"put \['k'\] under method.knobs"):
        methods.resolve({"name": "target", "target": f"{__name__}:OffByOne", "k": 3})
    with pytest.raises(ValueError, match=r"method 'off_by_one' has no parameter\(s\) \['r'\]; it accepts \['k'\] "
                                         r"\(as method.knobs.<name>\)"):
        methods.resolve({"name": "target", "target": f"{__name__}:OffByOne", "knobs": {"r": 1}})
    with pytest.raises(ValueError, match=r"clashes with the built-in method 'wildcat'"):
        methods.resolve({"name": "target", "target": "attnbench.methods.wildcat:WildCat"})


def test_rebuild_keeps_a_targets_knobs():
    m = methods.build({"name": "target", "target": f"{__name__}:OffByOne", "knobs": {"k": 5}})
    m.reseed(3)
    new = methods.rebuild(m, k=7)
    assert isinstance(new, OffByOne) and new.k == 7 and new._seed == 3


@pytest.mark.skipif(not HAS_TOPK, reason="the example plugin is not installed (pip install -e examples/attnbench_topk)")
def test_example_plugin_yaml_and_presets_come_from_hydras_search_path():
    from attnbench.runners.check import compose_method

    assert compose_method(["method=topk"]) == {"name": "topk", "k": 64, "chunk_size": 1024}
    assert compose_method(["method=topk", "preset=scaling_b256"])["k"] == 256
    assert all(r.status != "fail" for r in run_checks({"name": "topk", "k": 16}, n=64))
