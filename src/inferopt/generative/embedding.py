"""The embedding table of a weight-only quantized decoder: int4 blocks of its own
(`GatherBlockQuantized`, ORT's quantizer), or, when the table is tied to the lm_head, read
from the lm_head's quantized blocks so that the weights are stored once."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from inferopt.errors import InputError
from inferopt.ortquant import nbits_quantizer


def quantize_embedding(model: onnx.ModelProto, block_size: int, symmetric: bool) -> onnx.ModelProto:
    """The embedding Gather as GatherBlockQuantized (ORT's quantizer, rtn, blocks along the
    hidden axis)."""
    mq = nbits_quantizer()

    config = mq.DefaultWeightOnlyQuantConfig(
        block_size=block_size,
        is_symmetric=symmetric,
        bits=4,
        op_types_to_quantize=("Gather",),
        quant_axes=(("Gather", 1),),
    )
    quantizer = mq.MatMulNBitsQuantizer(model, algo_config=config)
    quantizer.process()
    result: onnx.ModelProto = quantizer.model.model
    if not any(n.op_type == "GatherBlockQuantized" for n in result.graph.node):
        raise InputError(
            "embedding=int4: no Gather reads a float table initializer; a table "
            "tied to the lm_head (Transpose, then Gather) takes embedding=tied"
        )
    return result


def tie_embedding(model: onnx.ModelProto) -> None:
    """Transpose(W) → Gather(ids), with W the lm_head's weight now quantized as MatMulNBits B
    [N, K/block, blob], becomes GatherBlockQuantized over that same B (quantize_axis 2, one
    block per row of the last axis) and a Reshape to [..., K]: bit for bit the lm_head's
    dequantized weights.

    Raises:
        InputError: the graph's embedding is not tied to a quantized lm_head this way.
    """
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    producers = {o: n for n in graph.node for o in n.output}
    gathers = [
        n for n in graph.node if n.op_type == "Gather" and
        producers.get(n.input[0]) is not None and producers[n.input[0]].op_type == "Transpose"
        and producers[n.input[0]].input[0] in inits
    ]  # fmt: skip
    if len(gathers) != 1:
        raise InputError("embedding=tied: no embedding Gather reading a transposed weight")
    gather, transpose = gathers[0], producers[gathers[0].input[0]]
    k, n = inits[transpose.input[0]].dims
    head = next((m for m in graph.node if m.op_type == "MatMulNBits"
                 and _ints(m)["K"] == k and _ints(m)["N"] == n), None)  # fmt: skip
    if head is None or k % _ints(head)["block_size"]:
        raise InputError("embedding=tied: the lm_head is not quantized in whole blocks")
    attrs = _ints(head)
    bits, block = attrs["bits"], attrs["block_size"]
    blocks = k // block
    scales = numpy_helper.to_array(inits[head.input[2]]).reshape(n, blocks, 1)
    if len(head.input) > 3 and head.input[3]:
        zp = numpy_helper.to_array(inits[head.input[3]])
        if zp.dtype != np.uint8:
            raise InputError("embedding=tied: the lm_head has float zero points")
        if bits == 4:  # two per byte, low nibble first, each row padded to whole bytes
            zp = np.stack([zp & 0x0F, zp >> 4], axis=-1).reshape(n, -1)[:, :blocks]
        zp = zp.reshape(n, blocks, 1)
    else:  # symmetric: MatMulNBits' implied zero point, written out for the Gather
        zp = np.full((n, blocks, 1), 2 ** (bits - 1), dtype=np.uint8)
    base = gather.output[0]
    graph.initializer.extend([
        numpy_helper.from_array(scales.astype(np.float32), f"{base}_scales"),
        numpy_helper.from_array(zp.astype(np.uint8), f"{base}_zero_points"),
        numpy_helper.from_array(np.array([0, 0, k], dtype=np.int64), f"{base}_shape"),
    ])  # fmt: skip
    quantized = onnx.helper.make_node(
        "GatherBlockQuantized",
        [head.input[1], gather.input[1], f"{base}_scales", f"{base}_zero_points"],
        [f"{base}_blocks"], name=f"{gather.name}_tied", domain="com.microsoft",
        gather_axis=0, quantize_axis=2, block_size=block, bits=bits,
    )  # fmt: skip
    reshape = onnx.helper.make_node("Reshape", [f"{base}_blocks", f"{base}_shape"], [base],
                                    name=f"{gather.name}_tied_reshape")  # fmt: skip
    # Copies: the graph's node list is rebuilt below, which would invalidate references.
    replaced = {gather.output[0], transpose.output[0]}
    kept = [onnx.NodeProto.FromString(x.SerializeToString())
            for x in graph.node if x.output[0] not in replaced]  # fmt: skip
    index = next(i for i, x in enumerate(kept) if base in x.input)
    kept[index:index] = [quantized, reshape]
    del graph.node[:]
    graph.node.extend(kept)
    drop_unused(model)


def _ints(node: onnx.NodeProto) -> dict[str, int]:
    return {a.name: a.i for a in node.attribute if a.type == onnx.AttributeProto.INT}


def drop_unused(model: onnx.ModelProto) -> None:
    """Initializers no node or output reads are removed."""
    used = {name for node in model.graph.node for name in node.input}
    used |= {o.name for o in model.graph.output}
    kept = [i for i in model.graph.initializer if i.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
