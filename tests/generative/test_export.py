"""export_causal_lm: the artifact's files and cache contract, the context cap, the exporter
choice, the refusals, and the artifact running unchanged under onnxruntime-genai."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from inferopt.errors import InputError
from inferopt.generative.configs import tiny_folder
from inferopt.generative.export import choose_exporter, export_causal_lm
from inferopt.generative.kv import KvLayout
from inferopt.generative.parity import ParityConfig, check_generative_parity


def test_artifact_holds_model_config_and_tokenizer(tiny_llama_artifact: Path) -> None:
    names = {p.name for p in tiny_llama_artifact.iterdir()}
    assert {"model.onnx", "genai_config.json", "tokenizer.json"} <= names
    layout = KvLayout.of(
        onnx.load(str(tiny_llama_artifact / "model.onnx"), load_external_data=False)
    )
    assert (layout.layers, layout.kv_heads, layout.head_dim) == (2, 2, 16)
    genai = json.loads((tiny_llama_artifact / "genai_config.json").read_text())
    assert genai["model"]["context_length"] == 2048 == genai["search"]["max_length"]
    assert genai["model"]["decoder"]["num_key_value_heads"] == 2


def test_auto_takes_the_builder_where_it_can_else_dynamo() -> None:
    assert choose_exporter("LlamaForCausalLM", "auto") == "builder"
    assert choose_exporter("GPT2LMHeadModel", "auto") == "dynamo"
    assert choose_exporter("LlamaForCausalLM", "dynamo") == "dynamo"
    with pytest.raises(ValueError, match="exporter"):
        choose_exporter("LlamaForCausalLM", "tvm")  # type: ignore[arg-type]


def test_builder_refuses_an_architecture_it_does_not_know(tmp_path: Path) -> None:
    folder = tiny_folder("gpt2", tmp_path / "gpt2")
    with pytest.raises(InputError, match="builder does not support GPT2LMHeadModel") as info:
        export_causal_lm(folder, tmp_path / "out", exporter="builder")
    assert "\n" not in str(info.value)


def _edit_config(folder: Path, **changes: object) -> None:
    config = json.loads((folder / "config.json").read_text())
    config.update(changes)
    (folder / "config.json").write_text(json.dumps(config))


def test_refuses_what_is_not_a_causal_lm(tiny_llama_folder: Path, tmp_path: Path) -> None:
    folder = Path(shutil.copytree(tiny_llama_folder, tmp_path / "bert"))
    _edit_config(folder, architectures=["BertForMaskedLM"])
    with pytest.raises(InputError, match="not a causal language model"):
        export_causal_lm(folder, tmp_path / "out")


def test_refuses_a_folder_without_tokenizer(tiny_llama_folder: Path, tmp_path: Path) -> None:
    folder = Path(shutil.copytree(tiny_llama_folder, tmp_path / "notok"))
    (folder / "tokenizer.json").unlink()
    with pytest.raises(InputError, match="no tokenizer"):
        export_causal_lm(folder, tmp_path / "out")


def test_refuses_an_architecture_transformers_does_not_know(
    tiny_llama_folder: Path, tmp_path: Path
) -> None:
    folder = Path(shutil.copytree(tiny_llama_folder, tmp_path / "foo"))
    _edit_config(folder, architectures=["FooForCausalLM"], model_type="foo")
    with pytest.raises(InputError, match="transformers cannot load it") as info:
        export_causal_lm(folder, tmp_path / "out")
    assert "\n" not in str(info.value)


def test_max_context_caps_the_genai_config(tiny_llama_folder: Path, tmp_path: Path) -> None:
    out = export_causal_lm(tiny_llama_folder, tmp_path / "out", max_context=64)
    genai = json.loads((out / "genai_config.json").read_text())
    assert genai["model"]["context_length"] == 64 == genai["search"]["max_length"]
    with pytest.raises(ValueError, match="max_context"):
        export_causal_lm(tiny_llama_folder, tmp_path / "bad", max_context=0)


def _torch_greedy(folder: Path, prompt: list[int], new: int) -> list[int]:
    from inferopt.generative.dynamo import load_causal_lm

    model = load_causal_lm(folder)
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(new):
            logits = model(input_ids=torch.tensor([ids])).logits[0, -1]
            ids.append(int(torch.argmax(logits)))
    return ids


def _genai_greedy(artifact: Path, text: str, new: int) -> tuple[list[int], list[int]]:
    og = pytest.importorskip("onnxruntime_genai")
    model = og.Model(str(artifact))
    prompt = [int(t) for t in og.Tokenizer(model).encode(text)]
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(prompt) + new, do_sample=False)
    generator = og.Generator(model, params)
    generator.append_tokens(np.array(prompt, np.int32))
    while not generator.is_done():
        generator.generate_next_token()
    return prompt, [int(t) for t in generator.get_sequence(0)]


@pytest.mark.slow
@pytest.mark.parametrize("exporter", ["builder", "dynamo"])
def test_artifact_runs_under_onnxruntime_genai(
    exporter: str, tiny_llama_folder: Path, tiny_llama_artifact: Path, tmp_path: Path
) -> None:
    """ORT GenAI's greedy tokens equal PyTorch's; its tokenizer equals transformers'. The
    dynamo artifact of the Llama is also checked for parity here, to export it only once."""
    from transformers import AutoTokenizer

    artifact = tiny_llama_artifact
    if exporter == "dynamo":
        artifact = export_causal_lm(tiny_llama_folder, tmp_path / "dyn", exporter="dynamo")
        quick = ParityConfig(greedy_tokens=8, prompts=("def",))
        assert check_generative_parity(artifact, tiny_llama_folder, quick).worst.rel <= 1e-4
    text = "Return a new list containing all items"
    prompt, generated = _genai_greedy(artifact, text, 8)
    assert prompt == AutoTokenizer.from_pretrained(str(artifact))(text)["input_ids"]
    assert generated == _torch_greedy(tiny_llama_folder, prompt, 8)
