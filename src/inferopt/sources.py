"""`load(source)`: one entry point from whatever the user holds to a checked `Model`.

Sources: an `.onnx` file, an artifact folder (model.onnx inside), a Hugging Face folder, a zoo
name, a `pkg.module:factory` string, or a PyTorch module with example inputs."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Any

from inferopt import zoo
from inferopt.errors import ModelLoadError
from inferopt.model import Model, load_onnx


def load(
    source: Any,
    example_inputs: Any = None,
    *,
    export_config: Any = None,
    fresh: bool = False,
    shapes: dict[str, tuple[int, ...]] | None = None,
) -> Model:
    """Import `source` as a Model. Anything exported from PyTorch is parity-checked on a batch
    size and sequence length unlike the example's. `export_config` is an ExportConfig;
    `shapes` are input sizes the user stated (`--input-shape`), which generated inputs keep."""
    if isinstance(source, str | Path):
        path = Path(source)
        if path.suffix == ".onnx" or (path.is_dir() and (path / "model.onnx").is_file()):
            return load_onnx(path / "model.onnx" if path.is_dir() else path, shapes=shapes)
        model = _load_named(str(source), export_config, fresh)
    elif _is_torch_module(source):
        if example_inputs is None:
            raise ModelLoadError(
                f"{type(source).__name__}: a PyTorch module needs example_inputs to export"
            )
        model = _export(source, example_inputs, export_config, source=type(source).__name__)
    else:
        raise ModelLoadError(
            f"cannot load a {type(source).__name__}: give a path, a zoo name, "
            "'pkg.module:factory' or an nn.Module with example inputs"
        )
    return model.with_found_inputs(shapes) if shapes else model


def _load_named(source: str, export_config: Any, fresh: bool) -> Model:
    path = Path(source)
    if path.is_dir():
        if (path / "model.onnx").is_file():
            return load_onnx(path / "model.onnx")
        if (path / "config.json").is_file():
            return load_huggingface(path, export_config)
        raise ModelLoadError(
            f"{path}: folder holds neither model.onnx nor a Hugging Face config.json"
        )
    if path.exists() or source.endswith(".onnx"):
        return load_onnx(path)
    if zoo.is_zoo_name(source):
        return load_zoo(source, fresh=fresh)
    if ":" in source:
        return load_factory(source, export_config)
    raise ModelLoadError(
        f"{source}: no such file or folder, and not a zoo name ({', '.join(zoo.names())}) "
        "or a 'pkg.module:factory'"
    )


def _is_torch_module(obj: Any) -> bool:
    torch = sys.modules.get("torch")  # if torch was never imported, obj cannot be a module
    return torch is not None and isinstance(obj, torch.nn.Module)


def _export(module: Any, example_inputs: Any, config: Any, *, source: str, **kw: Any) -> Model:
    from inferopt.export import export_module

    return export_module(module, example_inputs, config, source=source, **kw)


def load_huggingface(folder: Path, export_config: Any = None) -> Model:
    from dataclasses import replace

    from inferopt.export import ExportConfig
    from inferopt.huggingface import load_folder

    built = load_folder(folder)
    config = replace(
        export_config or ExportConfig(), output_names=built.output_names, seq_axis=built.seq_axis
    )
    return _export(
        built.module, built.example_inputs, config, source=str(folder), kind="huggingface"
    )


def load_zoo(name: str, *, fresh: bool = False) -> Model:
    """The zoo model, exported and parity-checked once, then read from the cache; `fresh`
    exports (and checks) again."""

    from inferopt.export import ExportConfig

    entry = zoo.get(name)
    cached = zoo.cache_path(entry)
    if cached.is_file() and not fresh:
        return load_onnx(cached)
    built = entry.build()
    config = ExportConfig(output_names=built.output_names, seq_axis=built.seq_axis)
    model = _export(built.module, built.example_inputs, config, source=name, kind="zoo")
    partial = cached.with_suffix(".partial")
    model.save(partial)
    partial.replace(cached)  # atomic: a killed run never leaves a half-written cache entry
    return model


def load_factory(spec: str, export_config: Any = None) -> Model:
    """`pkg.module:factory`: a callable returning (module, example_inputs)."""
    module_name, _, attribute = spec.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as exc:
        raise ModelLoadError(f"{spec}: cannot import the factory: {exc}") from exc
    try:
        result = factory()
    except Exception as exc:  # the user's code: any failure is reported, not re-raised raw
        raise ModelLoadError(f"{spec}: the factory raised {type(exc).__name__}: {exc}") from exc
    if not (isinstance(result, tuple) and len(result) == 2 and _is_torch_module(result[0])):
        raise ModelLoadError(
            f"{spec}: the factory must return (torch.nn.Module, example_inputs), "
            f"got {type(result).__name__}"
        )
    return _export(result[0], result[1], export_config, source=spec)
