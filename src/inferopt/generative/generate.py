"""Text generation from a decoder artifact: prefill the prompt, then one token per step with the
KV cache, greedy or sampled, streamed as whole characters, stopped by EOS, a stop string or
the token budget.

The artifact is a folder with `model.onnx` (the KvLayout contract of inferopt.generative.kv),
the Hugging Face tokenizer files and ORT GenAI's `genai_config.json`. One sequence at a time
(batch 1), on the session inferopt.runtime makes.

The cache never goes through numpy between steps: the present outputs are bound with ONNX
Runtime's IO binding, left where ORT allocated them, and bound as the next step's past. This
works for any decoder of the contract (a preallocated max_context buffer updated in place
works only for GroupQueryAttention graphs). At a 256-token context on the tiny test models it
costs about 7 us per token more than numpy feeds (Python binding calls) and is faster than
binding views of two preallocated buffers; on a larger model it draws level with numpy, and
on a 32 MiB cache-sized output it is 8x faster than `session.run` (docs/generate.md).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime as ort

from inferopt.errors import InputError, ModelLoadError
from inferopt.generative.kv import DEFAULT_MAX_CONTEXT, KvLayout
from inferopt.generative.last_logits import last_position_logits
from inferopt.generative.memory import check_context, onnx_weight_bytes
from inferopt.generative.sampling import next_token
from inferopt.generative.stream import TextStreamer
from inferopt.runtime import SessionConfig, create_session

MODEL_FILE = "model.onnx"
GENAI_CONFIG = "genai_config.json"
TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG = "tokenizer_config.json"
log = logging.getLogger("inferopt.generate")


@dataclass(frozen=True)
class GenerationConfig:
    """How to generate. temperature 0 is greedy decoding; otherwise tokens are sampled after
    top_k (0: off) and top_p (1: off), from a numpy Generator seeded with `seed` (None: a
    fresh seed each call). `stop` strings end generation when the text contains one; the stop
    string and what follows are not returned. `chat` wraps the prompt as one user message in
    the tokenizer's chat template. `ignore_eos` goes on past EOS to max_new_tokens (as vLLM's
    option of that name: benchmarks want outputs of a known length).

    Raises:
        ValueError: max_new_tokens < 1, temperature < 0, top_p outside (0, 1], top_k < 0,
            seed < 0, or an empty stop string.
    """

    max_new_tokens: int = 128
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop: tuple[str, ...] = field(default_factory=tuple)
    chat: bool = False
    ignore_eos: bool = False

    def __post_init__(self) -> None:
        # A list given for `stop` is kept as a tuple: the config stays hashable and frozen.
        object.__setattr__(self, "stop", tuple(self.stop))
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if not self.temperature >= 0.0:  # also refuses NaN
            raise ValueError(f"temperature must be >= 0 (0: greedy), got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0: off), got {self.top_k}")
        if self.seed is not None and self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        if any(not isinstance(s, str) or not s for s in self.stop):
            raise ValueError(f"stop strings must be non-empty strings, got {list(self.stop)}")


class Generator:
    """Generates text from one artifact folder; load once, generate many times.

    `max_context` caps the tokens (prompt + generated) one generation may hold, below the
    model's context length from genai_config.json; by default the smaller of the two and
    DEFAULT_MAX_CONTEXT. `last_logits` runs the graph rewritten to compute logits for the last
    position only (generative/last_logits.py): faster prefill, for serving; perplexity
    needs every position, so it is off by default. A graph the rewrite does not recognise
    runs as it is (`self.last_logits` says which).

    Raises:
        ModelLoadError: the folder lacks model.onnx or tokenizer.json, or ORT cannot load it.
        InputError: the graph is not a decoder with a KV cache (KvLayout.of), or memory
            cannot hold the `max_context` asked for (generative.memory).
        ValueError: max_context < 1.
    """

    def __init__(
        self,
        folder: str | Path,
        *,
        max_context: int | None = None,
        session_config: SessionConfig | None = None,
        last_logits: bool = False,
    ) -> None:
        from tokenizers import Tokenizer

        self.folder = Path(folder)
        model_path = self.folder / MODEL_FILE
        for needed in (model_path, self.folder / TOKENIZER_FILE):
            if not needed.is_file():
                raise ModelLoadError(f"{self.folder}: not a generation artifact, no {needed.name}")
        self.genai: dict[str, Any] = _read_json(self.folder / GENAI_CONFIG).get("model", {})
        self.context_length = int(self.genai.get("context_length") or DEFAULT_MAX_CONTEXT)
        if max_context is not None and max_context < 1:
            raise ValueError(f"max_context must be >= 1, got {max_context}")
        cap = min(self.context_length, max_context or DEFAULT_MAX_CONTEXT)
        graph = onnx.load(str(model_path), load_external_data=False)
        self.layout = KvLayout.of(graph, max_context=cap)
        if max_context is not None:  # a cap asked for: refused if memory cannot hold it
            check_context(self.layout, onnx_weight_bytes(model_path), asked=max_context)
        self._inputs = {i.name for i in graph.graph.input}
        self.last_logits = False
        if last_logits:
            try:
                graph = last_position_logits(graph)
                self.last_logits = True
            except InputError as exc:
                log.info("%s: logits of every position (%s)", self.folder, exc)
        if self.last_logits:
            self.session = create_session(graph, session_config, label=str(model_path),
                                          data_dir=self.folder)  # fmt: skip
        else:
            self.session = create_session(model_path, session_config)
        self.tokenizer = Tokenizer.from_file(str(self.folder / TOKENIZER_FILE))
        self.eos_ids = self._eos_ids()

    # -- text in, text out ---------------------------------------------------------------

    def prompt_ids(self, prompt: str, *, chat: bool = False) -> list[int]:
        """The prompt's token ids, through the chat template when `chat`.

        Raises:
            InputError: `chat` and the tokenizer has no chat template.
        """
        if not chat:
            return list(self.tokenizer.encode(prompt).ids)
        text = self._chat_tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
        )
        # The template writes the special tokens (BOS and the like) itself.
        return list(self.tokenizer.encode(str(text), add_special_tokens=False).ids)

    def chat_ids(self, messages: Sequence[Mapping[str, Any]]) -> list[int]:
        """The token ids of a whole conversation (`{"role", "content"}` dicts, oldest first)
        through the tokenizer's chat template, ending where the assistant's answer starts.

        Raises:
            InputError: the tokenizer has no chat template, or the template refuses the
                conversation (its `raise_exception`, e.g. roles that do not alternate).
            ModelLoadError: transformers cannot load the tokenizer.
        """
        from jinja2 import TemplateError

        try:
            text = self._chat_tokenizer.apply_chat_template(
                [dict(m) for m in messages], tokenize=False, add_generation_prompt=True
            )
        except TemplateError as exc:
            raise InputError(f"the chat template refuses these messages: {exc}") from None
        # The template writes the special tokens (BOS and the like) itself.
        return list(self.tokenizer.encode(str(text), add_special_tokens=False).ids)

    def decode(self, ids: Sequence[int]) -> str:
        return str(self.tokenizer.decode(list(ids), skip_special_tokens=True))

    def stream(self, prompt: str, config: GenerationConfig | None = None) -> Iterator[str]:
        """Text pieces as they are decoded: whole characters, stop strings held back until
        it is sure they are not one. Joined, the pieces are what `generate` returns.

        The prompt is checked when this is called, not at the first piece, so that a caller
        learns of a bad prompt before it starts writing output.

        Raises:
            InputError: the prompt is empty, or prompt + max_new_tokens exceeds the context;
                chat without a chat template.
        """
        config = config or GenerationConfig()
        ids = self.prompt_ids(prompt, chat=config.chat)
        self.check_length(len(ids), config.max_new_tokens)
        return self._pieces(ids, config)

    def _pieces(self, ids: list[int], config: GenerationConfig) -> Iterator[str]:
        streamer = TextStreamer(self.decode, ids)
        stops = StopFilter(config.stop)
        for token in self.token_ids(ids, config):
            piece, stopped = stops.feed(streamer.push(token))
            if piece:
                yield piece
            if stopped:
                return
        piece, _ = stops.feed(streamer.finish(), final=True)
        if piece:
            yield piece

    def generate(self, prompt: str, config: GenerationConfig | None = None) -> str:
        """The generated text (without the prompt). Raises as `stream`."""
        return "".join(self.stream(prompt, config))

    # -- the token loop ------------------------------------------------------------------

    def token_ids(self, prompt_ids: Sequence[int], config: GenerationConfig) -> Iterator[int]:
        """Generated ids, one per decoder step, up to max_new_tokens; EOS ends it (not yielded).

        The prompt is one prefill run; each later run feeds one token with the cache the
        previous run left bound in ONNX Runtime's memory.

        Raises:
            InputError: no prompt ids, or prompt + max_new_tokens is past the context cap.
        """
        self.check_length(len(prompt_ids), config.max_new_tokens)
        rng = np.random.default_rng(config.seed)
        positions = "position_ids" in self._inputs
        capacity = len(prompt_ids) + config.max_new_tokens
        cache = _BoundCache(self.session, self.layout, positions, capacity)
        logits = cache.run(np.asarray(prompt_ids, dtype=np.int64))
        for step in range(config.max_new_tokens):
            token = next_token(
                logits,
                temperature=config.temperature,
                top_k=config.top_k,
                top_p=config.top_p,
                rng=rng,
            )
            if token in self.eos_ids and not config.ignore_eos:
                return
            yield token
            if step + 1 < config.max_new_tokens:  # the last token's logits are not needed
                logits = cache.run(np.asarray([token], dtype=np.int64))

    def check_length(self, prompt_tokens: int, max_new_tokens: int) -> None:
        """Raises InputError, with the figures, when the prompt or prompt + max_new_tokens
        does not fit in the capped context."""
        cap = self.layout.max_context
        where = f"the context cap of {cap} tokens (model context {self.context_length})"
        if prompt_tokens < 1:
            raise InputError("the prompt is empty: it encodes to no tokens")
        if prompt_tokens > cap:
            raise InputError(f"the prompt is {prompt_tokens} tokens, more than {where}")
        if prompt_tokens + max_new_tokens > cap:
            room = cap - prompt_tokens
            advice = (f"ask for at most {room} new tokens" if room else
                      "the prompt alone fills it, so shorten the prompt")  # fmt: skip
            raise InputError(
                f"the prompt ({prompt_tokens} tokens) + {max_new_tokens} new tokens asked for = "
                f"{prompt_tokens + max_new_tokens} tokens, more than {where}; {advice}"
            )

    # -- artifact details ----------------------------------------------------------------

    def _eos_ids(self) -> frozenset[int]:
        """EOS ids from genai_config.json (an id or a list) and the tokenizer's eos_token."""
        found: set[int] = set()
        eos = self.genai.get("eos_token_id")
        if isinstance(eos, int):
            found.add(eos)
        elif isinstance(eos, list):
            found.update(int(e) for e in eos)
        token = _read_json(self.folder / TOKENIZER_CONFIG).get("eos_token")
        if isinstance(token, dict):  # older tokenizer configs store an AddedToken dict
            token = token.get("content")
        if isinstance(token, str) and (tid := self.tokenizer.token_to_id(token)) is not None:
            found.add(int(tid))
        return frozenset(found)

    @cached_property
    def _chat_tokenizer(self) -> Any:
        """transformers' tokenizer, loaded only for chat: its template engine is the reference
        (Jinja with HF's extensions), and importing transformers costs seconds."""
        from transformers import AutoTokenizer

        try:
            tok = AutoTokenizer.from_pretrained(str(self.folder))
        except Exception as exc:  # transformers raises many types for a folder it cannot read
            raise ModelLoadError(f"{self.folder}: cannot load the tokenizer: {exc}") from exc
        if not getattr(tok, "chat_template", None):
            raise InputError(
                f"{self.folder}: the tokenizer has no chat template; generate without --chat "
                "or add chat_template to tokenizer_config.json"
            )
        return tok


class _BoundCache:
    """One generation's KV cache, kept in ONNX Runtime memory between steps by IO binding.

    In place (`layout.in_place`, GroupQueryAttention graphs): one float buffer per cache
    tensor, [1, kv_heads, capacity, head_dim], bound as both past and present once, so a
    step writes its new keys and values after the cached ones and copies nothing else (as
    ORT GenAI's `past_present_share_buffer`). The buffers come from np.zeros, whose pages
    the OS maps only when written, so an unused capacity costs address space, not memory.
    Otherwise (graphs that concatenate their cache) each run binds the present outputs to
    ORT-allocated memory and the next run binds those same OrtValues as its past.
    Only the logits of the last position come back to numpy ([vocab], float32).

    Raises:
        ValueError: capacity < 1.
    """

    def __init__(
        self,
        session: ort.InferenceSession,
        layout: KvLayout,
        positions: bool,
        capacity: int | None = None,
    ) -> None:
        self.session = session
        self.binding = session.io_binding()
        self.positions = positions
        self.past_names = layout.past_names()
        self.present_names = layout.present_names()
        self.in_place = layout.in_place
        self.capacity = layout.max_context if capacity is None else capacity
        if self.capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {self.capacity}")
        rows = self.capacity if self.in_place else 0
        shape = (1, layout.kv_heads, rows, layout.head_dim)
        self._arrays = [np.zeros(shape, dtype=layout.dtype) for _ in self.past_names]
        self.past = [ort.OrtValue.ortvalue_from_numpy(a) for a in self._arrays]
        if self.in_place:
            for past, present, value in zip(
                self.past_names, self.present_names, self.past, strict=True
            ):
                self.binding.bind_ortvalue_input(past, value)
                self.binding.bind_ortvalue_output(present, value)
        self.length = 0

    def run(self, ids: npt.NDArray[np.int64]) -> npt.NDArray[np.float32]:
        """Feed `ids` ([seq] int64) after the cached tokens; the last position's logits.

        Raises:
            ValueError: an in-place cache would pass its capacity.
        """
        total = self.length + ids.size
        if self.in_place and total > self.capacity:
            raise ValueError(
                f"the KV cache holds {self.capacity} tokens: {self.length} cached + "
                f"{ids.size} fed = {total}"
            )
        b = self.binding
        b.bind_cpu_input("input_ids", ids.reshape(1, -1))
        b.bind_cpu_input("attention_mask", np.ones((1, total), dtype=np.int64))
        if self.positions:
            b.bind_cpu_input("position_ids", np.arange(self.length, total, dtype=np.int64)[None])
        if not self.in_place:
            # Bound again every run: after a run the binding holds the allocated outputs,
            # whose shapes no longer fit (the cache grew by the tokens fed).
            for name, value in zip(self.past_names, self.past, strict=True):
                b.bind_ortvalue_input(name, value)
            for name in self.present_names:
                b.bind_output(name, "cpu")
        b.bind_output("logits", "cpu")
        self.session.run_with_iobinding(b)
        outputs = b.get_outputs()  # the presents were bound first: logits is the last output
        self.length = total
        if not self.in_place:
            self.past = list(outputs[:-1])
        logits: npt.NDArray[np.float32] = outputs[-1].numpy()[0, -1]
        return logits


class StopFilter:
    """Holds back text that may be the start of a stop string; cuts at the first stop."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = tuple(stops)
        self.longest = max((len(s) for s in self.stops), default=0)
        self.pending = ""

    def feed(self, piece: str, *, final: bool = False) -> tuple[str, bool]:
        """(text safe to emit, whether a stop string was met)."""
        if not self.stops:
            return piece, False
        self.pending += piece
        hits = [i for s in self.stops if (i := self.pending.find(s)) >= 0]
        if hits:
            out, self.pending = self.pending[: min(hits)], ""
            return out, True
        if final:
            out, self.pending = self.pending, ""
            return out, False
        # Keep the longest tail that is a proper prefix of some stop string.
        hold = next(
            (
                n
                for n in range(min(self.longest - 1, len(self.pending)), 0, -1)
                if any(s.startswith(self.pending[-n:]) for s in self.stops)
            ),
            0,
        )
        cut = len(self.pending) - hold
        out, self.pending = self.pending[:cut], self.pending[cut:]
        return out, False


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{path}: cannot read it as JSON: {exc}") from exc
    return data if isinstance(data, dict) else {}


def generate(
    model: str | Path | Generator, prompt: str, config: GenerationConfig | None = None
) -> str:
    """The text an artifact folder (or a loaded Generator) generates after `prompt`."""
    gen = model if isinstance(model, Generator) else Generator(model)
    return gen.generate(prompt, config)


def stream(
    model: str | Path | Generator, prompt: str, config: GenerationConfig | None = None
) -> Iterator[str]:
    """Text pieces as `generate` produces them (see Generator.stream)."""
    gen = model if isinstance(model, Generator) else Generator(model)
    return gen.stream(prompt, config)
