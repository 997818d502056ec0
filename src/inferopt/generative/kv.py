"""The KV cache of a decoder artifact: which inputs and outputs carry it, and its layout.

The artifact is the one ONNX Runtime GenAI's model builder and optimum converge on: one ONNX
decoder with inputs `input_ids`, `attention_mask`, optional `position_ids` and the past
cache `past_key_values.{i}.key` / `.value`, and outputs `logits` and the present cache
`present.{i}.key` / `.value`, every cache tensor laid out [batch, kv_heads, sequence,
head_dim]. `KvLayout.of` reads that from a graph and refuses anything else by name.

When the attention is ONNX Runtime's GroupQueryAttention (the builder's graphs and every pass
after them), the cache can be updated in place: past and present bound to the same
max-length buffer, the new keys and values written after the attention mask's row sum. Other
graphs (the dynamo exporter's) concatenate past and new into a fresh present every step.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import onnx

from inferopt.errors import InputError

DEFAULT_MAX_CONTEXT = 2048  # the cache is sized for this unless asked: not the full window
PAST = "past_key_values.{layer}.{part}"
PRESENT = "present.{layer}.{part}"
_PAST = re.compile(r"^past_key_values\.(\d+)\.(key|value)$")
_PRESENT = re.compile(r"^present\.(\d+)\.(key|value)$")


@dataclass(frozen=True)
class KvLayout:
    """A decoder's cache: `layers` pairs of [batch, kv_heads, sequence, head_dim] tensors of
    `dtype` (a numpy dtype name), sized for at most `max_context` tokens. `in_place`: the
    graph writes new keys and values into its past buffer when present is bound to the same
    memory (GroupQueryAttention), so a step need not copy the cache.

    Raises:
        ValueError: a count below 1.
    """

    layers: int
    kv_heads: int
    head_dim: int
    dtype: str = "float32"
    max_context: int = DEFAULT_MAX_CONTEXT
    in_place: bool = False

    def __post_init__(self) -> None:
        for name in ("layers", "kv_heads", "head_dim", "max_context"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")

    def past_names(self) -> list[str]:
        """Input names in layer order, key before value."""
        return [PAST.format(layer=i, part=p) for i in range(self.layers) for p in ("key", "value")]

    def present_names(self) -> list[str]:
        return [
            PRESENT.format(layer=i, part=p) for i in range(self.layers) for p in ("key", "value")
        ]

    def bytes_per_token(self) -> int:
        """Cache bytes one token adds for one sequence: keys and values of every layer."""
        itemsize = np.dtype(self.dtype).itemsize
        return 2 * self.layers * self.kv_heads * self.head_dim * itemsize

    @classmethod
    def of(cls, model: onnx.ModelProto, max_context: int = DEFAULT_MAX_CONTEXT) -> KvLayout:
        """The layout a decoder graph declares.

        Raises:
            InputError: the graph lacks `input_ids`, `attention_mask` or `logits`, its past
                and present names do not pair up layer by layer, or a cache tensor is not
                rank 4 with fixed kv_heads and head_dim.
        """
        inputs = {i.name: i for i in model.graph.input}
        outputs = {o.name for o in model.graph.output}
        for needed, where in (("input_ids", inputs), ("attention_mask", inputs)):
            if needed not in where:
                raise InputError(f"not a decoder with a KV cache: no input {needed!r}")
        if "logits" not in outputs:
            raise InputError("not a decoder with a KV cache: no output 'logits'")
        past = sorted({int(m[1]) for n in inputs if (m := _PAST.match(n))})
        present = sorted({int(m[1]) for n in outputs if (m := _PRESENT.match(n))})
        if not past or past != list(range(len(past))) or present != past:
            raise InputError(
                f"not a decoder with a KV cache: past layers {past}, present layers {present}"
            )
        first = inputs[PAST.format(layer=0, part="key")].type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else None for d in first.shape.dim]
        if len(dims) != 4 or dims[1] is None or dims[3] is None:
            raise InputError(
                "past_key_values.0.key must be [batch, kv_heads, sequence, head_dim] with "
                f"fixed kv_heads and head_dim, got {dims}"
            )
        dtype = onnx.helper.tensor_dtype_to_np_dtype(first.elem_type).name
        in_place = any(n.op_type == "GroupQueryAttention" for n in model.graph.node)
        return cls(len(past), dims[1], dims[3], dtype, max_context, in_place)
