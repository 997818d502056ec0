"""Generators in the model repository: a version folder that holds `genai_config.json` (a
decoder artifact of `inferopt export`, docs/generate.md) is served by continuous batching
(serve/scheduler.py) on the generate endpoints (serve/generation.py, OIP's generate
extension; serve/openai.py, OpenAI's completions), not on /infer.

A generator takes the same model settings as other models (serve.toml, flags), read as:
- max_batch_size: the most KV-cache slots, i.e. sequences in one decode step; as many as
  memory holds, up to it (0: one slot);
- max_queue_size: requests waiting or running; the waiting ones are capped at
  max_queue_size - slots (at least 1), and the next one gets 429;
- intra_op_threads and instances: ONNX Runtime threads of the one decoder session;
- default_timeout_ms: the deadline of requests that set none;
- max_queue_wait_ms: the longest predicted wait for a slot before 429 (bounds TTFT);
- prefix_cache_tokens: the prompt prefixes' KV kept for reuse (generative/prefix_cache.py).
The session computes logits for the last position only (generative/last_logits.py).
The context cap is the artifact's (`context_length`), at most 2048 tokens (Generator's).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from inferopt.errors import InferoptError
from inferopt.generative.generate import GENAI_CONFIG, GenerationConfig, Generator
from inferopt.generative.slots import slots_for_memory
from inferopt.runtime import SessionConfig
from inferopt.serve.config import ModelConfig
from inferopt.serve.errors import BadRequest, NotFound, ServeError
from inferopt.serve.layout import ModelSource
from inferopt.serve.metrics import GenerationEvents, GenerationFamilies, VersionMetrics
from inferopt.serve.protocol import InferRequest, InferResponse
from inferopt.serve.scheduler import Finish, Scheduler, Stream

if TYPE_CHECKING:
    from inferopt.serve.repository import Repository

log = logging.getLogger("inferopt.serve")
PLATFORM = "onnxruntime_generator"  # our decode loop on ONNX Runtime, not ORT GenAI's
CHUNK_TOKENS = 64  # prompt tokens per prefill chunk (Scheduler's default)
_TEXT = {"datatype": "BYTES", "shape": [1]}
# How a generation's finish counts among the request outcomes of serve/metrics.py.
_OUTCOMES = {"stop": "success", "length": "success", "deadline": "timeout",
             "cancelled": "cancelled", "error": "model_error"}  # fmt: skip


def is_generator(source: ModelSource) -> bool:
    """Whether `source` is a generator artifact: its folder holds genai_config.json."""
    return source.folder is not None and (source.path.parent / GENAI_CONFIG).is_file()


def outcome(finish: Finish) -> str:
    """The request outcome (serve/metrics.OUTCOMES) of a generation that ended so."""
    return _OUTCOMES[finish.reason]


def refused(exc: ServeError) -> str:
    """The request outcome (serve/metrics.OUTCOMES) of a generation request refused so."""
    return {404: "not_found", 429: "rejected", 503: "not_ready"}.get(exc.status, "bad_request")


class GeneratorVersion:
    """A loaded generator: its Generator (tokenizer, session) and Scheduler. Shows itself in
    the repository as other versions do (metadata, configuration, statistics); /infer on it
    is refused with the endpoints to use."""

    def __init__(
        self,
        name: str,
        version: str,
        generator: Generator,
        scheduler: Scheduler,
        config: ModelConfig,
        metrics: VersionMetrics,
        chat_problem: str | None,
    ) -> None:
        self.name = name
        self.version = version
        self.generator = generator
        self.scheduler = scheduler
        self.config = config
        self.metrics = metrics
        self.chat_problem = chat_problem  # why chat completions are refused; None: they work
        self.warning: str | None = None
        self.created = int(time.time())  # when it loaded: OpenAI's `created` of a model

    @classmethod
    def load(
        cls,
        source: ModelSource,
        config: ModelConfig,
        metrics: VersionMetrics,
        families: GenerationFamilies,
    ) -> GeneratorVersion:
        """In a worker thread: the generator, its slot pool sized by memory and
        max_batch_size, and its scheduler (running from here on).

        Raises:
            ModelLoadError, InputError: the artifact cannot be loaded, its decoder cannot be
                batched in place (not GroupQueryAttention), or memory holds no slot.
        """
        # Spinning pool threads, unlike other models' sessions: the scheduler runs decode
        # steps back to back, each of some 300 parallel sections, and waking sleeping threads
        # for each cost more than the spinning takes from the event loop. smollm2-135m over
        # HTTP on 2 cores, 8 streams: 230-284 tokens/s spinning against 193-241 without, TPOT
        # 26 ms against 30-32 ms; 1 stream 68-82 against 63-67 tokens/s.
        session = SessionConfig(
            intra_op_threads=config.threads(), inter_op_threads=1, allow_spinning=True
        )
        generator = Generator(source.path.parent, session_config=session, last_logits=True)
        prefix_tokens = config.prefix_cache_tokens // CHUNK_TOKENS * CHUNK_TOKENS  # whole blocks
        prefix_bytes = prefix_tokens * generator.layout.bytes_per_token()
        slots = slots_for_memory(generator, cap=max(1, config.max_batch_size),
                                 reserved=prefix_bytes)  # fmt: skip
        waiting = max(1, config.max_queue_size - slots)
        wait_ms = config.max_queue_wait_ms
        scheduler = Scheduler(generator, slots=slots, chunk_tokens=CHUNK_TOKENS,
                              max_waiting=waiting,
                              max_wait_s=None if wait_ms is None else wait_ms / 1e3,
                              prefix_cache_tokens=config.prefix_cache_tokens)  # fmt: skip
        scheduler.events = GenerationEvents(metrics, families, scheduler.stats)
        chat_problem = _chat_problem(generator)
        log.info(
            "model %s: %d KV-cache slots of %d tokens, up to %d requests waiting, %s%s",
            source.name, slots, generator.layout.max_context, waiting,
            f"a prefix cache of {prefix_tokens} tokens ({prefix_bytes / 2**20:.0f} MiB)"
            if prefix_tokens else "no prefix cache",
            "" if chat_problem is None else "; no chat completions",
        )  # fmt: skip
        return cls(source.name, source.version, generator, scheduler, config, metrics,
                   chat_problem)  # fmt: skip

    # ---- generating ----

    def submit(
        self, prompt_ids: list[int], config: GenerationConfig, deadline: float | None
    ) -> Stream:
        """Queue a generation (on the event loop). Raises as Scheduler.submit."""
        return self.scheduler.submit(prompt_ids, config, deadline=deadline)

    async def infer(self, request: InferRequest) -> InferResponse:
        """Refused: a generator takes text, on its own endpoints."""
        raise BadRequest(
            f"model {self.name!r} is a text generator, which /infer does not serve: use "
            f"POST /v2/models/{self.name}/generate or /generate_stream, or OpenAI's "
            "/v1/completions and /v1/chat/completions"
        )

    async def close(self) -> None:
        """Stop admitting; let running and queued generations finish, then stop the worker."""
        await asyncio.to_thread(self.scheduler.close)

    # ---- describing itself ----

    def metadata(self) -> dict[str, Any]:
        """OIP model metadata: text in, text out (as Triton shows its LLM backends)."""
        return {
            "name": self.name,
            "versions": [self.version],
            "platform": PLATFORM,
            "inputs": [{"name": "text_input", **_TEXT}],
            "outputs": [{"name": "text_output", **_TEXT}],
        }

    def model_config(self) -> dict[str, Any]:
        """Triton's model configuration, with our settings and the generator's under
        "inferopt"."""
        layout = self.generator.layout
        text = {"data_type": "TYPE_STRING", "dims": [1]}
        return {
            "name": self.name,
            "platform": PLATFORM,
            "backend": "onnxruntime",
            "max_batch_size": 0,
            "input": [{"name": "text_input", **text}],
            "output": [{"name": "text_output", **text}],
            "instance_group": [{"count": 1, "kind": "KIND_CPU"}],
            "inferopt": {
                **asdict(self.config),
                "generator": {
                    "kv_cache_slots": self.scheduler.pool.slots,
                    "max_context": layout.max_context,
                    "context_length": self.generator.context_length,
                    "max_waiting": self.scheduler.max_waiting,
                    "prefill_chunk_tokens": self.scheduler.chunk_tokens,
                    "prefix_cache_tokens_held": self.scheduler.prefix.tokens,
                    "last_position_logits": self.generator.last_logits,
                    "chat": self.chat_problem is None,
                },
            },
        }


def _chat_problem(generator: Generator) -> str | None:
    """Why the generator cannot take chats (no template, an unloadable tokenizer), or None.
    Trying one also loads transformers' tokenizer here, not at the first chat request."""
    try:
        generator.chat_ids([{"role": "user", "content": "Hello"}])
    except InferoptError as exc:
        return str(exc)
    return None


def find(repository: Repository, name: str, version: str | None = None) -> GeneratorVersion:
    """The generator serving as `name` (at `version`, if given).

    Raises:
        NotFound: no such model or version, or `name` is a model, not a generator.
        NotReady: it is loading, unloading or failed to load.
    """
    served = repository.get(name, version)
    if not isinstance(served, GeneratorVersion):
        raise NotFound(
            f"model {name!r} is not a text generator (no genai_config.json in its folder); "
            "serve it on /infer, or see GET /v1/models for the generators"
        )
    return served
