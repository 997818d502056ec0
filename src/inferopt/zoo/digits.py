"""The `digits-cnn` and `digits-mlp` zoo entries: small PyTorch classifiers for scikit-learn's
bundled 8x8 digits, trained here on first use (seconds on a CPU) and cached by torch version.

Both take `image` (float32 [batch, 1, 8, 8], pixels scaled to [0, 1]) and return `logits`
([batch, 10]). The split and the training are seeded and single-threaded, so training again
on the same machine and torch build gives bit-identical weights (another CPU family may pick
other kernels, so weights from another machine can differ in the last bits).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

from inferopt.cache import cache_dir
from inferopt.data import Dataset
from inferopt.zoo.registry import TorchSource, ZooData, ZooEntry

# Bump when the architectures, the split or the training change: it renames the cache files.
VERSION = "1"
INPUT_NAME = "image"
OUTPUT_NAME = "logits"
NUM_CLASSES = 10


class DigitsSplit(NamedTuple):
    x_train: np.ndarray  # float32 [n, 1, 8, 8] in [0, 1]
    x_eval: np.ndarray
    y_train: np.ndarray  # int64 [n] class ids
    y_eval: np.ndarray


@dataclass(frozen=True)
class TrainConfig:
    epochs: int
    lr: float = 1e-3
    batch_size: int = 32
    weight_decay: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"epochs must be at least 1, got {self.epochs}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must not be negative, got {self.weight_decay}")


CNN_TRAINING = TrainConfig(epochs=8)
MLP_TRAINING = TrainConfig(epochs=30)


class DigitsCNN(nn.Module):
    """Two conv stages (8x8, then 4x4 after pooling), global average pool, linear head.

    Sized at a few MFLOPs per image so that pruning its channels shows up in wall time.
    """

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        if width < 1:
            raise ValueError(f"DigitsCNN width must be at least 1, got {width}")
        self.width = width
        w = width
        self.features = nn.Sequential(
            *_conv_bn_relu(1, w),
            *_conv_bn_relu(w, 2 * w),
            *_conv_bn_relu(2 * w, 2 * w),
            nn.MaxPool2d(2),
            *_conv_bn_relu(2 * w, 4 * w),
            *_conv_bn_relu(4 * w, 4 * w),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.head = nn.Linear(4 * w, NUM_CLASSES)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.head(self.features(image))
        return out


class DigitsMLP(nn.Module):
    """Flatten the 64 pixels, then Linear+ReLU per hidden width, then a linear head."""

    def __init__(self, hidden: tuple[int, ...] = (256, 128)) -> None:
        super().__init__()
        if not hidden or min(hidden) < 1:
            raise ValueError(f"DigitsMLP needs one or more positive hidden widths, got {hidden}")
        self.hidden = tuple(hidden)
        layers: list[nn.Module] = [nn.Flatten()]
        for n_in, n_out in zip((64, *hidden[:-1]), hidden, strict=True):
            layers += [nn.Linear(n_in, n_out), nn.ReLU()]
        layers.append(nn.Linear(hidden[-1], NUM_CLASSES))
        self.layers = nn.Sequential(*layers)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.layers(image)
        return out


def _conv_bn_relu(n_in: int, n_out: int) -> list[nn.Module]:
    # No conv bias: BatchNorm's shift makes it redundant, and pruning has one less tensor to cut.
    return [nn.Conv2d(n_in, n_out, 3, padding=1, bias=False), nn.BatchNorm2d(n_out), nn.ReLU()]


def digits_split() -> DigitsSplit:
    """The fixed stratified 75/25 train/eval split of the 1797 bundled digits."""
    bunch = load_digits()
    images = (bunch.images / 16.0).astype(np.float32)[:, None, :, :]
    labels = bunch.target.astype(np.int64)
    x_train, x_eval, y_train, y_eval = train_test_split(
        images, labels, test_size=0.25, stratify=labels, random_state=0
    )
    return DigitsSplit(x_train, x_eval, y_train, y_eval)


def digits_data() -> ZooData:
    split = digits_split()
    return ZooData(
        calibration=Dataset.from_arrays({INPUT_NAME: split.x_train}, split.y_train),
        evaluation=Dataset.from_arrays({INPUT_NAME: split.x_eval}, split.y_eval),
        metric="top1",
    )


def build_cnn(width: int = 32) -> TorchSource:
    return _source(_trained(f"digits-cnn-w{width}", lambda: DigitsCNN(width), CNN_TRAINING))


def build_mlp(hidden: tuple[int, ...] = (256, 128)) -> TorchSource:
    stem = "digits-mlp-h" + "x".join(map(str, hidden))
    return _source(_trained(stem, lambda: DigitsMLP(hidden), MLP_TRAINING))


def cache_path(stem: str) -> Path:
    """Where the weights of `stem` live; the torch version is in the name because another
    build may train (and even load) differently."""
    return cache_dir("zoo") / f"{stem}-v{VERSION}-torch{torch.__version__}.pt"


def _source(module: nn.Module) -> TorchSource:
    example = torch.from_numpy(digits_split().x_train[:2].copy())
    return TorchSource(
        module=module.eval(),
        example_inputs={INPUT_NAME: example},
        output_names=(OUTPUT_NAME,),
        seq_axis=None,
    )


def _trained(stem: str, make: Callable[[], nn.Module], config: TrainConfig) -> nn.Module:
    """The model from the cache, or trained now and cached."""
    path = cache_path(stem)
    with reproducible(config.seed):
        model = make()
        if path.is_file():
            model.load_state_dict(torch.load(path, weights_only=True))
            return model
        split = digits_split()
        _train(model, split.x_train, split.y_train, config)
    _save_atomically(model.state_dict(), path)
    return model


def _train(model: nn.Module, x: np.ndarray, y: np.ndarray, config: TrainConfig) -> None:
    """Adam on cross-entropy, mini-batches in a seeded shuffled order each epoch."""
    order_rng = np.random.default_rng(config.seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    inputs, targets = torch.from_numpy(x), torch.from_numpy(y)
    model.train()
    for _ in range(config.epochs):
        order = torch.from_numpy(order_rng.permutation(len(x)))
        for start in range(0, len(x), config.batch_size):
            batch = order[start : start + config.batch_size]
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(model(inputs[batch]), targets[batch])
            loss.backward()  # type: ignore[no-untyped-call]  # torch leaves it unannotated
            optimizer.step()
    model.eval()


@contextlib.contextmanager
def reproducible(seed: int) -> Iterator[None]:
    """Seed torch, demand deterministic kernels and one thread; restore the caller's state.

    One thread because CPU kernels split their sums by thread count, so the weights would
    otherwise depend on the core count; it also keeps training fast on a loaded machine,
    where idle-spinning OpenMP threads made two-thread training several times slower.
    """
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    threads = torch.get_num_threads()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        torch.use_deterministic_algorithms(True)
        torch.set_num_threads(1)
        try:
            yield
        finally:
            torch.set_num_threads(threads)
            torch.use_deterministic_algorithms(was_deterministic)


def _save_atomically(state: dict[str, torch.Tensor], path: Path) -> None:
    # A reader never sees a half-written file, even with two processes training at once.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    os.close(fd)
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


DIGITS_CNN = ZooEntry(
    name="digits-cnn",
    summary="conv net (BatchNorm, ReLU) for 8x8 scikit-learn digits, 10 classes; trained on use",
    requires=("torch", "sklearn"),
    build=build_cnn,
    data=digits_data,
    version=VERSION,
)
DIGITS_MLP = ZooEntry(
    name="digits-mlp",
    summary="two-hidden-layer MLP for 8x8 scikit-learn digits, 10 classes; trained on use",
    requires=("torch", "sklearn"),
    build=build_mlp,
    data=digits_data,
    version=VERSION,
)
