"""Compare a candidate model's outputs with a reference's, output by output.

Exporters can silently bake a shape in (a batch size, a sequence length), so parity is checked
on inputs whose batch and sequence length differ from the export example."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from inferopt.errors import ParityError


@dataclass(frozen=True)
class OutputParity:
    name: str
    reference_shape: tuple[int, ...]
    candidate_shape: tuple[int, ...]
    max_abs_error: float  # inf when the shapes differ
    max_rel_error: float  # max abs error over the reference's largest magnitude
    within_tolerance: bool
    # Shares of NaN/Inf values: a non-finite value never agrees, even with another NaN.
    reference_nonfinite: float = 0.0
    candidate_nonfinite: float = 0.0

    def describe(self) -> str:
        if self.reference_nonfinite or self.candidate_nonfinite:
            return f"output {self.name!r}: {nonfinite_text(self)}"
        if self.reference_shape != self.candidate_shape:
            return (
                f"output {self.name!r} has shape {list(self.candidate_shape)}, "
                f"expected {list(self.reference_shape)}"
            )
        return (
            f"output {self.name!r}: max abs error {self.max_abs_error:.3g}, "
            f"max rel error {self.max_rel_error:.3g}"
        )


@dataclass(frozen=True)
class ParityReport:
    batch: int
    seq: int | None
    atol: float
    rtol: float
    outputs: tuple[OutputParity, ...]

    @property
    def ok(self) -> bool:
        return all(o.within_tolerance for o in self.outputs)

    def describe(self) -> str:
        where = f"batch {self.batch}" + (f", sequence length {self.seq}" if self.seq else "")
        verdict = "agrees" if self.ok else "DISAGREES"
        details = "; ".join(o.describe() for o in self.outputs)
        return f"parity at {where}: {verdict} ({details}; atol={self.atol:g}, rtol={self.rtol:g})"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_json(data: dict[str, Any]) -> ParityReport:
        outputs = tuple(
            OutputParity(
                **{
                    **o,
                    "reference_shape": tuple(o["reference_shape"]),
                    "candidate_shape": tuple(o["candidate_shape"]),
                }
            )
            for o in data["outputs"]
        )
        return ParityReport(data["batch"], data["seq"], data["atol"], data["rtol"], outputs)


def compare_outputs(
    reference: dict[str, np.ndarray],
    candidate: dict[str, np.ndarray],
    *,
    atol: float,
    rtol: float,
    batch: int,
    seq: int | None,
) -> ParityReport:
    return ParityReport(
        batch,
        seq,
        atol,
        rtol,
        tuple(_compare(name, ref, candidate[name], atol, rtol) for name, ref in reference.items()),
    )


def nonfinite_share(values: np.ndarray) -> float:
    """The share of NaN and Inf among `values` (0 for non-float arrays)."""
    if values.dtype.kind not in "fc" or not values.size:
        return 0.0
    return float(np.count_nonzero(~np.isfinite(values)) / values.size)


def nonfinite_text(o: OutputParity) -> str:
    parts = []
    if o.reference_nonfinite:
        parts.append(f"{o.reference_nonfinite:.1%} of the reference's values are NaN/Inf")
    if o.candidate_nonfinite:
        parts.append(f"{o.candidate_nonfinite:.1%} of the candidate's values are NaN/Inf")
    return "; ".join(parts) + " (a non-finite value never counts as agreement)"


def _compare(name: str, ref: np.ndarray, got: np.ndarray, atol: float, rtol: float) -> OutputParity:
    ref_shape, got_shape = tuple(ref.shape), tuple(got.shape)
    if ref_shape != got_shape:
        return OutputParity(name, ref_shape, got_shape, float("inf"), float("inf"), False)
    bad_ref, bad_got = nonfinite_share(ref), nonfinite_share(got)
    if bad_ref or bad_got:
        inf = float("inf")
        return OutputParity(name, ref_shape, got_shape, inf, inf, False, bad_ref, bad_got)
    ref64, got64 = ref.astype(np.float64), got.astype(np.float64)
    diff = np.abs(ref64 - got64)
    max_abs = float(diff.max()) if diff.size else 0.0
    scale = float(np.abs(ref64).max()) if ref64.size else 0.0
    max_rel = max_abs / scale if scale > 0 else max_abs
    ok = bool(np.allclose(got64, ref64, atol=atol, rtol=rtol))
    return OutputParity(name, ref_shape, got_shape, max_abs, max_rel, ok)


def require(report: ParityReport, label: str, suspect: str | None = None) -> None:
    """Raise ParityError naming the first disagreeing output, its errors and the shapes used.
    `suspect`: the input most likely at fault when the source's own output is not finite."""
    if report.ok:
        return
    bad = next(o for o in report.outputs if not o.within_tolerance)
    where = f"batch {report.batch}" + (f", sequence length {report.seq}" if report.seq else "")
    if bad.reference_nonfinite:
        raise ParityError(
            f"{label}: output {bad.name!r} of the source model itself is not finite at {where} "
            f"on generated inputs ({bad.reference_nonfinite:.1%} NaN/Inf); the input most "
            f"likely at fault: {suspect or 'a mask, ids or a scalar'}; give real inputs "
            "(--data FILE.npz) or example inputs that are valid for it"
        )
    if bad.candidate_nonfinite:
        raise ParityError(
            f"{label}: the ONNX model disagrees with its source at {where}: {bad.describe()}"
        )
    raise ParityError(
        f"{label}: the ONNX model disagrees with its source at {where}: {bad.describe()} "
        f"(tolerance atol={report.atol:g}, rtol={report.rtol:g}); "
        "the exporter may have baked in a shape seen in the example inputs"
    )
