"""`inferopt generate` as a user meets it: text streamed to stdout piece by piece, and bad
flags, folders or lengths as one line on stderr with exit code 2."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from inferopt.cli import main
from inferopt.generative.generate import GenerationConfig, Generator

pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def tiny_llama_artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The artifact of tests/generative/conftest.py, whose fixtures this folder does not see."""
    from inferopt.generative.configs import tiny_folder
    from inferopt.generative.export import export_causal_lm

    folder = tiny_folder("llama", tmp_path_factory.mktemp("tiny-llama-hf"))
    return export_causal_lm(folder, tmp_path_factory.mktemp("tiny-llama-onnx"))


class Recorder(io.StringIO):
    """stdout that records what each flush makes visible."""

    def __init__(self) -> None:
        super().__init__()
        self.flushed: list[str] = []

    def flush(self) -> None:
        self.flushed.append(self.getvalue())


def test_streams_the_generated_text(
    tiny_llama_artifact: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = Recorder()
    monkeypatch.setattr("sys.stdout", out)
    flags = ["--max-new-tokens", "12", "--temperature", "0.8", "--top-k", "20", "--seed", "5"]
    code = main(["generate", str(tiny_llama_artifact), "--prompt", "Return the", *flags])
    assert code == 0
    config = GenerationConfig(max_new_tokens=12, temperature=0.8, top_k=20, seed=5)
    pieces = list(Generator(tiny_llama_artifact).stream("Return the", config))
    assert out.getvalue() == "".join(pieces) + "\n"
    assert len(out.flushed) == len(pieces) + 1  # one flush per piece, one after the newline


def test_stop_string_is_not_printed(
    tiny_llama_artifact: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = Generator(tiny_llama_artifact).generate(
        "Return the", GenerationConfig(max_new_tokens=20)
    )
    stop = text[4:6]
    argv = ["generate", str(tiny_llama_artifact), "--prompt", "Return the", "--max-new-tokens",
            "20", "--stop", stop, "zzzz"]  # fmt: skip
    assert main(argv) == 0
    assert capsys.readouterr().out == text[: text.find(stop)] + "\n"


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--temperature", "-1"], "temperature must be >= 0"),
        (["--top-p", "0"], "top_p must be in (0, 1]"),
        (["--top-k", "-2"], "top_k must be >= 0"),
        (["--temperature", "nan"], "temperature must be >= 0"),
        (["--top-p", "1.5"], "top_p must be in (0, 1]"),
        (["--top-k", "-1"], "top_k must be >= 0"),
        (["--max-new-tokens", "0"], "max_new_tokens must be >= 1"),
        (["--max-new-tokens", "-3"], "max_new_tokens must be >= 1, got -3"),
        (["--max-new-tokens", "100", "--max-context", "16"], "more than the context cap of 16"),
        (["--max-context", "0"], "max_context must be >= 1"),
        (["--max-context", "-5"], "max_context must be >= 1"),
        (["--chat"], "no chat template"),
    ],
)
def test_bad_values_are_one_line_exit_2(
    tiny_llama_artifact: Path, capsys: pytest.CaptureFixture[str], flags: list[str], message: str
) -> None:
    code = main(["generate", str(tiny_llama_artifact), "--prompt", "hi", *flags])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and err.count("\n") == 1, err


def test_a_folder_that_is_not_an_artifact(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    assert main(["generate", str(tmp_path), "--prompt", "hi"]) == 2
    assert "not a generation artifact, no model.onnx" in capsys.readouterr().err


def test_unparsable_flag_exits_2(tiny_llama_artifact: Path) -> None:
    with pytest.raises(SystemExit) as exc:  # argparse's own usage error
        main(["generate", str(tiny_llama_artifact), "--prompt", "hi", "--top-k", "many"])
    assert exc.value.code == 2


def test_a_max_context_memory_cannot_hold_is_one_line_exit_2(
    tiny_llama_artifact: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from inferopt.generative import memory

    weights = memory.onnx_weight_bytes(tiny_llama_artifact / "model.onnx")
    room = memory.HEADROOM + weights + 100 * 512  # 512 B per token: 100 tokens fit
    monkeypatch.setattr(memory, "available_bytes", lambda: room)
    argv = ["generate", str(tiny_llama_artifact), "--prompt", "hi", "--max-context", "1500"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "--max-context 1500 needs 750 KiB of KV cache (512 B per token x 1500 tokens)" in err
    assert err.rstrip().endswith("at most 100 tokens fit") and err.count("\n") == 1, err


def test_a_source_not_yet_exported_points_to_inferopt_export(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = tmp_path / "model.gguf"
    model.write_bytes(b"GGUF")
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text("{}")
    for source, what in ((model, "a GGUF file"), (hf, "a Hugging Face folder")):
        assert main(["generate", str(source), "--prompt", "hi"]) == 2
        err = capsys.readouterr().err
        assert f"is {what}, not an artifact folder: run `inferopt export {source}" in err, err
        assert err.count("\n") == 1


def test_a_prompt_longer_than_the_context_is_one_line_exit_2(
    tiny_llama_artifact: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    prompt = "Return the function that returns the value of the argument"
    tokens = len(Generator(tiny_llama_artifact).prompt_ids(prompt))
    assert tokens > 4
    assert (
        main(["generate", str(tiny_llama_artifact), "--prompt", prompt, "--max-context", "4"]) == 2
    )
    err = capsys.readouterr().err
    assert f"the prompt is {tokens} tokens, more than the context cap of 4 tokens" in err, err
    assert err.count("\n") == 1
