from inferopt.zoo import corpus


def test_split_is_deterministic_disjoint_and_prose() -> None:
    train, held_out = corpus.split()
    assert len(train) > 1000 and len(held_out) > 300
    assert not set(train) & set(held_out)
    assert corpus.split() == (train, held_out)
    assert all(corpus.MIN_CHARS <= len(s) <= corpus.MAX_CHARS for s in train + held_out)
    assert not any(">>>" in s or "{" in s for s in train + held_out)


def test_training_text_adds_sentences_but_never_an_evaluation_one() -> None:
    train, held_out = corpus.split()
    text = corpus.training_text()
    assert set(train) <= set(text)
    assert len(text) > len(train)
    assert not set(text) & set(held_out)
