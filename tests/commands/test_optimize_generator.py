"""`inferopt optimize` on a generator as a user meets it: the table, the artifact folder with
search.json and report.html, and bad flags as one line with exit code 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from inferopt.cli import main

pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def tiny_llama_artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from inferopt.generative.configs import tiny_folder
    from inferopt.generative.export import export_causal_lm

    folder = tiny_folder("llama", tmp_path_factory.mktemp("tiny-llama-hf"))
    return export_causal_lm(folder, tmp_path_factory.mktemp("tiny-llama-onnx"))


@pytest.fixture(autouse=True)
def _own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INFEROPT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("COLUMNS", "200")


def test_writes_the_chosen_artifact_and_its_report(
    tiny_llama_artifact: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "best"
    args = ["optimize", str(tiny_llama_artifact), "--variants", "fp32,int8-weight",
            "--max-drop", "5%", "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    captured = capsys.readouterr()
    assert "generator search" in captured.out and "int8-weight" in captured.out
    assert "chose" in captured.out and str(out) in captured.out.replace("\n", "")
    assert "timing round" in captured.err  # plain progress lines when not a terminal
    record = json.loads((out / "search.json").read_text())
    assert record["config"]["budget"] == 0.05 and record["config"]["metric"] == "perplexity"
    assert {c["variant"] for c in record["candidates"]} == {"fp32", "int8-weight"}
    assert (out / "model.onnx").is_file() and (out / "tokenizer.json").is_file()
    assert '<img src="data:image/png;base64,' in (out / "report.html").read_text()
    from inferopt.generative.generate import Generator

    assert isinstance(Generator(out).generate("The"), str)  # the artifact runs


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--objective", "throughput"], "objectives are decode"),
        (["--metric", "bleu"], "metrics are"),
        (["--max-drop", "lots"], "--max-drop"),
        (["--variants", "int3-weight"], "variants are"),
        (["--recipe", "fuse"], "a generator takes one pass"),
        (["--recipe", "int4-weight:colour=red"], "unknown option"),
        (["--recipe", "int4-weight:block_size=abc"], "is not a valid int"),
        (["--recipe", "int4-weight:block_size=24"], "power of two"),
        (["--data", "x.txt"], "--data is for encoder"),
    ],
)
def test_bad_flags_are_one_line_and_exit_2(
    tiny_llama_artifact: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    flags: list[str],
    message: str,
) -> None:
    code = main(["optimize", str(tiny_llama_artifact), "--out", str(tmp_path / "o"), *flags])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert message in err and len(err.splitlines()) == 1, err


def test_a_recipe_applies_one_pass_and_reports_its_fidelity(
    tiny_llama_artifact: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "hqq"
    recipe = "int4-weight:algorithm=hqq:block_size=16:lm_head=keep:accuracy_level=1"
    assert main(["optimize", str(tiny_llama_artifact), "--recipe", recipe, "--out", str(out)]) == 0
    printed = capsys.readouterr().out.replace("\n", "")
    assert "int4-weight hqq b16 asym acc1 lm_head=keep" in printed and "perplexity" in printed
    record = json.loads((out / "fidelity.json").read_text())
    assert record["perplexity_change"]["low"] <= record["perplexity_change_point"]
    import onnx

    nodes = onnx.load(str(out / "model.onnx"), load_external_data=False).graph.node
    assert {a.i for n in nodes if n.op_type == "MatMulNBits" for a in n.attribute
            if a.name == "block_size"} == {16}  # fmt: skip
