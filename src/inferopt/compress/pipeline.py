"""Recipe glue: from a source and its PyTorch steps to an exported, parity-checked Model.

`compress(source, steps, examples, baseline)` builds the PyTorch model (zoo name, Hugging Face
folder, `pkg.module:factory`, or an nn.Module with example inputs), applies each step with its
training, exports with the parity check, and caches the result under the cache's
`compressed/` folder keyed by everything that changes it, so re-running a recipe does not
train again."""

from __future__ import annotations

import copy
import hashlib
import importlib
import json
import re
import sys
from dataclasses import replace
from importlib.metadata import version
from pathlib import Path
from typing import Any

import torch
from torch import nn

from inferopt import __version__, zoo
from inferopt.cache import cache_dir
from inferopt.compress.config import DistillConfig, FinetuneConfig
from inferopt.compress.distillation import (
    choose_layers,
    distill,
    layer_dropped,
    narrower,
    student_key,
    update_with_weights,
)
from inferopt.compress.prune import prune_
from inferopt.compress.sparsity import sparsify_
from inferopt.compress.steps import DistillStep, PruneStep, SparsifyStep, TorchStep
from inferopt.compress.train import Batch, TrainData
from inferopt.data import Dataset
from inferopt.errors import InputError, ModelLoadError
from inferopt.export import ExportConfig, export_module
from inferopt.model import Model, load_onnx
from inferopt.zoo.registry import TorchSource

# Bump when what a step does changes (training defaults, losses): it renames cache entries.
VERSION = "2"
# Training defaults by model family; a step's epochs= and lr= override them. Transformers
# train on large corpora: validated every 100 steps, linear decay, capped at 15 minutes.
TRANSFORMER_TRAINING = FinetuneConfig(
    epochs=3,
    lr=5e-4,
    batch_size=32,
    patience=4,
    threads=2,
    schedule="linear",
    validation_steps=100,
    validation_limit=512,
    max_seconds=900.0,
)
CNN_TRAINING = FinetuneConfig(epochs=12, lr=1e-3, batch_size=32)
FROM_SCRATCH_EPOCHS = 40  # a freshly initialised narrower student learns everything
IMPORTANCE_BATCH = 32


def has_torch_model(source: Any) -> bool:
    """Whether PyTorch steps can run on `source`, judged without building it: a zoo name,
    a Hugging Face folder, a `pkg.module:factory` or an nn.Module (not ONNX or artifacts)."""
    if isinstance(source, nn.Module):
        return True
    text = str(source)
    path = Path(text)
    if path.exists():
        return path.is_dir() and (path / "config.json").is_file()
    return zoo.is_zoo_name(text) or (":" in text and not text.endswith(".onnx"))


def torch_source(source: Any, example_inputs: Any = None) -> TorchSource:
    """The PyTorch model behind `source`; ModelLoadError for sources that have none."""
    if isinstance(source, nn.Module):
        if example_inputs is None:
            raise ModelLoadError(f"{type(source).__name__}: a PyTorch module needs example_inputs")
        return TorchSource(copy.deepcopy(source), _named(source, example_inputs), ())
    text = str(source)
    path = Path(text)
    if zoo.is_zoo_name(text) and not path.exists():
        return zoo.get(text).build()
    if path.is_dir() and (path / "config.json").is_file():
        from inferopt.huggingface import load_folder

        return load_folder(path)
    if ":" in text and not path.exists():
        module_name, _, attribute = text.partition(":")
        module, examples = getattr(importlib.import_module(module_name), attribute)()
        return TorchSource(module, _named(module, examples), ())
    raise ModelLoadError(
        f"{text}: PyTorch steps (prune, sparsify, distill) need the PyTorch model: give a zoo "
        "name, a Hugging Face folder, 'pkg.module:factory' or an nn.Module with example inputs, "
        "not an ONNX file or artifact"
    )


def _named(module: nn.Module, examples: Any) -> dict[str, torch.Tensor]:
    from inferopt.export import _named_inputs

    return _named_inputs(module, examples)


def training_examples(source: Any, calibration: Dataset, own_zoo_data: bool) -> Dataset:
    """What the steps train on: a zoo model's own training set when it has one and the user
    gave no data; else the calibration split (never the held-out evaluation set)."""
    if own_zoo_data and isinstance(source, str) and zoo.is_zoo_name(source):
        entry = zoo.get(source)
        if entry.training is not None:
            return entry.training()
    return calibration


def compress(
    source: Any,
    steps: tuple[TorchStep, ...],
    examples: Dataset,
    baseline: Model,
    *,
    example_inputs: Any = None,
    use_cache: bool = True,
    max_train_seconds: float | None = None,
) -> Model:
    """Apply `steps` to the source's PyTorch model, train on `examples`, export (parity
    checked) with the baseline's interface; cached. `max_train_seconds` caps each step's
    training below its family's default cap (the search passes what its time budget has left);
    the cache does not depend on it, so a student trained under a shorter cap is reused."""
    built = torch_source(source, example_inputs)
    _check_examples(examples, built, baseline)
    path = _cache_path(source, built, steps, examples)
    if use_cache and path.is_file():
        return load_onnx(path)
    module, records = built.module, []
    for step in steps:
        module, report = apply_step(module, step, built.example_inputs, examples, max_train_seconds)
        records.append({"pass": step.name, "options": step.options(), "report": report})
    model = export_module(
        module,
        built.example_inputs,
        ExportConfig(
            output_names=tuple(baseline.io.output_names),
            batch_axis=baseline.io.batch_axis,
            seq_axis=baseline.io.seq_axis,
        ),
        source=baseline.provenance.source,
        kind=baseline.provenance.kind,
    )
    model = replace(model, provenance=replace(model.provenance, steps=tuple(records)))
    partial = path.with_suffix(".partial")
    model.save(partial)
    partial.replace(path)  # atomic: a killed run never leaves a half-written cache entry
    return load_onnx(path)  # as a later run will see it (metadata included in its size)


def apply_step(
    module: nn.Module,
    step: TorchStep,
    example_inputs: dict[str, torch.Tensor],
    examples: Dataset,
    max_train_seconds: float | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """One step on `module` (changed in place, or replaced by a student); its report."""
    if isinstance(step, PruneStep):
        return module, _prune(module, step, example_inputs, examples, max_train_seconds)
    if isinstance(step, SparsifyStep):
        return module, _sparsify(module, step, examples, max_train_seconds)
    if isinstance(step, DistillStep):
        return _distill(module, step, examples, max_train_seconds)
    raise TypeError(f"unknown PyTorch step {type(step).__name__}")


def _prune(
    module: nn.Module,
    step: PruneStep,
    example_inputs: dict[str, torch.Tensor],
    examples: Dataset,
    cap: float | None = None,
) -> dict[str, Any]:
    config = step.config()
    if config.criterion == "taylor" and examples.labels is None:
        raise InputError("criterion 'taylor' needs labelled data; use l2 or activation")
    teacher = copy.deepcopy(module).eval()
    scored = examples.subset(range(min(len(examples), config.importance_samples)))
    batches = list(TrainData(scored).batches(IMPORTANCE_BATCH))
    report = prune_(module, config, example_inputs, batches=batches, loss=_cross_entropy)
    result = report.to_json()
    training = _training(step, module, cap)
    if training.epochs:
        trained = distill(module, teacher, examples, DistillConfig(), training, label="fine-tuning")
        result.update(trained.to_json())
    return result


def _cross_entropy(module: nn.Module, batch: Batch) -> torch.Tensor:
    from inferopt.compress.train import forward

    if batch.labels is None:
        raise InputError("this loss needs labels")
    return nn.functional.cross_entropy(forward(module, batch.inputs), batch.labels)


def _sparsify(
    module: nn.Module, step: SparsifyStep, examples: Dataset, cap: float | None = None
) -> dict[str, Any]:
    teacher = copy.deepcopy(module).eval()
    masks = sparsify_(module, step.config())
    training = _training(step, module, cap)
    result = masks.to_json()
    if training.epochs:
        trained = distill(
            module,
            teacher,
            examples,
            DistillConfig(),
            training,
            after_step=masks.apply,
            label="fine-tuning (sparse)",
        )
        result.update(trained.to_json())
    result["sparsity"] = round(masks.sparsity, 4)
    return result


def _distill(
    module: nn.Module, step: DistillStep, examples: Dataset, cap: float | None = None
) -> tuple[nn.Module, dict[str, Any]]:
    teacher = module.eval()
    training = _training(step, teacher, cap)
    hidden = None
    shape: dict[str, Any]
    if step.layers is not None:
        keep = choose_layers(teacher, step.layers, examples)
        student, hidden = layer_dropped(teacher, step.layers, keep)
        shape = {"layers_kept": list(keep)}
    else:
        student = narrower(teacher, step.width or 0, step.seed)
        # A fresh student learns everything: more epochs, and patience for slow starts.
        epochs = FROM_SCRATCH_EPOCHS if step.epochs is None else step.epochs
        training = replace(training, epochs=epochs, patience=8)
        shape = {"width": step.width}
    # The key leaves the cap out: a student trained under a search's shorter cap is reused.
    uncapped = replace(training, max_seconds=_training(step, teacher).max_seconds)
    key = student_key(teacher, examples, step.options(), uncapped, shape, version=VERSION)
    trained = distill(
        student, teacher, examples, step.config(), training, hidden=hidden, log=_log, cache_key=key
    )
    return student, {"student": type(student).__name__, **shape, **trained.to_json()}


def _log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)  # long trainings say how they are going


def _training(step: TorchStep, module: nn.Module, cap: float | None = None) -> FinetuneConfig:
    """The family's training defaults with the step's overrides (its own `max_seconds` may
    raise the family's cap, for a student trained once for hours and then cached); `cap`
    (seconds: what a search has left) lowers the wall-clock cap, never raises it."""
    transformer = any(hasattr(m, "num_attention_heads") for m in module.modules())
    base = TRANSFORMER_TRAINING if transformer else CNN_TRAINING
    limit = base.max_seconds if step.max_seconds is None else step.max_seconds
    if cap is not None:
        limit = cap if limit is None else min(limit, cap)
    return replace(
        base,
        epochs=base.epochs if step.epochs is None else step.epochs,
        lr=base.lr if step.lr is None else step.lr,
        seed=step.seed,
        max_seconds=limit,
    )


def _check_examples(examples: Dataset, built: TorchSource, baseline: Model) -> None:
    expected = set(baseline.io.input_names)
    if set(examples.input_names) != expected:
        raise InputError(
            f"training data inputs {sorted(examples.input_names)} do not match the model's "
            f"inputs {sorted(expected)}"
        )
    examples.check_against(baseline.io)
    if set(built.example_inputs) != expected:
        raise InputError(
            f"the PyTorch model takes {sorted(built.example_inputs)} but its export takes "
            f"{sorted(expected)}"
        )


def _cache_path(
    source: Any, built: TorchSource, steps: tuple[TorchStep, ...], examples: Dataset
) -> Path:
    label = type(source).__name__ if isinstance(source, nn.Module) else Path(str(source)).name
    identity = {
        "source": label,
        "zoo_version": zoo.get(source).version
        if isinstance(source, str) and zoo.is_zoo_name(source)
        else None,
        "weights": _state_digest(built.module),
        "steps": [{"pass": s.name, "options": s.options()} for s in steps],
        "data": _data_digest(examples),
        "versions": [
            VERSION,
            __version__,
            torch.__version__,
            version("torch-pruning"),
            version("onnx"),
        ],
    }
    key = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", label)[:40] or "model"
    return cache_dir("compressed") / f"{stem}-{key[:20]}.onnx"


def _state_digest(module: nn.Module) -> str:
    digest = hashlib.sha256(type(module).__qualname__.encode())
    update_with_weights(digest, module)
    return digest.hexdigest()


def _data_digest(examples: Dataset) -> str:
    digest = hashlib.sha256()
    examples.update_digest(digest)
    return digest.hexdigest()
