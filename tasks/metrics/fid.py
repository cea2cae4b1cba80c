"""FID and Inception Score helpers for the BigGAN task, and a command for reference statistics.

    python -m attnbench.tasks.metrics.fid stats IMAGE_FOLDER OUT.npz [--resize 128] [--feature-net inception|tiny]
        [--inception-weights PATH] [--double-normalize] [--batch-size 50] [--device auto] [--limit N]

walks IMAGE_FOLDER recursively (jpg/jpeg/png/... any case), centre-crops each image to a square
on its long edge, resizes it to ``--resize`` pixels (PIL bilinear, antialiased; 0 keeps the size,
then every image must have the same size), and saves ``mu``/``sigma`` of its pool features with
the preprocessing settings (``resize``, ``feature_net``, ``double_normalize``, ``count``) in an
.npz that ``task.fid_stats`` reads. This is the preprocessing of the KDEformer / Thinformer
evaluation code (``examples/biggan/compute_fid.py`` in microsoft/thinformer: CenterCropLongEdge,
Resize(128), pytorch-fid's InceptionV3 pool3 features).

Networks (all take images in [0, 1], (B, 3, H, W), and return ``(features, logits)``):
- ``inception``: pytorch-fid's FID InceptionV3 (the TF 2015-12-05 graph ported to PyTorch), built
  from torchvision's InceptionV3 with pytorch-fid's patched blocks, weights from
  ``task.inception_weights`` / ``--inception-weights`` or pytorch-fid's release URL (torch hub
  cache). Features: the 2048-d pool3 output (FID). Logits: its 1008-way ``fc`` on pool3 (IS with
  ``task.is_network=pytorch_fid``).
- ``torchvision`` (``TorchvisionInception``, IS only): torchvision's ImageNet InceptionV3
  (``inception_v3_google-0cc3c7bd.pth``, ``Inception_V3_Weights.IMAGENET1K_V1``) wrapped as
  BigGAN-PyTorch's ``inception_utils.WrapInception`` does, which is how the anchor tables
  (KDEformer / Thinformer / WildCat, e.g. exact 32.15 FID / 57.79 IS) computed IS: their
  ``compute_inception.py`` loads the PNGs, centre-crops, resizes to 128, maps to [-1, 1], and
  ``WrapInception`` maps back to [0, 1], normalises with the ImageNet mean/std, upsamples to
  299x299 (bilinear, ``align_corners=True``) and runs the layers itself (so torchvision's
  ``transform_input`` plays no part; they pass ``transform_input=False``); logits: the 1000-way
  ``fc`` on the spatial mean of Mixed_7c (dropout is off in eval). FID stays pytorch-fid's.
- ``tiny``: a seeded random 2-layer conv net (64-d features, 10 logits) for tests and smoke runs;
  its FID / IS mean nothing beyond "the pipeline runs".

IS (``inception_score``): BigGAN-PyTorch's ``calculate_inception_score`` on ``softmax(logits)``:
``splits`` chunks of ``N // splits`` consecutive images (the last ``N mod splits`` images are not
used), per chunk exp(mean_x KL(p(y|x) || p(y))) with p(y) the chunk's mean prediction; the mean
and population sd over chunks.

``double_normalize``: the KDEformer scripts normalise images to [-1, 1] and pass them to
pytorch-fid's InceptionV3, which maps [0, 1] to [-1, 1] again; set it to reproduce their numbers
(reference statistics must be made with the same setting; the task checks). It applies to the
pytorch-fid and tiny networks only: the anchors' IS path maps their [-1, 1] input back to [0, 1].
"""
from __future__ import annotations

import argparse
import math
import os
import sys
from typing import Any, Iterable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp"}


# --------------------------------------------------------------------------------------------
# Feature networks
# --------------------------------------------------------------------------------------------

def load_weights(path: str | None, url: str, *, missing: str, offline: str) -> Any:
    """A state dict from a local ``path``, else from the torch hub cache (or ``url``).

    ``missing`` (formatted with ``path``) and ``offline`` (with ``err``, the exception's type name)
    are the errors' messages: each names the config key to set and the file to fetch.
    """
    if path:
        local = os.path.expanduser(str(path))
        if not os.path.isfile(local):
            raise FileNotFoundError(missing.format(path=local))
        return torch.load(local, map_location="cpu")
    try:
        return torch.hub.load_state_dict_from_url(url, map_location="cpu", progress=False)
    except Exception as e:  # offline and not in the torch hub cache
        raise RuntimeError(offline.format(err=type(e).__name__)) from e

class InceptionFeatures(nn.Module):
    """pytorch-fid's FID InceptionV3: (pool3 features (B, 2048), fc logits (B, 1008))."""

    def __init__(self, weights: str | None = None, double_normalize: bool = False) -> None:
        super().__init__()
        import torchvision
        from pytorch_fid import inception as pfi

        net = torchvision.models.inception_v3(num_classes=1008, aux_logits=False, weights=None, init_weights=False)
        # The FID graph's blocks (pytorch-fid's fid_inception_v3, minus its unconditional download).
        net.Mixed_5b = pfi.FIDInceptionA(192, pool_features=32)
        net.Mixed_5c = pfi.FIDInceptionA(256, pool_features=64)
        net.Mixed_5d = pfi.FIDInceptionA(288, pool_features=64)
        net.Mixed_6b = pfi.FIDInceptionC(768, channels_7x7=128)
        net.Mixed_6c = pfi.FIDInceptionC(768, channels_7x7=160)
        net.Mixed_6d = pfi.FIDInceptionC(768, channels_7x7=160)
        net.Mixed_6e = pfi.FIDInceptionC(768, channels_7x7=192)
        net.Mixed_7b = pfi.FIDInceptionE_1(1280)
        net.Mixed_7c = pfi.FIDInceptionE_2(2048)
        state = load_weights(
            weights, pfi.FID_WEIGHTS_URL,
            missing="task.inception_weights={path!r} does not exist; set it to pytorch-fid's "
                    f"pt_inception-2015-12-05-6726825d.pth ({pfi.FID_WEIGHTS_URL}).",
            offline="could not load pytorch-fid's Inception weights (not in the torch hub cache, download failed: "
                    f"{{err}}); download {pfi.FID_WEIGHTS_URL} and set task.inception_weights=PATH, "
                    "or task.feature_net=tiny for a smoke run.")
        net.load_state_dict(state)
        self.net = net.eval()
        self.double_normalize = bool(double_normalize)
        self.feature_dim, self.num_logits = 2048, 1008

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        n = self.net
        x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)  # as pytorch-fid
        if self.double_normalize:
            x = 2 * x - 1
        x = 2 * x - 1
        for layer in (n.Conv2d_1a_3x3, n.Conv2d_2a_3x3, n.Conv2d_2b_3x3, n.maxpool1, n.Conv2d_3b_1x1,
                      n.Conv2d_4a_3x3, n.maxpool2, n.Mixed_5b, n.Mixed_5c, n.Mixed_5d, n.Mixed_6a, n.Mixed_6b,
                      n.Mixed_6c, n.Mixed_6d, n.Mixed_6e, n.Mixed_7a, n.Mixed_7b, n.Mixed_7c):
            x = layer(x)
        feats = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return feats, n.fc(feats)


class TinyFeatures(nn.Module):
    """Seeded random conv net, (features (B, 64), logits (B, 10)): smoke values only."""

    def __init__(self, seed: int = 0, dim: int = 64, num_logits: int = 10, double_normalize: bool = False) -> None:
        super().__init__()
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            torch.manual_seed(int(seed))
            self.body = nn.Sequential(
                nn.Conv2d(3, 16, 3, stride=2, padding=1), nn.ReLU(),
                nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(),
                nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(32 * 16, dim),
            )
            self.head = nn.Linear(dim, num_logits)
            self.body[-1].weight.mul_(10.0)  # features of order 1 (FID values of order 1, not 1e-3)
            self.head.weight.mul_(5.0)  # confident, image-dependent class probabilities (IS > 1)
        self.double_normalize = bool(double_normalize)
        self.feature_dim, self.num_logits = dim, num_logits

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x = F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False, antialias=True)
        if self.double_normalize:
            x = 2 * x - 1
        feats = self.body(2 * x - 1)
        return feats, self.head(feats)


def torchvision_inception_url() -> str:
    """URL of torchvision's ImageNet InceptionV3 weights (``inception_v3_google-0cc3c7bd.pth``)."""
    from torchvision.models import Inception_V3_Weights

    return Inception_V3_Weights.IMAGENET1K_V1.url


class TorchvisionInception(nn.Module):
    """torchvision's ImageNet InceptionV3 as BigGAN-PyTorch's ``WrapInception``: images in [0, 1]
    -> (pool (B, 2048), logits (B, 1000)). For the Inception Score of the anchor tables.

    ``weights``: local path of torchvision's ``inception_v3_google-0cc3c7bd.pth`` (``task.is_weights``);
    None: torchvision's URL through the torch hub cache (download if online). ``net``: an
    ``inception_v3`` module to wrap instead (tests: a randomly initialised one).
    """

    MEAN = (0.485, 0.456, 0.406)
    STD = (0.229, 0.224, 0.225)

    def __init__(self, weights: str | None = None, net: nn.Module | None = None) -> None:
        super().__init__()
        if net is None:
            net = self._load(weights)
        net.aux_logits, net.AuxLogits = False, None  # unused (the wrapper runs the main branch itself)
        self.net = net.eval()
        self.register_buffer("mean", torch.tensor(self.MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(self.STD).view(1, 3, 1, 1), persistent=False)
        self.feature_dim, self.num_logits = 2048, int(net.fc.out_features)

    @staticmethod
    def _load(weights: str | None) -> nn.Module:
        import torchvision

        url = torchvision_inception_url()
        fname = os.path.basename(url)
        # As torchvision builds it for its ImageNet weights (aux branch in the file), transform_input
        # off as in BigGAN-PyTorch's load_inception_net (irrelevant here: forward bypasses it).
        net = torchvision.models.inception_v3(weights=None, aux_logits=True, transform_input=False, init_weights=False)
        state = load_weights(
            weights, url,
            missing="task.is_weights={path!r} does not exist; set it to torchvision's ImageNet "
                    f"InceptionV3 weights {fname} ({url}), or task.is_network=pytorch_fid|tiny.",
            offline="could not load torchvision's InceptionV3 weights for the Inception Score (not in the torch hub "
                    f"cache, download failed: {{err}}); download {url} and set task.is_weights=PATH/{fname}, "
                    "or task.is_network=pytorch_fid (pytorch-fid's Inception logits) or tiny for a smoke run.")
        where = f"task.is_weights={os.path.expanduser(str(weights))!r}" if weights else f"the torch hub cache's {fname}"
        if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
            state = state["state_dict"]
        try:
            res = net.load_state_dict(state, strict=False)
        except Exception as e:  # wrong shapes: another network's file (e.g. pytorch-fid's 1008 classes)
            raise ValueError(f"{where} is not torchvision's ImageNet InceptionV3 state dict ({fname}): {e}") from e
        missing = [k for k in res.missing_keys if not k.startswith("AuxLogits.")]
        if missing or res.unexpected_keys:
            raise ValueError(f"{where} is not torchvision's ImageNet InceptionV3 state dict ({fname}): "
                             f"missing {missing[:3]}, unexpected {res.unexpected_keys[:3]}.")
        return net

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        n = self.net
        x = (x - self.mean) / self.std  # x in [0, 1] (WrapInception: (x + 1) / 2 of its [-1, 1] input)
        if x.shape[2] != 299 or x.shape[3] != 299:
            x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=True)
        for layer in (n.Conv2d_1a_3x3, n.Conv2d_2a_3x3, n.Conv2d_2b_3x3, n.maxpool1, n.Conv2d_3b_1x1,
                      n.Conv2d_4a_3x3, n.maxpool2, n.Mixed_5b, n.Mixed_5c, n.Mixed_5d, n.Mixed_6a, n.Mixed_6b,
                      n.Mixed_6c, n.Mixed_6d, n.Mixed_6e, n.Mixed_7a, n.Mixed_7b, n.Mixed_7c):
            x = layer(x)
        pool = x.flatten(2).mean(dim=2)
        return pool, n.fc(pool)


IS_NETWORKS = ("torchvision", "pytorch_fid", "tiny")


def build_is_net(kind: str = "torchvision", weights: str | None = None, double_normalize: bool = False,
                 seed: int = 0) -> nn.Module:
    """The Inception Score network: ``torchvision`` (the anchors' ImageNet InceptionV3, ``weights``
    = its .pth), ``pytorch_fid`` (pytorch-fid's FID Inception logits, ``weights`` = its .pth) or
    ``tiny`` (seeded random, smoke only)."""
    if kind == "torchvision":
        return TorchvisionInception(weights).eval()
    if kind == "pytorch_fid":
        return build_feature_net("inception", weights, double_normalize, seed)
    if kind == "tiny":
        return build_feature_net("tiny", None, double_normalize, seed)
    raise ValueError(f"task.is_network must be one of {list(IS_NETWORKS)}, got {kind!r}.")


def build_feature_net(kind: str = "inception", weights: str | None = None, double_normalize: bool = False,
                      seed: int = 0) -> nn.Module:
    """``inception`` (pytorch-fid's FID InceptionV3) or ``tiny`` (seeded random, smoke only)."""
    if kind == "inception":
        return InceptionFeatures(weights, double_normalize).eval()
    if kind == "tiny":
        return TinyFeatures(seed, double_normalize=double_normalize).eval()
    raise ValueError(f"task.feature_net must be 'inception' or 'tiny', got {kind!r}.")


def to_unit_uint8_grid(images: Tensor) -> Tensor:
    """Generator output in [-1, 1] -> [0, 1] on the 8-bit grid (what saving a PNG would keep)."""
    return ((images.float().clamp(-1, 1) + 1) * 127.5).round().div(255.0)


def resize_square(images: Tensor, size: int | None) -> Tensor:
    """Bilinear antialiased resize of square images to ``size`` (None/0: unchanged)."""
    if not size or images.shape[-1] == size and images.shape[-2] == size:
        return images
    return F.interpolate(images, size=(int(size), int(size)), mode="bilinear", align_corners=False, antialias=True)


@torch.no_grad()
def features(net: nn.Module, images: Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(features, logits) of images in [0, 1] as float64 / float32 numpy arrays."""
    f, lg = net(images)
    return f.double().cpu().numpy(), lg.float().cpu().numpy()


# --------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------
def statistics(feats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance (rows = samples) of pool features, as pytorch-fid computes them."""
    feats = np.asarray(feats, dtype=np.float64)
    if feats.ndim != 2 or feats.shape[0] < 2:
        raise ValueError(f"FID statistics need a (count >= 2, dim) feature array, got shape {feats.shape}.")
    return feats.mean(axis=0), np.cov(feats, rowvar=False)


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2)), pytorch-fid's formula.

    tr((S1 S2)^(1/2)) is computed as sum sqrt(eig(S1^(1/2) S2 S1^(1/2))) with symmetric
    eigendecompositions (negative rounding eigenvalues clipped to 0) instead of pytorch-fid's
    ``scipy.linalg.sqrtm``, which fails on the rank-deficient covariances of small sets; the two
    agree to numerical precision on well-conditioned inputs (tested).
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or s1.shape != s2.shape:
        raise ValueError(f"FID statistics of different feature sizes: {mu1.shape} vs {mu2.shape}; "
                         f"were they made with the same task.feature_net?")
    w, u = np.linalg.eigh((s1 + s1.T) / 2)
    root1 = (u * np.sqrt(np.clip(w, 0, None))) @ u.T
    m = root1 @ s2 @ root1
    tr_covmean = np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None)).sum()
    diff = mu1 - mu2
    return max(0.0, float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * tr_covmean))  # >= 0 up to rounding


def fid_between(feats_a: np.ndarray, feats_b: np.ndarray) -> float:
    """FID between two feature sets."""
    return frechet_distance(*statistics(feats_a), *statistics(feats_b))


def inception_score(logits: np.ndarray, splits: int = 10) -> tuple[float, float]:
    """Inception Score ``(mean, sd)`` of class logits (B, C), as BigGAN-PyTorch's
    ``calculate_inception_score`` (the anchor tables' IS).

    p(y|x) = softmax(logits); ``splits`` chunks of ``N // splits`` consecutive rows (the last
    ``N mod splits`` rows are left out, as there); per chunk exp(mean_x KL(p(y|x) || p(y))) with
    p(y) the chunk's mean of p(y|x); mean and population sd (``np.std``) over the chunks. Computed
    in float64 from log-softmax (the original works on float32 probabilities, where a probability
    that underflows to 0 gives NaN; elsewhere they agree to float32 rounding).
    """
    logits = torch.as_tensor(np.asarray(logits), dtype=torch.float64)
    n = logits.shape[0]
    if splits < 1 or n < splits:
        raise ValueError(f"the Inception Score needs at least task.is_splits={splits} images, got {n}.")
    logp = torch.log_softmax(logits, dim=1)
    size = n // splits
    scores = []
    for i in range(splits):
        chunk = logp[i * size: (i + 1) * size]
        log_py = torch.logsumexp(chunk, dim=0) - math.log(size)  # log of the chunk's marginal p(y)
        kl = (chunk.exp() * (chunk - log_py)).sum(dim=1).mean()
        scores.append(float(torch.exp(kl)))
    return float(np.mean(scores)), float(np.std(scores))


def save_stats(path: str, mu: np.ndarray, sigma: np.ndarray, **meta: Any) -> None:
    """Write ``mu``, ``sigma`` (and preprocessing metadata) to an .npz."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    np.savez(path, mu=mu, sigma=sigma, **{k: np.asarray(v) for k, v in meta.items() if v is not None})


def load_stats(path: str) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """``(mu, sigma, meta)`` from an .npz with ``mu`` and ``sigma`` (pytorch-fid's format)."""
    path = os.path.expanduser(str(path))
    if not os.path.isfile(path):
        raise FileNotFoundError(f"task.fid_stats={path!r} does not exist; make it with "
                                f"`python -m attnbench.tasks.metrics.fid stats IMAGENET_VAL_FOLDER OUT.npz`.")
    with np.load(path) as f:
        if "mu" not in f or "sigma" not in f:
            raise ValueError(f"task.fid_stats={path!r} has no 'mu'/'sigma' arrays.")
        meta = {k: f[k].item() for k in f.files if k not in ("mu", "sigma") and f[k].ndim == 0}
        return f["mu"], f["sigma"], meta


# --------------------------------------------------------------------------------------------
# Statistics of an image folder
# --------------------------------------------------------------------------------------------
def image_files(folder: str) -> list[str]:
    out = []
    for root, _, files in os.walk(folder):
        out += [os.path.join(root, f) for f in files if os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS]
    return sorted(out)


def load_image(path: str, resize: int | None) -> Tensor:
    """RGB image in [0, 1], (3, H, W): centre-crop on the long edge, PIL-resize to ``resize``."""
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("RGB")
        w, h = im.size
        s = min(w, h)
        left, top = (w - s) // 2, (h - s) // 2
        im = im.crop((left, top, left + s, top + s))
        if resize:
            im = im.resize((int(resize), int(resize)), Image.BILINEAR)
        arr = np.asarray(im, dtype=np.uint8).copy()
    return torch.from_numpy(arr).permute(2, 0, 1).float().div(255.0)


@torch.no_grad()
def folder_features(folder: str, net: nn.Module, resize: int | None, batch_size: int = 50,
                    device: str | torch.device = "cpu", limit: int | None = None) -> np.ndarray:
    files = image_files(folder)
    if limit:
        files = files[: int(limit)]
    if len(files) < 2:
        raise ValueError(f"found {len(files)} image(s) under {folder!r}; FID statistics need at least 2.")
    net = net.to(device)
    out = []
    for i in range(0, len(files), batch_size):
        batch = [load_image(p, resize) for p in files[i: i + batch_size]]
        if len({tuple(b.shape) for b in batch}) > 1:
            raise ValueError("images differ in size; pass --resize N to resize them to N x N.")
        out.append(features(net, torch.stack(batch).to(device))[0])
    return np.concatenate(out)


def main(argv: Iterable[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m attnbench.tasks.metrics.fid", description="FID reference statistics.")
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("stats", help="mu/sigma of an image folder's pool features -> .npz")
    p.add_argument("folder")
    p.add_argument("out")
    p.add_argument("--resize", type=int, default=128, help="crop+resize size (KDEformer scripts: 128); 0 keeps it")
    p.add_argument("--feature-net", default="inception", choices=["inception", "tiny"])
    p.add_argument("--inception-weights", default=None, help="pytorch-fid's pt_inception-2015-12-05 .pth")
    p.add_argument("--double-normalize", action="store_true", help="the KDEformer scripts' [-1,1] double mapping")
    p.add_argument("--batch-size", type=int, default=50)
    p.add_argument("--device", default="auto")
    p.add_argument("--limit", type=int, default=None, help="use only the first N files (sorted)")
    p.add_argument("--seed", type=int, default=0, help="seed of the tiny feature net")
    args = parser.parse_args(list(argv) if argv is not None else None)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    net = build_feature_net(args.feature_net, args.inception_weights, args.double_normalize, args.seed)
    feats = folder_features(args.folder, net, args.resize, args.batch_size, device, args.limit)
    mu, sigma = statistics(feats)
    save_stats(args.out, mu, sigma, resize=args.resize, feature_net=args.feature_net,
               double_normalize=args.double_normalize, count=len(feats),
               tiny_seed=args.seed if args.feature_net == "tiny" else None)
    print(f"wrote {args.out}: {len(feats)} images, {feats.shape[1]}-d features")
    return 0


if __name__ == "__main__":
    sys.exit(main())
