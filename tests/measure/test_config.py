"""ProfileConfig validation and the points it plans for a model."""

from __future__ import annotations

import pytest

from inferopt.errors import InputError
from inferopt.measure.config import ProfileConfig, plan_points, reference_point
from inferopt.model import Model


def test_defaults_fit_the_model(mlp: Model, seq_model: Model) -> None:
    assert plan_points(mlp.io, ProfileConfig(), "mlp") == ((1, None), (8, None), (32, None))
    points = plan_points(seq_model.io, ProfileConfig(batch_sizes=(2,)), "seq")
    assert points == ((2, 16), (2, 128))
    assert reference_point(points) == (2, 128)


def test_lists_are_sorted_and_deduplicated() -> None:
    config = ProfileConfig(batch_sizes=[8, 1, 8], threads=(2, 1))  # type: ignore[arg-type]
    assert config.batch_sizes == (1, 8) and config.threads == (1, 2)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"batch_sizes": (0, 1)}, "batch_sizes must hold integers >= 1"),
        ({"seq_lens": ()}, "seq_lens must be a non-empty sequence"),
        ({"seq_lens": 16}, "seq_lens must be a non-empty sequence"),
        ({"threads": (1.5,)}, "threads must hold integers >= 1"),
        ({"target_ci_pct": 0}, "target_ci_pct must be > 0"),
        ({"min_time_per_point_s": 9, "max_time_per_point_s": 2}, "min_time_per_point_s"),
        ({"min_runs": 20, "max_runs": 10}, "max_runs must be >= min_runs"),
        ({"price_per_hour": -1}, "price_per_hour must be >= 0"),
        ({"concurrent_sessions": 0}, "concurrent_sessions must be >= 1"),
    ],
)
def test_bad_settings_raise_value_error_naming_the_field(
    kwargs: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        ProfileConfig(**kwargs)  # type: ignore[arg-type]


def test_sequence_lengths_for_a_model_without_a_sequence_axis_are_refused(mlp: Model) -> None:
    with pytest.raises(InputError, match=r"^--seq-lens: mlp has no sequence axis"):
        plan_points(mlp.io, ProfileConfig(seq_lens=(16,)), "mlp")


def test_batch_sizes_for_a_model_without_a_batch_axis_are_refused(mlp: Model) -> None:
    fixed = mlp.io.with_axes(None, None)
    assert plan_points(fixed, ProfileConfig(), "fixed") == ((1, None),)
    with pytest.raises(InputError, match=r"^--batch-sizes: fixed has no batch axis"):
        plan_points(fixed, ProfileConfig(batch_sizes=(1, 8)), "fixed")
