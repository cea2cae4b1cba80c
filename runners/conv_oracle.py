"""The best k-conv basis of real attention, by any algorithm: an exact oracle beside Conv-Basis' recovery.

A k-conv basis (Conv-Basis, arXiv 2405.05219) splits the columns of a lower-triangular n×n matrix into
k contiguous bands; every column c of a band is one vector B shifted down, X̃[c + r, c] = B[r]
(Σ_j conv(b_j, m_j) with nested supports m_1 ≥ … ≥ m_k: B_j = b_1 + … + b_j). With the band starts
fixed, the Frobenius-optimal B of a band is, per diagonal offset r, the mean of the band's entries
X[c + r, c]; so the best k-conv approximation over all starts is an exact dynamic programme over
column bands: cost(a, b) = the squared error of band [a, b) (all O(n²) pairs from prefix sums and
one (n+1)×n·n×(n+1) product, after centring each diagonal, which leaves every cost unchanged), then
F_j(b) = min_a F_{j-1}(a) + cost(a, b) for j = 1 … k_max. The error reported for each k is recomputed
directly from the bands the programme chose (it equals the programme's optimum to rounding).

Targets (each its own oracle, each an exact lower bound for any k-conv approximation of that matrix):

- ``scores``: H = M∘(βQKᵀ), the matrix Conv-Basis' recovery approximates (it copies segment-start
  columns of H, then exponentiates inside the basis); the oracle's output is exp(H̃) applied as the
  method applies it.
- ``weights``: A = exp(H - c)∘M (c the head's largest score), the matrix the method multiplies [V, 1]
  by; exp of the recovery's basis is a k-conv basis of it, so the oracle bounds that too.
- ``probs``: the softmax matrix D⁻¹A (rows sum to 1), the attention matrix proper; its k-conv
  approximation P̃ is applied as any weights are (P̃V divided by P̃'s row sums).

Outputs are computed as the method computes them: one shift per head, weights times [V, 1], each row
divided by its weight sum, sums below float64 eps of the head's largest clamped to that floor (dense,
float64). Output error: ‖Y - Y_exact‖_F / ‖Y_exact‖_F per head against float64 softmax attention.
The reconstruction (``methods/conv_basis.py``, eps = 0.001, T = 8, fallback none, float64 FFTs: the
best configuration at every k of ``conv_basis_knobs``) runs on the same fp32 q, k, v; its basis is
read back from ``recover_conv_basis`` (same call, same result) for its matrix errors.

    attnbench conv_oracle --out-dir results            # SmolLM2 layers 0 / 10 / 20, n = 2,048, 9 heads
    attnbench conv_oracle --n 256 --layers 0 --ks 1 2 4 --out-dir /tmp/x     # a smoke run

Writes ``conv_basis_oracle.csv`` (one row per layer, head and k, with seed, device, versions and git
commit), ``conv_basis_oracle.md`` (per k: mean over layers of each layer's error, the oracle beside
the reconstruction) and ``figures/conv_basis_oracle.png|pdf``.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

TARGETS = ("scores", "weights", "probs")
K_GRID = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256)
RECON_KNOBS = {"eps": 1e-3, "T": 8, "fallback": "none", "fft_dtype": "float64"}  # conf/method/conv_basis.yaml


# ---------------------------------------------------------------------------------------- the oracle

def diagonals(X: Tensor) -> Tensor:
    """(..., n, n) lower-triangular -> its columns from the diagonal down: Y[..., c, r] = X[..., c + r, c]
    (0 where c + r >= n)."""
    n = X.shape[-1]
    c = torch.arange(n, device=X.device)
    rows = c[:, None] + c[None, :]
    return X[..., rows.clamp(max=n - 1), c[:, None].expand(n, n)] * (rows < n)


def undiagonals(Y: Tensor) -> Tensor:
    """Inverse of ``diagonals``: X[..., i, c] = Y[..., c, i - c] for i >= c, 0 above the diagonal."""
    n = Y.shape[-1]
    i = torch.arange(n, device=Y.device)
    off = i[:, None] - i[None, :]
    return Y[..., i[None, :].expand(n, n), off.clamp(min=0)] * (off >= 0)


def valid_mask(n: int, device=None) -> Tensor:
    """(n, n) bool: entry (c, r) of a diagonal view lies inside the matrix (c + r < n)."""
    i = torch.arange(n, device=device)
    return i[:, None] + i[None, :] < n


def band_costs(Y: Tensor) -> Tensor:
    """cost[a, b] (n+1, n+1), float64: the least squared error of fitting columns a … b-1 of the diagonal
    view ``Y`` (n, n) by one shifted vector (its per-offset mean); inf where a >= b."""
    Y = Y.double()
    n = Y.shape[-1]
    r = torch.arange(n, device=Y.device)
    a = torch.arange(n + 1, device=Y.device)
    valid = valid_mask(n, Y.device)
    Z = (Y - Y.sum(0) / (n - r)) * valid  # each diagonal centred: band costs are unchanged, sums stay small
    P = torch.cat([Z.new_zeros(1, n), Z.cumsum(0)]) * (a[:, None] < (n - r)[None, :])  # P[b, r] = Σ_{c<b} Z[c, r]
    R = torch.cat([Z.new_zeros(1), (Z * Z).sum(1).cumsum(0)])  # R[b] = Σ_{c<b} ‖Z[c]‖²
    P2 = P * P
    Qc = torch.cat([P.new_zeros(n + 1, 1), P2.cumsum(1)], 1)  # Qc[a, m + 1] = Σ_{r<=m} P[a, r]²
    cnt = (n - r)[None, :] - a[:, None]  # columns of band [a, ·) reaching offset r past its end: n - r - a
    Wc = torch.cat([P.new_zeros(n + 1, 1), torch.where(cnt > 0, P2 / cnt.clamp(min=1), 0).cumsum(1)], 1)
    col = (n + 1 - a).clamp(max=n)  # for end b: the index of Σ_{r <= n - b}
    # offsets r <= n - b: all b - a columns present, sum P[b, r] - P[a, r] (P[b, r] = 0 beyond n - b);
    # offsets n - b < r < n - a: n - r - a columns, sum -P[a, r]
    fit = (P2.sum(1)[None, :] - 2 * (P @ P.T) + Qc[:, col]) / (a[None, :] - a[:, None]).clamp(min=1)
    fit += Wc[a, n - a][:, None] - Wc[:, col]
    cost = ((R[None, :] - R[:, None]) - fit).clamp(min=0)
    return cost.masked_fill(a[:, None] >= a[None, :], float("inf"))


def best_partitions(cost: Tensor, k_max: int) -> tuple[Tensor, Tensor]:
    """Exact dynamic programme over column bands: (err2 (k_max,), arg (k_max, n+1)); err2[k-1] is the
    least total cost of k bands covering columns 0 … n-1, arg the best last band start per (k, end)."""
    n = cost.shape[0] - 1
    k_max = min(k_max, n)
    ct = cost.T.contiguous()  # ct[b, a]: reductions along contiguous rows; only a < b is finite
    edges = sorted(set(torch.linspace(0, n + 1, 9).long().tolist()))  # row blocks [lo, hi) read columns < hi only
    buf = torch.empty_like(ct)
    F = torch.full((n + 1,), float("inf"), dtype=cost.dtype, device=cost.device)
    F[0] = 0
    err2, arg = [], []
    for _ in range(k_max):
        vals, idx = torch.empty_like(F), torch.empty(n + 1, dtype=torch.long, device=F.device)
        for lo, hi in zip(edges[:-1], edges[1:]):
            blk = torch.add(ct[lo:hi, :hi], F[:hi], out=buf[lo:hi, :hi])
            torch.min(blk, dim=1, out=(vals[lo:hi], idx[lo:hi]))
        F = vals
        err2.append(F[n])
        arg.append(idx)
    return torch.stack(err2), torch.stack(arg)


def band_starts(arg: Tensor, k: int) -> Tensor:
    """The k band starts (ascending, the first 0) of the optimum with k bands, traced back through ``arg``."""
    b, out = arg.shape[1] - 1, []
    for j in range(k - 1, -1, -1):
        b = int(arg[j, b])
        out.append(b)
    return torch.tensor(out[::-1], dtype=torch.long)


def band_means(Y: Tensor, starts: Tensor) -> Tensor:
    """B (k, n): per band and diagonal offset, the mean of the band's entries (0 past the band's reach):
    the Frobenius-optimal k-conv basis with these band starts, as cumulative vectors B_j."""
    n = Y.shape[-1]
    r = torch.arange(n, device=Y.device)
    S = torch.cat([Y.new_zeros(1, n), (Y * valid_mask(n, Y.device)).cumsum(0)])
    a = starts.to(Y.device)
    b = torch.cat([a[1:], a.new_tensor([n])])
    end = torch.minimum(b[:, None], (n - r)[None, :])  # (k, n): columns of band j reaching offset r end here
    N = end - a[:, None]
    num = S.gather(0, end) - S[a]
    return torch.where(N > 0, num / N.clamp(min=1), 0)


def basis_view(starts: Tensor, B: Tensor, n: int) -> Tensor:
    """Diagonal view of Σ_j conv(b_j, m_j) from band starts (k,) ascending (unused slots = n) and cumulative
    vectors B (k, n): Ỹ[c, r] = B[band of c, r] (0 where c + r >= n)."""
    seg = torch.searchsorted(starts.to(B.device), torch.arange(n, device=B.device), right=True) - 1
    return B[seg] * valid_mask(n, B.device)


def normalized_output(W: Tensor, v: Tensor) -> Tensor:
    """As the method evaluates weights: (W·V) / (W·1) per row, row sums below float64 eps of the largest
    clamped to that floor. W (n, n) non-negative lower-triangular, v (n, dv)."""
    den = W.sum(1)
    floor = den.max().clamp_min(torch.finfo(W.dtype).tiny) * torch.finfo(W.dtype).eps
    return (W @ v) / torch.maximum(den, floor)[:, None]


def exp_view(Y: Tensor, shift: Tensor | None = None) -> Tensor:
    """exp(Y - shift) inside the matrix, 0 outside (diagonal view); ``shift``: Y's largest entry unless given
    (one shift per head, as the method)."""
    valid = valid_mask(Y.shape[-1], Y.device)
    shift = Y.masked_fill(~valid, -torch.inf).max() if shift is None else shift
    return torch.exp(Y - shift) * valid


def target_view(name: str, Hd: Tensor) -> Tensor:
    """Diagonal view of target ``name`` from the diagonal view of the masked scores ``Hd``."""
    if name == "scores":
        return Hd
    if name == "weights":
        return exp_view(Hd)
    if name == "probs":
        H = undiagonals(Hd)
        mask = torch.ones_like(H, dtype=torch.bool).tril()
        return diagonals(torch.softmax(H.masked_fill(~mask, -torch.inf), dim=-1))
    raise ValueError(f"target must be one of {TARGETS}, got {name!r}.")


def output_of(name: str, Yt: Tensor, v: Tensor) -> Tensor:
    """Attention output of an approximation (diagonal view ``Yt``) of target ``name``: scores are
    exponentiated with one shift per head (the method's), weights and probabilities used as they are."""
    return normalized_output(undiagonals(exp_view(Yt) if name == "scores" else Yt), v)


def rel(a: Tensor, b: Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


# ---------------------------------------------------------------------------------------- one layer

def reconstruction(q: Tensor, k: Tensor, v: Tensor, scale: float, kk: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Conv-Basis (``RECON_KNOBS``, k = kk) on (1, H, n, d) inputs: output (H, n, dv) and, from its recovery,
    starts (H, kk), B (H, kk, n) and overflow (H,) (heads that needed more than kk terms)."""
    from attnbench import methods
    from attnbench.methods.conv_basis import qk_entries, recover_conv_basis

    m = methods.build({"name": "conv_basis", "k": kk, **RECON_KNOBS})
    with torch.no_grad():
        y = m(q, k, v, causal=True, scale=scale)[0]
    _, Hh, n, d = q.shape
    starts, B, _, overflow = recover_conv_basis(
        qk_entries(q.reshape(Hh, n, d), k.reshape(Hh, n, d), scale), n, kk, eps=RECON_KNOBS["eps"],
        T=min(RECON_KNOBS["T"], n), num_heads=Hh, device=q.device, dtype=q.dtype, fallback=RECON_KNOBS["fallback"])
    return y.double(), starts, B.double(), overflow


def layer_rows(q: Tensor, k: Tensor, v: Tensor, scale: float, ks: list[int], targets: list[str],
               log=print) -> list[dict[str, Any]]:
    """Rows (one per head and k) of the oracle for every target beside the reconstruction, for one layer's
    q, k, v (1, H, n, d)."""
    _, Hh, n, _ = q.shape
    qd, kd, vd = q[0].double(), k[0].double(), v[0].double()
    mask = torch.ones(n, n, dtype=torch.bool).tril()
    rows: dict[tuple[int, int], dict[str, Any]] = {}
    recon = {}
    for kk in ks:
        t0 = time.perf_counter()
        recon[kk] = reconstruction(q, k, v, scale, kk)
        log(f"  reconstruction k={kk}: {time.perf_counter() - t0:.1f} s")
    for h in range(Hh):
        H = (qd[h] @ kd[h].T * scale).masked_fill(~mask, 0)
        y_exact = torch.softmax(H.masked_fill(~mask, -torch.inf), dim=-1) @ vd[h]
        Hd = diagonals(H)
        views = {t: target_view(t, Hd) for t in set(targets) | {"scores", "weights"}}
        for kk in ks:
            y, starts, B, overflow = recon[kk]
            Yr = basis_view(starts[h], B[h], n)
            Wr = exp_view(Yr, Hd.masked_fill(~valid_mask(n), -torch.inf).max())  # on the weights target's shift
            rows[h, kk] = {
                "head": h, "k": kk, "output_sq_norm": float(y_exact.square().sum()),
                "recon_output_error": rel(y[h], y_exact),
                "recon_scores_matrix_error": rel(Yr, Hd), "recon_weights_matrix_error": rel(Wr, views["weights"]),
                "recon_dense_output_error": rel(output_of("scores", Yr, vd[h]), y_exact),  # this module's evaluation
                "recon_segments_used": int((starts[h] < n).sum()),
                "recon_overflow": bool(overflow[h]),
            }
        for t in targets:
            t0 = time.perf_counter()
            Y = views[t]
            err2, arg = best_partitions(band_costs(Y), max(ks))
            norm = float(Y.norm())
            for kk in ks:
                s = band_starts(arg, min(kk, n))
                Yt = basis_view(s, band_means(Y, s), n)
                e = rel(Yt, Y)
                rows[h, kk].update({
                    f"oracle_{t}_matrix_error": e,
                    f"oracle_{t}_dp_error": float(err2[min(kk, n) - 1].clamp(min=0).sqrt()) / norm,
                    f"oracle_{t}_output_error": rel(output_of(t, Yt, vd[h]), y_exact),
                })
            log(f"  head {h} target {t}: {time.perf_counter() - t0:.1f} s")
    return [rows[key] for key in sorted(rows)]


# ---------------------------------------------------------------------------------------- runner

def provenance(seed: int) -> dict[str, Any]:
    from attnbench.runners.run import device_name, provenance as base

    return {"seed": seed, "device": device_name(torch.device("cpu")), "numpy_version": np.__version__, **base()}


def run(args) -> pd.DataFrame:
    from attnbench.tasks.datasets.sources import make_qkv

    torch.set_num_threads(args.threads)
    base = provenance(args.seed)  # after set_num_threads: the device names the thread count
    out = []
    captured = {layer: make_qkv({"source": "smollm2", "layer": layer, "batch": 1, "cache_dir": args.cache_dir},
                                args.n, args.seed, torch.device("cpu"), torch.float32) for layer in args.layers}
    for layer, data in captured.items():
        t0 = time.perf_counter()
        print(f"[conv_oracle] layer {layer}: q {tuple(data['q'].shape)}, scale {data['scale']}", flush=True)
        rows = layer_rows(data["q"], data["k"], data["v"], float(data["scale"]), args.ks, args.targets,
                          log=lambda s: print(f"[conv_oracle] layer {layer}{s}", flush=True))
        for r in rows:
            out.append({**base, "source": "smollm2", "dtype": "float32", "n": args.n, "layer": layer,
                        "scale": float(data["scale"]), **r, "wall_s": time.perf_counter() - t0})
    return pd.DataFrame(out)


def command(rows: pd.DataFrame, out_dir: Path) -> str:
    """The command that makes ``rows`` (defaults left out)."""
    parts = ["attnbench conv_oracle"]
    n, layers, ks = int(rows["n"].iloc[0]), sorted(int(x) for x in rows["layer"].unique()), sorted(rows["k"].unique())
    targets = [t for t in TARGETS if f"oracle_{t}_output_error" in rows]
    if n != 2048:
        parts.append(f"--n {n}")
    if layers != [0, 10, 20]:
        parts.append("--layers " + " ".join(map(str, layers)))
    if [int(k) for k in ks] != [k for k in K_GRID if k <= n]:
        parts.append("--ks " + " ".join(str(int(k)) for k in ks))
    if targets != list(TARGETS):
        parts.append("--targets " + " ".join(targets))
    return " ".join(parts + [f"--out-dir {out_dir}"])


def render(rows: pd.DataFrame, command: str) -> str:
    """Markdown of conv_basis_oracle.md from its rows."""
    from attnbench.runners.claims_registry import conv_oracle_summary, fmt

    s = conv_oracle_summary(rows)
    layers = sorted(int(x) for x in rows["layer"].unique())
    r0 = rows.iloc[0]
    targets = [t for t in TARGETS if f"oracle_{t}_output_error" in rows]
    lines = [
        "# Conv-Basis: the best k-conv basis of SmolLM2 attention (any algorithm) beside the reconstruction",
        "",
        f"Command: `{command}` (writes this page, `conv_basis_oracle.csv` and `figures/conv_basis_oracle.png`); "
        "`attnbench claims` then judges C4 from it.",
        "",
        f"Captured SmolLM2-135M q/k/v, causal, n = {int(r0['n']):,}, layers {', '.join(map(str, layers))}, "
        f"{rows['head'].nunique()} heads each, scale {fmt(r0['scale'])}, fp32 inputs; oracle in float64; seed "
        f"{int(r0['seed'])}; {r0['device']}, torch {r0['torch_version']}, commit {r0['git_commit']}, "
        f"{rows.groupby('layer')['wall_s'].max().sum() / 60:.0f} min. "
        "The oracle is the exact optimum, over every choice of band starts, of the Frobenius error of a k-conv "
        "basis (Σ_j conv(b_j, m_j), nested supports) of the target matrix (`runners/conv_oracle.py` says how). "
        "Targets: **scores** H = M∘(βQKᵀ), the matrix the recovery approximates; **weights** exp(H)∘M, the "
        "matrix the method applies to [V, 1] (exp of a k-conv basis of H is a k-conv basis of it); **probs** "
        "the softmax matrix. Each oracle's matrix error is a lower bound for every k-conv approximation of "
        "that matrix; its output error (weights applied as the method applies them, rows normalised) is "
        "one achievable output of the family, not a bound. Reconstruction: `methods/conv_basis.py` with "
        "eps = 0.001, T = 8, fallback none (the best configuration at every k of "
        "[conv_basis_knobs.md](conv_basis_knobs.md)).",
        "",
        "Errors are relative Frobenius norms; output errors per layer over its heads (as the fidelity rows), "
        "matrix errors the mean over heads; each cell the mean over the layers. Columns: the reconstruction's "
        "output error; the score-matrix error of the reconstruction's basis and the oracle's; the same for the "
        "weights; the oracle's on the softmax matrix (no reconstruction column: the method's normalised matrix "
        "is not a k-conv basis); the output error of each oracle's basis; and per head the lowest output error "
        "of all of them and the reconstruction.",
        "",
    ]
    head = ["k", "reconstruction: output", "scores: reconstruction", "scores: oracle"]
    head += ["weights: reconstruction", "weights: oracle", "probs: oracle"]
    head += [f"{t} oracle: output" for t in targets] + ["best output found"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for _, r in s.iterrows():
        cells = [str(int(r["k"])), fmt(r["recon_output_error"]), fmt(r["recon_scores_matrix_error"]),
                 fmt(r.get("oracle_scores_matrix_error")), fmt(r["recon_weights_matrix_error"]),
                 fmt(r.get("oracle_weights_matrix_error")), fmt(r.get("oracle_probs_matrix_error"))]
        cells += [fmt(r[f"oracle_{t}_output_error"]) for t in targets] + [fmt(r["best_output_error"])]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Per layer (output errors; reconstruction / best oracle output):", "",
              "| k | " + " | ".join(f"layer {lay}" for lay in layers) + " |", "|" + "---|" * (len(layers) + 1)]
    for _, r in s.iterrows():
        cells = [f"{fmt(r[f'recon_output_error_layer{lay}'])} / {fmt(r[f'best_output_error_layer{lay}'])}"
                 for lay in layers]
        lines.append(f"| {int(r['k'])} | " + " | ".join(cells) + " |")
    lines.append("")
    return "\n".join(lines)


def plot(rows: pd.DataFrame, out_dir: Path) -> list[Path]:
    """figures/conv_basis_oracle.png|pdf: output and score-matrix error vs k, oracle beside reconstruction."""
    from attnbench.runners import claims_registry as reg
    from attnbench.runners import plots

    s = reg.conv_oracle_summary(rows)
    fig, axes = plots.plt.subplots(1, 2, figsize=(10, 4.2), layout="constrained")
    fig.suptitle("Conv-Basis on SmolLM2 attention: the best k-conv basis (oracle) vs the reconstruction",
                 x=0.02, ha="left", fontweight="bold")
    styles = {"recon": dict(color="#D55E00", marker="o"), "scores": dict(color="#0072B2", marker="s", ls="--"),
              "weights": dict(color="#009E73", marker="^", ls="--"), "probs": dict(color="#CC79A7", marker="v", ls="--")}
    ax = axes[0]
    ax.plot(s["k"], s["recon_output_error"], label="reconstruction", **styles["recon"])
    for t in TARGETS:
        if f"oracle_{t}_output_error" in s:
            ax.plot(s["k"], s[f"oracle_{t}_output_error"], label=f"oracle on {t}", **styles[t])
    for y, what in ((reg.GOOD_ERROR, "C4 holds"), (reg.FAIR_ERROR, "C4 holds partly")):
        ax.axhline(y, color="#777777", lw=0.8, ls=":")
        ax.text(1, y, f" {what} at or below", va="bottom", fontsize=7.5, color="#555555")
    ax.set_ylabel("attention-output error (rel. Frobenius)")
    ax = axes[1]
    for t, who in (("scores", "recon"), ("scores", "oracle"), ("weights", "recon"), ("weights", "oracle"),
                   ("probs", "oracle")):
        col = f"{who}_{t}_matrix_error"
        if col in s:
            st = dict(styles["recon" if who == "recon" else t])
            if who == "recon":
                st["ls"] = "-" if t == "scores" else ":"
            ax.plot(s["k"], s[col], label=f"{'reconstruction' if who == 'recon' else 'oracle'}: {t}", **st)
    ax.set_ylabel("matrix error (rel. Frobenius)")
    for ax in axes:
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("k (conv terms)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    layers = ", ".join(str(int(x)) for x in sorted(rows["layer"].unique()))
    axes[0].set_title(f"mean over layers {layers}, n = {int(rows['n'].iloc[0]):,}", loc="left", fontsize=8.5)
    return plots._save(fig, out_dir / "figures", "conv_basis_oracle")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="attnbench conv_oracle", description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2048, help="sequence length (default 2048, C4's)")
    ap.add_argument("--layers", type=int, nargs="+", default=[0, 10, 20], help="SmolLM2 layers (default 0 10 20)")
    ap.add_argument("--ks", type=int, nargs="+", default=list(K_GRID), help="numbers of conv terms reported")
    ap.add_argument("--targets", nargs="+", default=list(TARGETS), choices=TARGETS, help="matrices approximated")
    ap.add_argument("--seed", type=int, default=0, help="seed recorded with the rows (the captured inputs are fixed)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    ap.add_argument("--cache-dir", default="results/cache", help="captured q/k/v cache (task.cache_dir)")
    ap.add_argument("--out-dir", default="results", help="where the csv, md and figure go (default results)")
    ap.add_argument("--from-csv", action="store_true", help="rewrite the md and figure from the csv in --out-dir only")
    args = ap.parse_args(argv)
    if args.n < 1 or min(args.ks) < 1:
        ap.error("--n and every --ks must be >= 1")
    args.ks = sorted(set(args.ks))
    out = Path(args.out_dir)
    if args.from_csv:
        rows = pd.read_csv(out / "conv_basis_oracle.csv")
    else:
        rows = run(args)
        out.mkdir(parents=True, exist_ok=True)
        rows.to_csv(out / "conv_basis_oracle.csv", index=False, float_format="%.6g")
    (out / "conv_basis_oracle.md").write_text(render(rows, command(rows, out)))
    paths = plot(rows, out)
    print(f"[conv_oracle] wrote {'' if args.from_csv else str(out / 'conv_basis_oracle.csv') + ', '}"
          f"{out / 'conv_basis_oracle.md'}, " + ", ".join(map(str, paths)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
