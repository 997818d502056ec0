"""Tiny random-initialised causal language models as Hugging Face folders, for tests.

Every folder holds `config.json`, `model.safetensors` (weights drawn from a fixed seed) and a
byte-level BPE tokenizer trained here on the docstrings of Python's standard library, so
nothing is downloaded and two builds of the same architecture are identical. The sizes are
the smallest that still exercise what matters to an exporter: grouped-query attention (4
query heads over 2 key/value heads), two layers (the cache is per layer) and a vocabulary
of 512 tokens.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

ARCHITECTURES = ("llama", "qwen2", "phi3", "gpt2")
VOCAB = 512
HIDDEN = 64
LAYERS = 2
HEADS = 4
KV_HEADS = 2
WINDOW = 2048  # the models' max_position_embeddings; exports cap their context at this
SEED = 0
SPECIAL = "<|endoftext|>"  # id 0: bos, eos, unk and pad, as GPT-2 does
# Standard-library modules with long docstrings: a few hundred lines of English and code words.
_CORPUS_MODULES = (
    "argparse", "asyncio", "collections", "contextlib", "dataclasses", "decimal",
    "email", "functools", "heapq", "inspect", "itertools", "json", "logging", "pathlib",
    "pickle", "re", "shutil", "socket", "subprocess", "tarfile", "threading", "typing",
    "unittest", "urllib.parse", "zipfile",
)  # fmt: skip


def corpus() -> list[str]:
    """Non-blank lines of the docstrings of `_CORPUS_MODULES` and their public members."""
    lines: list[str] = []
    for name in _CORPUS_MODULES:
        module = importlib.import_module(name)
        docs = [module.__doc__ or ""]
        for attr in sorted(vars(module)):
            if not attr.startswith("_"):
                doc = getattr(getattr(module, attr), "__doc__", None)
                docs.append(doc if isinstance(doc, str) else "")  # descriptors have no text
        lines.extend(ln.strip() for doc in docs for ln in doc.splitlines() if ln.strip())
    return lines


def _config(arch: str) -> Any:
    """The tiny transformers config of `arch`, token ids pointing at our one special token."""
    import transformers

    ids: dict[str, Any] = {"bos_token_id": 0, "eos_token_id": 0, "pad_token_id": 0}
    common: dict[str, Any] = {
        "vocab_size": VOCAB,
        "hidden_size": HIDDEN,
        "intermediate_size": 2 * HIDDEN,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS,
        "num_key_value_heads": KV_HEADS,
        "max_position_embeddings": WINDOW,
        "tie_word_embeddings": False,
        **ids,
    }
    if arch == "llama":
        return transformers.LlamaConfig(**common)
    if arch == "qwen2":
        return transformers.Qwen2Config(**common)
    if arch == "phi3":
        # equal windows select the builder's plain-RoPE Phi-3 (no LongRoPE scaling)
        return transformers.Phi3Config(**common, original_max_position_embeddings=WINDOW)
    if arch == "gpt2":
        return transformers.GPT2Config(
            vocab_size=VOCAB, n_embd=HIDDEN, n_layer=LAYERS, n_head=HEADS, n_positions=WINDOW,
            **ids,
        )  # fmt: skip
    raise ValueError(f"unknown tiny architecture {arch!r}; known: {', '.join(ARCHITECTURES)}")


def save_tokenizer(out: Path) -> None:
    """Train a byte-level BPE of `VOCAB` tokens on `corpus()` and save it as a fast tokenizer
    (tokenizer.json, tokenizer_config.json) that transformers and ORT GenAI both load."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(corpus(), vocab_size=VOCAB, min_frequency=2, special_tokens=[SPECIAL])
    fast = PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=bpe, bos_token=SPECIAL, eos_token=SPECIAL, unk_token=SPECIAL,
        pad_token=SPECIAL, model_max_length=WINDOW,
    )  # fmt: skip
    fast.save_pretrained(str(out))


def tiny_folder(arch: str, out: str | Path) -> Path:
    """Write a tiny random `arch` causal LM (one of `ARCHITECTURES`) as a Hugging Face folder.

    Weights are drawn with torch seeded at `SEED`, so the folder is the same on every call.
    Returns `out`.

    Raises:
        ValueError: an unknown architecture.
    """
    import torch
    from transformers import AutoModelForCausalLM

    config = _config(arch)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(SEED)
    model = AutoModelForCausalLM.from_config(config)  # type: ignore[no-untyped-call]
    model.generation_config.pad_token_id = 0
    model.save_pretrained(str(out))
    save_tokenizer(out)
    return out
