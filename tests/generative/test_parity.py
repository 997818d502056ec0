"""The generative parity check: passes on every architecture each exporter supports, and
fails in one line naming the step on a deliberately broken artifact."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from inferopt.generative.configs import tiny_folder
from inferopt.generative.export import export_causal_lm
from inferopt.generative.parity import (
    GenerativeParityError,
    ParityConfig,
    check_generative_parity,
)

# Shorter than the default (32 greedy tokens on three prompts) where the full check runs
# once already on the Llama: the other architectures' graphs differ, not their token loops.
QUICK = ParityConfig(greedy_tokens=8, prompts=("def",))

# Which exporter works on which tiny architecture. GPT-2 has no builder: ORT GenAI's model
# builder does not know GPT2LMHeadModel (test_export checks the InputError).
SUPPORTED = [
    ("qwen2", "builder"),
    ("qwen2", "dynamo"),
    ("phi3", "builder"),
    ("phi3", "dynamo"),
    ("gpt2", "dynamo"),
]  # Llama: the builder in test_default_artifact_*, dynamo in test_export's GenAI test


@pytest.mark.slow
def test_default_artifact_passes_every_check(
    tiny_llama_folder: Path, tiny_llama_artifact: Path
) -> None:
    result = check_generative_parity(tiny_llama_artifact, tiny_llama_folder)
    names = [c.name for c in result.checks]
    for step in ("prefill@1", "prefill@7", "prefill@33", "empty-cache", "cache", "padded-batch"):
        assert any(n.startswith(step) for n in names), step
    assert sum(n.startswith("greedy") for n in names) == 3
    assert result.worst.rel <= result.rtol


@pytest.mark.slow
@pytest.mark.parametrize(("arch", "exporter"), SUPPORTED)
def test_parity_per_architecture(arch: str, exporter: str, tmp_path: Path) -> None:
    folder = tiny_folder(arch, tmp_path / "hf")
    artifact = export_causal_lm(folder, tmp_path / "onnx", exporter=exporter)  # type: ignore[arg-type]
    result = check_generative_parity(artifact, folder, QUICK)
    assert result.worst.rel <= QUICK.rtol


def _perturb_lm_head(artifact: Path, out: Path) -> Path:
    """A copy of the artifact whose LM head has its largest element moved by far more than
    fp32 noise (it reaches one logit at every position, so every check would see it)."""
    broken = Path(shutil.copytree(artifact, out))
    model = onnx.load(str(broken / "model.onnx"))
    biggest = next(t for t in model.graph.initializer if "lm_head" in t.name)
    values = numpy_helper.to_array(biggest).copy()
    values.flat[np.argmax(np.abs(values))] *= -50.0
    biggest.CopyFrom(numpy_helper.from_array(values, biggest.name))
    for stale in broken.glob("model.onnx*"):
        stale.unlink()
    onnx.save(model, str(broken / "model.onnx"), save_as_external_data=True,
              location="model.onnx.data")  # fmt: skip
    return broken


@pytest.mark.slow
def test_a_broken_weight_fails_in_one_line_naming_the_step(
    tiny_llama_folder: Path, tiny_llama_artifact: Path, tmp_path: Path
) -> None:
    broken = _perturb_lm_head(tiny_llama_artifact, tmp_path / "broken")
    with pytest.raises(GenerativeParityError, match=r"failed at prefill@\d+: logits") as info:
        check_generative_parity(broken, tiny_llama_folder, QUICK)
    assert "\n" not in str(info.value)


def test_config_is_validated() -> None:
    with pytest.raises(ValueError, match="prompt_lengths"):
        ParityConfig(prompt_lengths=(0,))
    with pytest.raises(ValueError, match="rtol"):
        ParityConfig(rtol=0.0)
    with pytest.raises(ValueError, match="steps"):
        ParityConfig(steps=0)
