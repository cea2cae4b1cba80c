"""The public packages' implementations of three suite baselines, wrapped as attention methods.

``performer_pytorch`` (performer-pytorch's ``FastAttention``), ``reformer_pytorch``
(reformer-pytorch's ``LSHAttention``) and ``nystrom_attention`` (nystrom-attention's
``NystromAttention``) run the package's own attention code on the suite's (B, H, N, D) q, k, v,
so ``+experiment=peers`` can time and score them beside ``performer``, ``reformer`` and
``nystromformer`` on the same inputs. They come in the way a user's own method does: entry points
in the group ``attnbench.methods`` (attnbench's pyproject) and their yaml on Hydra's search path
(``methods/peers/conf``); this subpackage is not scanned for built-ins. The packages are the
optional extra ``peers`` (``pip install -e ".[peers]"``) and are imported on the first call only,
so without them a wrapper still builds and its call raises one ``ImportError`` line, and a sweep
skips it (``runners.run.missing_package``).

The packages draw their random numbers from torch's global generator; the wrappers fork it and seed
it from the method's own generator around every draw (``global_rng``), so one seed gives one output
and the global stream is left as it was.
"""
from __future__ import annotations

import contextlib
import importlib
import importlib.util
from types import ModuleType
from typing import Iterator

import torch

from attnbench.methods.base import AttentionMethod

INSTALL = "pip install -e '.[peers]'"


class PeerMethod(AttentionMethod):
    """A public package's attention code as a method: ``package`` is its name on the package index,
    ``module`` the module whose attention core the wrapper calls."""

    package: str = ""
    module: str = ""

    @classmethod
    def missing(cls) -> str | None:
        """One line when the package is not installed, else None (nothing is imported)."""
        top = cls.module.split(".")[0]
        if importlib.util.find_spec(top) is None:
            return f"{cls.package} is not installed: {INSTALL}"
        return None

    def peer(self) -> ModuleType:
        """The package's module; ``ImportError`` with the install line when it is missing."""
        reason = self.missing()
        if reason:
            raise ImportError(f"{self.name}: {reason}")
        return importlib.import_module(self.module)

    @contextlib.contextmanager
    def global_rng(self, device: torch.device) -> Iterator[None]:
        """Torch's global generators (CPU, and ``device`` when it is a GPU) forked and seeded from a
        number drawn from this method's generator; restored afterwards."""
        seed = int(torch.randint(0, 2**62, (1,), generator=self.generator("cpu")))
        cuda = [device] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda):
            torch.random.default_generator.manual_seed(seed)
            for dev in cuda:
                with torch.cuda.device(dev):
                    torch.cuda.manual_seed(seed)
            yield
