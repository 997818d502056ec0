"""`inferopt generate MODEL --prompt TEXT`: text from a decoder artifact, streamed to stdout as
it is decoded. Flags map one to one onto GenerationConfig fields, whose defaults are the only
defaults (a flag left out is not passed on); a value GenerationConfig refuses is one line on
stderr and exit code 2, like every InferoptError."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from inferopt.errors import InputError

_FLAGS: tuple[tuple[str, str, type, str], ...] = (
    ("--max-new-tokens", "max_new_tokens", int, "tokens to generate at most; default 128"),
    ("--temperature", "temperature", float, "0 (default): greedy; above 0: sample"),
    ("--top-p", "top_p", float, "sample from the smallest set of tokens holding this "
     "probability, in (0, 1]; default 1 (off)"),
    ("--top-k", "top_k", int, "sample from the k most likely tokens; default 0 (off)"),
    ("--seed", "seed", int, "seed of the sampler, for reproducible samples"),
)  # fmt: skip


def add_parser(subparsers: Any) -> None:
    """Register `generate` on the CLI's subparsers (argparse's private _SubParsersAction)."""
    p = subparsers.add_parser(
        "generate",
        help="generate text from a decoder artifact, streamed as it is decoded",
        description="Generate text from an artifact folder (model.onnx with a KV cache, "
        "tokenizer files, genai_config.json): greedy by default, sampled with --temperature.",
    )
    p.add_argument("model", help="artifact folder of a decoder (inferopt export of an LLM)")
    p.add_argument("--prompt", required=True, help="the text to continue")
    p.add_argument(
        "--chat",
        action="store_true",
        default=argparse.SUPPRESS,
        help="wrap the prompt as a user message in the tokenizer's chat template",
    )
    for flag, field, parse, text in _FLAGS:
        # SUPPRESS: a flag left out sets nothing, so GenerationConfig's default applies.
        p.add_argument(flag, dest=field, type=parse, default=argparse.SUPPRESS, help=text)
    p.add_argument(
        "--stop",
        nargs="+",
        metavar="STR",
        default=argparse.SUPPRESS,
        help="stop when the text contains one of these (not printed)",
    )
    p.add_argument(
        "--max-context",
        type=int,
        default=None,
        help="tokens (prompt + generated) the cache holds at most; default min(model, 2048)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from inferopt.generative.generate import GenerationConfig, Generator

    _check_artifact(Path(args.model))
    fields = {field for _, field, _, _ in _FLAGS} | {"chat", "stop"}
    given = {k: v for k, v in vars(args).items() if k in fields}
    try:
        config = GenerationConfig(**given)
        generator = Generator(args.model, max_context=args.max_context, last_logits=True)
    except ValueError as exc:  # the config's message names the field and the value
        raise InputError(f"generate: {exc}") from exc
    out = sys.stdout
    for piece in generator.stream(args.prompt, config):
        out.write(piece)
        out.flush()  # a reader (a pipe, a terminal) sees each piece as it is decoded
    out.write("\n")
    out.flush()
    return 0


def _check_artifact(model: Path) -> None:
    """A GGUF file or a Hugging Face folder is a source to export first, not an artifact.

    Raises:
        InputError: `model` is one of those, with the command that makes the artifact.
    """
    if model.is_file() and model.suffix.lower() == ".gguf":
        what = "a GGUF file"
    elif (
        model.is_dir() and (model / "config.json").is_file() and not (model / "model.onnx").exists()
    ):
        what = "a Hugging Face folder"
    else:
        return  # an artifact, or what Generator refuses by itself
    raise InputError(
        f"{model} is {what}, not an artifact folder: run `inferopt export {model} --out DIR` "
        "first, then `inferopt generate DIR`"
    )
