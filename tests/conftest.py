import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TQDM_DISABLE", "1")


def rel_err(a, b):
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm())


def tolerance(dtype, n, factor=8.0):
    """A relative-error bound for an exact computation of attention over n keys in ``dtype``:
    each output entry is a normalised sum of n products, whose rounding error grows at most
    linearly in n (``factor`` covers exp, the max shift and the division)."""
    import torch

    return factor * n * torch.finfo(dtype).eps
