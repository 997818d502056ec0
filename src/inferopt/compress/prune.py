"""Structured pruning: `prune_(module, PruneConfig(...), example_inputs)` removes whole
channels, filters, attention heads and FFN neurons, so the exported model is really smaller.

Torch-Pruning's dependency graph finds what must shrink together (a conv's filters with the
next BatchNorm and the next conv's inputs, residual additions, attention projections); we
choose what to ignore, rank by the configured criterion, and check the result still runs.
The pruning is done on a copy and moved into `module` only when it succeeded, so a failure
leaves the caller's module as it was."""

from __future__ import annotations

import contextlib
import copy
import io
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch_pruning as tp
from torch import nn

from inferopt.compress.config import PruneConfig
from inferopt.compress.train import Batch, Objective, forward
from inferopt.errors import InferoptError, first_line

PRUNABLE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


class PruneError(InferoptError):
    """The model cannot be pruned as configured (unknown layer, untraceable op, ...)."""


@dataclass(frozen=True)
class PruneReport:
    macs_before: int  # per example, at the example inputs' shape
    macs_after: int
    params_before: int
    params_after: int
    widths: dict[str, tuple[int, int]] = field(default_factory=dict)  # layer: (before, after)
    heads: dict[str, tuple[int, int]] = field(default_factory=dict)  # attention: (before, after)

    @property
    def macs_removed(self) -> float:
        return 1.0 - self.macs_after / max(self.macs_before, 1)

    def to_json(self) -> dict[str, Any]:
        return {
            "macs_removed": round(self.macs_removed, 4),
            "macs_before": self.macs_before,
            "macs_after": self.macs_after,
            "params_before": self.params_before,
            "params_after": self.params_after,
            "widths": {k: list(v) for k, v in self.widths.items()},
            "heads": {k: list(v) for k, v in self.heads.items()},
        }


def prune_(
    module: nn.Module,
    config: PruneConfig,
    example_inputs: dict[str, torch.Tensor],
    *,
    batches: Sequence[Batch] = (),
    loss: Objective | None = None,
) -> PruneReport:
    """Prune `module` in place. `batches` feed the data-driven criteria (`activation` needs
    inputs, `taylor` inputs and a `loss` whose gradients rank the channels)."""
    if config.data_driven and not batches:
        raise PruneError(f"criterion {config.criterion!r} needs data: pass batches")
    if config.criterion == "taylor" and loss is None:
        raise PruneError("criterion 'taylor' needs a loss (gradients rank the channels)")
    names = dict(module.named_modules())
    _check_names(module, config, names)
    macs_before, params_before = count(module, example_inputs)
    widths_before = _widths(module)
    if config.ratio == 0.0 and not config.layer_ratios:
        return PruneReport(macs_before, macs_before, params_before, params_before)
    reference = _output_shape(module, example_inputs)
    work = copy.deepcopy(module).eval()
    heads_before = _attention_heads(work)
    with _located(work, "pruning") as where:
        try:
            pruner = _pruner(work, config, example_inputs, _ignored(work, config, example_inputs))
            _rank_and_prune(work, pruner, config, batches, loss)
        except Exception as exc:  # Torch-Pruning raises anything from tracing arbitrary code
            raise where.error(type(module).__name__, exc) from exc
    _sync_attention(work, pruner)
    _check_runs(work, example_inputs, reference, type(module).__name__)
    module.__dict__.update(work.__dict__)  # the root keeps its identity for the caller
    macs_after, params_after = count(module, example_inputs)
    widths = {k: (v, w) for k, w in _widths(module).items() if (v := widths_before[k]) != w}
    heads = {k: (v, h) for k, h in _attention_heads(module).items() if (v := heads_before[k]) != h}
    return PruneReport(macs_before, macs_after, params_before, params_after, widths, heads)


def count(module: nn.Module, example_inputs: dict[str, torch.Tensor]) -> tuple[int, int]:
    """(MACs per example, parameters), by Torch-Pruning's counter at the examples' shape."""
    batch = next(iter(example_inputs.values())).shape[0]
    with _quiet():
        macs, params = tp.utils.count_ops_and_params(module, example_inputs)
    return int(macs) // max(batch, 1), int(params)


def _check_names(module: nn.Module, config: PruneConfig, names: dict[str, nn.Module]) -> None:
    wanted = [*config.ignore, *(name for name, _ in config.layer_ratios)]
    unknown = [n for n in wanted if n not in names]
    if unknown:
        layers = [n for n, m in names.items() if isinstance(m, PRUNABLE)]
        shown = ", ".join(layers[:12]) + (", ..." if len(layers) > 12 else "")
        raise PruneError(
            f"PruneConfig names layer {unknown[0]!r}, which {type(module).__name__} does not "
            f"have; its prunable layers are {shown}"
        )


def _ignored(
    module: nn.Module, config: PruneConfig, example_inputs: dict[str, torch.Tensor]
) -> list[nn.Module]:
    """The user's ignores, the layer producing the output (its width is the interface), and
    for transformers every layer writing the residual stream: pruning the hidden width would
    change the output and every LayerNorm; heads and FFN neurons are what shrink."""
    names = dict(module.named_modules())
    ignored = [names[n] for n in config.ignore]
    ignored += [m for n, m in names.items() if n.endswith("pooler")]
    ignored += [
        m.dense
        for m in module.modules()
        if isinstance(getattr(m, "dense", None), nn.Linear) and hasattr(m, "LayerNorm")
    ]
    ignored += [m for m in module.modules() if isinstance(m, nn.Embedding)]
    last = _last_layer(module, example_inputs)
    if last is not None:
        ignored.append(last)
    return ignored


def _last_layer(module: nn.Module, example_inputs: dict[str, torch.Tensor]) -> nn.Module | None:
    order: list[nn.Module] = []
    hooks = [
        m.register_forward_hook(lambda m, i, o: order.append(m))
        for m in module.modules()
        if isinstance(m, PRUNABLE)
    ]
    try:
        with torch.no_grad():
            forward(module, example_inputs)
    finally:
        for h in hooks:
            h.remove()
    return order[-1] if order else None


def _pruner(
    module: nn.Module,
    config: PruneConfig,
    example_inputs: dict[str, torch.Tensor],
    ignored: list[nn.Module],
) -> Any:
    names = dict(module.named_modules())
    heads = _head_layers(module) if config.heads else {}
    with _quiet():
        return tp.pruner.BasePruner(
            module,
            example_inputs,
            importance=_importance(config),
            global_pruning=config.scope == "global",
            pruning_ratio=config.ratio,
            pruning_ratio_dict={names[n]: r for n, r in config.layer_ratios},
            max_pruning_ratio=config.max_layer_ratio,
            ignored_layers=ignored,
            round_to=config.round_to,
            num_heads=heads,
            prune_num_heads=bool(heads),
            prune_head_dims=not heads,
            head_pruning_ratio=config.ratio if heads else 0.0,
        )


def _importance(config: PruneConfig) -> Any:
    if config.criterion == "l1":
        return tp.importance.MagnitudeImportance(p=1)
    if config.criterion == "l2":
        return tp.importance.MagnitudeImportance(p=2)
    if config.criterion == "taylor":
        return tp.importance.TaylorImportance()
    return tp.importance.ActivationImportance()


def _rank_and_prune(
    module: nn.Module,
    pruner: Any,
    config: PruneConfig,
    batches: Sequence[Batch],
    loss: Objective | None,
) -> None:
    if config.criterion == "taylor" and loss is not None:
        module.zero_grad()
        for batch in batches:
            loss(module, batch).backward()  # type: ignore[no-untyped-call]
    if config.criterion == "activation":
        # The importance hooks keep the last forward only: feed all examples as one batch.
        merged = _merge(batches)
        with pruner.importance.compute_importance(module), torch.no_grad():
            forward(module, merged)
    with _quiet(), torch.no_grad():
        pruner.step()
    module.zero_grad(set_to_none=True)


def _merge(batches: Sequence[Batch]) -> dict[str, torch.Tensor]:
    names = list(batches[0].inputs)
    longest = {n: max(b.inputs[n].shape[-1] for b in batches) for n in names}
    merged = {}
    for n in names:
        parts = [b.inputs[n] for b in batches]
        if parts[0].dim() == 2 and not parts[0].is_floating_point():  # token ids: pad to longest
            parts = [nn.functional.pad(p, (0, longest[n] - p.shape[-1])) for p in parts]
        merged[n] = torch.cat(parts)
    return merged


def _head_layers(module: nn.Module) -> dict[nn.Module, int]:
    """Q, K and V projections of Hugging Face style attention -> their number of heads."""
    heads: dict[nn.Module, int] = {}
    for m in module.modules():
        count = getattr(m, "num_attention_heads", None)
        projections = [getattr(m, p, None) for p in ("query", "key", "value")]
        if isinstance(count, int) and all(isinstance(p, nn.Linear) for p in projections):
            heads.update(dict.fromkeys(projections, count))  # type: ignore[arg-type]
    return heads


def _attention_heads(module: nn.Module) -> dict[str, int]:
    return {
        name: m.num_attention_heads
        for name, m in module.named_modules()
        if isinstance(getattr(m, "num_attention_heads", None), int) and hasattr(m, "query")
    }


def _sync_attention(module: nn.Module, pruner: Any) -> None:
    """Attention modules keep their head count as plain attributes Torch-Pruning cannot see."""
    for m in module.modules():
        query = getattr(m, "query", None)
        if query in pruner.num_heads and isinstance(query, nn.Linear):
            heads = int(pruner.num_heads[query])
            setattr(m, "num_attention_heads", heads)  # noqa: B010  # plain attributes, not modules
            setattr(m, "all_head_size", query.out_features)  # noqa: B010
            if hasattr(m, "attention_head_size"):
                setattr(m, "attention_head_size", query.out_features // heads)  # noqa: B010


def _widths(module: nn.Module) -> dict[str, int]:
    widths: dict[str, int] = {}
    for name, m in module.named_modules():
        if isinstance(m, nn.Linear):
            widths[name] = m.out_features
        elif isinstance(m, PRUNABLE):
            widths[name] = int(m.weight.shape[0])
    return widths


def _output_shape(module: nn.Module, example_inputs: dict[str, torch.Tensor]) -> torch.Size:
    with torch.no_grad():
        return forward(module.eval(), example_inputs).shape


def _check_runs(
    module: nn.Module,
    example_inputs: dict[str, torch.Tensor],
    reference: torch.Size,
    label: str,
) -> None:
    with _located(module, "running the pruned model") as where:
        try:
            shape = _output_shape(module, example_inputs)
        except Exception as exc:  # the user's forward(): any failure names its layer
            raise where.error(label, exc) from exc
    if shape != reference:
        raise PruneError(
            f"pruning {label} changed its output from {list(reference)} to {list(shape)}; "
            "add the layer producing the output to PruneConfig.ignore"
        )


class _Locator:
    """Which layer was running when something failed, and which layer ran just before it:
    the one to suggest ignoring when a hard-coded shape or an untraceable op breaks."""

    def __init__(self, names: dict[nn.Module, str], stage: str) -> None:
        self.names, self.stage = names, stage
        self.stack: list[nn.Module] = []
        self.finished: list[nn.Module] = []

    def enter(self, m: nn.Module, *_: Any) -> None:
        self.stack.append(m)

    def leave(self, m: nn.Module, *_: Any) -> None:
        if self.stack and self.stack[-1] is m:
            self.stack.pop()
        if isinstance(m, PRUNABLE):
            self.finished.append(m)

    def error(self, label: str, exc: BaseException) -> PruneError:
        why = first_line(exc, named=True)
        if not self.stack:
            return PruneError(f"Torch-Pruning cannot prune {label} ({self.stage}): {why}")
        failing = self.names.get(self.stack[-1], "?")
        feeding = [self.names[m] for m in self.finished if m is not self.stack[-1]]
        hint = f"ignore=({feeding[-1]!r},)" if feeding else f"ignore=({failing!r},)"
        return PruneError(
            f"Torch-Pruning cannot prune {label}: {self.stage} fails in layer {failing!r} "
            f"({why}); a shape fixed in forward() or an op it cannot trace sits there. "
            f"Leave the layers feeding it unpruned, e.g. PruneConfig({hint})"
        )


@contextlib.contextmanager
def _located(module: nn.Module, stage: str) -> Iterator[_Locator]:
    names = {m: n or "(root)" for n, m in module.named_modules()}
    locator = _Locator(names, stage)
    hooks = []
    for m in module.modules():
        hooks.append(m.register_forward_pre_hook(locator.enter))
        hooks.append(m.register_forward_hook(locator.leave))
    try:
        yield locator
    finally:
        for h in hooks:
            h.remove()


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Torch-Pruning prints warnings and notes for its own developers to stdout."""
    with (
        warnings.catch_warnings(),
        contextlib.redirect_stdout(io.StringIO()),
    ):
        warnings.simplefilter("ignore")
        yield
