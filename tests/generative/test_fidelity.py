"""Fidelity of a candidate decoder artifact against a reference: the tiny random Llama against
itself, a noisy copy, a copy whose logits are NaN and a copy with another tokenizer; the held-out
windows and prompts; and the trained zoo tiny-llama when it is cached."""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from inferopt.errors import InputError
from inferopt.generative.fidelity import (
    EOS_MARK,
    FidelityConfig,
    GeneratorFidelity,
    ReferenceRun,
    _agreement,
    held_out_prompts,
    held_out_windows,
    measure_fidelity,
)

SMALL = FidelityConfig(
    windows=6, window_tokens=32, greedy_prompts=4, prompt_tokens=16, greedy_tokens=16, batch=4
)
Change = Callable[[np.ndarray], np.ndarray]


def copy_with(src: Path, dst: Path, change: Change) -> Path:
    """The artifact `src` copied to `dst` with `change` applied to every MatMul weight, saved
    with its weights inline (the tiny model is small), the other files copied as they are."""
    dst.mkdir(parents=True)
    for f in src.iterdir():
        if not f.name.startswith("model.onnx"):
            shutil.copy(f, dst / f.name)
    model = onnx.load(str(src / "model.onnx"))
    weights = {n.input[1] for n in model.graph.node if n.op_type == "MatMul"}
    for init in model.graph.initializer:
        if init.name in weights:
            changed = change(numpy_helper.to_array(init))
            init.CopyFrom(numpy_helper.from_array(changed, init.name))
    onnx.save(model, str(dst / "model.onnx"), save_as_external_data=False)
    return dst


def noise(scale: float, seed: int = 0) -> Change:
    rng = np.random.default_rng(seed)
    return lambda w: (w + scale * w.std() * rng.standard_normal(w.shape)).astype(w.dtype)


def one_nan(w: np.ndarray) -> np.ndarray:
    w = w.copy()
    w.flat[0] = np.nan
    return w


def check_intervals(f: GeneratorFidelity) -> None:
    for name in ("perplexity_change", "kl", "same_top1", "greedy_agreement"):
        interval, point = getattr(f, name), getattr(f, f"{name}_point")
        assert interval.contains(point), (name, interval, point)
        assert interval.level == 0.95


@pytest.fixture(scope="module")
def reference(tiny_llama_artifact: Path) -> ReferenceRun:
    return ReferenceRun.of(tiny_llama_artifact, SMALL)


def test_config_refuses_values_below_one():
    with pytest.raises(ValueError, match="windows"):
        FidelityConfig(windows=0)
    with pytest.raises(ValueError, match="greedy_tokens"):
        FidelityConfig(greedy_tokens=0)
    with pytest.raises(ValueError, match="seed"):
        FidelityConfig(seed=-1)


def test_windows_and_prompts_are_deterministic_and_disjoint(reference: ReferenceRun):
    tok = reference.generator.tokenizer
    windows = held_out_windows(tok, 6, 32)
    assert windows.dtype == np.int64 and windows.shape == (6, 32)
    assert np.array_equal(windows, held_out_windows(tok, 6, 32))
    assert np.array_equal(windows, reference.windows)
    # consecutive windows of one stream: fewer longer windows start with the same tokens
    assert np.array_equal(held_out_windows(tok, 3, 64).reshape(-1), windows.reshape(-1))
    prompts = held_out_prompts(tok, 4, 16)
    assert prompts.dtype == np.int64 and prompts.shape == (4, 16)
    assert np.array_equal(prompts, reference.prompts)
    stream = " ".join(map(str, held_out_windows(tok, 40, 32).reshape(-1).tolist()))
    for prompt in prompts:
        assert " ".join(map(str, prompt[:10].tolist())) not in stream


def test_too_short_held_out_text_raises_with_the_figures(reference: ReferenceRun):
    with pytest.raises(InputError, match=r"100000 windows x 1024 tokens = 102400000"):
        held_out_windows(reference.generator.tokenizer, 100_000, 1024)


def test_the_artifact_against_itself_agrees_everywhere(
    tiny_llama_artifact: Path, reference: ReferenceRun
):
    f = measure_fidelity(tiny_llama_artifact, reference)
    assert f.windows == 6 and f.tokens == 6 * 31 and f.nonfinite == 0
    assert f.perplexity == pytest.approx(f.perplexity_reference, rel=1e-9)
    assert math.isfinite(f.perplexity_reference) and f.perplexity_reference > 1
    assert abs(f.perplexity_change_point) < 1e-9 and abs(f.perplexity_change.high) < 1e-9
    assert 0 <= f.kl_point < 1e-9 and f.kl.high < 1e-9
    assert f.same_top1_point == 1.0 and f.same_top1.low == 1.0
    assert f.greedy_agreement_point == 1.0 and f.greedy_agreement.low == 1.0
    check_intervals(f)
    # a folder as the reference measures the same as a reused run (its logits now cached)
    again = measure_fidelity(tiny_llama_artifact, tiny_llama_artifact, SMALL)
    assert again == f
    assert json.loads(json.dumps(f.to_json()))["same_top1"]["low"] == 1.0


def test_a_noisy_copy_is_measurably_worse(
    tiny_llama_artifact: Path, reference: ReferenceRun, tmp_path: Path
):
    noisy = copy_with(tiny_llama_artifact, tmp_path / "noisy", noise(5.0))
    f = measure_fidelity(noisy, reference)
    assert f.nonfinite == 0
    assert f.perplexity > f.perplexity_reference
    assert f.perplexity_change_point > 0 and f.perplexity_change.low > 0  # excludes 0
    assert f.kl.low > 0
    assert f.same_top1_point < 1 and f.same_top1.high < 1
    assert f.greedy_agreement_point < 1
    check_intervals(f)


def direct_figures(run: ReferenceRun, candidate: Path) -> tuple[float, float, float, float]:
    """(reference perplexity, candidate perplexity, mean KL, same-top1) computed plainly: all
    windows in one run per artifact, float64 log-softmax over [n, T, vocab]."""
    from inferopt.generative.generate import Generator

    def logp(gen: Generator) -> np.ndarray:
        ids, layout = run.windows, gen.layout
        empty = np.zeros((len(ids), layout.kv_heads, 0, layout.head_dim), np.float32)
        feed = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
        feed |= dict.fromkeys(layout.past_names(), empty)
        x = gen.session.run(["logits"], feed)[0][:, :-1].astype(np.float64)
        x -= x.max(-1, keepdims=True)
        return x - np.log(np.exp(x).sum(-1, keepdims=True))

    lr, lc = logp(run.generator), logp(Generator(candidate))
    target = run.windows[:, 1:, None]
    nll_r = -np.take_along_axis(lr, target, -1).mean()
    nll_c = -np.take_along_axis(lc, target, -1).mean()
    kl = (np.exp(lr) * (lr - lc)).sum(-1).mean()
    same = (lr.argmax(-1) == lc.argmax(-1)).mean()
    return float(np.exp(nll_r)), float(np.exp(nll_c)), float(kl), float(same)


def test_a_slightly_noisy_copy_has_intervals_around_its_points(
    tiny_llama_artifact: Path, reference: ReferenceRun, tmp_path: Path
):
    noisy = copy_with(tiny_llama_artifact, tmp_path / "n", noise(0.1))
    f = measure_fidelity(noisy, reference)
    assert 0 < f.kl_point < 0.01
    assert 0 < f.same_top1_point < 1 and f.same_top1.low < f.same_top1.high
    check_intervals(f)
    ppl_r, ppl_c, kl, same = direct_figures(reference, noisy)
    assert f.perplexity_reference == pytest.approx(ppl_r, rel=1e-9)
    assert f.perplexity == pytest.approx(ppl_c, rel=1e-9)
    assert f.perplexity_change_point == pytest.approx(ppl_c / ppl_r - 1, rel=1e-6)
    assert f.kl_point == pytest.approx(kl, rel=1e-6)
    assert f.same_top1_point == pytest.approx(same, abs=1e-12)


def test_greedy_agreement_pads_after_eos():
    assert _agreement([5, 6, EOS_MARK], [5, 6, EOS_MARK], 4) == 1.0  # both stop: agree
    assert _agreement([5, 6, 7, 8], [5, 6, 7, 8], 4) == 1.0
    assert _agreement([5, 6, EOS_MARK], [5, 6, 7], 4) == 0.5  # the candidate goes on
    assert _agreement([5, 6, 7, 8], [5, EOS_MARK], 4) == 0.25  # the candidate stops early
    assert _agreement([1, 2, 3, 4], [9], 4) == 0.0


def test_nan_logits_are_counted_and_worst_case_without_raising(
    tiny_llama_artifact: Path, reference: ReferenceRun, tmp_path: Path
):
    f = measure_fidelity(copy_with(tiny_llama_artifact, tmp_path / "nan", one_nan), reference)
    assert f.nonfinite > 0
    assert f.perplexity == math.inf and f.perplexity_change_point == math.inf
    assert f.perplexity_change.low == math.inf and f.kl.low == math.inf
    assert f.kl_point == math.inf
    assert f.same_top1_point == 0.0 and f.greedy_agreement_point == 0.0
    out = json.loads(json.dumps(f.to_json()))  # infinities become null: valid JSON
    assert out["perplexity_change_point"] is None and out["nonfinite"] == f.nonfinite


def test_another_tokenizer_raises_naming_both(
    tiny_llama_artifact: Path, reference: ReferenceRun, tmp_path: Path
):
    other = tmp_path / "other"
    shutil.copytree(tiny_llama_artifact, other)
    data = json.loads((other / "tokenizer.json").read_text())
    vocab = data["model"]["vocab"]
    a, b = sorted(vocab)[100:102]
    vocab[a], vocab[b] = vocab[b], vocab[a]
    (other / "tokenizer.json").write_text(json.dumps(data))
    with pytest.raises(InputError, match="tokenizer") as caught:
        measure_fidelity(other, reference)
    assert str(other) in str(caught.value) and str(tiny_llama_artifact) in str(caught.value)


def test_a_reference_run_of_another_config_is_refused(
    tiny_llama_artifact: Path, reference: ReferenceRun
):
    with pytest.raises(ValueError, match="reference run"):
        measure_fidelity(tiny_llama_artifact, reference, FidelityConfig(windows=3))


def test_trained_tiny_llama_has_a_low_reference_perplexity(tmp_path: Path):
    from inferopt import zoo
    from inferopt.generative.export import export_causal_lm
    from inferopt.zoo import tiny_llama

    if not tiny_llama.cache_path().exists():
        pytest.skip("the zoo tiny-llama is not trained on this machine (minutes)")
    artifact = export_causal_lm(zoo.generator_folder("tiny-llama"), tmp_path / "tiny")
    f = measure_fidelity(artifact, artifact, SMALL)
    vocab = json.loads((artifact / "genai_config.json").read_text())["model"]["vocab_size"]
    assert math.isfinite(f.perplexity_reference) and f.perplexity_reference < vocab / 5
    assert f.perplexity_change_point == 0.0 and f.same_top1_point == 1.0
