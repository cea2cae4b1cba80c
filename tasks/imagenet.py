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
``task.layer_overrides`` ({layer: {knob: value}}) on top of
``task.layer_overrides_by_method[method.name]`` (what an experiment file sets for a sweep over
methods); each layer gets its own instance via ``methods.rebuild`` (same seed).
"""
from __future__ import annotations

import math
import os
import sys
from typing import Any, Iterator, Mapping

import torch
from torch import Tensor, nn

import methods
from methods import to_plain
from methods.base import AttentionMethod
from runners.measure import Meter

from . import register
from .base import Task
from .models import t2t_vit
from .models.t2t_vit import TokenAttention, TokenPerformer
from .patching import MethodCall, replace_modules

try:  # timm's ViT attention (ViT, DeiT and the T2T-ViT backbone blocks)
    from timm.models.vision_transformer import Attention as TimmAttention
except ImportError:  # pragma: no cover
    TimmAttention = None

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64}


# --------------------------------------------------------------------------------------------
# Wrappers: same submodules (so the same state-dict names) as the module they replace; q, k, v
# are computed exactly as there, and the attention itself goes through a MethodCall.
# --------------------------------------------------------------------------------------------
class _Swapped(nn.Module):
    """Common part: the MethodCall in use, and optional capture of the last (q, k, v)."""

    def __init__(self, call: MethodCall, scale: float) -> None:
        super().__init__()
        self.call = call
        self.scale = float(scale)
        self.capture = False
        self.captured: tuple[Tensor, Tensor, Tensor] | None = None

    def _attend(self, q: Tensor, k: Tensor, v: Tensor, causal: bool = False) -> Tensor:
        if self.capture:
            self.captured = (q.detach(), k.detach(), v.detach())
        return self.call(q, k, v, causal=causal, scale=self.scale)


class SwappedTokenAttention(_Swapped):
    """Replaces a T2T ``TokenAttention``: qkv from the input width, v + proj(attention)."""

    def __init__(self, orig: TokenAttention, call: MethodCall) -> None:
        super().__init__(call, orig.scale)  # the T2T quirk: (input width)^-0.5, kept as is
        self.num_heads, self.in_dim = orig.num_heads, orig.in_dim
        self.qkv, self.attn_drop, self.proj, self.proj_drop = orig.qkv, orig.attn_drop, orig.proj, orig.proj_drop

    def forward(self, x: Tensor) -> Tensor:
        q, k, v = TokenAttention.qkv_heads(self, x)
        return TokenAttention.finish(self, self._attend(q, k, v), v)


class SwappedTokenPerformer(_Swapped):
    """Replaces a whole ``TokenPerformer`` (non-t T2T-ViT): the method replaces its built-in
    random-feature estimate of exp(q·k) (scale 1). ``w`` is kept, unused, for the state dict."""

    def __init__(self, orig: TokenPerformer, call: MethodCall) -> None:
        super().__init__(call, 1.0)
        self.emb = orig.emb
        self.kqv, self.dp, self.proj = orig.kqv, orig.dp, orig.proj
        self.norm1, self.norm2, self.mlp, self.w = orig.norm1, orig.norm2, orig.mlp, orig.w

    def forward(self, x: Tensor) -> Tensor:
        q, k, v = TokenPerformer.split(self, self.norm1(x))
        y = self._attend(q[:, None], k[:, None], v[:, None])[:, 0]
        x = v + self.dp(self.proj(y))
        return x + self.mlp(self.norm2(x))


class SwappedTimmAttention(_Swapped):
    """Replaces timm's ``vision_transformer.Attention`` (ViT, DeiT, T2T-ViT blocks)."""

    def __init__(self, orig: nn.Module, call: MethodCall) -> None:
        super().__init__(call, orig.scale)
        self.num_heads = orig.num_heads
        self.head_dim = getattr(orig, "head_dim", orig.qkv.out_features // (3 * orig.num_heads))
        self.attn_dim = getattr(orig, "attn_dim", self.num_heads * self.head_dim)
        self.qkv, self.q_norm, self.k_norm = orig.qkv, orig.q_norm, orig.k_norm
        self.attn_drop, self.proj, self.proj_drop = orig.attn_drop, orig.proj, orig.proj_drop
        self.norm = getattr(orig, "norm", nn.Identity())
        self.gate = getattr(orig, "gate", None)

    def forward(self, x: Tensor, attn_mask: Tensor | None = None, is_causal: bool = False) -> Tensor:
        if attn_mask is not None:
            raise NotImplementedError("the imagenet task does not pass attention masks to swapped methods.")
        b, n, _ = x.shape
        gate = self.gate(x).sigmoid() if self.gate is not None else None
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        out = self._attend(q, k, v, causal=is_causal)
        out = self.norm(out.transpose(1, 2).reshape(b, n, self.attn_dim))
        if gate is not None:
            out = out * gate
        return self.proj_drop(self.proj(out))


def _is_attention(mod: nn.Module) -> bool:
    kinds: tuple[type, ...] = (TokenAttention, TokenPerformer)
    if TimmAttention is not None:
        kinds += (TimmAttention,)
    return isinstance(mod, kinds) and not isinstance(mod, _Swapped)


def _wrap(mod: nn.Module, call: MethodCall) -> _Swapped:
    if isinstance(mod, TokenAttention):
        return SwappedTokenAttention(mod, call)
    if isinstance(mod, TokenPerformer):
        return SwappedTokenPerformer(mod, call)
    return SwappedTimmAttention(mod, call)


def layer_label(module_name: str) -> str:
    """Short column-safe label: T2T token layers -> ``t2t1``/``t2t2``, ``blocks.3.attn`` -> ``block3``."""
    parts = module_name.split(".")
    if parts[0] == "tokens_to_token" and len(parts) > 1 and parts[1].startswith("attention"):
        return "t2t" + parts[1][len("attention"):]
    if len(parts) == 3 and parts[0] == "blocks" and parts[2] == "attn":
        return f"block{parts[1]}"
    return module_name.replace(".", "_")


def attention_layers(model: nn.Module) -> dict[str, str]:
    """{label: module name} of every swappable attention module, in model order."""
    return {layer_label(name): name for name, mod in model.named_modules() if name and _is_attention(mod)}


def swap_attention(
    model: nn.Module, layers: list[str] | None = None, method: AttentionMethod | None = None, meter: Meter | None = None
) -> dict[str, "_Swapped"]:
    """Replace the attention modules labelled ``layers`` (None: all) by wrappers that call
    ``method`` (default: exact) through a ``MethodCall``; return {label: wrapper}."""
    cands = attention_layers(model)
    labels = list(cands) if layers is None else list(layers)
    unknown = [lab for lab in labels if lab not in cands]
    if unknown:
        raise ValueError(f"task.layers names {unknown}, which are not attention layers; candidates: {list(cands)}.")
    method = method if method is not None else methods.build("exact")
    label_of = {cands[lab]: lab for lab in labels}
    wrappers: dict[str, _Swapped] = {}

    def make(name: str, mod: nn.Module) -> nn.Module:
        wrappers[label_of[name]] = w = _wrap(mod, MethodCall(method, label_of[name], meter))
        return w

    replace_modules(model, lambda n, m: n in label_of, make, layers=list(label_of))
    return {lab: wrappers[lab] for lab in labels}


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------
class SyntheticImages(torch.utils.data.Dataset):
    """``count`` random images in [0, 1], normalised like real inputs, with random labels
    (one seeded torch generator): for smoke runs only, accuracy on them means nothing."""

    def __init__(self, count: int, input_size: tuple[int, int, int], mean, std, num_classes: int, seed: int) -> None:
        g = torch.Generator().manual_seed(int(seed))
        images = torch.rand(count, *input_size, generator=g)
        mean_t = torch.tensor(mean, dtype=torch.float32)[:, None, None]
        std_t = torch.tensor(std, dtype=torch.float32)[:, None, None]
        self.images = (images - mean_t) / std_t
        self.labels = torch.randint(0, max(1, num_classes), (count,), generator=g)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        return self.images[i], int(self.labels[i])


def imagenet_val_dir(data_root: str | None) -> str:
    """The ImageNet validation ImageFolder: ``task.data_root`` or ``$IMAGENET_ROOT``, either the
    folder of class folders itself or a folder holding ``val/``."""
    root = data_root or os.environ.get("IMAGENET_ROOT")
    hint = (
        "set task.data_root=/path/to/imagenet/val (an ImageFolder: one folder per class, e.g. n01440764/) "
        "or the IMAGENET_ROOT environment variable; task.data=synthetic runs without data."
    )
    if not root:
        raise FileNotFoundError(f"ImageNet validation data not configured: {hint}")
    root = os.path.expanduser(str(root))
    if not os.path.isdir(root):
        raise FileNotFoundError(f"ImageNet validation data not found at {root!r}: {hint}")
    val = os.path.join(root, "val")
    return val if os.path.isdir(val) else root


# --------------------------------------------------------------------------------------------
# Task
# --------------------------------------------------------------------------------------------
@register("imagenet")
class ImageNetTask(Task):
    """Top-1/top-5 on ImageNet val (or synthetic images) with a method swapped into ``task.layers``."""

    def __init__(self, cfg: Mapping[str, Any], device: torch.device, seed: int = 0) -> None:
        super().__init__(cfg, device, seed)
        self.model_name = str(cfg.get("model", "t2t_vit_t_24"))
        dtype = str(cfg.get("dtype", "float32"))
        if dtype not in _DTYPES:
            raise ValueError(f"task.dtype must be one of {sorted(_DTYPES)}, got {dtype!r}.")
        self.dtype = _DTYPES[dtype]
        self.batch_size = int(cfg.get("batch_size", 64))
        limit = cfg.get("limit")
        self.limit = None if limit in (None, "null") else int(limit)
        if self.batch_size < 1 or (self.limit is not None and self.limit < 1):
            raise ValueError("task.batch_size and task.limit must be positive integers.")
        self.data_kind = str(cfg.get("data", "imagenet"))
        if self.data_kind not in ("imagenet", "synthetic"):
            raise ValueError(f"task.data must be 'imagenet' or 'synthetic', got {self.data_kind!r}.")
        # Fail on missing data before spending time on weights.
        self.val_dir = imagenet_val_dir(cfg.get("data_root")) if self.data_kind == "imagenet" else None
        self.notes: list[str] = []
        self.model = self._build_model().to(self.device, self.dtype).eval()
        self.data_config = self._data_config()
        self.loader = self._loader()
        self.candidates = attention_layers(self.model)  # {label: module name}, before any swap
        self.layers = self._resolve_layers(cfg.get("layers", "default"))

    # --- model --------------------------------------------------------------------------
    def _build_model(self) -> nn.Module:
        name, cfg = self.model_name, self.cfg
        kwargs = dict(to_plain(cfg.get("model_kwargs")) or {})
        checkpoint = cfg.get("checkpoint")
        pretrained = bool(cfg.get("pretrained", True))
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
        """Labels of the layers to swap: 'default' (T2T: t2t1, t2t2; ViT: all blocks), 'all', or a
        list / comma string of labels (``t2t1``, ``block0`` …) or module names."""
        cands = self.candidates
        if not cands:
            raise ValueError(f"task.model={self.model_name!r} has no attention module this task can swap.")
        spec = to_plain(spec)
        if spec in (None, "default"):
            t2t = [lab for lab in cands if lab.startswith("t2t")]
            return t2t or [lab for lab in cands if lab.startswith("block")] or list(cands)
        if spec == "all":
            return list(cands)
        items = [s.strip() for s in spec.split(",")] if isinstance(spec, str) else [str(s) for s in spec]
        by_module = {mod: lab for lab, mod in cands.items()}
        out = []
        for it in items:
            lab = it if it in cands else by_module.get(it)
            if lab is None:
                raise ValueError(f"task.layers names {it!r}, which is not an attention layer; candidates: {list(cands)}.")
            if lab not in out:
                out.append(lab)
        return out

    # --- data ---------------------------------------------------------------------------
    def _data_config(self) -> dict[str, Any]:
        from timm.data import resolve_data_config

        args: dict[str, Any] = {}
        img_size = getattr(getattr(self.model, "patch_embed", None), "img_size", None)
        if img_size is not None:  # timm keeps the pretrained cfg's size when img_size is overridden
            hw = tuple(img_size) if isinstance(img_size, (tuple, list)) else (img_size, img_size)
            args["input_size"] = (3, *hw)
        return resolve_data_config(args, model=self.model)

    def _loader(self) -> torch.utils.data.DataLoader:
        cfg = self.cfg
        subset_seed = int(cfg.get("subset_seed", 0))
        if self.data_kind == "synthetic":
            num_classes = int(getattr(self.model, "num_classes", 1000) or 1000)
            ds: torch.utils.data.Dataset = SyntheticImages(
                self.limit or 64, tuple(self.data_config["input_size"]), self.data_config["mean"],
                self.data_config["std"], num_classes, subset_seed,
            )
            self.notes.append("synthetic images (task.data=synthetic): accuracy is meaningless")
            workers = 0
        else:
            from timm.data import create_transform
            from torchvision.datasets import ImageFolder

            ds = ImageFolder(self.val_dir, transform=create_transform(**self.data_config, is_training=False))
            if len(ds) == 0:
                raise FileNotFoundError(f"no images under task.data_root ({self.val_dir!r}); set task.data_root.")
            if self.limit is not None and self.limit < len(ds):
                g = torch.Generator().manual_seed(subset_seed)  # a fixed random subset, same for every method
                idx = torch.randperm(len(ds), generator=g)[: self.limit].sort().values.tolist()
                ds = torch.utils.data.Subset(ds, idx)
            workers = int(cfg.get("workers", 4))
        return torch.utils.data.DataLoader(
            ds, batch_size=self.batch_size, shuffle=False, num_workers=workers,
            pin_memory=self.device.type == "cuda",
        )

    # --- swapping -----------------------------------------------------------------------
    def _overrides(self, method_name: str) -> dict[str, dict[str, Any]]:
        by_module = {mod: lab for lab, mod in self.candidates.items()}
        merged: dict[str, dict[str, Any]] = {}
        for key in ("layer_overrides_by_method", "layer_overrides"):
            table = to_plain(self.cfg.get(key)) or {}
            if key == "layer_overrides_by_method":
                table = table.get(method_name) or {}
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
        for lab, w in self._wrappers.items():
            call = MethodCall(per_layer[lab], prefix + lab, meter)
            call.timing = False  # latency is measured separately, on captured inputs
            w.call = call

    # --- the run ------------------------------------------------------------------------
    @torch.no_grad()
    def run(self, method: AttentionMethod, meter: Meter) -> Iterator[dict[str, Any]]:
        overrides = self._overrides(method.name)
        self._install(meter)
        is_exact = method.name == "exact" and not overrides
        approx = {lab: methods.rebuild(method, **overrides.get(lab, {})) for lab in self.layers}
        exact = methods.build("exact")
        exact_all = {lab: exact for lab in self.layers}

        # Accuracy pass: approximate and exact model on the same images.
        correct1 = correct5 = ex1 = ex5 = agree = total = 0
        first: Tensor | None = None
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
        if first is None:
            raise RuntimeError("the ImageNet loader yielded no images; check task.data_root and task.limit.")
        stats = {lab: m.extra_stats() for lab, m in approx.items()}

        row: dict[str, Any] = {
            "top1": 100.0 * correct1 / total,
            "top5": 100.0 * correct5 / total,
            "exact_top1": 100.0 * ex1 / total,
            "exact_top5": 100.0 * ex5 / total,
            "agreement": 100.0 * agree / total,
            "num_images": total,
        }

        # Timing on the first batch: capture each layer's (q, k, v) in one approximate forward.
        for m in approx.values():
            m.reseed(method._seed)
        self._set_calls(approx, meter)
        for w in self._wrappers.values():
            w.capture = True
        self.model(first)
        for w in self._wrappers.values():
            w.capture = False
        attn_ms = exact_attn_ms = 0.0
        for i, (lab, w) in enumerate(self._wrappers.items()):
            q, k, v = w.captured  # type: ignore[misc]
            fn_a = lambda m=approx[lab], q=q, k=k, v=v, s=w.scale: m(q, k, v, scale=s)  # noqa: E731
            fn_e = lambda q=q, k=k, v=v, s=w.scale: exact(q, k, v, scale=s)  # noqa: E731
            meter.measure(fn_a, lab)
            meter.measure(fn_e, "exact_" + lab)
            a, e = meter.results[lab], meter.results["exact_" + lab]
            row.update(a.row(lab + "_"))
            row.update(e.row("exact_" + lab + "_"))
            row[f"{lab}_speedup"] = e.median_ms / a.median_ms if a.median_ms > 0 else math.nan
            row[f"{lab}_n"] = q.shape[2]
            attn_ms += a.median_ms
            exact_attn_ms += e.median_ms
            if i == 0:
                row.update({"n": q.shape[2], "heads": q.shape[1], "head_dim": q.shape[3], "scale": w.scale})
            w.captured = None
        row["attn_latency_ms"] = attn_ms
        row["exact_attn_latency_ms"] = exact_attn_ms
        row["attn_speedup"] = exact_attn_ms / attn_ms if attn_ms > 0 else math.nan

        # Whole forward, approximate then exact.
        self._set_calls(approx, meter)
        meter.measure(lambda: self.model(first), "forward")
        self._set_calls(exact_all, meter, "exact_")
        meter.measure(lambda: self.model(first), "exact_forward")
        fwd, efwd = meter.results["forward"], meter.results["exact_forward"]
        row.update(fwd.row())
        row.update(efwd.row("exact_"))
        row["speedup"] = efwd.median_ms / fwd.median_ms if fwd.median_ms > 0 else math.nan
        row["images_per_s"] = first.shape[0] / (fwd.median_ms / 1e3) if fwd.median_ms > 0 else math.nan
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
