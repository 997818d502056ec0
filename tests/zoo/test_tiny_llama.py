"""The `tiny-llama` zoo generator: the real cached folder (trained once per machine, about 4
minutes) loads with transformers, its tokenizer round-trips any text and renders chats, and
it learned something: held-out loss below the unigram baseline's."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from inferopt import zoo
from inferopt.zoo import tiny_llama

transformers = pytest.importorskip("transformers")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def folder() -> Path:
    return zoo.generator_folder("tiny-llama")


@pytest.fixture(scope="module")
def model(folder: Path) -> Any:
    return transformers.AutoModelForCausalLM.from_pretrained(folder).eval()


@pytest.fixture(scope="module")
def tokenizer(folder: Path) -> Any:
    return transformers.AutoTokenizer.from_pretrained(folder)


def test_second_call_reuses_the_cache(folder: Path) -> None:
    started = time.perf_counter()
    again = tiny_llama.tiny_llama_folder()
    assert again == folder
    assert time.perf_counter() - started < 1.0
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {
        p.name for p in folder.iterdir()
    }


def test_architecture_is_a_small_llama_with_grouped_query_attention(model: Any) -> None:
    config = model.config
    assert type(model).__name__ == "LlamaForCausalLM"
    assert config.num_hidden_layers == 4 and config.num_attention_heads == 4
    assert config.num_key_value_heads == 2
    assert config.tie_word_embeddings and config.vocab_size == tiny_llama.DEFAULT.vocab_size
    assert (config.pad_token_id, config.bos_token_id, config.eos_token_id) == (0, 1, 2)


@pytest.mark.parametrize(
    "text",
    ["Return the number of items.", "Ünïcödé — naïve café, 日本語 and emoji 🐍!", "  a\tb\n"],
)
def test_tokenizer_round_trips_text(tokenizer: Any, text: str) -> None:
    ids = tokenizer(text)["input_ids"]
    assert ids[0] == tokenizer.bos_token_id
    assert tokenizer.decode(ids, skip_special_tokens=True) == text
    assert tokenizer.unk_token_id is None or tokenizer.unk_token_id not in ids


def test_chat_template_renders(tokenizer: Any) -> None:
    chat = [{"role": "user", "content": "What does open do?"}]
    text = tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    assert text == "<s><|im_start|>user\nWhat does open do?<|im_end|>\n<|im_start|>assistant\n"
    assert (tokenizer.eos_token, tokenizer.pad_token) == ("</s>", "<pad>")


def test_greedy_continuation_is_text_like(model: Any, tokenizer: Any) -> None:
    inputs = tokenizer("The function returns", return_tensors="pt")
    out = model.generate(**inputs, max_new_tokens=16, do_sample=False)
    words = tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert sum(ch.isalpha() or ch.isspace() for ch in words) > 0.7 * max(1, len(words))


def test_held_out_loss_is_below_the_unigram_baseline(
    folder: Path, model: Any, tokenizer: Any
) -> None:
    stats = json.loads((folder / tiny_llama.STATS_FILE).read_text())
    counts = np.asarray(stats["unigram_counts"], dtype=np.int64)
    held_out, unigram = tiny_llama.held_out_losses(model, tokenizer, counts, sentences=200)
    assert held_out < unigram - 1.0  # nats per token: perplexity e times lower, at least
    assert stats["held_out_loss"] < stats["unigram_loss"] - 1.0


def test_config_is_validated() -> None:
    with pytest.raises(ValueError, match="num_kv_heads"):
        tiny_llama.TinyLlamaConfig(num_heads=4, num_kv_heads=3)
    with pytest.raises(ValueError, match="vocab_size"):
        tiny_llama.TinyLlamaConfig(vocab_size=100)
    with pytest.raises(ValueError, match="steps"):
        tiny_llama.TinyLlamaConfig(steps=0)


def test_cache_key_follows_the_config() -> None:
    other = tiny_llama.TinyLlamaConfig(steps=10, warmup_steps=1)
    assert tiny_llama.cache_path(other) != tiny_llama.cache_path()
    assert tiny_llama.cache_path(tiny_llama.TinyLlamaConfig()) == tiny_llama.cache_path()
