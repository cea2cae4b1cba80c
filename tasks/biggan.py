"""BigGAN image generation with the self-attention layer swapped: FID, IS, fid_vs_exact, latency.

The KDEformer / Thinformer / WildCat generation benchmark: pretrained BigGAN-deep-512
(``pytorch-pretrained-biggan``), whose single SAGAN self-attention layer sits at 64x64: 4096
queries against 1024 keys (phi and g are 2x2 max-pooled), query/key dim 64, value dim 256, no
1/sqrt(d) scaling (scale=1.0), one head. Images: ``images_per_class`` per class (5 -> 5,000),
class order 0,0,...,1,1,..., latents ``truncated_noise_sample(N, z_dim, truncation, seed=run seed)``
exactly as the official script (microsoft/thinformer ``examples/biggan/compress_bigGAN_script.py``,
built on majid-daliri/kdeformer), truncation 0.4.

``tasks.adapters.biggan.SwappedSelfAttn`` replaces ``pytorch_pretrained_biggan.model.SelfAttn``
keeping its submodules (same state-dict names): theta/phi/g 1x1 spectral-norm convs and the max-pooling as in the
original, then ``method(q=(B,1,HW,C/8), k=(B,1,HW/4,C/8), v=(B,1,HW/4,C/2), scale=1.0)`` through
a ``MethodCall``, then the original output conv and ``x + gamma * o``. With ``method=exact`` it
reproduces the original generator to float rounding.

One run yields one row: ``fid`` (against ``task.fid_stats``, pytorch-fid's Inception features),
``is_mean``/``is_std`` (10 splits, on ``task.is_network``'s logits: by default torchvision's
ImageNet InceptionV3 as the anchor tables; the row's ``is_network`` says which),
``fid_vs_exact`` (FID against the exact method's images for the same latents, generated in the
same run or read from ``task.exact_cache_dir``), ``exact_fid``/``exact_is_*``, the attention
layer's latency at batch ``task.latency_batch`` (``latency_ms``, ``exact_latency_ms``,
``speedup``, ``peak_mem_mb``), the whole generator's (``gen_latency_ms``, ``exact_gen_latency_ms``,
``gen_speedup``) and the wall time of generating all images (``gen_time_s``, ``images_per_s``).
Metric details (networks, preprocessing, the IS formula): tasks/metrics/fid.py.

The papers' per-method budgets are the preset ``biggan`` (``preset=biggan``, set by
conf/experiment/biggan.yaml), composed into ``method.*`` before command-line overrides.

``task.model=tiny``: a small seeded random BigGAN-deep (64x64 output, attention at 32x32: 1024
queries, 256 keys, dims 4/16, 10 classes) for tests and smoke runs; its FID/IS come from
``task.feature_net=tiny`` / ``task.is_network=tiny`` unless set otherwise, and the row's ``note``
says they are smoke values.
"""
from __future__ import annotations

import glob
import hashlib
import json
import math
import os
from typing import Any, Iterator, Mapping

import numpy as np
import torch
from torch import Tensor

from attnbench import methods
from attnbench.core.files import replace_atomic
from attnbench.core.knobs import Bool, Choice, Float, Int, Str
from attnbench.methods.base import AttentionMethod
from attnbench.core.measure import Meter
from attnbench.core.progress import Progress

from attnbench.tasks.metrics import fid as fidlib
from attnbench.tasks import register
from attnbench.tasks.base import Task
from attnbench.tasks.adapters import MethodCall
from attnbench.tasks.adapters.biggan import swap_attention

from pytorch_pretrained_biggan import BigGAN, BigGANConfig
from pytorch_pretrained_biggan.model import (
    CONFIG_NAME,
    PRETRAINED_CONFIG_ARCHIVE_MAP,
    PRETRAINED_MODEL_ARCHIVE_MAP,
    WEIGHTS_NAME,
)
from pytorch_pretrained_biggan.utils import truncated_noise_sample

# A small BigGAN-deep: 4x4x(16*16) -> 64x64 with attention at 32x32 (SelfAttn(32): qk 4, v 16).
TINY_CONFIG = dict(
    output_dim=64, z_dim=16, class_embed_dim=16, channel_width=16, num_classes=10,
    layers=[(False, 16, 16), (True, 16, 8), (True, 8, 4), (True, 4, 2), (True, 2, 1)],
    attention_layer_position=4, eps=1e-4, n_stats=51,
)
TINY_QK_GAIN = 10.0
TINY_RGB_GAIN = 8.0


# --------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------
@torch.no_grad()
def tiny_biggan(seed: int = 0) -> BigGAN:
    """Seeded random small BigGAN (``TINY_CONFIG``); weights N(0, 0.1^2)-ish, gamma = 1 so
    attention matters, unconditional BN weight 1 / bias 0 (the library leaves them uninitialised)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        model = BigGAN(BigGANConfig(**TINY_CONFIG))
        for name, p in model.named_parameters():
            if name.endswith("gamma"):
                p.fill_(1.0)
            elif name == "generator.bn.weight":
                p.fill_(1.0)
            elif name == "generator.bn.bias":
                p.zero_()
            else:
                p.normal_(0.0, 0.1)
        # Spectral norm divides by u^T W v; start u, v at W's top singular vectors (random ones
        # give a tiny sigma and an exploding generator; pretrained files store converged ones).
        for name, buf in model.named_buffers():
            if name.endswith("weight_u"):
                mod = model.get_submodule(name.rsplit(".", 1)[0])
                w = mod.weight_orig.reshape(mod.weight_orig.shape[0], -1)
                u, _, vh = torch.linalg.svd(w, full_matrices=False)
                mod.weight_u.copy_(u[:, 0])
                mod.weight_v.copy_(vh[0])
                if "snconv1x1_theta" in name or "snconv1x1_phi" in name:
                    # Gain TINY_QK_GAIN on theta and phi (sigma under-stated by that factor), so
                    # the tiny attention is peaked like a trained one rather than near-uniform.
                    mod.weight_u.div_(TINY_QK_GAIN)
                elif name.startswith("generator.conv_to_rgb"):
                    mod.weight_u.div_(TINY_RGB_GAIN)  # images spanning [-1, 1], not ~0 +- 0.1
    return model.eval()


def _cached_download(url: str) -> str | None:
    """The file pytorch-pretrained-biggan's ``cached_path`` stored for ``url``, if any (offline use)."""
    from pytorch_pretrained_biggan.file_utils import PYTORCH_PRETRAINED_BIGGAN_CACHE, url_to_filename

    hits = [p for p in glob.glob(os.path.join(str(PYTORCH_PRETRAINED_BIGGAN_CACHE), url_to_filename(url) + "*"))
            if not p.endswith(".json")]
    return sorted(hits)[0] if hits else None


def load_biggan(name: str, weights: str | None) -> tuple[BigGAN, str]:
    """BigGAN-deep from ``weights`` (a folder with config.json + pytorch_model.bin) or the library's
    download / cache for ``name``; every parameter and buffer must be in the weight file."""
    if weights:
        folder = os.path.expanduser(str(weights))
        cfg_file, bin_file = os.path.join(folder, CONFIG_NAME), os.path.join(folder, WEIGHTS_NAME)
        if not (os.path.isfile(cfg_file) and os.path.isfile(bin_file)):
            raise FileNotFoundError(f"task.weights={folder!r} must be a folder with {CONFIG_NAME} and {WEIGHTS_NAME} "
                                    f"(pytorch-pretrained-biggan's {name} files).")
        source = f"folder:{os.path.basename(folder.rstrip('/'))}"
    else:
        if name not in PRETRAINED_MODEL_ARCHIVE_MAP:
            raise ValueError(f"task.model must be 'tiny' or one of {sorted(PRETRAINED_MODEL_ARCHIVE_MAP)}, got {name!r}.")
        from pytorch_pretrained_biggan.file_utils import cached_path

        urls = PRETRAINED_CONFIG_ARCHIVE_MAP[name], PRETRAINED_MODEL_ARCHIVE_MAP[name]
        try:
            cfg_file, bin_file = (cached_path(u) for u in urls)
        except Exception as e:  # offline: fall back to an earlier download in the library's cache
            cfg_file, bin_file = (_cached_download(u) for u in urls)
            if cfg_file is None or bin_file is None:
                raise RuntimeError(
                    f"could not download or find cached {name} weights ({type(e).__name__}); download "
                    f"{urls[0]} and {urls[1]} into a folder as {CONFIG_NAME} and {WEIGHTS_NAME} and set "
                    f"task.weights=FOLDER (or task.model=tiny for a smoke run)."
                ) from e
        source = "download"
    model = BigGAN(BigGANConfig.from_json_file(cfg_file))
    state = torch.load(bin_file, map_location="cpu")
    res = model.load_state_dict(state, strict=False)
    if res.missing_keys:
        raise RuntimeError(f"the {name} weight file lacks {len(res.missing_keys)} entries, e.g. {res.missing_keys[:3]}; "
                           f"check task.weights.")
    return model.eval(), source


# --------------------------------------------------------------------------------------------
# Task
# --------------------------------------------------------------------------------------------
@register("biggan")
class BigGANTask(Task):
    """Generate images with a method in BigGAN's self-attention; FID, IS, fid_vs_exact, latency."""

    knobs = {
        "model": Choice("biggan-deep-128", "biggan-deep-256", "biggan-deep-512", "tiny"),
        "weights": Str(optional=True),
        "model_seed": Int(0),
        "images_per_class": Int(1),
        "num_classes": Int(1, optional=True),
        "truncation": Float(0, 1, lo_open=True),
        "batch_size": Int(1),
        "latency_batch": Int(1),
        "compare_exact": Bool(),
        "exact_cache_dir": Str(optional=True),
        "fid_stats": Str(optional=True),
        "feature_net": Choice("inception", "tiny", optional=True),
        "inception_weights": Str(optional=True),
        "fid_resize": Int(0, optional=True),
        "double_normalize": Bool(),
        "is_splits": Int(1),
        "is_network": Choice(*fidlib.IS_NETWORKS, optional=True),
        "is_weights": Str(optional=True),
        "save_images": Bool(),
        "image_dir": Str(optional=True),
    }

    def __init__(self, cfg: Mapping[str, Any], device: torch.device, seed: int = 0) -> None:
        super().__init__(cfg, device, seed)
        cfg = self.cfg
        self.model_name = cfg["model"]
        self.tiny = self.model_name == "tiny"
        self.notes: list[str] = []
        self.truncation = cfg["truncation"]
        self.images_per_class = cfg["images_per_class"]
        self.batch_size = cfg["batch_size"]
        self.latency_batch = cfg["latency_batch"]
        self.is_splits = cfg["is_splits"]
        self.compare_exact = cfg["compare_exact"]
        self.fid_resize = cfg["fid_resize"] or None
        self.double_normalize = cfg["double_normalize"]
        self.feature_kind = cfg["feature_net"] or ("tiny" if self.tiny else "inception")
        self.is_kind = cfg["is_network"] or ("tiny" if self.tiny else "torchvision")

        # Reference statistics first (fail before loading weights).
        stats_path = cfg["fid_stats"]
        self.ref: tuple[np.ndarray, np.ndarray] | None = None
        if stats_path:
            mu, sigma, meta = fidlib.load_stats(str(stats_path))
            self._check_stats_meta(meta)
            self.ref = (mu, sigma)
        elif not self.tiny:
            raise ValueError("task.fid_stats is not set: give the .npz of ImageNet validation statistics "
                             "(make it with `python -m attnbench.tasks.metrics.fid stats IMAGENET_VAL_FOLDER OUT.npz`).")

        if self.tiny:
            self.model, self.weights = tiny_biggan(seed=cfg["model_seed"]), "random-init"
            self.notes.append("tiny random BigGAN (task.model=tiny): FID/IS are smoke values")
        else:
            self.model, self.weights = load_biggan(self.model_name, cfg["weights"])
        self.model = self.model.to(device).eval()
        self.feature_net = fidlib.build_feature_net(
            self.feature_kind, cfg["inception_weights"], self.double_normalize, cfg["model_seed"]
        ).to(device)
        # IS network: the feature net's own logits where it is that network, else a second one.
        shared = (self.is_kind, self.feature_kind) in {("tiny", "tiny"), ("pytorch_fid", "inception")}
        self.is_net = None if shared else fidlib.build_is_net(
            self.is_kind, cfg["inception_weights"] if self.is_kind == "pytorch_fid" else cfg["is_weights"],
            self.double_normalize, cfg["model_seed"]).to(device)
        if self.feature_kind == "tiny" and not self.tiny:
            self.notes.append("tiny random feature net (task.feature_net=tiny): FID is a smoke value")
        if self.is_kind == "tiny" and not self.tiny:
            self.notes.append("tiny random IS net (task.is_network=tiny): IS is a smoke value")
        if self.ref is None:
            self.notes.append("no task.fid_stats: fid is against exact images of independent latents (seed + 1000)")

        n_cls = int(self.model.config.num_classes)
        classes = cfg["num_classes"]
        self.num_classes = n_cls if classes is None else classes
        if not 1 <= self.num_classes <= n_cls:
            raise ValueError(f"task.num_classes must be in [1, {n_cls}], got {self.num_classes}.")
        self.attn = swap_attention(self.model)

    def _check_stats_meta(self, meta: Mapping[str, Any]) -> None:
        want = {"resize": self.fid_resize or 0, "feature_net": self.feature_kind, "double_normalize": self.double_normalize}
        for key, val in want.items():
            if key in meta and meta[key] != val and not (key == "resize" and not meta[key] and not val):
                raise ValueError(f"task.fid_stats was made with {key}={meta[key]!r} but this run uses {val!r}; "
                                 f"remake it with the same settings (python -m attnbench.tasks.metrics.fid stats --help).")

    # --- inputs -------------------------------------------------------------------------
    def latents(self, seed: int) -> tuple[Tensor, Tensor]:
        """``images_per_class`` truncated latents per class (class-major order) and one-hot classes."""
        labels = np.repeat(np.arange(self.num_classes), self.images_per_class)
        z = truncated_noise_sample(len(labels), self.model.config.z_dim, self.truncation, seed=int(seed))
        y = np.zeros((len(labels), self.model.config.num_classes), dtype=np.float32)
        y[np.arange(len(labels)), labels] = 1.0
        return torch.from_numpy(z), torch.from_numpy(y)

    @torch.no_grad()
    def generate(self, method: AttentionMethod, z: Tensor, y: Tensor, meter: Meter | None = None,
                 with_logits: bool = True) -> tuple[np.ndarray, np.ndarray, Tensor, float]:
        """Images for all latents with ``method`` in the attention layer; returns (features, IS
        logits of ``task.is_network`` (empty without ``with_logits``), the first 64 images in [0, 1],
        seconds of generation alone: the sum of ``meter.timed`` samples of each batch's generator call)."""
        self.attn.call = MethodCall(method, "attn", None)
        meter = meter or Meter(device=self.device, memory=False)
        label = f"generate/{id(method)}"
        meter.results.pop(label, None)
        feats, logits, keep = [], [], []
        progress = Progress(f"biggan {getattr(method, 'name', 'method')}: images", len(z))
        for i in range(0, len(z), self.batch_size):
            zb, yb = z[i: i + self.batch_size].to(self.device), y[i: i + self.batch_size].to(self.device)
            img = meter.timed(label, lambda: self.model(zb, yb, self.truncation))
            img = fidlib.to_unit_uint8_grid(img)
            if sum(len(k) for k in keep) < 64:
                keep.append(img[: 64 - sum(len(k) for k in keep)].cpu())
            img = fidlib.resize_square(img, self.fid_resize)
            f, lg = fidlib.features(self.feature_net, img)
            feats.append(f)
            if with_logits:
                logits.append(lg if self.is_net is None else fidlib.features(self.is_net, img)[1])
            progress.step(len(zb))
        gen_s = sum(meter.results.pop(label).samples_ms) / 1e3
        logits_all = np.concatenate(logits) if logits else np.zeros((len(z), 0), np.float32)
        return np.concatenate(feats), logits_all, torch.cat(keep), gen_s

    def _exact_cache_file(self, seed: int) -> str | None:
        folder = self.cfg["exact_cache_dir"]
        if not folder:
            return None
        key = dict(model=self.model_name, weights=self.weights, truncation=self.truncation, seed=int(seed),
                   per_class=self.images_per_class, classes=self.num_classes, feature_net=self.feature_kind,
                   is_network=self.is_kind,
                   resize=self.fid_resize, double_normalize=self.double_normalize, batch=self.batch_size,
                   device=self.device.type)
        h = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
        return os.path.join(os.path.expanduser(str(folder)), f"biggan_exact_{h}.npz")

    def exact_features(self, exact: AttentionMethod, z: Tensor, y: Tensor, seed: int):
        path = self._exact_cache_file(seed)
        if path and os.path.isfile(path):
            with np.load(path) as f:
                return f["feats"], f["logits"], None, math.nan
        out = self.generate(exact, z, y)
        self._write_exact_cache(seed, out[0], out[1])
        return out

    def _write_exact_cache(self, seed: int, feats: np.ndarray, logits: np.ndarray) -> None:
        path = self._exact_cache_file(seed)
        if path:
            def save(tmp: str) -> None:
                with open(tmp, "wb") as f:  # a file object: np.savez would add ".npz" to a bare name
                    np.savez(f, feats=feats, logits=logits)

            replace_atomic(path, save)  # parallel sweep jobs may write the same file

    def _save_grid(self, images: Tensor | None, label: str) -> str | None:
        if images is None or not self.cfg["save_images"]:
            return None
        from torchvision.utils import save_image

        folder = os.path.expanduser(str(self.cfg["image_dir"] or "results/figures/biggan"))
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, f"{self.model_name}_{label}_seed{self.seed}.png")
        save_image(images, path, nrow=8)
        return path

    # --- the run ------------------------------------------------------------------------
    @torch.no_grad()
    def run(self, method: AttentionMethod, meter: Meter) -> Iterator[dict[str, Any]]:
        approx = method
        exact = methods.build("exact")
        is_exact = method.name == "exact"
        seed = self.seed
        z, y = self.latents(seed)

        approx.reseed(method._seed)
        feats, logits, imgs, gen_s = self.generate(approx, z, y, meter)
        row: dict[str, Any] = {"num_images": len(z), "truncation": self.truncation}
        row["is_mean"], row["is_std"] = fidlib.inception_score(logits, self.is_splits)
        row["gen_time_s"] = gen_s
        row["images_per_s"] = len(z) / gen_s if gen_s > 0 else math.nan
        saved = [self._save_grid(imgs, method.name)]

        ex_feats = ex_logits = None
        if is_exact:
            ex_feats, ex_logits = feats, logits
            row["fid_vs_exact"] = 0.0
            self._write_exact_cache(seed, feats, logits)
        elif self.compare_exact:
            ex_feats, ex_logits, ex_imgs, _ = self.exact_features(exact, z, y, seed)
            row["fid_vs_exact"] = fidlib.fid_between(feats, ex_feats)
            saved.append(self._save_grid(ex_imgs, "exact"))

        ref = self.ref
        if ref is None:  # tiny smoke run without statistics: exact images of other latents
            rz, ry = self.latents(seed + 1000)
            rf = self.generate(exact, rz, ry, with_logits=False)[0]
            ref = fidlib.statistics(rf)
        row["fid"] = fidlib.frechet_distance(*fidlib.statistics(feats), *ref)
        if ex_feats is not None:
            row["exact_fid"] = fidlib.frechet_distance(*fidlib.statistics(ex_feats), *ref)
            row["exact_is_mean"], row["exact_is_std"] = fidlib.inception_score(ex_logits, self.is_splits)

        # Latency: the attention layer on the (q, k, v) it receives at batch latency_batch.
        idx = torch.arange(self.latency_batch) % len(z)
        zb, yb = z[idx].to(self.device), y[idx].to(self.device)
        approx.reseed(method._seed)
        self.attn.call = MethodCall(approx, "attn", None)
        self.attn.capture = True
        self.model(zb, yb, self.truncation)
        self.attn.capture = False
        q, k, v = self.attn.captured[:3]  # type: ignore[index]
        self.attn.captured = None
        _, _, attn = meter.compare(lambda: approx(q, k, v, scale=1.0), lambda: exact(q, k, v, scale=1.0), label="attn")
        row.update(attn.columns())
        row.update({"batch": q.shape[0], "heads": q.shape[1], "n": q.shape[2], "n_keys": k.shape[2],
                    "head_dim": q.shape[3], "v_dim": v.shape[3], "causal": False, "scale": 1.0})
        # Whole generator forward at the same batch.
        approx_call, exact_call = MethodCall(approx, "attn", None), MethodCall(exact, "exact_attn", None)

        def generator_with(call: MethodCall) -> Tensor:
            self.attn.call = call
            return self.model(zb, yb, self.truncation)

        _, _, gen = meter.compare(lambda: generator_with(approx_call), lambda: generator_with(exact_call), label="gen")
        row.update(gen.columns("gen_"))

        row.update(approx.extra_stats())
        row["feature_net"] = self.feature_kind
        row["is_network"] = self.is_kind
        row["is_images"] = len(z) // self.is_splits * self.is_splits  # BigGAN-PyTorch's splits drop N mod splits
        row["weights"] = self.weights
        row["images_saved"] = ";".join(p for p in saved if p)
        row["note"] = "; ".join(self.notes)
        yield row
