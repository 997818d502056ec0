"""Calibration text for decoder passes (GPTQ, smoothing): training-split windows of the corpus
as prefill feeds on an empty KV cache."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from inferopt.generative.generate import MODEL_FILE
from inferopt.generative.kv import KvLayout


class CalibrationText:
    """ORT's CalibrationDataReader over training-split text windows (GPTQ): each feed is one
    window of 128 tokens as a prefill on an empty cache."""

    def __init__(self, folder: Path, windows: int) -> None:
        self.folder = folder
        self.windows = windows
        self._iter: Iterator[dict[str, np.ndarray]] | None = None

    def _feeds(self) -> Iterator[dict[str, np.ndarray]]:
        from tokenizers import Tokenizer

        from inferopt.zoo import corpus

        tokenizer = Tokenizer.from_file(str(self.folder / "tokenizer.json"))
        model = onnx.load(str(self.folder / MODEL_FILE), load_external_data=False)
        layout = KvLayout.of(model)
        positions = any(i.name == "position_ids" for i in model.graph.input)
        text = " ".join(corpus.training_text()[: 40 * self.windows])
        ids = np.asarray(tokenizer.encode(text).ids, dtype=np.int64)
        empty = np.zeros((1, layout.kv_heads, 0, layout.head_dim), dtype=layout.dtype)
        for w in range(min(self.windows, ids.size // 128)):
            feed = {"input_ids": ids[None, w * 128 : (w + 1) * 128],
                    "attention_mask": np.ones((1, 128), dtype=np.int64)}  # fmt: skip
            if positions:
                feed["position_ids"] = np.arange(128, dtype=np.int64)[None]
            feed.update({name: empty for name in layout.past_names()})
            yield feed

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._iter is None:
            self._iter = self._feeds()
        return next(self._iter, None)

    def rewind(self) -> None:
        self._iter = None

    def __deepcopy__(self, memo: dict[int, Any]) -> CalibrationText:
        # ORT's GPTQ deep-copies the reader before iterating it; a fresh one is that copy.
        return CalibrationText(self.folder, self.windows)

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        return self._feeds()
