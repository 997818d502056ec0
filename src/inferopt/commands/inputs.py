"""The one way to state a model's inputs, shared by export, profile and optimize:
`--input-shape NAME:DIMS` (repeatable; perf_analyzer's `--shape NAME:DIMS` spelling too) and
`--data FILE.npz`. Without either, inferopt finds inputs the model accepts (inferopt.discovery).
"""

from __future__ import annotations

import argparse
from typing import Any

from inferopt.stated import parse_shape

SHAPE_HELP = (
    "an input's shape, e.g. images:1,3,640,640 (repeatable; the batch dim may be left out, "
    "as perf_analyzer's --shape writes it)"
)


def add_shape_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--input-shape", "--shape", dest="input_shapes", action="append", default=[],
        metavar="NAME:DIMS", help=SHAPE_HELP,
    )  # fmt: skip


def add_options(parser: argparse.ArgumentParser) -> None:
    """--input-shape and --data (for commands that have no --data of their own)."""
    add_shape_option(parser)
    parser.add_argument(
        "--data", help=".npz of real inputs keyed by input name (axis 0: samples): generated "
        "inputs follow its shapes and value ranges"
    )  # fmt: skip


def shapes(args: argparse.Namespace) -> dict[str, tuple[int, ...]]:
    """The --input-shape values by input name; InputError for a malformed one."""
    return dict(parse_shape(text) for text in getattr(args, "input_shapes", None) or [])


def load_model(source: Any, args: argparse.Namespace, **options: Any) -> Any:
    """`inferopt.load(source)` with the inputs the user stated: shapes steer discovery, data
    replace it (generated inputs then follow the data)."""
    from inferopt.sources import load

    model = load(source, shapes=shapes(args), **options)
    data = getattr(args, "data", None)
    if data:
        from inferopt.data import Dataset
        from inferopt.stated import follow_data

        dataset = Dataset.from_npz(data)
        model = model.with_io(follow_data(model.io, dataset.samples))
    return model
