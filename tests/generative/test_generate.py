"""Generation from the tiny Llama artifact: the IO-bound cache loop against a plain numpy loop
and against ONNX Runtime GenAI, sampling, stop strings, EOS, budgets, chat and errors."""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from inferopt.errors import InputError
from inferopt.generative.generate import (
    GenerationConfig,
    Generator,
    StopFilter,
    _BoundCache,
    generate,
    stream,
)

PROMPT = "Return the value of"
TEMPLATE = (
    "{% for m in messages %}<|endoftext|>{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)


@pytest.fixture(scope="module")
def gen(tiny_llama_artifact: Path) -> Generator:
    return Generator(tiny_llama_artifact)


class PlainLoop:
    """The decoder run with numpy feeds and fetches, no IO binding: each present is fed back
    as the next past."""

    def __init__(self, gen: Generator) -> None:
        self.gen, layout = gen, gen.layout
        empty = np.zeros((1, layout.kv_heads, 0, layout.head_dim), dtype=layout.dtype)
        self.past, self.done = [empty] * len(layout.past_names()), 0

    def run(self, ids: Sequence[int]) -> np.ndarray:
        """Feed `ids` after the cached ones; the last position's logits [vocab]."""
        layout, total = self.gen.layout, self.done + len(ids)
        feeds = {
            "input_ids": np.asarray([ids], dtype=np.int64),
            "attention_mask": np.ones((1, total), dtype=np.int64),
            **dict(zip(layout.past_names(), self.past, strict=True)),
        }
        if "position_ids" in {i.name for i in self.gen.session.get_inputs()}:
            feeds["position_ids"] = np.arange(self.done, total, dtype=np.int64)[None]
        logits, *self.past = self.gen.session.run(["logits", *layout.present_names()], feeds)
        self.done = total
        last: np.ndarray = logits[0, -1]
        return last


def reference_greedy(gen: Generator, prompt_ids: Sequence[int], steps: int) -> list[int]:
    """Greedy decoding by the plain loop, EOS ignored."""
    loop = PlainLoop(gen)
    out = [int(np.argmax(loop.run(prompt_ids)))]
    while len(out) < steps:
        out.append(int(np.argmax(loop.run([out[-1]]))))
    return out


def test_the_cache_is_updated_in_place_with_the_same_logits(gen: Generator) -> None:
    """GroupQueryAttention graphs: past and present share one buffer per tensor, the new keys
    land in it after the cached ones, and the logits equal a plain loop's at every step."""
    assert gen.layout.in_place
    ids = gen.prompt_ids(PROMPT + " the first of the items in the list")
    prefill = len(ids) - 5
    cache = _BoundCache(gen.session, gen.layout, "position_ids" in gen._inputs, len(ids))
    logits = [cache.run(np.asarray(ids[:prefill], dtype=np.int64))]
    logits += [cache.run(np.asarray([i], dtype=np.int64)) for i in ids[prefill:]]
    plain = PlainLoop(gen)
    expected = [plain.run(ids[:prefill])] + [plain.run([i]) for i in ids[prefill:]]
    np.testing.assert_allclose(np.stack(logits), np.stack(expected), atol=1e-5)
    keys = cache._arrays[0]  # the numpy memory bound as past and present of layer 0's key
    assert keys.shape[2] == len(ids) and np.abs(keys).sum(axis=(0, 1, 3)).all()
    with pytest.raises(ValueError, match="holds 8 tokens: 8 cached"):
        full = _BoundCache(gen.session, gen.layout, "position_ids" in gen._inputs, 8)
        full.run(np.asarray(ids[:8], dtype=np.int64))
        full.run(np.asarray(ids[8:9], dtype=np.int64))


def until_eos(ids: list[int], eos: frozenset[int]) -> list[int]:
    return next((ids[:i] for i, t in enumerate(ids) if t in eos), ids)


def test_greedy_equals_a_plain_loop_and_ort_genai(gen: Generator, tiny_llama_artifact: Path):
    pytest.importorskip("onnxruntime_genai")
    from genai_loop import og_greedy

    prompt_ids = gen.prompt_ids(PROMPT)
    ours = list(gen.token_ids(prompt_ids, GenerationConfig(max_new_tokens=24)))
    assert ours == until_eos(reference_greedy(gen, prompt_ids, 24), gen.eos_ids)
    assert ours == until_eos(og_greedy(tiny_llama_artifact, prompt_ids, 24), gen.eos_ids)


def test_sampling_is_seeded(gen: Generator) -> None:
    def sample(seed: int, **kw: float) -> list[int]:
        config = GenerationConfig(max_new_tokens=16, temperature=1.5, seed=seed, **kw)  # type: ignore[arg-type]
        return list(gen.token_ids(gen.prompt_ids(PROMPT), config))

    assert sample(1) == sample(1)
    assert sample(1) != sample(2)
    assert sample(3, top_k=5, top_p=0.9) == sample(3, top_k=5, top_p=0.9)
    greedy = list(gen.token_ids(gen.prompt_ids(PROMPT), GenerationConfig(max_new_tokens=16)))
    assert sample(4, top_k=1) == greedy == sample(5, top_p=1e-6)


def test_stream_pieces_join_to_generate(gen: Generator) -> None:
    config = GenerationConfig(max_new_tokens=20, temperature=1.0, seed=7)
    pieces = list(stream(gen, PROMPT, config))
    assert "".join(pieces) == generate(gen, PROMPT, config) != ""
    ids = list(gen.token_ids(gen.prompt_ids(PROMPT), config))
    assert "".join(pieces) == gen.decode(ids)


def test_max_new_tokens_and_eos(gen: Generator) -> None:
    prompt_ids = gen.prompt_ids(PROMPT)
    full = reference_greedy(gen, prompt_ids, 12)
    three = list(gen.token_ids(prompt_ids, GenerationConfig(max_new_tokens=3)))
    assert three == until_eos(full, gen.eos_ids)[:3]
    eos_at = next(i for i, t in enumerate(full) if t != full[0])  # a token not seen before it
    early = Generator(gen.folder)
    early.eos_ids = frozenset({full[eos_at]})
    assert list(early.token_ids(prompt_ids, GenerationConfig(max_new_tokens=12))) == full[:eos_at]
    past_eos = GenerationConfig(max_new_tokens=12, ignore_eos=True)
    assert list(early.token_ids(prompt_ids, past_eos)) == full  # goes on through the EOS


def test_stop_strings_cut_the_text(gen: Generator) -> None:
    config = GenerationConfig(max_new_tokens=30, temperature=1.0, seed=11)
    text = gen.generate(PROMPT, config)
    assert len(text) > 10
    stop = text[6:9]
    cut = text[: text.find(stop)]
    stopped = GenerationConfig(max_new_tokens=30, temperature=1.0, seed=11, stop=[stop, "\x00"])
    assert gen.generate(PROMPT, stopped) == cut
    assert "".join(gen.stream(PROMPT, stopped)) == cut


def test_stop_filter_holds_back_what_may_start_a_stop() -> None:
    stops = StopFilter(["END", "\n\n"])
    fed = [stops.feed(p) for p in ["ab E", "N", "x\n", "y E", "ND tail"]]
    assert fed == [("ab ", False), ("", False), ("ENx", False), ("\ny ", False), ("", True)]
    final = StopFilter(["END"])
    assert final.feed("a EN") == ("a ", False) and final.feed("", final=True) == ("EN", False)


def test_context_limits_are_one_line_with_figures(tiny_llama_artifact: Path) -> None:
    small = Generator(tiny_llama_artifact, max_context=8)
    long_prompt = "x " * 40
    with pytest.raises(
        InputError, match=r"the prompt is \d+ tokens, more than the context cap of 8"
    ):
        small.generate(long_prompt)
    n = len(small.prompt_ids("ab"))
    with pytest.raises(InputError, match=rf"\({n} tokens\) \+ 9 new tokens asked for") as err:
        small.stream("ab", GenerationConfig(max_new_tokens=9))  # raised before any piece
    assert "\n" not in str(err.value) and f"at most {8 - n} new tokens" in str(err.value)
    exact = Generator(tiny_llama_artifact, max_context=n)  # the prompt fills the context
    with pytest.raises(InputError, match="the prompt alone fills it, so shorten the prompt"):
        exact.stream("ab", GenerationConfig(max_new_tokens=1))


def test_chat_uses_the_template(tiny_llama_artifact: Path, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no chat template"):
        Generator(tiny_llama_artifact).generate("hi", GenerationConfig(chat=True))
    folder = tmp_path / "chat"
    shutil.copytree(tiny_llama_artifact, folder)
    config_file = folder / "tokenizer_config.json"
    config = json.loads(config_file.read_text())
    config_file.write_text(json.dumps({**config, "chat_template": TEMPLATE}))
    chat = Generator(folder)
    ids = chat.prompt_ids("hi", chat=True)
    rendered = "<|endoftext|>user: hi\nassistant:"
    assert ids == chat.tokenizer.encode(rendered, add_special_tokens=False).ids
    greedy = GenerationConfig(max_new_tokens=5, chat=True)
    assert chat.generate("hi", greedy) == chat.decode(list(chat.token_ids(ids, greedy)))


@pytest.mark.parametrize(
    ("field", "value"),
    [("max_new_tokens", 0), ("temperature", -0.1), ("temperature", float("nan")),
     ("top_p", 0.0), ("top_p", 1.5), ("top_k", -1), ("seed", -3), ("stop", ("",))],
)  # fmt: skip
def test_config_refuses_bad_values(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=field):
        GenerationConfig(**{field: value})  # type: ignore[arg-type]


@pytest.mark.slow
def test_a_dynamo_export_generates_the_same_tokens(
    gen: Generator, tiny_llama_folder: Path, tmp_path: Path
) -> None:
    """The torch.export artifact (plain Concat attention, not ORT's fused GroupQueryAttention)
    through the same IO-bound loop: the same greedy tokens as the plain loop (~10 s)."""
    from inferopt.generative.export import export_causal_lm

    dynamo = Generator(export_causal_lm(tiny_llama_folder, tmp_path / "dyn", exporter="dynamo"))
    assert not dynamo.layout.in_place  # a concatenating graph: present is a fresh buffer
    prompt_ids = gen.prompt_ids(PROMPT)
    ours = list(dynamo.token_ids(prompt_ids, GenerationConfig(max_new_tokens=16)))
    assert ours == until_eos(reference_greedy(dynamo, prompt_ids, 16), dynamo.eos_ids)
    assert ours == list(gen.token_ids(prompt_ids, GenerationConfig(max_new_tokens=16)))
