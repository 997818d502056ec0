"""The digits zoo entries: the split, the accuracy of both models, deterministic training and
the weight cache. Each model is trained once per module, into a temporary cache."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from inferopt.zoo import digits
from inferopt.zoo.registry import TorchSource


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    path = tmp_path_factory.mktemp("inferopt-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("INFEROPT_CACHE", str(path))
        yield path


@pytest.fixture(scope="module")
def cnn(cache: Path) -> TorchSource:
    return digits.build_cnn()


@pytest.fixture(scope="module")
def mlp(cache: Path) -> TorchSource:
    return digits.build_mlp()


def _held_out_accuracy(source: TorchSource) -> float:
    evaluation = digits.digits_data().evaluation
    feed = evaluation.batch(range(len(evaluation)))
    with torch.no_grad():
        logits = source.module(torch.from_numpy(feed["image"])).numpy()
    assert evaluation.labels is not None
    return float((logits.argmax(axis=1) == evaluation.labels).mean())


def _assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for name in sa:
        assert torch.equal(sa[name], sb[name]), f"{name} differs"


def _assert_same_multiset(a: np.ndarray, b: np.ndarray) -> None:
    rows_a, counts_a = np.unique(a, axis=0, return_counts=True)
    rows_b, counts_b = np.unique(b, axis=0, return_counts=True)
    np.testing.assert_array_equal(rows_a, rows_b)
    np.testing.assert_array_equal(counts_a, counts_b)


def test_split_partitions_the_dataset_stratified() -> None:
    split = digits.digits_split()
    assert split.x_train.shape == (1347, 1, 8, 8) and split.x_eval.shape == (450, 1, 8, 8)
    assert split.x_train.dtype == np.float32 and split.y_train.dtype == np.int64
    assert split.x_train.min() == 0.0 and split.x_train.max() == 1.0  # scaled by 16, not 255
    # Train and eval together are exactly the dataset, so no example is in both.
    full = load_digits()
    rows = np.vstack([split.x_train, split.x_eval]).reshape(-1, 64) * 16
    labels = np.concatenate([split.y_train, split.y_eval])
    _assert_same_multiset(
        np.hstack([rows, labels[:, None]]), np.hstack([full.data, full.target[:, None]])
    )
    per_class = np.bincount(full.target, minlength=10)
    assert np.all(np.abs(np.bincount(split.y_eval, minlength=10) - per_class / 4) <= 1)


def test_split_is_the_same_every_time() -> None:
    a, b = digits.digits_split(), digits.digits_split()
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)


def test_zoo_data_is_train_for_calibration_and_eval_held_out() -> None:
    data, split = digits.digits_data(), digits.digits_split()
    assert data.metric == "top1"
    assert len(data.calibration) == len(split.y_train) and len(data.evaluation) == len(split.y_eval)
    assert data.calibration.input_names == ["image"]
    assert data.calibration.samples[0]["image"].shape == (1, 1, 8, 8)
    np.testing.assert_array_equal(data.evaluation.labels, split.y_eval)
    np.testing.assert_array_equal(data.evaluation.batch(range(3))["image"], split.x_eval[:3])


@pytest.mark.slow
def test_cnn_reaches_97_percent_held_out(cnn: TorchSource) -> None:
    assert _held_out_accuracy(cnn) >= 0.97


@pytest.mark.slow
def test_mlp_reaches_95_percent_held_out(mlp: TorchSource) -> None:
    assert _held_out_accuracy(mlp) >= 0.95


@pytest.mark.slow
@pytest.mark.parametrize("which", ["cnn", "mlp"])
def test_source_has_the_declared_interface(which: str, request: pytest.FixtureRequest) -> None:
    source: TorchSource = request.getfixturevalue(which)
    image = source.example_inputs["image"]
    assert list(source.example_inputs) == ["image"]
    assert image.shape == (2, 1, 8, 8) and image.dtype == torch.float32
    np.testing.assert_array_equal(image.numpy(), digits.digits_split().x_train[:2])
    assert source.output_names == ("logits",) and source.seq_axis is None
    assert not source.module.training
    with torch.no_grad():
        assert source.module(image).shape == (2, 10)


@pytest.mark.slow
@pytest.mark.parametrize(("which", "build"), [("cnn", "build_cnn"), ("mlp", "build_mlp")])
def test_second_build_loads_the_cache_without_training(
    which: str,
    build: str,
    cache: Path,
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    first: TorchSource = request.getfixturevalue(which)

    def no_training(*args: object) -> None:
        raise AssertionError("trained again instead of loading the cache")

    monkeypatch.setattr(digits, "_train", no_training)
    _assert_same_weights(getattr(digits, build)().module, first.module)
    names = sorted(p.name for p in (cache / "zoo").iterdir())
    assert f"digits-{which}-" in " ".join(names)
    assert all(torch.__version__ in n and n.endswith(".pt") for n in names), names


@pytest.mark.slow
def test_training_again_gives_identical_weights_and_leaves_torch_as_it_was(
    mlp: TorchSource, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("INFEROPT_CACHE", str(tmp_path))
    torch.rand(7)  # move the global RNG: training must not depend on where it stands
    rng, threads = torch.get_rng_state(), torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    # Settings training would not pick, to see them put back.
    torch.set_num_threads(3)
    torch.use_deterministic_algorithms(False)
    try:
        again = digits.build_mlp()
        assert torch.get_num_threads() == 3
        assert not torch.are_deterministic_algorithms_enabled()
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)
    assert torch.equal(torch.get_rng_state(), rng)
    assert [p.name for p in (tmp_path / "zoo").iterdir()] == [
        digits.cache_path("digits-mlp-h256x128").name
    ]
    _assert_same_weights(again.module, mlp.module)


def test_widths_are_parameters_for_narrower_students() -> None:
    image = torch.zeros(3, 1, 8, 8)
    student = digits.DigitsCNN(width=8).eval()
    assert student(image).shape == (3, 10)
    assert sum(p.numel() for p in student.parameters()) < sum(
        p.numel() for p in digits.DigitsCNN().parameters()
    )
    assert digits.DigitsMLP(hidden=(32,))(image).shape == (3, 10)


@pytest.mark.parametrize(
    "make",
    [
        lambda: digits.DigitsCNN(width=0),
        lambda: digits.DigitsMLP(hidden=()),
        lambda: digits.DigitsMLP(hidden=(64, 0)),
        lambda: digits.TrainConfig(epochs=0),
        lambda: digits.TrainConfig(epochs=1, lr=0.0),
        lambda: digits.TrainConfig(epochs=1, batch_size=0),
    ],
)
def test_bad_configs_are_refused(make: Callable[[], object]) -> None:
    with pytest.raises(ValueError):
        make()


def test_entries_point_at_their_builders() -> None:
    assert digits.DIGITS_CNN.name == "digits-cnn" and digits.DIGITS_CNN.build is digits.build_cnn
    assert digits.DIGITS_MLP.name == "digits-mlp" and digits.DIGITS_MLP.build is digits.build_mlp
    for entry in (digits.DIGITS_CNN, digits.DIGITS_MLP):
        assert entry.data is digits.digits_data and entry.requires == ("torch", "sklearn")
        assert entry.version == digits.VERSION
