"""W8A8 on a decoder artifact: the encoder path's smoothing + dynamic INT8, tried on generators.

Weights int8 per output channel, activations quantized to int8 at run time per tensor (ORT's
`quantize_dynamic`, MatMul → DynamicQuantizeMatMul / MatMulInteger). Decoder activations have
outlier channels that per-tensor activation scales lose; SmoothQuant (Xiao et al. 2022)
moves part of each input channel's range into the weights first (passes/smooth.py: an
explicit Mul by 1/s before the MatMul, the weight's rows scaled by s), calibrated on
training-split text windows.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import onnx

from inferopt.data import Dataset
from inferopt.errors import InputError
from inferopt.generative.calibration import CalibrationText
from inferopt.generative.weightonly import (
    DATA_FILE,
    MODEL_FILE,
    load_decoder,
    save_files,
    weight_matmuls,
)
from inferopt.passes import smooth
from inferopt.passes.quantize import Signedness, weight_type


@contextlib.contextmanager
def _quiet_root_logger() -> Iterator[None]:
    """ORT's quantize_dynamic logs INFO per tensor and a pre-processing advice on the root
    logger; keep them out of the user's output while it runs."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


@dataclass(frozen=True)
class W8A8:
    """smooth_alpha: SmoothQuant's migration strength in [0, 1], None for no smoothing.
    calibration_windows: 128-token training-text windows the smoothing calibrates on.
    weights: int8, uint8, or auto (int8 with VNNI, else uint8; see passes/quantize.py).

    Raises:
        ValueError: smooth_alpha outside [0, 1], calibration_windows < 1, unknown weights.
    """

    smooth_alpha: float | None = 0.5
    calibration_windows: int = 8
    weights: Signedness = "auto"

    def __post_init__(self) -> None:
        if self.smooth_alpha is not None and not 0.0 <= self.smooth_alpha <= 1.0:
            raise ValueError(f"smooth_alpha must be in [0, 1] or None, got {self.smooth_alpha}")
        if self.calibration_windows < 1:
            raise ValueError(f"calibration_windows must be >= 1, got {self.calibration_windows}")
        if self.weights not in ("auto", "int8", "uint8"):
            raise ValueError(f"weights must be auto, int8 or uint8, got {self.weights!r}")

    name = "w8a8"

    def describe(self) -> str:
        smooth_text = "no smoothing" if self.smooth_alpha is None else f"α={self.smooth_alpha}"
        return f"w8a8 dynamic int8, {smooth_text}"

    def apply(self, source: str | Path, out: str | Path) -> Path:
        """Quantize the artifact folder `source` into the artifact folder `out`.

        Raises:
            InputError: not a decoder artifact, no MatMul with a constant weight, or `out`
                is `source`.
        """
        from onnxruntime.quantization import quantize_dynamic

        source, out = Path(source), Path(out)
        if out.resolve() == source.resolve():
            raise InputError(f"{out}: the quantized artifact must go to another folder")
        model = load_decoder(source)
        targets = weight_matmuls(model)
        if not targets:
            raise InputError(f"{source}: no MatMul with a constant weight to quantize")
        if self.smooth_alpha is not None:
            feeds = tuple(CalibrationText(source, self.calibration_windows))
            absmax = smooth.channel_absmax(
                model, Dataset(feeds), sorted({n.input[0] for n in targets}), len(feeds)
            )
            smooth._rewrite(model, absmax, self.smooth_alpha)
        with tempfile.TemporaryDirectory(prefix="inferopt-w8a8-") as tmp, _quiet_root_logger():
            staged = Path(tmp) / MODEL_FILE
            onnx.save_model(model, str(staged), save_as_external_data=True,
                            all_tensors_to_one_file=True, location=DATA_FILE)  # fmt: skip
            del model
            out.mkdir(parents=True, exist_ok=True)
            (out / DATA_FILE).unlink(missing_ok=True)
            quantize_dynamic(
                staged,
                out / MODEL_FILE,
                op_types_to_quantize=["MatMul"],
                per_channel=True,
                weight_type=weight_type(self.weights),
                use_external_data_format=True,
                extra_options={"MatMulConstBOnly": True},
            )
        save_files(source, out, {"pass": self.name, "smooth_alpha": self.smooth_alpha,
                                  "weights": self.weights})  # fmt: skip
        return out
