"""ImageNet classification with swapped attention: top-1/top-5, agreement with exact, latency.

The KDEformer / WildCat / Thinformer ImageNet experiment: T2T-ViT-t-24 (official checkpoint
``82.6_T2T_ViTt_24.pth.tar``) with the two attention layers of its Tokens-to-Token module
(n=3136 and n=784 tokens at 224², one head of dim 64, scale 147^-0.5 and 576^-0.5) replaced by a
method, on the ImageNet validation set. Any timm ViT / DeiT works too (all blocks swapped by
default).

One run yields one row. The same model with ``exact`` swapped into the same layers is evaluated
on the same images in the same run, giving ``agreement`` (percent of images whose top-1 class
matches the exact model's) and the latency baseline. Latency is measured after the accuracy
pass, on the first batch: the whole forward (``latency_ms``, ``exact_latency_ms``) and each swapped
attention call alone on the (q, k, v) it received in that forward (``<layer>_latency_ms``,
``exact_<layer>_latency_ms``, ``<layer>_speedup``).

Per-layer method settings (the papers give layer 1 and 2 different budgets) come from
``task.layer_overrides`` ({layer: {knob: value}}) on top of ``task.layer_presets``
({layer: preset}: that preset's knobs for the run's method, ``conf/method/preset/<preset>/``, what
an experiment file sets for a sweep over methods); each layer gets its own instance via
``methods.rebuild`` (same seed).

The swapping itself is ``tasks.adapters`` (families ``t2t_vit`` and ``timm_vit``); the data,
``tasks.datasets.imagenet``.
"""
from __future__ import annotations

import math
import os
import sys
from typing import Any, Iterator, Mapping

import torch
from torch import Tensor, nn

from attnbench import methods
from attnbench.methods import to_plain
from attnbench.core.knobs import AnyValue, Bool, Choice, Int, Mapping_, Str, preset_knobs, preset_methods
from attnbench.methods.base import DTYPES, AttentionMethod
from attnbench.core.measure import Meter
from attnbench.core.progress import Progress

from attnbench.tasks import adapters, register
from attnbench.tasks.adapters import t2t_vit as t2t_adapter, timm_vit as timm_adapter
from attnbench.tasks.base import Task
from attnbench.tasks.datasets.imagenet import data_config, imagenet_val_dir, val_loader
from attnbench.tasks.models import t2t_vit

# The attention layers this task swaps: T2T-ViT's token layers and timm ViT blocks.
FAMILIES = (t2t_adapter.FAMILY, timm_adapter.FAMILY)


def attention_layers(model: nn.Module) -> dict[str, str]:
    """{label: module name} of every swappable attention module (``t2t1``, ``block0`` …), in model order."""
    return adapters.candidates(model, FAMILIES)


def swap_attention(
    model: nn.Module, layers: Any = None, method: AttentionMethod | None = None, meter: Meter | None = None
) -> dict[str, adapters.Swapped]:
    """Replace the attention modules labelled ``layers`` (None: all) by wrappers that call
    ``method`` (default: exact); return {label: wrapper} (``tasks.adapters``)."""
    return adapters.swap(model, method, families=FAMILIES, layers=layers, meter=meter)


# --------------------------------------------------------------------------------------------
# Task
# --------------------------------------------------------------------------------------------
@register("imagenet")
class ImageNetTask(Task):
    """Top-1/top-5 on ImageNet val (or synthetic images) with a method swapped into ``task.layers``."""

    knobs = {
        "model": Str(),
        "model_kwargs": Mapping_(),
        "pretrained": Bool(),
        "checkpoint": Str(optional=True),
        "layers": AnyValue(),  # 'default' | 'all' | 'every:K' | list of labels or module names (checked against the model)
        "layer_presets": Mapping_(),
        "layer_overrides": Mapping_(),
        "data": Choice("imagenet", "synthetic"),
        "data_root": Str(optional=True),
        "limit": Int(1, optional=True),
        "subset_seed": Int(0),
        "batch_size": Int(1),
        "workers": Int(0),
        "dtype": Choice(*DTYPES),
    }

    def __init__(self, cfg: Mapping[str, Any], device: torch.device, seed: int = 0) -> None:
        super().__init__(cfg, device, seed)
        cfg = self.cfg
        self.model_name = cfg["model"]
        self.dtype = DTYPES[cfg["dtype"]]
        self.batch_size = cfg["batch_size"]
        self.limit = cfg["limit"]
        self.data_kind = cfg["data"]
        # Fail on missing data before spending time on weights.
        self.val_dir = imagenet_val_dir(cfg["data_root"]) if self.data_kind == "imagenet" else None
        self.notes: list[str] = []
        self.model = self._build_model().to(self.device, self.dtype).eval()
        self.data_config = data_config(self.model)
        self.loader = self._loader()
        self.candidates = attention_layers(self.model)  # {label: module name}, before any swap
        self.layers = self._resolve_layers(cfg["layers"])

    # --- model --------------------------------------------------------------------------
    def _build_model(self) -> nn.Module:
        name, cfg = self.model_name, self.cfg
        kwargs = dict(cfg["model_kwargs"])
        checkpoint = cfg["checkpoint"]
        pretrained = cfg["pretrained"]
        is_t2t = t2t_vit.is_t2t(name)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)  # random-init weights depend on the run seed only
            if is_t2t:
                model = t2t_vit.create_t2t_vit(name, **kwargs)
            else:
                import timm

                if not timm.is_model(name):
                    raise ValueError(
                        f"task.model={name!r} is neither a T2T-ViT variant ({', '.join(t2t_vit.VARIANTS)}) "
                        f"nor a timm model name (e.g. deit_small_patch16_224)."
                    )
                if pretrained and not checkpoint:
                    try:
                        model = timm.create_model(name, pretrained=True, **kwargs)
                    except Exception as e:  # offline, not cached, or no weights for this name
                        raise RuntimeError(
                            f"could not load pretrained weights for {name!r} from the timm / Hugging Face hub "
                            f"or its local cache ({type(e).__name__}); set task.checkpoint=PATH to a local "
                            f"checkpoint, or task.pretrained=false for random weights (HF_HUB_OFFLINE=1 fails fast offline)."
                        ) from e
                    self.weights = "hub"
                    return model
                model = timm.create_model(name, pretrained=False, **kwargs)
        if checkpoint:
            path = os.path.expanduser(str(checkpoint))
            if not os.path.isfile(path):
                raise FileNotFoundError(f"task.checkpoint={path!r} does not exist; set task.checkpoint to a checkpoint file.")
            state = t2t_vit.extract_state_dict(torch.load(path, map_location="cpu", weights_only=False))
            filt = getattr(sys.modules.get(type(model).__module__), "checkpoint_filter_fn", None)
            if not is_t2t and filt is not None:
                state = filt(state, model)
            model.load_state_dict(state, strict=True)
            self.weights = f"checkpoint:{os.path.basename(path)}"
        elif pretrained:  # T2T-ViT: the official release file, from the torch hub cache or its URL
            url = t2t_vit.checkpoint_url(name)
            try:
                obj = torch.hub.load_state_dict_from_url(url, map_location="cpu", weights_only=False)
            except Exception as e:
                raise RuntimeError(
                    f"could not load the official {name} weights (not in the torch hub cache, download failed: "
                    f"{type(e).__name__}); download {url} and set task.checkpoint=PATH, or task.pretrained=false."
                ) from e
            model.load_state_dict(t2t_vit.extract_state_dict(obj), strict=True)
            self.weights = "official"
        else:
            self.weights = "random-init"
            self.notes.append("random-init weights (task.pretrained=false): accuracy is meaningless")
        return model

    def _resolve_layers(self, spec: Any) -> list[str]:
        """Labels of the layers to swap: 'default' (T2T: t2t1, t2t2; ViT: all blocks), 'all',
        'every:K', or a list / comma string of labels (``t2t1``, ``block0`` …) or module names."""
        cands = self.candidates
        if not cands:
            raise ValueError(f"task.model={self.model_name!r} has no attention module this task can swap.")
        spec = to_plain(spec)
        if spec in (None, "default"):
            t2t = [lab for lab in cands if lab.startswith("t2t")]
            return t2t or [lab for lab in cands if lab.startswith("block")] or list(cands)
        return adapters.resolve_layers(cands, spec, what="task.layers")

    # --- data ---------------------------------------------------------------------------
    def _loader(self) -> torch.utils.data.DataLoader:
        if self.data_kind == "synthetic":
            self.notes.append("synthetic images (task.data=synthetic): accuracy is meaningless")
        return val_loader(
            self.data_kind, self.data_config, val_dir=self.val_dir, limit=self.limit,
            subset_seed=self.cfg["subset_seed"], batch_size=self.batch_size, workers=self.cfg["workers"],
            num_classes=int(getattr(self.model, "num_classes", 1000) or 1000),
            pin_memory=self.device.type == "cuda",
        )

    # --- swapping -----------------------------------------------------------------------
    def _overrides(self, method_name: str) -> dict[str, dict[str, Any]]:
        """Per-layer knobs: ``task.layer_presets`` (a paper preset's knobs for this method, from
        ``conf/method/preset/<preset>/<method>.yaml``), then ``task.layer_overrides`` on top."""
        by_module = {mod: lab for lab, mod in self.candidates.items()}
        merged: dict[str, dict[str, Any]] = {}
        from_presets = {}
        for layer, preset in self.cfg["layer_presets"].items():
            knobs = preset_knobs(str(preset), method_name)
            if knobs is None:
                raise ValueError(f"task.layer_presets: preset {preset!r} has no settings for method {method_name!r}; "
                                 f"it covers {preset_methods(str(preset))}.")
            from_presets[layer] = knobs
        for key, table in (("layer_presets", from_presets), ("layer_overrides", self.cfg["layer_overrides"])):
            for layer, knobs in table.items():
                lab = layer if layer in self.layers else by_module.get(layer, layer)
                if lab not in self.layers:
                    raise ValueError(f"task.{key} names layer {layer!r}, which is not swapped; swapped: {self.layers}.")
                merged.setdefault(lab, {}).update(dict(knobs or {}))
        return merged

    def _install(self, meter: Meter | None) -> None:
        """Swap wrappers into ``self.layers`` once (they start with exact calls)."""
        if not hasattr(self, "_wrappers"):
            self._wrappers = swap_attention(self.model, self.layers, meter=meter)

    def _set_calls(self, per_layer: Mapping[str, AttentionMethod], meter: Meter | None, prefix: str = "") -> None:
        # latency is measured separately, on captured inputs: no timing inside the forwards
        adapters.set_method(self._wrappers, per_layer, meter, prefix=prefix, timing=False)

    # --- the run ------------------------------------------------------------------------
    @torch.no_grad()
    def run(self, method: AttentionMethod, meter: Meter) -> Iterator[dict[str, Any]]:
        overrides = self._overrides(method.name)
        self._install(meter)
        is_exact = method.name == "exact" and not overrides
        approx = {lab: methods.rebuild(method, **overrides.get(lab, {})) for lab in self.layers}
        exact = methods.build("exact")

        row, first = self._accuracy_pass(approx, {lab: exact for lab in self.layers}, is_exact, meter)
        stats = {lab: m.extra_stats() for lab, m in approx.items()}
        for m in approx.values():
            m.reseed(method._seed)
        row.update(self._timing_pass(approx, exact, first, meter))

        row.update({"batch": first.shape[0], "causal": False, "layers": ",".join(self.layers)})
        row["layer_overrides"] = "; ".join(
            f"{lab}: " + ",".join(f"{k}={v}" for k, v in ov.items()) for lab, ov in overrides.items()
        )
        first_stats = stats[self.layers[0]]
        for key, val in first_stats.items():
            row.setdefault(key, val)
        for lab, st in stats.items():
            for key, val in st.items():
                row[f"{lab}_{key}"] = val
        row["weights"] = self.weights
        row["note"] = "; ".join(self.notes)
        yield row

    def _accuracy_pass(self, approx: Mapping[str, AttentionMethod], exact_all: Mapping[str, AttentionMethod],
                       is_exact: bool, meter: Meter) -> tuple[dict[str, Any], Tensor]:
        """Top-1/top-5 of the approximate and the exact model on the same images, and their
        top-1 agreement; returns (those columns, the first batch of images)."""
        correct1 = correct5 = ex1 = ex5 = agree = total = 0
        first: Tensor | None = None
        progress = Progress("imagenet: batch", len(self.loader))
        for images, labels in self.loader:
            x = images.to(self.device, self.dtype, non_blocking=True)
            y = labels.to(self.device)
            if first is None:
                first = x
            self._set_calls(approx, meter)
            logits = self.model(x).float()
            top5 = logits.topk(min(5, logits.shape[-1]), dim=-1).indices
            correct1 += int((top5[:, 0] == y).sum())
            correct5 += int((top5 == y[:, None]).any(-1).sum())
            if is_exact:
                ex_top5 = top5
            else:
                self._set_calls(exact_all, meter, "exact_")
                ex_top5 = self.model(x).float().topk(top5.shape[-1], dim=-1).indices
            ex1 += int((ex_top5[:, 0] == y).sum())
            ex5 += int((ex_top5 == y[:, None]).any(-1).sum())
            agree += int((ex_top5[:, 0] == top5[:, 0]).sum())
            total += len(y)
            progress.step()
        if first is None:
            raise RuntimeError("the ImageNet loader yielded no images; check task.data_root and task.limit.")
        return {
            "top1": 100.0 * correct1 / total,
            "top5": 100.0 * correct5 / total,
            "exact_top1": 100.0 * ex1 / total,
            "exact_top5": 100.0 * ex5 / total,
            "agreement": 100.0 * agree / total,
            "num_images": total,
        }, first

    def _timing_pass(self, approx: Mapping[str, AttentionMethod], exact: AttentionMethod, first: Tensor,
                     meter: Meter) -> dict[str, Any]:
        """Latency on the first batch: each swapped layer alone on the (q, k, v) it receives in one
        approximate forward (``<layer>_latency_ms``, ``exact_<layer>_latency_ms`` …, summed into
        ``attn_latency_ms``), then the whole forward, approximate and exact interleaved."""
        row: dict[str, Any] = {}
        self._set_calls(approx, meter)
        captured = adapters.capture(self._wrappers, lambda: self.model(first))
        attn_ms = exact_attn_ms = 0.0
        for i, (lab, c) in enumerate(captured.items()):
            fn_a = lambda m=approx[lab], c=c: m(c.q, c.k, c.v, scale=c.scale)  # noqa: E731
            fn_e = lambda c=c: exact(c.q, c.k, c.v, scale=c.scale)  # noqa: E731
            _, _, comp = meter.compare(fn_a, fn_e, label=lab)
            row.update(comp.columns(lab + "_"))
            row[f"{lab}_n"] = c.q.shape[2]
            attn_ms += comp.method.median_ms
            exact_attn_ms += comp.exact.median_ms
            if i == 0:
                row.update({"n": c.q.shape[2], "heads": c.q.shape[1], "head_dim": c.q.shape[3], "scale": c.scale})
        del captured
        row["attn_latency_ms"] = attn_ms
        row["exact_attn_latency_ms"] = exact_attn_ms
        row["attn_speedup"] = exact_attn_ms / attn_ms if attn_ms > 0 else math.nan

        exact_all = {lab: exact for lab in self.layers}

        def forward_with(per_layer: Mapping[str, AttentionMethod]) -> Tensor:
            self._set_calls(per_layer, meter)
            return self.model(first)

        _, _, fwd_comp = meter.compare(lambda: forward_with(approx), lambda: forward_with(exact_all), label="forward")
        fwd = fwd_comp.method
        row.update(fwd_comp.columns())
        row["images_per_s"] = first.shape[0] / (fwd.median_ms / 1e3) if fwd.median_ms > 0 else math.nan
        return row
