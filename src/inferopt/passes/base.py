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

from inferopt.data import Dataset
from inferopt.errors import InferoptError, first_line
from inferopt.measure.fidelity import mean_cosine
from inferopt.model import Model, from_proto


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


@dataclass(frozen=True)
class PassContext:
    """What passes may need besides the model: data for calibration and for verification."""

    calibration: Dataset | None = None  # representative inputs (static int8 needs them)
    verification: tuple[dict[str, np.ndarray], ...] = ()  # feeds both models are run on
    notes: list[str] = field(default_factory=list)  # warnings passes want the user to see

    @staticmethod
    def for_model(model: Model, data: Dataset | None = None, samples: int = 8) -> PassContext:
        """Verification feeds from the data when given (real inputs), else generated ones."""
        if data is not None:
            count = min(samples, len(data))
            feeds = tuple(data.batch([i]) for i in range(count))
        else:
            feeds = tuple(model.io.sample_inputs(batch=2, seq=16, seed=s) for s in range(2))
        return PassContext(calibration=data, verification=feeds)


@dataclass(frozen=True)
class PassResult:
    proto: onnx.ModelProto
    report: dict[str, Any] = field(default_factory=dict)  # what the pass did, for the user


class Pass:
    """Subclasses are frozen dataclasses; their fields are the pass's options."""

    name: ClassVar[str]
    tolerance: ClassVar[Tolerance] = EXACT
    # Option sets the auto-search tries, cheapest first; empty: the search leaves it out.
    search: ClassVar[tuple[dict[str, Any], ...]] = ()

    def run(self, model: Model, context: PassContext) -> PassResult:
        raise NotImplementedError

    def options(self) -> dict[str, Any]:
        return dataclasses.asdict(self) if dataclasses.is_dataclass(self) else {}

    def __call__(self, model: Model, context: PassContext) -> Model:
        try:
            result = self.run(model, context)
        except InferoptError:
            raise
        except Exception as exc:  # library errors (ORT, onnxscript): name the pass
            raise PassError(f"pass {self.name!r} failed: {first_line(exc, named=True)}") from exc
        step = {"pass": self.name, "options": self.options(), "report": result.report}
        provenance = replace(model.provenance, steps=(*model.provenance.steps, step))
        try:
            new = from_proto(result.proto, provenance)
        except InferoptError as exc:
            raise PassError(f"pass {self.name!r} produced an invalid model: {exc}") from exc
        new = new.with_io(model.io)  # same signature: the pass must not change the interface
        verify(model, new, self.name, self.tolerance, context.verification)
        return new


def verify(
    before: Model,
    after: Model,
    name: str,
    tolerance: Tolerance,
    feeds: Sequence[dict[str, np.ndarray]],
) -> None:
    """Raise PassError if `after` drifts from `before` past `tolerance` on `feeds`."""
    for feed in feeds:
        expected, got = before.run(feed), after.run(feed)
        for output, ref in expected.items():
            if output not in got:
                raise PassError(f"pass {name!r} removed output {output!r}")
            _check_output(name, output, ref, got[output], tolerance)


def _check_output(name: str, output: str, ref: np.ndarray, got: np.ndarray, tol: Tolerance) -> None:
    if ref.shape != got.shape:
        raise PassError(
            f"pass {name!r} changed the shape of output {output!r}: "
            f"{list(got.shape)} instead of {list(ref.shape)}"
        )
    if not np.issubdtype(ref.dtype, np.floating):
        if not np.array_equal(ref, got):
            raise PassError(f"pass {name!r} changed the values of output {output!r}")
        return
    ref64, got64 = ref.astype(np.float64), got.astype(np.float64)
    exact = tol.atol is not None and tol.rtol is not None
    if exact and not np.allclose(got64, ref64, atol=tol.atol or 0.0, rtol=tol.rtol or 0.0):
        worst = float(np.max(np.abs(got64 - ref64)))
        raise PassError(
            f"pass {name!r} changed output {output!r} by up to {worst:.3g} "
            f"(tolerance atol={tol.atol:g}, rtol={tol.rtol:g})"
        )
    if tol.min_cosine is not None and ref.size and np.any(ref64) and np.any(got64):
        # One cosine over the whole tensor: per-row cosines are undefined for all-zero rows.
        cosine = mean_cosine(ref64.reshape(1, -1), got64.reshape(1, -1))
        if cosine < tol.min_cosine:
            raise PassError(
                f"pass {name!r} changed output {output!r}: mean cosine {cosine:.4f} to its input "
                f"model, below the pass's tolerance {tol.min_cosine}"
            )


def copy_proto(proto: onnx.ModelProto) -> onnx.ModelProto:
    new = onnx.ModelProto()
    new.CopyFrom(proto)
    return new


def toposort(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Nodes in dependency order (some converters append the nodes they insert)."""
    import onnx_ir as ir
    from onnx_ir.passes.common import TopologicalSortPass

    model = ir.serde.deserialize_model(proto)
    return ir.serde.serialize_model(TopologicalSortPass()(model).model)
