"""The `tiny-llama` generator: a small Llama (LlamaForCausalLM, grouped-query attention, tied
embeddings, like SmolLM2) with its own byte-level BPE tokenizer, both trained here from
scratch on the corpus's training text (`corpus.training_text()`, never a held-out sentence).

It exists to exercise the generative path (export with a KV cache, batching, serving) in
seconds, not to write well: after a few minutes on a CPU it continues text with plausible
words and punctuation, and its held-out loss is well below a unigram model's.

Training is seeded, single-threaded and uses deterministic kernels, so the same machine and
torch build retrain bit-identical weights. The folder is cached under `cache_dir("zoo")`,
keyed by a hash of `TinyLlamaConfig` and the versions of inferopt, torch, transformers and
tokenizers. Not by the corpus's own key, which changes with every installed distribution:
documents fall on the training or held-out side by their name's hash, so a model trained on an
older corpus has still never seen a held-out document of the newer one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
import torch

from inferopt.cache import cache_dir
from inferopt.zoo import corpus
from inferopt.zoo.digits import reproducible

BUILD = "1"  # bump when the code changes what it makes, so older folders are not reused
PAD, BOS, EOS = "<pad>", "<s>", "</s>"
IM_START, IM_END = "<|im_start|>", "<|im_end|>"
SPECIAL_TOKENS = (PAD, BOS, EOS, IM_START, IM_END)  # ids 0..4, in this order
# ChatML, as SmolLM2 uses, so both generators render chats alike. The model never saw a chat in
# training: the template is here so that chat-shaped requests work end to end.
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
STATS_FILE = "inferopt_training.json"


@dataclass(frozen=True)
class TinyLlamaConfig:
    """The architecture, the tokenizer and the training, all of which key the cache."""

    vocab_size: int = 2048
    hidden_size: int = 128
    intermediate_size: int = 384
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 2  # grouped-query attention: two query heads share a key/value head
    max_positions: int = 512
    seq_len: int = 128  # training block length in tokens
    batch_size: int = 32
    steps: int = 300  # 1.2M tokens: 3 to 5 minutes on one EPYC core, by the machine's load
    lr: float = 3e-3
    warmup_steps: int = 30
    # The first sentences of the (hash-ordered, so well mixed) training text: 60k give about
    # 2M tokens, more than the steps consume, and the BPE and encoding take seconds, not minutes.
    training_sentences: int = 60_000
    weight_decay: float = 0.01
    seed: int = 0

    def __post_init__(self) -> None:
        positive = ("hidden_size", "intermediate_size", "num_layers", "num_heads", "seq_len")
        for name in (*positive, "batch_size", "steps", "num_kv_heads", "training_sentences"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.vocab_size < 256 + len(SPECIAL_TOKENS):
            raise ValueError(f"vocab_size must hold the 256 bytes and specials: {self.vocab_size}")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not a multiple of num_heads")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads {self.num_heads} is not a multiple of num_kv_heads")
        if self.seq_len > self.max_positions:
            raise ValueError(f"seq_len {self.seq_len} exceeds max_positions {self.max_positions}")
        if not self.lr > 0 or self.weight_decay < 0 or not 0 <= self.warmup_steps < self.steps:
            raise ValueError("lr must be positive, weight_decay >= 0, 0 <= warmup_steps < steps")


DEFAULT = TinyLlamaConfig()


def cache_path(config: TinyLlamaConfig = DEFAULT) -> Path:
    from inferopt import __version__

    settings = json.dumps([BUILD, dataclasses.asdict(config)], sort_keys=True)
    digest = hashlib.sha256(settings.encode()).hexdigest()[:12]
    versions = "-".join(
        f"{name}{version(name)}" for name in ("torch", "transformers", "tokenizers")
    )
    return cache_dir("zoo") / f"tiny-llama-{digest}-inferopt{__version__}-{versions}"


def tiny_llama_folder(config: TinyLlamaConfig = DEFAULT) -> Path:
    """The Hugging Face folder (config, model.safetensors, tokenizer with its chat template,
    `inferopt_training.json` with the training figures) of the tiny Llama, trained on first
    use (about 4 minutes on two CPU cores for DEFAULT) and reused afterwards."""
    folder = cache_path(config)
    if (folder / STATS_FILE).is_file():  # written last: its presence means the folder is whole
        return folder
    staging = Path(tempfile.mkdtemp(dir=folder.parent, prefix=folder.name + ".", suffix=".tmp"))
    try:
        _build(config, staging)
        try:
            os.replace(staging, folder)  # atomic: readers see no folder or a whole one
        except OSError:
            if not (folder / STATS_FILE).is_file():
                raise  # not lost to a concurrent builder: a real failure
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def train_tokenizer(texts: Sequence[str], vocab_size: int, max_length: int) -> Any:
    """A byte-level BPE `PreTrainedTokenizerFast` trained on `texts`: any Unicode text encodes
    and decodes back exactly; encoding prepends `<s>`; eos `</s>`, pad `<pad>`, ChatML
    template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte, so nothing is unknown
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer, length=len(texts))
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, 1)]
    )
    return PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]  # unannotated upstream
        tokenizer_object=tokenizer,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        additional_special_tokens=[IM_START, IM_END],
        chat_template=CHAT_TEMPLATE,
        model_max_length=max_length,
    )


def _model(config: TinyLlamaConfig) -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM

    llama = LlamaConfig(
        vocab_size=config.vocab_size,
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_heads,
        num_key_value_heads=config.num_kv_heads,
        max_position_embeddings=config.max_positions,
        tie_word_embeddings=True,
        pad_token_id=SPECIAL_TOKENS.index(PAD),
        bos_token_id=SPECIAL_TOKENS.index(BOS),
        eos_token_id=SPECIAL_TOKENS.index(EOS),
    )
    return LlamaForCausalLM(llama)


def _encode(tokenizer: Any, texts: Sequence[str]) -> list[list[int]]:
    """`<s> text </s>` ids per text, int lists."""
    eos = SPECIAL_TOKENS.index(EOS)
    return [[*ids, eos] for ids in tokenizer(list(texts))["input_ids"]]


def _build(config: TinyLlamaConfig, out: Path) -> None:
    texts = corpus.training_text()[: config.training_sentences]
    _say(f"tiny-llama: training a {config.vocab_size}-token BPE on {len(texts)} sentences ...")
    with reproducible(config.seed):  # as the digits models are trained
        tokenizer = train_tokenizer(texts, config.vocab_size, config.max_positions)
        stream = np.concatenate([np.asarray(ids, np.int64) for ids in _encode(tokenizer, texts)])
        counts = np.bincount(stream, minlength=config.vocab_size)
        model = _model(config)
        started = time.perf_counter()
        _train(model, stream, config)
        seconds = time.perf_counter() - started
        held_out, unigram = held_out_losses(model, tokenizer, counts)
    model.generation_config.eos_token_id = [SPECIAL_TOKENS.index(t) for t in (EOS, IM_END)]
    model.generation_config.pad_token_id = SPECIAL_TOKENS.index(PAD)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    stats = {
        "training_seconds": round(seconds, 1),
        "threads": 1,
        "training_tokens": config.steps * config.batch_size * config.seq_len,
        "corpus_tokens": int(stream.size),
        "parameters": sum(p.numel() for p in model.parameters()),
        "held_out_loss": held_out,
        "unigram_loss": unigram,
        "held_out_perplexity": math.exp(held_out),
        "unigram_perplexity": math.exp(unigram),
        "unigram_counts": counts.tolist(),
        "config": dataclasses.asdict(config),
    }
    (out / STATS_FILE).write_text(json.dumps(stats))
    _say(f"tiny-llama: held-out perplexity {stats['held_out_perplexity']:.1f}, "
         f"unigram {stats['unigram_perplexity']:.1f}, trained in {seconds:.0f} s")  # fmt: skip


def _train(model: Any, stream: np.ndarray, config: TinyLlamaConfig) -> None:
    """AdamW on next-token cross-entropy over blocks cut at seeded random offsets of the
    token stream; linear warm-up then cosine decay. Progress every tenth of the steps."""
    rng = np.random.default_rng(config.seed)
    data = torch.from_numpy(stream)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]  # norms: decay would shrink them
    groups: list[dict[str, Any]] = [
        {"params": decay, "weight_decay": config.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(groups, lr=config.lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: _lr_scale(step, config))
    model.train()
    started, running = time.perf_counter(), 0.0
    for step in range(1, config.steps + 1):
        starts = rng.integers(0, stream.size - config.seq_len, size=config.batch_size)
        batch = torch.stack([data[s : s + config.seq_len] for s in starts.tolist()])
        # transformers shifts the labels itself: position t is scored on token t + 1.
        loss = model(input_ids=batch, labels=batch).loss
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        running += float(loss.detach())
        if step % max(1, config.steps // 10) == 0 or step == config.steps:
            period = step % max(1, config.steps // 10) or max(1, config.steps // 10)
            elapsed = time.perf_counter() - started
            _say(f"tiny-llama: step {step}/{config.steps}  loss {running / period:.3f}  "
                 f"{elapsed:.0f} s")  # fmt: skip
            running = 0.0
    model.eval()


def _lr_scale(step: int, config: TinyLlamaConfig) -> float:
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def held_out_losses(
    model: Any, tokenizer: Any, unigram_counts: np.ndarray, sentences: int = 1000
) -> tuple[float, float]:
    """(model, unigram) mean cross-entropy in nats per token on the first `sentences` held-out
    prose sentences, each as `<s> text </s>` (every token after `<s>` predicted), in padded
    batches of 64. The unigram model is `unigram_counts` (int [vocab], the training stream's
    token counts) with add-one smoothing."""
    held_out = _encode(tokenizer, corpus.split()[1][:sentences])
    probs = (unigram_counts + 1.0) / (unigram_counts.sum() + unigram_counts.size)
    total_model, total_unigram, tokens = 0.0, 0.0, 0
    with torch.inference_mode():
        for start in range(0, len(held_out), 64):
            rows = held_out[start : start + 64]
            width = max(map(len, rows))
            ids = torch.zeros((len(rows), width), dtype=torch.int64)  # right-padded with <pad>
            mask = torch.zeros((len(rows), width), dtype=torch.int64)
            for i, row in enumerate(rows):
                ids[i, : len(row)] = torch.tensor(row)
                mask[i, : len(row)] = 1
            logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
            nll = torch.nn.functional.cross_entropy(
                logits.transpose(1, 2), ids[:, 1:], reduction="none"
            )
            total_model += float((nll * mask[:, 1:]).sum())
            total_unigram += sum(float(-np.log(probs[row[1:]]).sum()) for row in rows)
            tokens += sum(len(row) - 1 for row in rows)
    return total_model / tokens, total_unigram / tokens


def _say(line: str) -> None:
    # Plain lines on stderr, terminal or not: training runs once per machine, and a silent
    # four-minute pause inside a test or a command reads as a hang.
    print(line, file=sys.stderr, flush=True)
