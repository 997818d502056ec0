"""Logits of the last position only: the same numbers as the last row of every position's,
the same greedy tokens, and a clear refusal of graphs whose lm_head it does not recognise."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from inferopt.errors import InputError
from inferopt.generative.generate import GenerationConfig, Generator
from inferopt.generative.last_logits import last_position_logits
from inferopt.generative.slots import SlotPool

PROMPT = "def mean(values): return sum(values) / len(values) if values else"


def test_the_last_row_and_the_greedy_tokens_are_unchanged(tiny_llama_artifact: Path) -> None:
    full = Generator(tiny_llama_artifact, max_context=128)
    last = Generator(tiny_llama_artifact, max_context=128, last_logits=True)
    assert last.last_logits and not full.last_logits
    ids = full.prompt_ids(PROMPT)
    rows = [SlotPool(gen, slots=1).prefill(0, np.asarray(ids)) for gen in (full, last)]
    np.testing.assert_array_equal(rows[1], rows[0])
    config = GenerationConfig(max_new_tokens=16)
    assert list(last.token_ids(ids, config)) == list(full.token_ids(ids, config))


def test_the_rewritten_graph_gives_one_position(tiny_llama_artifact: Path) -> None:
    model = onnx.load(str(tiny_llama_artifact / "model.onnx"), load_external_data=False)
    rewritten = last_position_logits(model)
    logits = next(o for o in rewritten.graph.output if o.name == "logits")
    assert logits.type.tensor_type.shape.dim[1].dim_value == 1
    gathers = [
        n for n in rewritten.graph.node if n.op_type == "Gather" and n.name == "last_position"
    ]
    assert len(gathers) == 1
    assert len(rewritten.graph.node) == len(model.graph.node) + 1  # the input is not changed


def _graph(norm: bool) -> onnx.ModelProto:
    """x [1, s, 4] -> (SimplifiedLayerNormalization) -> MatMul -> logits [1, s, 8]."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, "s", 4])
    logits = helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, "s", 8])
    w = helper.make_tensor("w", TensorProto.FLOAT, [4, 8], np.ones(32, np.float32))
    g = helper.make_tensor("g", TensorProto.FLOAT, [4], np.ones(4, np.float32))
    nodes = [helper.make_node("MatMul", ["h" if norm else "x", "w"], ["logits"])]
    if norm:
        nodes.insert(0, helper.make_node("SimplifiedLayerNormalization", ["x", "g"], ["h"]))
    return helper.make_model(helper.make_graph(nodes, "g", [x], [logits], [w, g]))


def test_graphs_without_a_final_norm_are_refused_with_the_reason() -> None:
    with pytest.raises(InputError, match="graph input 'x'"):
        last_position_logits(_graph(norm=False))
    model = _graph(norm=True)
    model.graph.output[0].name = "scores"
    model.graph.node[-1].output[0] = "scores"
    with pytest.raises(InputError, match="no output named logits"):
        last_position_logits(model)
    assert [n.op_type for n in last_position_logits(_graph(norm=True)).graph.node] == [
        "SimplifiedLayerNormalization",
        "Gather",
        "MatMul",
    ]
