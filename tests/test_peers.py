"""The peers (methods/peers/): public packages' implementations wrapped as plugin methods.

Without the packages (``pip install -e ".[peers]"`` not run) the wrappers still build, a call is
one ImportError line with the install command, and a sweep skips them; with them, they pass the
conformance checks (less the packages' own documented behaviours) and agree with the suite's
methods where the two compute the same thing.
"""
import importlib.metadata
import importlib.util
import sys
from pathlib import Path

import pytest
import torch
import yaml

from attnbench import methods
from conftest import ROOT, rel_err, tolerance
from attnbench.core import registry
from attnbench.core.knobs import preset_knobs, preset_methods
from attnbench.methods.exact import dense_attention
from attnbench.methods.peers import INSTALL, PeerMethod
from attnbench.methods.peers.nystrom_attention import NystromAttentionPeer
from attnbench.methods.peers.performer_pytorch import PerformerPytorch
from attnbench.methods.peers.reformer_pytorch import ReformerPytorch
from attnbench.runners.check import run_checks
from attnbench.runners.run import missing_package, run

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    tomllib = None

PEERS = {  # entry-point name: (class, package's import name, suite method it is compared with)
    "performer_pytorch": (PerformerPytorch, "performer_pytorch", "performer"),
    "reformer_pytorch": (ReformerPytorch, "reformer_pytorch", "reformer"),
    "nystrom_attention": (NystromAttentionPeer, "nystrom_attention", "nystromformer"),
}
SMALL = {"performer_pytorch": {"nb_features": 32}, "reformer_pytorch": {"bucket_size": 32, "n_hashes": 2},
         "nystrom_attention": {"num_landmarks": 16}}


def qkv(heads=2, n=256, d=16, dv=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(1, heads, n, w, generator=g, dtype=torch.float64) for w in (d, d, dv)]


@pytest.fixture
def no_peers(monkeypatch):
    """The peer packages look uninstalled (find_spec finds nothing for them)."""
    real = importlib.util.find_spec
    tops = {mod for _, mod, _ in PEERS.values()}
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a, **k: None if name in tops else real(name, *a, **k))


# --- found as plugins, configured, and skipped without their packages ---------------------------------
def test_entry_points_are_declared_and_installed():
    if tomllib is None:
        pytest.skip("tomllib needs Python 3.11")
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"]["attnbench.methods"]
    assert set(declared) == set(PEERS)
    installed = {ep.name: ep.value for ep in importlib.metadata.entry_points(group="attnbench.methods")}
    missing = {k: v for k, v in declared.items() if installed.get(k) != v}
    assert not missing, f"entry points {missing} are not installed: run pip install -e ."
    for name, (cls, _, _) in PEERS.items():
        assert name not in methods.builtin_names() and issubclass(methods.get(name), cls)


def test_yaml_defaults_equal_constructor_defaults():
    for name in PEERS:
        cfg = yaml.safe_load((ROOT / "methods" / "peers" / "conf" / "method" / f"{name}.yaml").read_text())
        assert methods.resolve(name) == cfg


def test_peers_preset_gives_each_pair_equal_budgets():
    assert sorted(preset_methods("peers")) == sorted([*PEERS, *(s for _, _, s in PEERS.values())])
    perf, perf_p = preset_knobs("peers", "performer"), preset_knobs("peers", "performer_pytorch")
    assert perf["nb_features"] == perf_p["nb_features"] and perf["eps"] == 1e-4 and not perf["redraw"] and not perf_p["redraw"]
    ref, ref_p = preset_knobs("peers", "reformer"), preset_knobs("peers", "reformer_pytorch")
    assert ref["shared_qk"] is True and {k: ref[k] for k in ("bucket_size", "n_hashes")} == ref_p
    assert preset_knobs("peers", "nystromformer") == preset_knobs("peers", "nystrom_attention")


@pytest.mark.parametrize("name", sorted(PEERS))
def test_missing_package_is_one_line_and_a_sweep_skips_it(name, no_peers, tmp_path, capsys):
    cls, _, _ = PEERS[name]
    line = f"{cls.package} is not installed: {INSTALL}"
    assert cls.missing() == line
    m = methods.build(name)  # builds without the package (imported on the first call only)
    with pytest.raises(ImportError) as err:
        m(*qkv(n=64))
    assert str(err.value) == f"{name}: {line}"
    cfg = {"method": {"name": name}, "seed": 0, "device": "cpu", "results_dir": str(tmp_path), "logger": {"name": "none"},
           "meter": {"min_samples": 1, "max_samples": 1, "memory": False},
           "task": {"name": "fidelity", "n": [64], "heads": 1, "head_dim": 8}}
    assert missing_package(cfg) == f"method {name!r}: {line}"
    assert run(cfg, sweep_dir=str(tmp_path / "sweep")) == []
    assert f"[attnbench] skip: method {name!r}: {line}" in capsys.readouterr().out
    assert not (tmp_path / "runs").exists()
    (row,) = run(cfg)  # a single run: an error row with the same line
    assert row["status"] == "error" and line in row["error"]


def test_missing_package_of_a_plugin_that_does_not_import(monkeypatch):
    eps = [("broken_plugin", "no_such_package_for_attnbench.attention:Mine")]
    monkeypatch.setattr(registry, "installed_entry_points", lambda group: eps)
    methods.REGISTRY.refresh()
    try:
        why = missing_package({"method": {"name": "broken_plugin"}})
        assert "broken_plugin" in why and "No module named 'no_such_package_for_attnbench'" in why
        assert missing_package({"method": {"name": "performer"}}) is None  # a built-in
        assert missing_package({"method": {"name": "no_such_method"}}) is None  # resolve_config names it
    finally:
        monkeypatch.undo()
        methods.REGISTRY.refresh()


def test_installed_peers_need_no_skip():
    for name, (cls, mod, _) in PEERS.items():
        if importlib.util.find_spec(mod) is not None:
            assert cls.missing() is None and missing_package({"method": {"name": name}}) is None


# --- with the packages: conformance, seeding, agreement with the suite ---------------------------------
# the packages' own behaviours the checks find (documented in the wrappers' docstrings)
KNOWN_FAILURES = {
    ("nystrom_attention", "batch_head_independence"),  # pinv start: one max over all batch entries and heads
    ("reformer_pytorch", "gradients"),  # shared-QK: k is not used, so it has no gradient
}


@pytest.mark.parametrize("name", sorted(PEERS))
def test_conformance_checks(name):
    pytest.importorskip(PEERS[name][1])
    results = run_checks({"name": name, **SMALL[name]})
    failed = {(name, r.check): r.detail for r in results if r.status == "fail"}
    assert set(failed) == {k for k in KNOWN_FAILURES if k[0] == name}, failed
    if (name, "gradients") in failed:
        assert failed[(name, "gradients")] == "no finite gradient for k."


@pytest.mark.parametrize("name", ["performer_pytorch", "reformer_pytorch"])
def test_seeded_from_the_method_and_global_rng_untouched(name):
    pytest.importorskip(PEERS[name][1])
    q, k, v = qkv()
    m = methods.build({"name": name, **SMALL[name]})
    state = torch.random.get_rng_state()
    m.reseed(3)
    a = m(q, k, v)
    assert torch.equal(torch.random.get_rng_state(), state)
    torch.manual_seed(123)  # the global stream does not matter
    m.reseed(3)
    assert torch.equal(m(q, k, v), a)
    m.reseed(4)
    assert not torch.equal(m(q, k, v), a)


@pytest.mark.parametrize("scale", [0.25, 0.1])
def test_performer_same_projection_same_output(scale):
    """With one projection, the package's FastAttention and the suite's eps = 1e-4 features
    (``blocked_linear_attention``) are the same estimator: equal up to float64 rounding."""
    pytest.importorskip("performer_pytorch")
    from attnbench.methods.performer import blocked_linear_attention, draw_orthogonal_features

    q, k, v = qkv(heads=3, dv=24)
    m = PerformerPytorch(nb_features=64)
    proj = draw_orthogonal_features(64, 16, torch.Generator().manual_seed(1), "cpu", torch.float64)
    m.fast_attention(16, q.device).projection_matrix = proj
    ref = blocked_linear_attention(q, k, v, proj, scale, 1e-4, 100)
    assert rel_err(m(q, k, v, scale=scale), ref) < tolerance(torch.float64, 256)


@pytest.mark.parametrize("n,bucket", [(256, 128), (100, 64)])
def test_reformer_two_chunks_one_round_is_dense_shared_qk_for_both(n, bucket):
    """One round whose sorted order is cut into two chunks: every query sees every key (its own
    chunk and the one before), so the package and the suite's shared-QK reformer both compute
    dense shared-QK attention (keys = normalised queries, self-score -5e4); n = 100 is padded to
    128 by the package's masking and by the suite's."""
    pytest.importorskip("reformer_pytorch")
    q, k, v = qkv(heads=3, n=n, dv=24)
    keys = torch.nn.functional.normalize(q, dim=-1)
    scores = q @ keys.transpose(-1, -2) * 0.3
    scores.diagonal(dim1=-2, dim2=-1).fill_(-5e4)
    ref = torch.softmax(scores, dim=-1) @ v
    suite = methods.build({"name": "reformer", "bucket_size": bucket, "n_hashes": 1, "shared_qk": True})
    peer = methods.build({"name": "reformer_pytorch", "bucket_size": bucket, "n_hashes": 1})
    for m in (suite, peer):
        assert rel_err(m(q, k, v, scale=0.3), ref) < tolerance(torch.float64, n)
    assert rel_err(peer(q, k, v, scale=0.3), dense_attention(q, k, v, scale=0.3)) > 0.1  # k is ignored


def test_nystrom_one_head_equals_the_suite():
    """One head, n a multiple of the landmarks: the package's start of the pseudo-inverse (one max
    over all heads) is the suite's (per head), so the two agree up to float64 rounding."""
    pytest.importorskip("nystrom_attention")
    q, k, v = qkv(heads=1, dv=24)
    for landmarks in (16, 32):
        suite = methods.build({"name": "nystromformer", "num_landmarks": landmarks})(q, k, v, scale=0.2)
        peer = methods.build({"name": "nystrom_attention", "num_landmarks": landmarks})(q, k, v, scale=0.2)
        assert rel_err(peer, suite) < tolerance(torch.float64, 256)


def test_peers_are_not_scanned_as_built_ins():
    assert Path(methods.__file__).parent.joinpath("peers", "__init__.py").is_file()
    assert not set(PEERS) & set(methods.builtin_names())
    assert all(issubclass(cls, PeerMethod) for cls, _, _ in PEERS.values())
