"""The shape every pass has: a small frozen dataclass (its options) with one entry point that
takes a Model and returns a new one, verified against its input.

A pass declares how far its outputs may drift from its input's (`Tolerance`); after it runs,
both models are run on the same sample data and a drift past the tolerance raises PassError
naming the pass, the output and the error. That catches a broken rewrite where it happens,
not three passes later in an accuracy number."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

import numpy as np
import onnx

from inferopt import compat, external
from inferopt.data import Dataset, Layout, batch_first
from inferopt.errors import InferoptError, first_line
from inferopt.iospec import from_signature, suspect_input
from inferopt.measure.channels import compare_outputs
from inferopt.model import Model, from_proto
from inferopt.parity import nonfinite_share


class PassError(InferoptError):
    """A pass failed, or its output drifted from its input past the pass's tolerance."""


@dataclass(frozen=True)
class Tolerance:
    """Allowed drift of every float output: `allclose(atol, rtol)` when both are set, and a
    minimum mean cosine (per row) when `min_cosine` is set. Approximate passes (int8, fp16)
    use cosine: elementwise bounds would reject any useful quantization."""

    atol: float | None = None
    rtol: float | None = None
    min_cosine: float | None = None


EXACT = Tolerance(atol=1e-3, rtol=1e-3)  # graph rewrites: only float re-association differs
# One-row generated verification feeds of these sequence lengths: stacked, the shorter ones
# are padded beside the longest, which is where a dropped mask shows.
GENERATED_LENGTHS = (16, 5, 11, 3)
FLOAT16_MAX = float(np.finfo(np.float16).max)  # 65504


@dataclass(frozen=True)
class PassContext:
    """What passes may need besides the model: data for calibration and for verification."""

    calibration: Dataset | None = None  # representative inputs (static int8 needs them)
    verification: tuple[dict[str, np.ndarray], ...] = ()  # feeds both models are run on
    notes: list[str] = field(default_factory=list)  # warnings passes want the user to see

    @staticmethod
    def for_model(model: Model, data: Dataset | None = None, samples: int = 8) -> PassContext:
        """One-row verification feeds, spread over the data when given (real inputs), else
        generated at mixed lengths: each is checked alone and, stacked and padded, as a batch."""
        if data is not None:
            feeds = tuple(data.spread(samples))
        else:
            lengths = GENERATED_LENGTHS if model.io.seq_axis is not None else (16,) * 4
            feeds = tuple(
                model.io.sample_inputs(batch=1, seq=n, seed=s) for s, n in enumerate(lengths)
            )
        return PassContext(calibration=data, verification=feeds)


@dataclass(frozen=True)
class PassResult:
    proto: onnx.ModelProto
    report: dict[str, Any] = field(default_factory=dict)  # what the pass did, for the user


class Pass:
    """Subclasses are frozen dataclasses; their fields are the pass's options."""

    name: ClassVar[str]
    tolerance: ClassVar[Tolerance] = EXACT
    # Passes that rewrite weights through libraries that need them in memory (ORT's
    # quantizer, the fp16 converter) cannot take a model whose weights stay on disk (> 2 GB).
    needs_weights_in_memory: ClassVar[bool] = False
    # Option sets the auto-search tries, cheapest first; empty: the search leaves it out.
    search: ClassVar[tuple[dict[str, Any], ...]] = ()

    def run(self, model: Model, context: PassContext) -> PassResult:
        raise NotImplementedError

    def options(self) -> dict[str, Any]:
        return dataclasses.asdict(self) if dataclasses.is_dataclass(self) else {}

    def __call__(self, model: Model, context: PassContext) -> Model:
        if self.needs_weights_in_memory and model.data_dir is not None:
            raise PassError(
                f"pass {self.name!r} needs the weights in memory; this model's ({model.name}) "
                "are over 2 GB and stay in their files, which only fold, dce, fuse and "
                "ort-optimize work on"
            )
        # Map-typed outputs (ZipMap) cannot be read by onnx-ir: the pass sees them untyped,
        # and the result gets their types back.
        hidden = compat.map_types(model.proto)
        work = model
        if hidden:
            work = Model(compat.without_types(model.proto, hidden), model.io, model.provenance)
        try:
            result = self.run(work, context)
        except InferoptError:
            raise
        except Exception as exc:  # library errors (ORT, onnxscript): name the pass
            raise PassError(f"pass {self.name!r} failed: {first_line(exc, named=True)}") from exc
        if hidden:
            result = replace(result, proto=compat.with_types(result.proto, hidden))
        if "changed" not in result.report and _same_graph(model.proto, result.proto):
            # Say so: a pass that silently did nothing reads as a result (quantizing op
            # types the quantizer does not handle, fusing a graph with nothing to fuse).
            ops = sorted({n.op_type for n in model.proto.graph.node})
            result.report["changed"] = False
            context.notes.append(
                f"pass {self.name!r} changed nothing in this model (its op types: {', '.join(ops)})"
            )
        step = {"pass": self.name, "options": self.options(), "report": result.report}
        provenance = replace(model.provenance, steps=(*model.provenance.steps, step))
        try:
            new = from_proto(result.proto, provenance)
        except InferoptError as exc:
            raise PassError(f"pass {self.name!r} produced an invalid model: {exc}") from exc
        # Same signature (a pass must not change the interface), but the declared dtypes as
        # the new graph has them: fp16 with keep_io_types=false makes float16 inputs.
        new = new.with_io(model.io.with_dtypes_of(from_signature(result.proto)))
        verify(model, new, self.name, self.tolerance, context.verification)
        return new


def verify(
    before: Model,
    after: Model,
    name: str,
    tolerance: Tolerance,
    feeds: Sequence[dict[str, np.ndarray]],
) -> None:
    """Raise PassError if `after` drifts from `before` past `tolerance` on any one-row feed,
    or if a row's answer inside a padded batch of all the feeds differs from its answer
    alone (batch invariance: a quantized attention that drops its mask passes at batch 1
    and fails here). Every output is checked, every row on its own; NaN or Inf never agrees."""
    alone_before = [before.run(feed) for feed in feeds]
    for index, outputs in enumerate(alone_before):
        _require_finite(name, outputs, index, before)
    alone_after = [after.run(feed) for feed in feeds]
    for index, (ref, got) in enumerate(zip(alone_before, alone_after, strict=True)):
        _check_outputs(name, ref, got, tolerance, f"row {index}")
    if tolerance.min_cosine is not None:
        layout = Layout.of(before.io)
        _check_channels(
            name,
            [batch_first(r, layout) for r in alone_before],
            [batch_first(r, layout) for r in alone_after],
            tolerance.min_cosine,
        )
    if len(feeds) > 1 and before.io.batch_axis is not None:
        _check_batch(before, after, name, tolerance, feeds, alone_before, alone_after)


def _check_channels(
    name: str, before: list[dict[str, Any]], after: list[dict[str, Any]], min_cosine: float
) -> None:
    """Every channel on its own scale (measure.channels): a row's cosine cannot see a channel
    far smaller than its neighbours (objectness logits beside box coordinates). A channel's
    drop is comparable to 1 - cosine, so the pass's cosine tolerance bounds it too."""
    floats = [k for k, v in before[0].items() if isinstance(v, np.ndarray) and v.dtype.kind == "f"]
    if not floats:
        return
    comparison = compare_outputs(
        [{k: r[k] for k in floats} for r in before],
        [{k: r[k] for k in floats} for r in after],
        resamples=1,  # a sanity bound on these few rows: no interval needed
    )
    worst = comparison.worst
    if worst.drop > 1.0 - min_cosine:
        channel = "" if worst.channel is None else f" channel {worst.channel}"
        raise PassError(
            f"pass {name!r} damaged output {worst.output!r}{channel} on {len(before)} "
            f"verification rows: drop {worst.drop:.3g} on the channel's own scale (tolerance "
            f"{1.0 - min_cosine:.3g}, from the pass's cosine {min_cosine})"
        )


def _check_batch(
    before: Model,
    after: Model,
    name: str,
    tolerance: Tolerance,
    feeds: Sequence[dict[str, np.ndarray]],
    alone_before: list[dict[str, Any]],
    alone_after: list[dict[str, Any]],
) -> None:
    layout = Layout.of(before.io)
    batch = layout.stack(feeds)
    in_batch = after.run(batch)
    where = f"in a batch of {len(feeds)} rows{_lengths(batch, feeds, layout)}"
    reference = alone_after
    if not _batch_invariant(before, layout, batch, alone_before, tolerance):
        # The input model itself answers differently in a batch (batch statistics, say):
        # hold the pass to the input model's batched answers instead.
        reference = [layout.row(before.run(batch), i, alone_before[i]) for i in range(len(feeds))]
        where += " (compared with the input model's batched answers)"
    for index, ref in enumerate(reference):
        row = layout.row(in_batch, index, alone_after[index])
        _check_outputs(name, ref, row, tolerance, f"row {index} {where}")


def _batch_invariant(
    model: Model,
    layout: Layout,
    batch: dict[str, np.ndarray],
    alone: list[dict[str, Any]],
    tolerance: Tolerance,
) -> bool:
    outputs = model.run(batch)
    try:
        for index, ref in enumerate(alone):
            _check_outputs("input model", ref, layout.row(outputs, index, ref), tolerance, "")
    except PassError:
        return False
    return True


def _lengths(
    batch: dict[str, np.ndarray], feeds: Sequence[dict[str, np.ndarray]], layout: Layout
) -> str:
    name = next((n for n in batch if layout.seq_axis(n) is not None), None)
    if name is None:
        return ""
    axis = layout.seq_axis(name)
    assert axis is not None
    lengths = [int(f[name].shape[axis]) for f in feeds]
    return f", lengths {lengths} padded to {int(batch[name].shape[axis])}"


def _require_finite(name: str, outputs: dict[str, Any], row: int, model: Model) -> None:
    for output, values in outputs.items():
        share = nonfinite_share(values) if isinstance(values, np.ndarray) else 0.0
        if share:
            suspect = suspect_input(model.io)
            hint = f"; the input most likely at fault: {suspect}" if suspect else ""
            raise PassError(
                f"pass {name!r}: the input model's output {output!r} is not finite on "
                f"verification row {row} ({share:.1%} NaN/Inf){hint}; give real inputs "
                "with --data FILE.npz"
            )


def _check_outputs(
    name: str, expected: dict[str, Any], got: dict[str, Any], tol: Tolerance, where: str
) -> None:
    for output, ref in expected.items():
        if output not in got:
            raise PassError(f"pass {name!r} removed output {output!r}")
        if isinstance(ref, np.ndarray):  # sequences and maps (ZipMap) are not compared
            _check_output(name, output, ref, got[output], tol, where)


def _check_output(
    name: str, output: str, ref: np.ndarray, got: np.ndarray, tol: Tolerance, where: str
) -> None:
    at = f" at {where}" if where else ""
    if ref.shape != got.shape:
        raise PassError(
            f"pass {name!r} changed the shape of output {output!r}{at}: "
            f"{list(got.shape)} instead of {list(ref.shape)}"
        )
    if not np.issubdtype(ref.dtype, np.floating):
        _check_exact_values(name, output, ref, got, tol, at)
        return
    share = nonfinite_share(got)
    if share:
        peak = float(np.max(np.abs(ref)))
        why = ""
        if got.dtype == np.float16 and peak > FLOAT16_MAX:
            why = f" (float16 holds at most {FLOAT16_MAX:g}; the expected values reach {peak:.3g})"
        raise PassError(
            f"pass {name!r} made output {output!r} non-finite{at}: {share:.1%} of its values "
            f"are NaN/Inf{why}"
        )
    ref64, got64 = ref.astype(np.float64), got.astype(np.float64)
    exact = tol.atol is not None and tol.rtol is not None
    if exact and not np.allclose(got64, ref64, atol=tol.atol or 0.0, rtol=tol.rtol or 0.0):
        worst = float(np.max(np.abs(got64 - ref64)))
        raise PassError(
            f"pass {name!r} changed output {output!r}{at} by up to {worst:.3g} "
            f"(tolerance atol={tol.atol:g}, rtol={tol.rtol:g})"
        )
    if tol.min_cosine is not None and ref.size:
        cosine = _cosine(ref64, got64)
        if cosine < tol.min_cosine:
            raise PassError(
                f"pass {name!r} changed output {output!r}{at}: cosine {cosine:.4f} to the "
                f"expected answer, below the pass's tolerance {tol.min_cosine}"
            )


def _check_exact_values(
    name: str, output: str, ref: np.ndarray, got: np.ndarray, tol: Tolerance, at: str
) -> None:
    """Integer outputs (labels, indices): equal under an exact tolerance; under an
    approximate one, at most a (1 - min_cosine) share of them may change."""
    changed = float(np.mean(ref != got)) if ref.size else 0.0
    allowed = 0.0 if tol.min_cosine is None else 1.0 - tol.min_cosine
    if changed > allowed:
        raise PassError(
            f"pass {name!r} changed {changed:.1%} of the values of output {output!r}{at} "
            f"(allowed {allowed:.1%})"
        )


def _cosine(ref: np.ndarray, got: np.ndarray) -> float:
    """Cosine of one row's whole output; two all-zero answers agree."""
    a, b = ref.reshape(-1), got.reshape(-1)
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    if na == 0.0 or nb == 0.0:
        return 1.0 if na == nb else 0.0
    return float(np.dot(a, b) / (na * nb))


def _same_graph(before: onnx.ModelProto, after: onnx.ModelProto) -> bool:
    """The same nodes (op types and attributes in order) and the same initializers by name
    and shape: what a pass that changed nothing returns (values are not compared)."""
    a, b = before.graph, after.graph
    if len(a.node) != len(b.node) or len(a.initializer) != len(b.initializer):
        return False
    nodes = all(
        x.op_type == y.op_type and x.domain == y.domain and list(x.input) == list(y.input)
        for x, y in zip(a.node, b.node, strict=True)
    )
    weights = sorted((i.name, tuple(i.dims), i.data_type) for i in a.initializer)
    return nodes and weights == sorted((i.name, tuple(i.dims), i.data_type) for i in b.initializer)


def copy_proto(proto: onnx.ModelProto) -> onnx.ModelProto:
    new = onnx.ModelProto()
    new.CopyFrom(proto)
    return new


def toposort(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Nodes in dependency order (some converters append the nodes they insert)."""
    import onnx_ir as ir
    from onnx_ir.passes.common import TopologicalSortPass

    model = external.to_ir(proto)
    return ir.serde.serialize_model(TopologicalSortPass()(model).model)


def float_matrices(proto: onnx.ModelProto) -> set[str]:
    """Names of the 2-D float32 initializers: the MatMul weights that the weight passes
    rewrite (int8-block's MatMulNBits takes a float (K, N) weight; unpad scatters float32
    outputs back)."""
    return {
        i.name
        for i in proto.graph.initializer
        if len(i.dims) == 2 and i.data_type == onnx.TensorProto.FLOAT
    }
