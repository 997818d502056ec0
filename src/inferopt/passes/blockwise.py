"""INT8 with block-wise scales (`int8-block`): each MatMul with a constant 2-D weight becomes
ONNX Runtime's `MatMulNBits` with 8-bit weights, one scale per `block_size` weights along K
(per output column), run with `accuracy_level=4`, which makes ORT quantize the activations to
int8 at run time per row and per block of K and multiply in int8.

Why beside `int8-dynamic`: `quantize_dynamic` takes one activation scale per tensor, so one
large value anywhere in a (padded) batch coarsens every other value's step; on minilm that
costs about 4% of nDCG@10 (cosine 0.993). Here every row of every block has its own scale:
minilm keeps cosine 0.9997 in padded batches and loses 0.5% of nDCG@10 at block 32, at 1.4x
fp32 at batch 1 (int8-dynamic: 1.7x; benchmarks/int8_block.py). The smaller the block, the
closer to float and the slower.

Fused `Attention` is split first (passes/attention.py), so its input projection is quantized
and the attention core keeps every mask. `Gemm` nodes and MatMuls whose weight is not a 2-D
constant stay in float; the report counts the Gemm nodes.

The speed depends on the int8 kernels ONNX Runtime has for the CPU (measured on AVX-512 VNNI
only); the search times every candidate on this machine, so it is never chosen for speed it
does not have."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import onnx

from inferopt.model import Model
from inferopt.ortquant import nbits_quantizer
from inferopt.passes import attention
from inferopt.passes.base import Pass, PassContext, PassResult, float_matrices
from inferopt.passes.quantize import INT8_TOLERANCE, nothing_to_quantize, unchanged

BLOCK_SIZES = (16, 32, 64, 128, 256)  # MatMulNBits takes a power of two >= 16
ACCURACY_LEVELS = (1, 2, 3, 4)  # MatMulNBits' compute type: fp32, fp16, bf16, int8


@dataclass(frozen=True)
class BlockInt8(Pass):
    """Options: `block_size` (weights per scale along K), `symmetric` (no zero point),
    `accuracy_level` (4: int8 compute with activations quantized per row and block; 1-3
    dequantize the weights to fp32, fp16 or bf16 and compute in float), `exclude` (MatMul
    node names kept in float; a split Attention's name stands for its projection).

    Raises:
        ValueError: a block size or accuracy level MatMulNBits does not take.
    """

    block_size: int = 32
    symmetric: bool = True
    accuracy_level: int = 4
    exclude: tuple[str, ...] = ()
    name = "int8-block"
    needs_weights_in_memory = True
    # Largest block first: the fastest, and the search stops a family's spread early.
    search = ({"block_size": 128}, {"block_size": 64}, {"block_size": 32})
    tolerance = INT8_TOLERANCE

    def __post_init__(self) -> None:
        if self.block_size not in BLOCK_SIZES:
            raise ValueError(f"block_size must be one of {BLOCK_SIZES}, got {self.block_size}")
        if self.accuracy_level not in ACCURACY_LEVELS:
            raise ValueError(
                f"accuracy_level must be one of {ACCURACY_LEVELS}, got {self.accuracy_level}"
            )

    def run(self, model: Model, context: PassContext) -> PassResult:
        split = attention.split_attention(model.proto)
        for node, reason in split.kept.items():
            context.notes.append(f"{self.name}: Attention {node!r} kept in float: {reason}")
        work = split.proto if split.projections else model.proto
        exclude = {split.projections.get(n, n) for n in self.exclude}
        nodes = [n for n in weight_matmuls(work) if n not in exclude]
        if not nodes:
            note = nothing_to_quantize(work, ("MatMul",), self.name, split.kept)
            return unchanged(model, context, note or self._none_left(work))
        proto = self._quantize(work, nodes)
        report: dict[str, Any] = {
            "quantized": len(nodes),
            "kept_float": sorted(exclude & set(_matmul_names(work))),
            "gemm_left_float": sum(n.op_type == "Gemm" for n in work.graph.node),
        }
        if split.projections or split.kept:
            report["attention"] = {"split": split.projections, "kept_float": split.kept}
        return PassResult(proto, report)

    def _none_left(self, proto: onnx.ModelProto) -> str:
        """Why nothing is quantized when the model has MatMuls with constant weights."""
        if weight_matmuls(proto):
            return f"pass {self.name!r} changed nothing: every MatMul it could take is excluded"
        return (
            f"pass {self.name!r} changed nothing: this model's MatMul weights are not 2-D "
            "float constants, which MatMulNBits needs"
        )

    def _quantize(self, proto: onnx.ModelProto, nodes: list[str]) -> onnx.ModelProto:
        mq = nbits_quantizer()

        others = [n for n in _matmul_names(proto) if n not in set(nodes)]
        config = mq.DefaultWeightOnlyQuantConfig(
            block_size=self.block_size,
            is_symmetric=self.symmetric,
            accuracy_level=self.accuracy_level,
            bits=8,
            op_types_to_quantize=("MatMul",),
        )
        quantizer = mq.MatMulNBitsQuantizer(
            onnx.ModelProto.FromString(proto.SerializeToString()),  # it edits in place
            bits=8,
            block_size=self.block_size,
            is_symmetric=self.symmetric,
            accuracy_level=self.accuracy_level,
            nodes_to_exclude=others,
            algo_config=config,
        )
        quantizer.process()
        result: onnx.ModelProto = quantizer.model.model
        return result


def _matmul_names(proto: onnx.ModelProto) -> list[str]:
    return [n.name for n in proto.graph.node if n.op_type == "MatMul"]


def weight_matmuls(proto: onnx.ModelProto) -> list[str]:
    """Names of MatMul nodes whose second input is a 2-D float initializer (what
    MatMulNBits replaces; its weight is (K, N))."""
    weights = float_matrices(proto)
    return [n.name for n in proto.graph.node if n.op_type == "MatMul" and n.input[1] in weights]


def applies(model: Model) -> bool:
    """Whether the pass has anything to quantize in `model`: a MatMul with a constant 2-D
    weight, or a fused Attention (whose projection the split makes one)."""
    proto = model.proto
    return bool(weight_matmuls(proto)) or any(attention.is_attention(n) for n in proto.graph.node)
