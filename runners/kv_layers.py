"""Per-layer picture of KV-cache presses on SmolLM2: which press approximates each layer's attention best.

For each press (WildCat's KV-cache mode, uniform, kvpress's presses) and compression ratio, all at
equal kept tokens (``int(n·(1-ratio))`` per layer, ``task.ratio_of=all``), the context of a ppl
window is prefilled under the press, and every layer's attention output for the continuation's
queries is computed over that layer's compressed cache (plus the continuation's own keys,
causally, through the same weighted attention as decoding) and compared with the uncompressed
one. The continuation's queries, keys and values are the untouched model's (captured in one
uncompressed forward), so each layer is judged on its own: no error carried over from the layers
below. Error of a layer = ‖O_press − O‖_F / ‖O‖_F over heads, positions and windows (``attn_error``;
``oproj_error``: the same after the layer's output projection; ``q_over_k``: see ``norm_ratios``).
``insitu_error`` is the same
error when the model itself decodes the continuation over the compressed caches, so each layer
also receives the errors of the layers below (what perplexity sees).

Then, per ratio, presses mixed by layer (``task.press=per_layer``) are run on kv_compare's ppl and
recall configs: WildCat on the layers where it beats uniform (uniform elsewhere), WildCat where it
beats the best kvpress press (that press elsewhere), and each layer's lowest-error press. The
layers are chosen on ppl windows ``--window-offset`` … (default 3..5), disjoint from kv_compare's
windows 0..2 on which the mixes are scored.

    attnbench kv_layers --out-dir results          # ~30-40 min on 1 CPU thread
    attnbench kv_layers --ratios 0.5 --windows 1 --context 512 --cont 64 --no-mix --out-dir /tmp/x

Writes ``kv_layers.csv`` (press, ratio, layer, errors), ``kv_layers_mix.csv`` (mixed presses' ppl
and recall rows), ``kv_layers.md`` and ``figures/kv_layers_error.png|pdf``.
"""
from __future__ import annotations

import argparse
import math
import textwrap
import time
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from attnbench import methods
from attnbench.core.measure import Meter

PRESSES = ("method", "uniform", "snapkv", "streaming_llm", "knorm", "expected_attention", "tova")
LABELS = {"method": "WildCat", "uniform": "Uniform", "snapkv": "SnapKV", "streaming_llm": "StreamingLLM",
          "knorm": "Knorm", "expected_attention": "ExpectedAttention", "tova": "TOVA"}
KVPRESS = ("snapkv", "streaming_llm", "knorm", "expected_attention", "tova")
CAPTURE_ATTN = "attnbench_capture"


def task_for(model, tok, press: str, ratio: float, args, dataset: str = "ppl", press_kwargs: dict | None = None):
    """A kv_cache task with kv_compare's settings (``conf/experiment/kv_compare.yaml``)."""
    from attnbench.tasks.kv_cache import KVCacheTask

    cfg = dict(name="kv_cache", model="smollm2", dataset=dataset, press=press, compression_ratio=ratio,
               ratio_of="all", context_length=args.context, ppl_tokens=args.cont,
               num_samples=3,  # kv_compare's windows 0..2 (ppl) / 3 recall windows
               depths=[0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9], num_digits=7, num_choices=4,
               press_kwargs=press_kwargs or {})
    return KVCacheTask(cfg, torch.device("cpu"), args.seed, model=model, tokenizer=tok)


def wildcat(seed: int):
    m = methods.build("wildcat")
    m.reseed(seed)
    return m


def _recording(fn, got: dict[int, tuple], t: int, keep_qkv: bool) -> str:
    """Register, as the attention function ``attnbench_capture``, ``fn`` that also records per layer
    the last ``t`` queries' output (B, t, H, D), and with ``keep_qkv`` their queries, keys, values."""
    from attnbench.tasks.adapters.hf import register_function

    def rec(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kw):
        out, w = fn(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kw)
        parts = (query[:, :, -t:], key[:, :, -t:], value[:, :, -t:, :query.shape[-1]], out[:, -t:]) if keep_qkv \
            else (out[:, -t:],)
        got[module.layer_idx] = tuple(x.clone() for x in parts)
        return out, w

    return register_function(CAPTURE_ATTN, rec)


@torch.no_grad()
def capture(model, ctx: torch.Tensor, cont: torch.Tensor) -> dict[int, tuple]:
    """Per layer, from one uncompressed forward over context + continuation: the continuation's
    queries (B, H, T, D), keys and values (B, Hkv, T, D), and the layer's exact attention output
    for them (B, T, H, D)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from attnbench.tasks.adapters.presses import WEIGHTED_ATTN

    got: dict[int, tuple] = {}
    model.set_attn_implementation(_recording(sdpa_attention_forward, got, cont.shape[1], True))
    try:
        model.model(input_ids=torch.cat((ctx, cont), 1), use_cache=False)
    finally:
        model.set_attn_implementation(WEIGHTED_ATTN)
    return got


@torch.no_grad()
def insitu_errors(model, task, cache, n: int, cont: torch.Tensor, got: dict[int, tuple]) -> list[tuple[float, float]]:
    """Per layer: (‖ΔO‖², ‖O‖²) of the attention output when the continuation is decoded over a copy
    of the compressed ``cache`` by the model itself (errors of the layers below carried in), against
    the untouched model's."""
    from attnbench.tasks.adapters.presses import WEIGHTED_ATTN, weighted_attention

    out: dict[int, tuple] = {}
    fork = task.fork_cache(cache)  # the clamp of weighted layers follows the copy
    model.set_attn_implementation(_recording(weighted_attention, out, cont.shape[1], False))
    try:
        model.model(input_ids=cont, past_key_values=fork,
                    position_ids=torch.arange(n, n + cont.shape[1]).unsqueeze(0))
    finally:
        model.set_attn_implementation(WEIGHTED_ATTN)
        task._point_to(cache)
    return [(float((out[i][0] - got[i][3]).double().square().sum()), float(got[i][3].double().square().sum()))
            for i in range(len(model.model.layers))]


@torch.no_grad()
def layer_errors(model, cache, got: dict[int, tuple]) -> list[tuple[float, float, float, float]]:
    """Per layer: (‖ΔO‖², ‖O‖², ‖W_o ΔO‖², ‖W_o O‖²) of the continuation's attention over the
    compressed ``cache`` (extended by the continuation's keys and values, as decoding does)."""
    from attnbench.tasks.adapters.presses import weighted_attention

    res = []
    for i, layer_mod in enumerate(model.model.layers):
        attn = layer_mod.self_attn
        q, k, v, ref = got[i]
        layer = cache.layers[i]
        m, t = layer.keys.shape[2], q.shape[2]
        layer.update(k, v)  # weighted layers append a weight-1 channel, as in decoding
        allowed = torch.cat((torch.ones(t, m, dtype=torch.bool), torch.ones(t, t, dtype=torch.bool).tril()), 1)
        mask = torch.zeros(allowed.shape, dtype=q.dtype).masked_fill(~allowed, float("-inf"))[None, None]
        out, _ = weighted_attention(attn, q, layer.keys, layer.values, mask, dropout=0.0, scaling=attn.scaling)
        d = (out - ref).double()
        po, pr = attn.o_proj(out.flatten(2)).double(), attn.o_proj(ref.flatten(2)).double()
        res.append((float(d.square().sum()), float(ref.double().square().sum()), float((po - pr).square().sum()),
                    float(pr.square().sum())))
    return res


@torch.no_grad()
def norm_ratios(model, task, windows, captured) -> list[float]:
    """Per layer: the largest continuation query norm over the largest centred context key norm of
    its KV head, median over query heads, geometric mean over windows. WildCat's KV-cache mode sees
    no queries and sets the query scale to the key scale (ratio 1); the further from 1, the further
    its kernel approximation is used from where it was fitted."""
    logs = [0.0] * len(model.model.layers)
    for (ctx, _), got in zip(windows, captured):
        cache, _, _, _ = task.prefill(None, ctx)
        for i, layer in enumerate(cache.layers):
            k = layer.keys.float()
            kmax = (k - k.mean(2, keepdim=True)).norm(dim=-1).amax(2)  # (B, Hkv)
            q = got[i][0].float()
            qmax = q.norm(dim=-1).amax(2)  # (B, H)
            r = qmax / kmax.repeat_interleave(q.shape[1] // k.shape[1], 1)
            logs[i] += math.log(float(r.median())) / len(windows)
    return [math.exp(x) for x in logs]


def per_layer(model, tok, args) -> pd.DataFrame:
    """The per-layer errors of every press at every ratio (windows ``window_offset`` …)."""
    from attnbench.tasks.datasets.needle import filler_ids

    base = task_for(model, tok, "none", 0.0, args)
    filler = filler_ids(tok, (args.context + args.cont) * (args.window_offset + args.windows))  # as the ppl rows'
    windows = [base.ppl_window(filler, args.context, args.window_offset + i) for i in range(args.windows)]
    captured = [capture(model, ctx, cont) for ctx, cont in windows]
    q_over_k = norm_ratios(model, base, windows, captured)
    rows = []
    for ratio in args.ratios:
        for press_name in args.presses:
            t0 = time.perf_counter()
            task = task_for(model, tok, press_name, ratio, args)
            press = task.make_press(wildcat(args.seed))
            sums = None
            kept = []
            for (ctx, cont), got in zip(windows, captured):
                cache, _, _, _ = task.prefill(press, ctx)
                kept.append(cache.layers[0].keys.shape[2] / ctx.shape[1])
                e = [a + b for a, b in zip(insitu_errors(model, task, cache, ctx.shape[1], cont, got),
                                           layer_errors(model, cache, got))]
                sums = e if sums is None else [tuple(a + b for a, b in zip(x, y)) for x, y in zip(sums, e)]
            for i, (in2, ir2, d2, r2, pd2, pr2) in enumerate(sums):
                rows.append({"press": LABELS[press_name], "task.press": press_name, "compression_ratio": ratio,
                             "kept_fraction": sum(kept) / len(kept), "layer": i, "attn_error": math.sqrt(d2 / r2),
                             "oproj_error": math.sqrt(pd2 / pr2), "insitu_error": math.sqrt(in2 / ir2),
                             "q_over_k": q_over_k[i]})
            print(f"[kv_layers] {LABELS[press_name]} ratio {ratio}: mean attn error "
                  f"{sum(r['attn_error'] for r in rows[-len(sums):]) / len(sums):.4f} "
                  f"({time.perf_counter() - t0:.0f} s)", flush=True)
    return pd.DataFrame(rows)


def best_kvpress(df: pd.DataFrame, ratio: float) -> str:
    """The kvpress press with the lowest mean per-layer attention error at ``ratio``."""
    d = df[(df["compression_ratio"] == ratio) & df["task.press"].isin(KVPRESS)]
    return str(d.groupby("task.press")["attn_error"].mean().idxmin())


def mixes(df: pd.DataFrame, ratio: float) -> dict[str, dict[str, Any]]:
    """Per-layer press assignments (``task.press_kwargs`` of ``task.press=per_layer``) at ``ratio``."""
    d = df[df["compression_ratio"] == ratio].pivot(index="layer", columns="task.press", values="attn_error")
    best = best_kvpress(df, ratio)
    out = {}
    for other in ("uniform", best):
        wins = [int(i) for i in d.index if d.loc[i, "method"] < d.loc[i, other]]
        out[f"WildCat where it beats {LABELS[other]}, else {LABELS[other]}"] = {"default": other, "method": wins}
    choice = d.idxmin(axis=1)
    spec: dict[str, Any] = {"default": str(choice.value_counts().idxmax())}
    for p in sorted(set(choice) - {spec["default"]}):
        spec[p] = [int(i) for i in choice.index if choice[i] == p]
    out["each layer's lowest-error press"] = spec
    return out


def run_mixes(model, tok, df: pd.DataFrame, args) -> pd.DataFrame:
    """kv_compare's ppl and recall rows of the mixed presses."""
    rows = []
    for ratio in args.ratios:
        for label, spec in mixes(df, ratio).items():
            for dataset in ("ppl", "recall"):
                t0 = time.perf_counter()
                task = task_for(model, tok, "per_layer", ratio, args, dataset, press_kwargs=spec)
                (row,) = task.run(wildcat(args.seed), Meter.quick())
                rows.append({"mix": label, "compression_ratio": ratio, "dataset": dataset,
                             "press_kwargs": spec, "kept_fraction": row["kept_fraction"],
                             **{k: row.get(k) for k in ("ppl", "score", "digit_accuracy", "answer_nll")}})
                print(f"[kv_layers] mix {label!r} ratio {ratio} {dataset}: "
                      f"{row.get('ppl') if dataset == 'ppl' else row.get('score')} ({time.perf_counter() - t0:.0f} s)",
                      flush=True)
    return pd.DataFrame(rows)


def figure(df: pd.DataFrame, out_dir: Path) -> list[Path]:
    """attn_error vs layer, one panel per ratio: WildCat, uniform, the best kvpress press."""
    from attnbench.runners import plots

    ratios = sorted(df["compression_ratio"].unique())
    fig, axes = plots.plt.subplots(2, len(ratios), figsize=(5.2 * len(ratios), 7.6), layout="constrained",
                                   squeeze=False, sharey="row")
    for row, (col, what) in enumerate((("attn_error", "each layer alone"),
                                       ("insitu_error", "decoded by the model (errors below carried in)"))):
        for ax, ratio in zip(axes[row], ratios):
            for p in ("method", "uniform", best_kvpress(df, ratio)):
                d = df[(df["compression_ratio"] == ratio) & (df["task.press"] == p)].sort_values("layer")
                ax.plot(d["layer"], d[col], label=LABELS[p], **plots.press_style(LABELS[p]))
            kept = df[df["compression_ratio"] == ratio]["kept_fraction"].mean()
            ax.set_title(f"ratio {ratio:g} (kept {kept:.2f}): {what}", loc="left", fontsize=9)
            ax.set_xlabel("layer")
            ax.set_yscale("log")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(frameon=False, fontsize=8)
        axes[row][0].set_ylabel("rel. error of the attention output")
    title = ("SmolLM2: per-layer attention error for the continuation's queries over the compressed caches "
             "(equal kept tokens)")
    fig.suptitle("\n".join(textwrap.wrap(title, int(24 * len(ratios)))), x=0.02, ha="left", fontweight="bold")
    return plots._save(fig, out_dir / "figures", "kv_layers_error")


def _corr(piv: pd.DataFrame, ratio: float, df: pd.DataFrame) -> float:
    """Pearson correlation over layers of log(WildCat / uniform error) and log(q_over_k) at ``ratio``."""
    qk = df[df["compression_ratio"] == ratio].groupby("layer")["q_over_k"].first()
    x = (piv.set_index("layer")["WildCat"] / piv.set_index("layer")["Uniform"]).map(math.log)
    return float(x.corr(qk.reindex(x.index).map(math.log)))


def markdown(df: pd.DataFrame, mix: pd.DataFrame | None, args, wall_s: float) -> str:
    from attnbench.runners.report import to_markdown_plain

    lines = ["# Per-layer picture of KV-cache presses (SmolLM2-135M, equal kept tokens)", "",
             f"Command: `attnbench kv_layers {' '.join(args.argv)}` ({wall_s / 60:.0f} min). "
             f"Context {args.context} tokens, continuation {args.cont} tokens, ppl windows "
             f"{args.window_offset}..{args.window_offset + args.windows - 1} of the local text (kv_compare scores "
             f"windows 0..2), fp32, seed {args.seed}. Error = ‖O_press − O‖_F / ‖O‖_F of the layer's attention "
             f"output for the continuation's queries over the compressed cache (+ the continuation's own keys), "
             f"the untouched model's queries, keys and values (each layer judged alone). "
             f"Data: [kv_layers.csv](kv_layers.csv).", "",
             "![per-layer errors](figures/kv_layers_error.png)", ""]
    piv = df.pivot_table(index=["compression_ratio", "layer"], columns="press", values="attn_error").reset_index()
    for ratio in sorted(df["compression_ratio"].unique()):
        p = piv[piv["compression_ratio"] == ratio]
        best = LABELS[best_kvpress(df, ratio)]
        ratio_u = p["WildCat"] / p["Uniform"]
        ratio_b = p["WildCat"] / p[best]
        win_u = [int(i) for i in p.loc[ratio_u < 1, "layer"]]
        win_b = [int(i) for i in p.loc[ratio_b < 1, "layer"]]
        lowest = p.drop(columns=["compression_ratio", "layer"]).idxmin(axis=1).value_counts()
        ins = df[(df["compression_ratio"] == ratio)].pivot(index="layer", columns="press", values="insitu_error")
        lines += [f"## ratio {ratio:g}", "",
                  "- mean error over layers: " + ", ".join(
                      f"{c} {p[c].mean():.3f}" for c in sorted(p.columns[2:], key=lambda c: p[c].mean())),
                  f"- WildCat / uniform error: {ratio_u.min():.2f}–{ratio_u.max():.2f}×; WildCat lower on "
                  f"{len(win_u)}/{len(p)} layers: {win_u}",
                  f"- WildCat / {best} (the best kvpress press here) error: {ratio_b.min():.2f}–{ratio_b.max():.2f}×; "
                  f"WildCat lower on {len(win_b)}/{len(p)} layers: {win_b}",
                  "- lowest-error press per layer: " + ", ".join(f"{k} {v}" for k, v in lowest.items()),
                  f"- across layers, corr(log WildCat/uniform error, log q_over_k) = {_corr(p, ratio, df):+.2f} "
                  f"(q_over_k: largest query norm / largest centred key norm, "
                  f"{df['q_over_k'].min():.2f}–{df['q_over_k'].max():.2f} over layers; WildCat's KV mode assumes 1)",
                  "- decoded by the model (in situ), mean over layers / last layer: " + ", ".join(
                      f"{c} {ins[c].mean():.3f} / {ins[c].iloc[-1]:.3f}" for c in sorted(ins, key=lambda c: ins[c].mean())),
                  ""]
    lines += ["## Errors per layer (each layer alone)", "", to_markdown_plain(piv.round(4))]
    if mix is not None and len(mix):
        lines += ["## Presses mixed by layer, on kv_compare's ppl and recall", "",
                  "Each mix is `task.press=per_layer` with the `task.press_kwargs` below (layers chosen on the "
                  "windows above, scored on kv_compare's). Compare with every single press at the same ratio in "
                  "[kv_compare_table.md](kv_compare_table.md).", ""]
        m = mix.pivot_table(index=["compression_ratio", "mix"], values=["ppl", "score", "digit_accuracy", "answer_nll",
                                                                         "kept_fraction"], aggfunc="first").reset_index()
        lines += [to_markdown_plain(m.round(4)), "", "press_kwargs:", ""]
        for (ratio, label), d in mix.groupby(["compression_ratio", "mix"], sort=False):
            lines.append(f"- ratio {ratio:g}, {label}: `{d['press_kwargs'].iloc[0]}`")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    import sys

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ratios", type=float, nargs="+", default=[0.25, 0.5, 0.75])
    ap.add_argument("--presses", nargs="+", default=list(PRESSES), choices=PRESSES)
    ap.add_argument("--context", type=int, default=2048)
    ap.add_argument("--cont", type=int, default=256, help="continuation tokens (their queries are scored)")
    ap.add_argument("--windows", type=int, default=3)
    ap.add_argument("--window-offset", type=int, default=3, help="first ppl window (kv_compare scores 0..2)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-mix", action="store_true", help="skip the mixed presses' ppl and recall runs")
    ap.add_argument("--out-dir", type=Path, default=Path("results/reports/kv_layers"))
    args = ap.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if "method" not in args.presses or "uniform" not in args.presses or not set(args.presses) & set(KVPRESS):
        ap.error("--presses must include method, uniform and a kvpress press")
    torch.set_num_threads(args.threads)
    from attnbench.tasks.models.causal_lm import load_model

    t0 = time.perf_counter()
    model, tok = load_model("smollm2", torch.float32, torch.device("cpu"))
    from attnbench.runners.run import provenance

    stamp = {**provenance(), "method_version": methods.get("wildcat").version}  # WildCat's KV mode is the `method` press
    df = per_layer(model, tok, args).assign(**stamp)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    df.to_csv(args.out_dir / "kv_layers.csv", index=False)
    mix = None if args.no_mix else run_mixes(model, tok, df, args).assign(**stamp)
    if mix is not None:
        mix.to_csv(args.out_dir / "kv_layers_mix.csv", index=False)
    figure(df, args.out_dir)
    (args.out_dir / "kv_layers.md").write_text(markdown(df, mix, args, time.perf_counter() - t0))
    print(f"[kv_layers] wrote {args.out_dir / 'kv_layers.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
