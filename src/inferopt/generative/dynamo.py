"""`torch.onnx.export(dynamo=True)` of a transformers causal LM with its KV cache as flat
tensors: the exporter of architectures ORT GenAI's model builder does not know.

transformers 5 keeps the cache in a `DynamicCache` object, which ONNX cannot carry; the
wrapper here builds one from the flat past tensors, runs the model and returns the layers'
concatenated keys and values as flat present tensors, under the names of `KvLayout`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import onnx
import torch

from inferopt.errors import ExportError, InputError, first_line
from inferopt.generative.kv import KvLayout

# Example sizes of the traced call: none is 0 or 1, which torch.export would specialise on.
_BATCH, _SEQ, _PAST = 2, 3, 4
# The symbolic names the builder's graphs use, so both artifacts declare the same shapes.
_DIM_NAMES = ("batch_size", "sequence_length", "past_sequence_length", "total_sequence_length")


class FlatCacheDecoder(torch.nn.Module):
    """A causal LM whose cache goes in and out as flat tensors.

    forward(input_ids int64 [b, s], attention_mask int64 [b, p+s], past: 2*layers float32
    [b, kv_heads, p, head_dim], key before value per layer) -> (logits float32 [b, s, vocab],
    present: 2*layers [b, kv_heads, p+s, head_dim]). Positions are the count of real tokens
    before each one (attention_mask cumulative sum - 1), so left-padded rows are placed as
    if alone, as in the builder's graphs and ORT GenAI's own position ids.
    """

    def __init__(self, model: torch.nn.Module, layers: int) -> None:
        super().__init__()
        self.model = model
        self.layers = layers

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, past: list[torch.Tensor]
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        from transformers import DynamicCache

        pairs = [(past[2 * i], past[2 * i + 1]) for i in range(self.layers)]
        cache: Any = DynamicCache(ddp_cache_data=pairs)
        past_len = attention_mask.shape[1] - input_ids.shape[1]
        positions = (attention_mask.cumsum(-1) - 1).clamp(min=0)[:, past_len:]
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=positions,
            past_key_values=cache,
            use_cache=True,
        )
        present: list[torch.Tensor] = [
            t for layer in cache.layers for t in (layer.keys, layer.values)
        ]
        logits: torch.Tensor = out.logits.float()
        return logits, present


def load_causal_lm(folder: Path) -> Any:
    """The folder's model in fp32 with eager attention (the plainest graph to export and the
    reference the parity check uses), in eval mode.

    Raises:
        InputError: transformers does not know the architecture or cannot read the folder.
    """
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # type: ignore[no-untyped-call]
    try:
        model = AutoModelForCausalLM.from_pretrained(
            str(folder), local_files_only=True, dtype=torch.float32, attn_implementation="eager"
        )
    except (OSError, ValueError, KeyError) as exc:
        raise InputError(
            f"{folder}: transformers cannot load it as a causal LM: {first_line(exc)}"
        ) from exc
    return model.eval()  # type: ignore[no-untyped-call]


def export_dynamo(folder: Path, model_path: Path, layout: KvLayout) -> None:
    """Export the folder's causal LM to `model_path` (+ `.data`) with the cache contract of
    `layout`.

    Raises:
        InputError: transformers cannot load the folder.
        ExportError: torch.onnx cannot export it.
    """
    model = load_causal_lm(folder)
    wrapper = FlatCacheDecoder(model, layout.layers).eval()
    ids = torch.randint(0, int(model.config.vocab_size), (_BATCH, _SEQ))
    mask = torch.ones(_BATCH, _PAST + _SEQ, dtype=torch.int64)
    past = [
        torch.randn(_BATCH, layout.kv_heads, _PAST, layout.head_dim)
        for _ in range(2 * layout.layers)
    ]
    auto = torch.export.Dim.DYNAMIC
    dynamic = {
        "input_ids": {0: auto, 1: auto},
        "attention_mask": {0: auto, 1: auto},
        "past": [{0: auto, 2: auto} for _ in past],
    }
    try:
        with torch.no_grad():
            program = torch.onnx.export(
                wrapper,
                (ids, mask, past),
                dynamo=True,
                dynamic_shapes=dynamic,
                input_names=["input_ids", "attention_mask", *layout.past_names()],
                output_names=["logits", *layout.present_names()],
                verbose=False,
            )
    except Exception as exc:  # torch.onnx wraps every failure in its own generic errors
        raise ExportError(
            f"{folder}: torch.onnx (dynamo) cannot export it: "
            f"{first_line(exc, named=True, innermost=True)}"
        ) from exc
    if program is None:
        raise ExportError(f"{folder}: torch.onnx (dynamo) returned no program")
    proto = program.model_proto
    _name_dims(proto, layout)
    onnx.save(
        proto, str(model_path), save_as_external_data=True, location=model_path.name + ".data"
    )


def _name_dims(proto: onnx.ModelProto, layout: KvLayout) -> None:
    """Give the free axes the builder's names (torch calls them s0, s1, ...), so that both
    exporters' artifacts declare identical shapes."""
    batch, seq, past, total = _DIM_NAMES
    named: dict[str, tuple[str, ...]] = {
        "input_ids": (batch, seq),
        "attention_mask": (batch, total),
        "logits": (batch, seq),
    }
    named |= {name: (batch, "", past) for name in layout.past_names()}
    named |= {name: (batch, "", total) for name in layout.present_names()}
    for value in [*proto.graph.input, *proto.graph.output]:
        dims = value.type.tensor_type.shape.dim
        for axis, name in enumerate(named.get(value.name, ())):
            if name and not dims[axis].HasField("dim_value"):
                dims[axis].dim_param = name
