"""The `inferopt` command. Each subcommand is a short function over the Python API; errors the
user can fix print as one line with exit code 2 (a traceback only with --debug)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from rich.console import Console
from rich.table import Table
from rich.text import Text

from inferopt import __version__, hardware, zoo
from inferopt.commands.parser import EXIT_USAGE, Parser
from inferopt.errors import InferoptError, InputError
from inferopt.model import Model

console = Console()
KEEP = object()  # non-string default: argparse does not pass it through `type`


def _axis(text: str) -> int | None:
    if text.lower() == "none":
        return None
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected an axis number or 'none', got {text!r}"
        ) from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"axis must be >= 0, got {value}")
    return value


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _show_model(model: Model, out: Path, *, latency: bool = True) -> None:
    rows: list[tuple[str, str]] = []
    prov = model.provenance
    table = Table(title=f"{prov.source} -> {out}", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    rows.append(("source kind", prov.kind))
    if prov.exporter:
        rows.append(
            ("exporter", prov.exporter + (f" ({prov.exporter_note})" if prov.exporter_note else ""))
        )
    for line in model.io.describe():
        rows.append(("io", line))
    if prov.parity is not None:
        rows.append(("parity check", prov.parity.describe()))
    rows.append(("generated inputs", _found(model)))
    rows.append(("size", f"{model.size_bytes / 2**20:.2f} MiB"))
    if latency:
        from inferopt.measure.latency import quick_latency

        q = quick_latency(model)
        shape = f"batch {q.batch}" + (f", seq {q.seq}" if q.seq else "")
        rows.append(
            (
                "latency (quick)",
                f"median {q.median_ms:.2f} ms, p90 {q.p90_ms:.2f} ms at {shape} "
                f"over {q.runs} runs (ONNX Runtime CPU; `inferopt profile` for the full picture)",
            )
        )
    for key, value in rows:
        table.add_row(key, Text(value))  # Text: shapes like [batch, seq] are not rich markup
    console.print(table)


def _found(model: Model) -> str:
    """What discovery found: how many runs it took, or why no generated input runs."""
    from inferopt.iospec import FOUND_KEY, problem_of

    problem = problem_of(model.io)
    if problem:
        return f"none run: {problem}"
    found = model.io.extra.get(FOUND_KEY, {})
    trials = found.get("trials", 0) if isinstance(found, dict) else 0
    return f"accepted by the model (found in {trials} run(s))" if trials else "from the data given"


def cmd_export(args: argparse.Namespace) -> int:
    from inferopt.commands import export_generator
    from inferopt.commands.inputs import load_model

    causal_lm = export_generator.generator_folder(args.source)
    if causal_lm is not None:  # a generator: an artifact folder with its KV cache
        return export_generator.run(causal_lm, args, console)
    if args.exporter == "builder":
        raise InputError("--exporter builder (ORT GenAI's) is for causal language models")

    config = None
    if Path(args.source).is_dir() or ":" in args.source or zoo.is_zoo_name(args.source):
        from inferopt.export import ExportConfig

        config = ExportConfig(
            exporter=args.exporter,
            parity_batch=args.parity_batch,
            parity_seq=args.parity_seq,
            atol=args.atol,
            rtol=args.rtol,
        )
    with console.status(f"importing {args.source} ..."):
        model = load_model(args.source, args, export_config=config, fresh=True)
    if args.batch_axis is not KEEP or args.seq_axis is not KEEP:
        batch = model.io.batch_axis if args.batch_axis is KEEP else args.batch_axis
        seq = model.io.seq_axis if args.seq_axis is KEEP else args.seq_axis
        model = model.with_io(model.io.with_axes(batch, seq))
    model.save(args.out)
    _show_model(model, Path(args.out), latency=not args.no_latency)
    return 0


def cmd_zoo_list(args: argparse.Namespace) -> int:
    table = Table("name", "kind", "what it is")
    for name in [*zoo.names(), *zoo.generator_names()]:
        label = name + (" (default)" if name == zoo.DEFAULT else "")
        table.add_row(label, zoo.kind(name), zoo.SUMMARIES[name])
    console.print(table)
    return 0


def cmd_zoo_export(args: argparse.Namespace) -> int:
    from inferopt.sources import load_zoo

    with console.status(f"exporting zoo model {args.name} and checking parity ..."):
        model = load_zoo(args.name, fresh=True)
    model.save(args.out)
    _show_model(model, Path(args.out), latency=not args.no_latency)
    return 0


def cmd_hardware(args: argparse.Namespace) -> int:
    info = hardware.probe()
    if args.json:
        print(json.dumps(info.to_json(), indent=2))
    else:
        console.print(hardware.table(info))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="inferopt",
        description="Make a trained model cheaper to run: import, optimize, measure, serve.",
    )
    parser.add_argument("--version", action="version", version=f"inferopt {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    from inferopt.commands import inputs

    export = sub.add_parser("export", help="import a model (ONNX, HF folder, zoo, factory) to ONNX")
    export.add_argument("source", help="model.onnx | HF folder | zoo name | pkg.module:factory")
    export.add_argument(
        "--out", required=True, help="the .onnx file to write; a folder for a causal LM"
    )
    export.add_argument(
        "--exporter", choices=["auto", "dynamo", "torchscript", "builder"], default="auto",
        help="builder: ORT GenAI's model builder (causal LMs it supports; their default)",
    )  # fmt: skip
    export.add_argument(
        "--max-context", type=_positive, default=2048,
        help="causal LMs: tokens the KV cache is sized for (default 2048, not the full window)",
    )  # fmt: skip
    export.add_argument("--batch-axis", type=_axis, default=KEEP, help="override: N or none")
    export.add_argument("--seq-axis", type=_axis, default=KEEP, help="override: N or none")
    export.add_argument("--parity-batch", type=_positive, default=3)
    export.add_argument("--parity-seq", type=_positive, default=57)
    export.add_argument("--atol", type=float, default=1e-4)
    export.add_argument("--rtol", type=float, default=1e-3)
    export.add_argument("--no-latency", action="store_true", help="skip the quick latency figure")
    inputs.add_options(export)
    export.set_defaults(func=cmd_export)

    zoo_parser = sub.add_parser("zoo", help="the embedded default models")
    zoo_sub = zoo_parser.add_subparsers(dest="zoo_command", required=True, metavar="ACTION")
    zoo_sub.add_parser("list", help="list the zoo's models").set_defaults(func=cmd_zoo_list)
    zoo_export = zoo_sub.add_parser("export", help="export a zoo model to ONNX, parity-checked")
    zoo_export.add_argument("name", choices=zoo.names())
    zoo_export.add_argument("--out", required=True)
    zoo_export.add_argument("--no-latency", action="store_true")
    zoo_export.set_defaults(func=cmd_zoo_export)

    from inferopt.commands import bench, deploy, generate, optimize, profile, serve

    optimize.add_parser(sub)
    profile.add_parser(sub)
    serve.add_parser(sub)
    bench.add_parser(sub)
    deploy.add_parser(sub)
    generate.add_parser(sub)

    hw = sub.add_parser("hardware", help="what this machine offers for inference")
    hw.add_argument("--json", action="store_true", help="machine-readable output")
    hw.set_defaults(func=cmd_hardware)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except InferoptError as exc:
        if args.debug:
            raise
        message = Text.assemble(("inferopt: error: ", "bold red"), str(exc))
        Console(stderr=True, soft_wrap=True).print(message, highlight=False)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
