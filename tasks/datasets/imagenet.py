"""ImageNet validation data for the imagenet task: the ImageFolder (or synthetic images) and its loader."""
from __future__ import annotations

import os
from typing import Any, Mapping

import torch
from torch import Tensor, nn


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


def data_config(model: nn.Module) -> dict[str, Any]:
    """timm's preprocessing settings for ``model`` (input size from its patch embedding when set)."""
    from timm.data import resolve_data_config

    args: dict[str, Any] = {}
    img_size = getattr(getattr(model, "patch_embed", None), "img_size", None)
    if img_size is not None:  # timm keeps the pretrained cfg's size when img_size is overridden
        hw = tuple(img_size) if isinstance(img_size, (tuple, list)) else (img_size, img_size)
        args["input_size"] = (3, *hw)
    return resolve_data_config(args, model=model)


def val_loader(kind: str, config: Mapping[str, Any], *, val_dir: str | None, limit: int | None, subset_seed: int,
               batch_size: int, workers: int, num_classes: int, pin_memory: bool) -> torch.utils.data.DataLoader:
    """The evaluation loader: ``kind='synthetic'`` (``limit`` or 64 ``SyntheticImages``, no workers)
    or ``'imagenet'`` (the ImageFolder ``val_dir`` with timm's eval transform; a fixed random
    subset of ``limit`` images drawn with ``subset_seed``, the same for every method)."""
    if kind == "synthetic":
        ds: torch.utils.data.Dataset = SyntheticImages(
            limit or 64, tuple(config["input_size"]), config["mean"], config["std"], num_classes, subset_seed,
        )
        workers = 0
    else:
        from timm.data import create_transform
        from torchvision.datasets import ImageFolder

        ds = ImageFolder(val_dir, transform=create_transform(**config, is_training=False))
        if len(ds) == 0:
            raise FileNotFoundError(f"no images under task.data_root ({val_dir!r}); set task.data_root.")
        if limit is not None and limit < len(ds):
            g = torch.Generator().manual_seed(subset_seed)  # a fixed random subset, same for every method
            idx = torch.randperm(len(ds), generator=g)[:limit].sort().values.tolist()
            ds = torch.utils.data.Subset(ds, idx)
    return torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=workers,
                                       pin_memory=pin_memory)
