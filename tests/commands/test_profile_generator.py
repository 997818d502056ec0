"""`inferopt profile` on a generator as a user meets it: the tables on stdout, the JSON file,
and bad flags as one line on stderr with exit code 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from inferopt.cli import main
from inferopt.commands.profile_generator import kind_of
from inferopt.generative.profile import GeneratorProfile

pytest.importorskip("transformers")

FAST = ["--prompt-lengths", "4,64", "--decode-tokens", "8", "--repeats", "2", "--threads", "1"]


@pytest.fixture(scope="module")
def tiny_llama_artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The artifact of tests/generative/conftest.py, whose fixtures this folder does not see."""
    from inferopt.generative.configs import tiny_folder
    from inferopt.generative.export import export_causal_lm

    folder = tiny_folder("llama", tmp_path_factory.mktemp("tiny-llama-hf"))
    return export_causal_lm(folder, tmp_path_factory.mktemp("tiny-llama-onnx"))


def test_prints_the_tables_and_writes_json(
    tiny_llama_artifact: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("COLUMNS", "200")  # rich wraps table cells at the terminal's width
    out = tmp_path / "out" / "profile.json"
    assert main(["profile", str(tiny_llama_artifact), *FAST, "--json", str(out)]) == 0
    captured = capsys.readouterr()
    printed = captured.out
    assert f"{tiny_llama_artifact}: generator profile, batch 1, 1 thread" in printed
    for row in ("time to first token", "prefill tokens/s", "decode", "ms / token", "KV cache",
                "peak RSS", "decode roofline", "prefill roofline", "prefill batched", "hardware",
                "512 B/token"):  # fmt: skip
        assert row in printed, row
    assert "round 2/2: decode 8 tokens" in captured.err  # plain progress lines off a terminal
    data = json.loads(out.read_text())
    profile = GeneratorProfile.from_json(data)
    assert profile.config.prompt_lengths == (4, 64)
    assert (profile.config.decode_tokens, profile.config.repeats, profile.config.threads) == (
        8, 2, 1,
    )  # fmt: skip
    assert [f.prompt_tokens for f in profile.first_token] == [4, 64]
    assert f"wrote {out}" in printed


def test_sources_that_are_generators(tiny_llama_artifact: Path, tmp_path: Path) -> None:
    assert kind_of("tiny-llama") == "zoo"
    assert kind_of(str(tiny_llama_artifact)) == "artifact"
    assert kind_of("minilm") is None
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    assert kind_of(str(tmp_path)) == "hf"
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["BertModel"]}))
    assert kind_of(str(tmp_path)) is None


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--prompt-lengths", "0"], "prompt lengths must be >= 1"),
        (["--prompt-lengths", "16,4096"], "prompt length 4096 is past the context cap of 2048"),
        (["--prompt-lengths", "a,b"], "--prompt-lengths: expected comma-separated integers"),
        (["--decode-tokens", "0"], "decode_tokens must be >= 1"),
        (["--decode-tokens", "5000"], "leave no room for a prompt"),
        (["--repeats", "0"], "repeats must be >= 1"),
        (["--threads", "1,2"], "one thread count"),
        (["--batch-sizes", "2", "--no-memory"], "--batch-sizes, --no-memory does not apply"),
        (["MODEL2", "--decode-tokens", "4"], "comparing a generator with a second model"),
    ],
)
def test_bad_flags_are_one_line_exit_2(
    tiny_llama_artifact: Path, capsys: pytest.CaptureFixture[str], flags: list[str], message: str
) -> None:
    flags = [str(tiny_llama_artifact) if f == "MODEL2" else f for f in flags]
    code = main(["profile", str(tiny_llama_artifact), *flags])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and err.count("\n") == 1, err


def test_generator_flags_on_an_encoder_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["profile", "digits-mlp", "--decode-tokens", "4"]) == 2
    err = capsys.readouterr().err
    assert "--decode-tokens applies to generators only" in err and err.count("\n") == 1
