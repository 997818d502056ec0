"""Hugging Face model folders -> PyTorch module with example inputs from its own tokenizer.

A sentence-transformers folder (modules.json with a mean-pooling module) is exported with its
pooling and normalisation, so the ONNX model outputs the sentence embedding users compare;
any other folder is exported as its base model, outputting `last_hidden_state`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from inferopt.errors import ModelLoadError
from inferopt.zoo.registry import TorchSource

_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json")
EXAMPLE_TEXTS = (
    "inferopt exports this model to ONNX.",
    "A second, somewhat longer example sentence gives the exporter two different lengths.",
)


class MeanPooledEncoder(torch.nn.Module):
    """Token embeddings averaged over the attention mask, optionally L2-normalised."""

    def __init__(self, encoder: torch.nn.Module, normalize: bool) -> None:
        super().__init__()
        self.encoder = encoder
        self.normalize = normalize

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        hidden: torch.Tensor = self.encoder(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
        ).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
        if self.normalize:
            pooled = torch.nn.functional.normalize(pooled, p=2.0, dim=1)
        return pooled


class LastHiddenState(torch.nn.Module):
    """The base model's token embeddings as one tensor (ModelOutput objects do not export)."""

    def __init__(self, encoder: torch.nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        out = self.encoder(input_ids=input_ids, attention_mask=attention_mask)
        hidden: torch.Tensor = out.last_hidden_state
        return hidden


def check_folder(folder: Path) -> None:
    if not (folder / "config.json").is_file():
        raise ModelLoadError(f"{folder}: not a Hugging Face model folder (no config.json)")
    if not any((folder / name).is_file() for name in _WEIGHT_FILES):
        raise ModelLoadError(
            f"{folder}: Hugging Face folder has no weights "
            f"(expected one of {', '.join(_WEIGHT_FILES)})"
        )


def _pooling(folder: Path) -> tuple[bool, bool]:
    """(mean pooling, normalize) for a sentence-transformers folder; (False, False) else."""
    modules_file = folder / "modules.json"
    if not modules_file.is_file():
        return False, False
    types = [m.get("type", "") for m in json.loads(modules_file.read_text())]
    pooling = folder / "1_Pooling" / "config.json"
    mean = pooling.is_file() and bool(
        json.loads(pooling.read_text()).get("pooling_mode_mean_tokens")
    )
    return mean, any(t.endswith(".Normalize") for t in types)


def load_folder(folder: str | Path) -> TorchSource:
    """The folder's model (offline, never from a hub) with tokenizer-made example inputs."""
    from transformers import AutoModel, AutoTokenizer  # slow import; only for HF sources
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]  # our status line covers it
    hf_logging.set_verbosity_error()  # type: ignore[no-untyped-call]

    folder = Path(folder)
    check_folder(folder)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        encoder = AutoModel.from_pretrained(str(folder), local_files_only=True).eval()
    except (OSError, ValueError, KeyError) as exc:
        raise ModelLoadError(f"{folder}: transformers cannot load it: {exc}") from exc
    mean, normalize = _pooling(folder)
    encoded = tokenizer(list(EXAMPLE_TEXTS), padding=True, return_tensors="pt")
    module: torch.nn.Module
    if mean:
        module, outputs = MeanPooledEncoder(encoder, normalize), ("sentence_embedding",)
        names: tuple[str, ...] = ("input_ids", "attention_mask", "token_type_ids")
    else:
        module, outputs = LastHiddenState(encoder), ("last_hidden_state",)
        names = ("input_ids", "attention_mask")
    examples: dict[str, Any] = {name: encoded[name] for name in names if name in encoded}
    return TorchSource(module, examples, outputs, seq_axis=1, extra={"tokenizer": tokenizer})
