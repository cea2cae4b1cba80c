"""The peers experiment's table and figure: each suite baseline beside the public package's
implementation of the same method, on the same inputs (``+experiment=peers``), from saved rows.

    attnbench peers_report [--results-dir results] [--out-dir results]

reads the ok rows of experiment ``peers`` (``runners.collect.load_rows``; of several rows of one
method × source × n, the latest), pairs each suite method with its peer (``PAIRS``) and writes
``peers_table.md`` / ``peers_table.csv`` and ``figures/peers_latency_error.png`` (and .pdf) under
the out dir (default: ``<results-dir>/reports/peers``; the committed copies: ``--out-dir results``).

Speed: ``suite/peer speed`` = the suite row's speed-up over exact ÷ the peer row's. Each row's
latency is timed interleaved with exact SDPA on the same inputs (``task.share_exact=false``), so
the ratio cancels drift of the machine between the two runs; its 95 % interval resamples each
row's (method, exact) sample pairs. > 1: the suite is faster. The target (issue #28) is met when
the suite is not slower (interval reaches 1 or above) at an error at most 5 % above the peer's
(one seed of a randomised method; both errors are shown).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

from attnbench.runners import plots
from attnbench.runners.collect import load_rows

EXPERIMENT = "peers"
PAIRS = {"performer": "performer_pytorch", "reformer": "reformer_pytorch", "nystromformer": "nystrom_attention"}
ERROR_SLACK = 1.05  # the suite's error may exceed the peer's by this factor (one seed) and still count as equal
# structural differences read from the packages' code (methods/peers/*.py docstrings), for the reasons column
NOTES = {
    "performer": "same estimator (features and shifts identical for one projection); the suite evaluates "
                 "cache-sized row blocks, the package the whole N x m feature matrices",
    "reformer": "the package holds every round's scores at once (n_hashes*N*2*bucket per head) and looks back "
                "across rounds; the suite evaluates cache-sized groups of chunks, rounds combined online",
    "nystromformer": "the package builds the two N x L score matrices whole and starts the pseudo-inverse from "
                     "one max over all heads; the suite chunks them (flash-style) and starts per head",
}


def _samples(v) -> np.ndarray:
    if isinstance(v, str):
        v = json.loads(v)
    return np.asarray(v if v is not None else [], dtype=float)


def speed_ratio(suite: pd.Series, peer: pd.Series, resamples: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """(point, lo, hi): suite's speed-up over exact ÷ peer's, with a 95 % bootstrap interval that
    resamples each row's (method, exact) pairs (each list on its own where the counts differ)."""
    rng = np.random.default_rng(seed)

    def boot(row: pd.Series) -> tuple[float, np.ndarray]:
        m, e = _samples(row.get("latency_samples_ms")), _samples(row.get("exact_latency_samples_ms"))
        if m.size == 0 or e.size == 0:
            return float(row["speedup"]), np.full(resamples, float(row["speedup"]))
        point = float(np.median(e) / np.median(m))
        im = rng.integers(0, m.size, size=(resamples, m.size))
        ie = im if m.size == e.size else rng.integers(0, e.size, size=(resamples, e.size))
        return point, np.median(e[ie], axis=1) / np.median(m[im], axis=1)

    (ps, bs), (pp, bp) = boot(suite), boot(peer)
    lo, hi = np.quantile(bs / bp, [0.025, 0.975])
    point = ps / pp
    return point, float(min(lo, point)), float(max(hi, point))


def latest_rows(df: pd.DataFrame) -> pd.DataFrame:
    """The ok rows of the experiment, the latest of each method × source × n."""
    d = df[(df["experiment"] == EXPERIMENT) & (df["status"] == "ok")].copy()
    d["source"] = d["source"].fillna(d.get("task.source"))
    order = pd.to_datetime(d["finished_at"], errors="coerce", utc=True)
    d = d.assign(_t=order).sort_values("_t", kind="stable")
    return d.groupby(["method", "source", "n"], dropna=False).tail(1).drop(columns="_t")


def build_table(rows: pd.DataFrame) -> pd.DataFrame:
    """One line per suite method × source × n that has both the suite's and the peer's row."""
    out = []
    for suite_name, peer_name in PAIRS.items():
        s_rows = rows[rows["method"] == suite_name].set_index(["source", "n"])
        p_rows = rows[rows["method"] == peer_name].set_index(["source", "n"])
        for key in sorted(set(s_rows.index) & set(p_rows.index), key=lambda k: (str(k[0]), int(k[1]))):
            s, p = s_rows.loc[key], p_rows.loc[key]
            ratio, lo, hi = speed_ratio(s, p)
            s_err, p_err = float(s["rel_fro_error"]), float(p["rel_fro_error"])
            met = hi >= 1.0 and s_err <= ERROR_SLACK * p_err
            out.append({
                "method": suite_name, "peer": peer_name, "source": key[0], "n": int(key[1]),
                "suite_rel_fro_error": s_err, "peer_rel_fro_error": p_err,
                "suite_latency_ms": float(s["latency_ms"]), "peer_latency_ms": float(p["latency_ms"]),
                "suite_over_peer_speed": ratio, "speed_lo": lo, "speed_hi": hi,
                "suite_peak_mem_mb": s.get("peak_mem_mb"), "peer_peak_mem_mb": p.get("peak_mem_mb"),
                "target_met": "yes" if met else "no",
                "suite_load_avg_1m": s.get("load_avg_1m"), "peer_load_avg_1m": p.get("load_avg_1m"),
                "git_commit": s.get("git_commit"), "device": s.get("device"),
            })
    return pd.DataFrame(out)


def _mb(v) -> str:
    return "–" if v is None or pd.isna(v) else f"{float(v):.0f}"


def to_markdown(table: pd.DataFrame) -> str:
    head = ("| method | peer | source | n | rel err suite | rel err peer | ms suite | ms peer "
            "| suite/peer speed [95% CI] | MB suite | MB peer | target |")
    lines = [head, "|" + "---|" * 12]
    for r in table.itertuples():
        lines.append(f"| {r.method} | {r.peer} | {r.source} | {r.n} | {r.suite_rel_fro_error:.4f} | "
                     f"{r.peer_rel_fro_error:.4f} | {r.suite_latency_ms:.1f} | {r.peer_latency_ms:.1f} | "
                     f"{r.suite_over_peer_speed:.2f}x [{r.speed_lo:.2f}, {r.speed_hi:.2f}] | "
                     f"{_mb(r.suite_peak_mem_mb)} | {_mb(r.peer_peak_mem_mb)} | {r.target_met} |")
    lines += ["", "suite/peer speed = suite's speed-up over exact ÷ peer's (each row timed interleaved with exact "
              "on the same inputs); > 1: the suite is faster. rel err = ‖Ô−O‖_F/‖O‖_F against exact. Target: "
              f"the suite not slower (interval reaches 1) at an error ≤ {ERROR_SLACK:g}× the peer's.", ""]
    lines += [f"- {m} vs {PAIRS[m]}: {NOTES[m]}." for m in PAIRS if m in set(table["method"])]
    return "\n".join(lines) + "\n"


def figure(table: pd.DataFrame, out_dir: Path, subtitle: str) -> list[Path]:
    """Error vs latency, one panel per pair: the suite filled, the peer hollow, a line joining the
    two rows of one source × n (labelled g = gaussian, s = smollm2, with n)."""
    import matplotlib.pyplot as plt
    from matplotlib import ticker

    pairs = [m for m in PAIRS if m in set(table["method"])]
    fig, axes = plt.subplots(1, len(pairs), figsize=(4.2 * len(pairs), 4.2), layout="constrained", squeeze=False)
    fig.suptitle("Suite baselines vs the public packages: error and latency on the same inputs",
                 x=0.02, ha="left", fontweight="bold")
    for ax, m in zip(axes[0], pairs):
        t = table[table["method"] == m]
        c = plots.color(m)
        for r in t.itertuples():
            ax.plot([r.suite_latency_ms, r.peer_latency_ms], [r.suite_rel_fro_error, r.peer_rel_fro_error],
                    color=c, lw=0.8, alpha=0.6)
            ax.annotate(f"{str(r.source)[0]}{r.n / 1024:g}k", (r.suite_latency_ms, r.suite_rel_fro_error),
                        textcoords="offset points", xytext=(4, 3), fontsize=7)
        ax.plot(t["suite_latency_ms"], t["suite_rel_fro_error"], ls="none", marker=plots.marker(m), color=c,
                ms=7, label=f"{plots.label(m)} (suite)")
        ax.plot(t["peer_latency_ms"], t["peer_rel_fro_error"], ls="none", marker=plots.marker(m), mfc="white",
                color=c, ms=7, label=PAIRS[m])
        ax.set_xlabel(plots.axis_label("latency_ms"))
        ax.set_ylabel(plots.axis_label("rel_fro_error"))
        plots._style_axis(ax, "x", "latency_ms")
        plots._style_axis(ax, "y", "rel_fro_error")
        ax.yaxis.set_minor_formatter(ticker.FormatStrFormatter("%.2g"))  # the errors span less than a decade
        ax.tick_params(axis="y", which="minor", labelsize=7)
        ax.grid(True, which="major", alpha=0.35)
        ax.grid(True, which="minor", alpha=0.12)
        ax.legend(loc="best", fontsize=7.5)
    axes[0][0].set_title(subtitle, loc="left", fontsize=7.5, color="#333333")
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / "peers_latency_error.png", out_dir / "peers_latency_error.pdf"]
    fig.savefig(paths[0], dpi=150)
    fig.savefig(paths[1])
    plt.close(fig)
    return paths


def report(results_dir: str | Path = "results", out_dir: str | Path | None = None) -> list[Path]:
    rows = load_rows(results_dir)
    if "experiment" not in rows or not len(rows):
        raise SystemExit(f"no rows under {results_dir}/runs; run: python run.py +experiment=peers logger=none")
    table = build_table(latest_rows(rows))
    if table.empty:
        raise SystemExit(f"no suite/peer pairs among the ok rows of experiment={EXPERIMENT!r} under {results_dir}/runs "
                         "(the peers need: pip install -e '.[peers]'); run: python run.py +experiment=peers logger=none")
    out = Path(out_dir) if out_dir is not None else Path(results_dir) / "reports" / EXPERIMENT
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "peers_table.csv", index=False)
    loads = pd.to_numeric(pd.concat([table["suite_load_avg_1m"], table["peer_load_avg_1m"]]), errors="coerce")
    device, commit = (next(iter(table[c].dropna()), "?") for c in ("device", "git_commit"))
    sub = f"{device}; load average {loads.min():.1f}–{loads.max():.1f} when the runs started; commit {commit}"
    head = ("# peers: the suite's baselines beside the public packages' implementations\n\n"
            f"{sub}. Made by `python run.py +experiment=peers logger=none` (needs `pip install -e '.[peers]'`) "
            "then `attnbench peers_report --out-dir results`.\n\n")
    (out / "peers_table.md").write_text(head + to_markdown(table))
    return [out / "peers_table.csv", out / "peers_table.md", *figure(table, out / "figures", sub)]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results-dir", default="results")
    ap.add_argument("--out-dir", default=None, help="default: <results-dir>/reports/peers (committed: results)")
    args = ap.parse_args(argv)
    for p in report(args.results_dir, args.out_dir):
        print(f"[peers] wrote {p}")


if __name__ == "__main__":
    main()
