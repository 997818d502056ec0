"""`inferopt export` of a causal language model (a zoo generator such as `tiny-llama`, a GGUF
file, or a Hugging Face folder with a `*ForCausalLM`): a decoder artifact folder with an
explicit KV cache, checked against PyTorch fp32 before it is reported (docs/generate.md)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rich.console import Console
from rich.table import Table

from inferopt import zoo
from inferopt.errors import InputError

CAUSAL_SUFFIXES = ("ForCausalLM", "LMHeadModel")


def generator_folder(source: str) -> Path | None:
    """The Hugging Face folder of `source` when it is a causal LM: a zoo generator's or a GGUF
    file's (made on first use, cached) or the folder itself; None for every other source.

    Raises:
        InputError: a `.gguf` path that is no file, or a GGUF file transformers cannot load
            (inferopt.generative.gguf says why).
    """
    if source in zoo.generator_names():
        return zoo.generator_folder(source)
    if source.lower().endswith(".gguf"):
        from inferopt.generative.gguf import gguf_folder

        return gguf_folder(Path(source))  # refuses a missing or unreadable file, one line
    folder = Path(source)
    config = folder / "config.json"
    if not (folder.is_dir() and config.is_file()):
        return None
    try:
        architectures = json.loads(config.read_text()).get("architectures") or []
    except (OSError, ValueError):
        return None  # the ordinary import says what is wrong with it
    return folder if architectures and str(architectures[0]).endswith(CAUSAL_SUFFIXES) else None


def run(folder: Path, args: argparse.Namespace, console: Console) -> int:
    """Export `folder` to the artifact folder `args.out`, check parity, show the figures.

    Raises:
        InputError: `--exporter torchscript` (generators use the builder or dynamo), or what
            the exporter refuses (not a causal LM, no tokenizer, unsupported architecture).
        GenerativeParityError: the artifact disagrees with PyTorch (one line, the check).
    """
    from inferopt.generative.export import export_causal_lm
    from inferopt.generative.parity import CheckFigure, check_generative_parity

    if args.exporter == "torchscript":
        raise InputError("--exporter torchscript: a generator exports with builder or dynamo")
    out = Path(args.out)
    with console.status(f"exporting {args.source} with its KV cache ..."):
        export_causal_lm(folder, out, max_context=args.max_context, exporter=args.exporter)
    with console.status("checking the artifact against PyTorch fp32 ..."):
        parity = check_generative_parity(out, folder)
    table = Table("parity check", "max |diff|", "of the scale", "detail")
    worst: dict[str, CheckFigure] = {}  # one row per check: its worst tensor or row
    for check in parity.checks:
        if check.name not in worst or check.rel > worst[check.name].rel:
            worst[check.name] = check
    for check in worst.values():
        table.add_row(check.name, f"{check.max_abs:.2e}", f"{check.rel:.2e}", check.detail)
    console.print(table)
    console.print(f"tolerance {parity.rtol:g} of the scale; wrote {out}/ (model.onnx, tokenizer, "
                  "genai_config.json)")  # fmt: skip
    return 0
