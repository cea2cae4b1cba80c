"""Causal language models for the ``kv_cache`` and ``lm`` tasks, offline.

``load_model(name, dtype, device)``: ``smollm2`` (SmolLM2-135M-Instruct from the packaged GGUF),
``tiny_llama`` (a random 2-layer Llama with a byte tokenizer, for tests) or a Hugging Face name /
local folder (local files only). The last model loaded is kept for the rest of the process, so
the jobs of a sweep share it.
"""
from __future__ import annotations

import torch

from attnbench.tasks.datasets.sources import load_smollm2

_MODELS: dict[tuple, tuple] = {}  # (model, dtype, device) -> (model, tokenizer): reused across a sweep


def _byte_symbols() -> list[str]:
    """The byte-level BPE symbol of each byte value 0..255 (GPT-2's byte-to-unicode map: printable
    Latin-1 bytes stand for themselves, the others for chr(256 + k) in byte order)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    sym, extra = {}, 0
    for b in range(256):
        if b in keep:
            sym[b] = chr(b)
        else:
            sym[b] = chr(256 + extra)
            extra += 1
    return [sym[b] for b in range(256)]


def byte_tokenizer():
    """A 256-symbol byte-level tokenizer (exact round trip, no files): for tiny random models.
    Token id = byte value (``<s>`` 256, ``</s>`` 257), the same in every process."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    # (ByteLevel.alphabet() is the same symbol set, in an order that changes from process to process)
    vocab = {ch: i for i, ch in enumerate(_byte_symbols())}
    vocab["<s>"], vocab["</s>"] = 256, 257
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", model_max_length=8192)


def tiny_llama(seed: int = 0, vocab_size: int = 258):
    """A random 2-layer Llama (hidden 64, 4 heads, 2 KV heads) for tests."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=8192,
                      bos_token_id=256, eos_token_id=257, pad_token_id=257)
    return LlamaForCausalLM(cfg).eval()




def load_model(name: str, dtype: torch.dtype, device: torch.device):
    """(model, tokenizer): ``smollm2`` (packaged GGUF, offline), ``tiny_llama`` (random, byte
    tokenizer) or a Hugging Face name / local folder (local files only)."""
    key = (name, dtype, str(device))
    if key in _MODELS:
        return _MODELS[key]
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if name == "tiny_llama":
        model, tok = tiny_llama(), byte_tokenizer()
    elif name in ("smollm2", "HuggingFaceTB/SmolLM2-135M-Instruct"):
        model, tok = load_smollm2(dtype)
    else:
        try:
            tok = AutoTokenizer.from_pretrained(name, local_files_only=True)
            model = AutoModelForCausalLM.from_pretrained(name, dtype=dtype, local_files_only=True)
        except OSError as e:
            raise RuntimeError(f"task.model={name} is not available locally (no network here): download it into the "
                               f"Hugging Face cache or set task.model to a local folder ({e}).") from e
    model = model.to(device).eval()
    _MODELS.clear()  # keep one model in memory
    _MODELS[key] = (model, tok)
    return model, tok
