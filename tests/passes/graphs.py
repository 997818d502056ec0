"""Small hand-built ONNX graphs for pass tests."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from inferopt.measure.fidelity import mean_cosine
from inferopt.model import Model, Provenance, from_proto
from inferopt.passes.base import PassContext

OPSET = [helper.make_opsetid("", 17)]


def model_of(proto: onnx.ModelProto, name: str = "test") -> Model:
    return from_proto(proto, Provenance(name, "onnx"))


def _init(name: str, values: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(values.astype(np.float32), name)


def mlp(hidden: int = 32, seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 16])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"),
        helper.make_node("Add", ["h", "b1"], ["hb"], name="bias1"),
        helper.make_node("Relu", ["hb"], ["a"], name="relu"),
        helper.make_node("MatMul", ["a", "w2"], ["y"], name="fc2"),
    ]
    inits = [
        _init("w1", rng.standard_normal((16, hidden)) * 0.3),
        _init("b1", rng.standard_normal(hidden) * 0.1),
        _init("w2", rng.standard_normal((hidden, 4)) * 0.3),
    ]
    graph = helper.make_graph(nodes, "mlp", [x], [y], initializer=inits)
    return helper.make_model(graph, opset_imports=OPSET)


def conv_bn(share_conv_output: bool = False) -> onnx.ModelProto:
    """Conv -> BatchNormalization -> Relu; optionally the conv output is also a graph output,
    which must stop the fusion (the unfused value is still needed)."""
    rng = np.random.default_rng(0)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 2, 6, 6])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4, 6, 6])
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c", "g", "b", "m", "v"], ["n"], name="bn"),
        helper.make_node("Relu", ["n"], ["y"], name="relu"),
    ]
    inits = [
        _init("w", rng.standard_normal((4, 2, 3, 3))),
        _init("g", rng.uniform(0.5, 1.5, 4)),
        _init("b", rng.standard_normal(4)),
        _init("m", rng.standard_normal(4)),
        _init("v", rng.uniform(0.5, 1.5, 4)),
    ]
    outputs = [y]
    if share_conv_output:
        outputs.append(helper.make_tensor_value_info("c", TensorProto.FLOAT, ["batch", 4, 6, 6]))
    graph = helper.make_graph(nodes, "convbn", [x], outputs, initializer=inits)
    return helper.make_model(graph, opset_imports=OPSET)


def erf_gelu() -> onnx.ModelProto:
    """x * 0.5 * (1 + erf(x / sqrt(2))), the way exporters spell GELU."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 8])
    consts = {
        "sqrt2": np.array(np.sqrt(2.0)),
        "one": np.array(1.0),
        "half": np.array(0.5),
    }
    nodes = [
        helper.make_node("Div", ["x", "sqrt2"], ["d"]),
        helper.make_node("Erf", ["d"], ["e"]),
        helper.make_node("Add", ["e", "one"], ["a"]),
        helper.make_node("Mul", ["x", "a"], ["m"]),
        helper.make_node("Mul", ["m", "half"], ["y"]),
    ]
    inits = [_init(k, v) for k, v in consts.items()]
    graph = helper.make_graph(nodes, "gelu", [x], [y], initializer=inits)
    return helper.make_model(graph, opset_imports=OPSET)


def constant_subgraph() -> onnx.ModelProto:
    """y = x * (c1 + c2): the Add of two constants folds away; a dangling node is dead."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])
    nodes = [
        helper.make_node("Add", ["c1", "c2"], ["c"], name="const_add"),
        helper.make_node("Mul", ["x", "c"], ["y"], name="mul"),
        helper.make_node("Neg", ["x"], ["unused"], name="dead"),
    ]
    inits = [_init("c1", np.ones(3)), _init("c2", np.full(3, 2.0))]
    graph = helper.make_graph(nodes, "consts", [x], [y], initializer=inits)
    return helper.make_model(graph, opset_imports=OPSET)


HIDDEN, HEADS = 16, 2


def attention_model(
    mask_as: str = "attention_bias", constant_weights: bool = True
) -> onnx.ModelProto:
    """x [batch, seq, 16] -> com.microsoft Attention -> MatMul, the key padding mask `mask`
    [batch, seq] given either as the additive attention_bias (where onnxscript's fusion puts
    it) or as a 2-D int32 mask_index."""
    rng = np.random.default_rng(0)
    consts = {
        "w": rng.standard_normal((HIDDEN, 3 * HIDDEN)) * 0.5,
        "b": rng.standard_normal(3 * HIDDEN) * 0.1,
        "wo": rng.standard_normal((HIDDEN, HIDDEN)) * 0.5,
        "zero": np.array(0.0),
        "lowest": np.array(np.finfo(np.float32).min),
    }
    inits = [numpy_helper.from_array(v.astype(np.float32), k) for k, v in consts.items()]
    inits += [numpy_helper.from_array(np.array(v, np.int64), k) for k, v in _INTS.items()]
    bias_nodes = [
        helper.make_node("Cast", ["mask"], ["keep"], to=TensorProto.BOOL),
        helper.make_node("Unsqueeze", ["keep", "axes12"], ["keep4"]),
        helper.make_node("Shape", ["mask"], ["dims"]),
        helper.make_node("Gather", ["dims", "i0"], ["b_dim"], axis=0),
        helper.make_node("Gather", ["dims", "i1"], ["s_dim"], axis=0),
        helper.make_node("Concat", ["b_dim", "i1", "s_dim", "s_dim"], ["shape4"], axis=0),
        helper.make_node("Expand", ["keep4", "shape4"], ["keep_all"]),
        helper.make_node("Where", ["keep_all", "zero", "lowest"], ["bias4"]),
    ]
    if mask_as == "attention_bias":
        mask_inputs, nodes = ["", "", "bias4"], bias_nodes
    else:
        mask_inputs = ["mask_i32"]
        nodes = [helper.make_node("Cast", ["mask"], ["mask_i32"], to=TensorProto.INT32)]
    weights = "w"
    if not constant_weights:
        nodes.append(helper.make_node("Identity", ["w"], ["w_computed"]))
        weights = "w_computed"
    nodes += [
        helper.make_node(
            "Attention",
            ["x", weights, "b", *mask_inputs],
            ["a"],
            name="attn",
            domain="com.microsoft",
            num_heads=HEADS,
        ),
        helper.make_node("MatMul", ["a", "wo"], ["y"], name="out"),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq", HIDDEN])
    mask = helper.make_tensor_value_info("mask", TensorProto.INT64, ["batch", "seq"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "seq", HIDDEN])
    graph = helper.make_graph(nodes, "attention", [x, mask], [y], initializer=inits)
    opsets = [*OPSET, helper.make_opsetid("com.microsoft", 1)]
    return helper.make_model(graph, opset_imports=opsets)


_INTS = {"axes12": [1, 2], "i0": [0], "i1": [1]}
LENGTHS = (7, 4, 2)  # right-padded rows of mixed lengths


def padded_vs_alone(model: Model) -> list[float]:
    """Cosine of each row's real positions in a right-padded batch to the row run alone. The
    padding holds values (as embeddings of a pad token would), which a lost mask lets in."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((len(LENGTHS), max(LENGTHS), HIDDEN)).astype(np.float32)
    mask = (np.arange(max(LENGTHS)) < np.array(LENGTHS)[:, None]).astype(np.int64)
    batched = model.run({"x": x, "mask": mask})["y"]
    cosines = []
    for row, n in enumerate(LENGTHS):
        alone = model.run({"x": x[row : row + 1, :n], "mask": mask[row : row + 1, :n]})["y"][0]
        cosines.append(mean_cosine(alone.reshape(1, -1), batched[row, :n].reshape(1, -1)))
    return cosines


def fused_bert() -> tuple[Model, PassContext]:
    """A one-layer BERT (random weights, mean pooled) exported and fused, with its context:
    the fused attention carries the padding mask (skips the test without PyTorch)."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from inferopt.huggingface import MeanPooledEncoder
    from inferopt.passes.fuse import Fuse
    from inferopt.sources import load

    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=64,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    encoder = transformers.BertModel(config, add_pooling_layer=False)
    module = MeanPooledEncoder(encoder, normalize=False).eval()
    ids = torch.randint(1, 64, (2, 9))
    example = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    model = load(module, {**example, "token_type_ids": torch.zeros_like(ids)})
    context = PassContext.for_model(model)
    fused = Fuse()(model, context)
    assert fused.provenance.steps[-1]["report"]["fired"].get("attention") == 1
    return fused, context


def bert_batch() -> tuple[dict[str, np.ndarray], tuple[int, ...]]:
    """A right-padded batch of four token rows of mixed lengths for fused_bert, and the lengths."""
    rng = np.random.default_rng(0)
    lengths = (12, 5, 8, 3)
    ids = rng.integers(1, 64, (len(lengths), max(lengths)))
    mask = (np.arange(max(lengths)) < np.array(lengths)[:, None]).astype(np.int64)
    return {"input_ids": ids * mask, "attention_mask": mask, "token_type_ids": 0 * mask}, lengths
