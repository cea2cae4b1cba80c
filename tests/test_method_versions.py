"""Method versions (as lm-evaluation-harness versions its tasks): a golden-output test per method.

Every method carries an integer ``version`` (``AttentionMethod.version``) that changes whenever its
fixed-seed outputs change; rows record it as ``method_version``, and the front page
(``attnbench site``) marks a committed table stale when its rows predate the method's version.
This test keeps the versions honest: for every method (built-ins and installed plugins) it computes
a digest of the fixed-seed outputs on small inputs and compares it with ``tests/golden/methods.json``.
When the outputs move, the failure says to bump ``version`` and regenerate the golden (the site dates the
new version from the commit that introduces the ``version = N`` line; ``version_commits`` names the
commits of versions older than the attribute):

    python tests/test_method_versions.py --regen NAME [NAME ...]

The digest of an output O (float64): ‖O‖_F and four projections ⟨O, Wᵢ⟩/‖Wᵢ‖_F on fixed Gaussian
directions, per case (``CASES``, where the method supports it): bidirectional and causal calls on Gaussian
q, k, v of shape (1, 2, 256, 16), seed 0, the same with q and k × 4 (peaked scores), cross-attention (96
queries) and a longer sequence (640, not a power of two); and, for methods with a KV-cache ``compress``,
attention over a 32-entry compressed cache.
Knobs: the approximating knobs of ``tests/test_conformance.py::CASES`` (plugins: ``PLUGIN_KNOBS``),
stored with the golden so a later edit of CASES does not move it. Tolerance: |Δ| ≤ 1e-9·‖O‖_F
(float64: a million times the rounding differences between BLAS builds, far below any change of
algorithm).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

GOLDEN = Path(__file__).resolve().parent / "golden" / "methods.json"
N, D = 256, 16
RTOL = 1e-9
REGEN = "python tests/test_method_versions.py --regen"
# plugins' approximating knobs (built-ins take theirs from test_conformance.CASES)
PLUGIN_KNOBS: dict[str, dict[str, Any]] = {
    "topk": {"k": 32},
    "performer_pytorch": {"nb_features": 32},
    "reformer_pytorch": {"bucket_size": 32, "n_hashes": 2},
    "nystrom_attention": {"num_landmarks": 16},
}


# (case, queries, keys, factor on q and k, causal): plain calls, large logits, cross-attention, a longer
# sequence that is not a power of two (partial blocks, bins and tiles)
CASES = [("bidirectional", N, N, 1.0, False), ("causal", N, N, 1.0, True), ("peaked", N, N, 4.0, False),
         ("peaked_causal", N, N, 4.0, True), ("cross", 96, N, 1.0, False), ("long", 640, 640, 1.0, False),
         ("long_causal", 640, 640, 1.0, True)]


def _inputs(nq: int, nk: int, factor: float = 1.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, n, D, generator=g, dtype=torch.float64) for n in (nq, nk, nk))
    return q * factor, k * factor, v


def summary(out: torch.Tensor) -> list[float]:
    """‖O‖_F and four normalised projections of O on fixed Gaussian directions (seed 1)."""
    out = out.detach().double().cpu()
    g = torch.Generator().manual_seed(1)
    dirs = [torch.randn(out.shape, generator=g, dtype=torch.float64) for _ in range(4)]
    return [float(out.norm())] + [float((out * w).sum() / w.norm()) for w in dirs]


def digest(methods_module: Any, name: str, knobs: dict[str, Any]) -> dict[str, list[float]]:
    """Case -> summary of ``name``'s fixed-seed outputs (``methods_module``: the registry to build from,
    so an older checkout can be digested the same way)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one summation order on every machine (restored below)
    try:
        return _digest(methods_module, name, knobs)
    finally:
        torch.set_num_threads(threads)


def _digest(methods_module: Any, name: str, knobs: dict[str, Any]) -> dict[str, list[float]]:
    m = methods_module.build({"name": name, **knobs})
    cases: dict[str, list[float]] = {}
    for case, nq, nk, factor, causal in CASES:
        supported = m.supports_causal if causal else m.supports_bidirectional
        if not supported or (nq != nk and not getattr(m, "supports_cross", True)):
            continue
        q, k, v = _inputs(nq, nk, factor)
        m.reseed(0)
        with torch.no_grad():
            cases[case] = summary(m(q, k, v, causal=causal))
    if type(m).compress is not methods_module.AttentionMethod.compress:
        q, k, v = _inputs(N, N)
        m.reseed(0)
        with torch.no_grad():
            kc, vc, logw = m.compress(k, v, 32)
            p = torch.softmax(q @ kc.transpose(-1, -2) * D ** -0.5 + logw.unsqueeze(-2), dim=-1)
        cases["compress"] = summary(p @ vc)
    return cases


def golden() -> dict[str, Any]:
    return json.loads(GOLDEN.read_text()) if GOLDEN.is_file() else {}


def method_names() -> list[str]:
    """Every method the registry lists (built-ins and installed plugins), except peers whose package is missing."""
    from attnbench import methods

    return [n for n in methods.names() if not (getattr(methods.get(n), "missing", None) and methods.get(n).missing())]


def knobs_for(name: str) -> dict[str, Any]:
    from attnbench import methods

    if name in PLUGIN_KNOBS:
        return dict(PLUGIN_KNOBS[name])
    if name in methods.builtin_names():
        from test_conformance import CASES

        return dict(CASES[name][0])
    return {}


def differences(got: dict[str, list[float]], want: dict[str, list[float]]) -> list[str]:
    """The cases whose summaries differ beyond RTOL·‖O‖_F (or that appeared / disappeared)."""
    out = [f"case {c!r} {'added' if c in got else 'gone'}" for c in sorted(set(got) ^ set(want))]
    for c in sorted(set(got) & set(want)):
        tol = RTOL * max(abs(want[c][0]), 1e-300)
        worst = max(abs(a - b) for a, b in zip(got[c], want[c]))
        if worst > tol:
            out.append(f"{c}: |Δ| = {worst:.3g} > {tol:.3g}")
    return out


@pytest.mark.parametrize("name", method_names())
def test_outputs_match_the_golden_of_the_current_version(name):
    from attnbench import methods

    cls = methods.get(name)
    assert isinstance(cls.version, int) and not isinstance(cls.version, bool) and cls.version >= 1, \
        f"{name}.version must be an integer >= 1, got {cls.version!r}."
    entry = golden().get(name)
    assert entry is not None, f"no golden for {name}: run `{REGEN} {name}` and commit tests/golden/methods.json."
    assert entry["version"] == cls.version, (
        f"{name}: version {cls.version} but the golden is of version {entry['version']}: "
        f"regenerate it with `{REGEN} {name}`.")
    diff = differences(digest(methods, name, entry["knobs"]), entry["cases"])
    assert not diff, (
        f"{name}'s fixed-seed outputs moved ({'; '.join(diff)}) without a version bump: set `version = "
        f"{cls.version + 1}` in its class and run `{REGEN} {name}`.")


def test_version_commits_are_consistent():
    """``version_commits`` names versions in 2..version (version 1 needs no commit), each by a hex hash."""
    from attnbench import methods

    for name in method_names():
        cls = methods.get(name)
        assert set(cls.version_commits) <= set(range(2, cls.version + 1)), \
            f"{name}: version_commits {cls.version_commits} may name versions 2..{cls.version} only."
        assert all(isinstance(c, str) and len(c) >= 7 and int(c, 16) >= 0 for c in cls.version_commits.values()), name


def test_rows_record_the_method_version(tmp_path):
    from attnbench.runners.run import run

    quick = {"warmup": 1, "min_samples": 1, "max_samples": 1, "min_run_s": 0.0, "max_run_s": 0.0, "memory": False}
    rows = run({"method": {"name": "wildcat", "r": 16}, "seed": 0, "device": "cpu", "results_dir": str(tmp_path),
                "meter": quick, "logger": {"name": "none"}, "quiet": True,
                "task": {"name": "fidelity", "source": "gaussian", "n": [64], "heads": 1, "head_dim": 8}})
    from attnbench import methods

    assert rows[0]["status"] == "ok" and rows[0]["method_version"] == methods.get("wildcat").version == 2


def regenerate(names: list[str]) -> None:
    from attnbench import methods

    data = golden()
    for name in names:
        knobs = knobs_for(name)
        data[name] = {"version": methods.get(name).version, "knobs": knobs, "cases": digest(methods, name, knobs)}
        print(f"{name}: version {data[name]['version']}, cases {sorted(data[name]['cases'])}")
    GOLDEN.parent.mkdir(parents=True, exist_ok=True)
    lines = []  # one line per method header and per case: small diffs when one method moves
    for name, e in sorted(data.items()):
        cases = ",\n".join(f"   {json.dumps(c)}: {json.dumps(v)}" for c, v in e["cases"].items())
        lines.append(f' {json.dumps(name)}: {{"version": {e["version"]}, "knobs": {json.dumps(e["knobs"], sort_keys=True)}, '
                     f'"cases": {{\n{cases}}}}}')
    GOLDEN.write_text("{\n" + ",\n".join(lines) + "\n}\n")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    ap = argparse.ArgumentParser(description="regenerate tests/golden/methods.json for the named methods")
    ap.add_argument("--regen", nargs="+", metavar="NAME", required=True, help="method names, or 'all'")
    args = ap.parse_args()
    regenerate(method_names() if args.regen == ["all"] else args.regen)
