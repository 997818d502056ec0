"""The JSON record: the published schema matches the classes, real records validate, round
trips are exact, and readers refuse what they cannot read."""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

import jsonschema
import pytest

from inferopt.report.schema import (
    SCHEMA_FILE,
    Comparison,
    Measurement,
    dumps,
    from_json,
    json_schema,
    to_json,
)


def _validate(document: dict[str, Any]) -> None:
    schema = json.loads(SCHEMA_FILE.read_text())
    jsonschema.validate(document, schema, cls=jsonschema.Draft202012Validator)


def test_published_schema_file_is_current_and_valid() -> None:
    published = json.loads(SCHEMA_FILE.read_text())
    assert published == json_schema(), "regenerate: python -m inferopt.report.schema > ..."
    jsonschema.Draft202012Validator.check_schema(published)


def test_real_measurement_and_comparison_validate(
    measurement: Measurement, comparison: Comparison
) -> None:
    _validate(json.loads(dumps(measurement)))
    _validate(json.loads(dumps(comparison)))


@pytest.mark.parametrize("record", ["measurement", "comparison"])
def test_round_trip_is_exact(record: str, request: pytest.FixtureRequest) -> None:
    original = request.getfixturevalue(record)
    assert from_json(json.loads(dumps(original))) == original


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d["points"][0].update(batch="1"), "is not of type 'integer'"),
        (lambda d: d["size"].pop("parameters"), "'parameters' is a required property"),
        (lambda d: d["compute"].update(surprise=1), "Additional properties"),
        (lambda d: d.update(schema_version="2.0"), "does not match"),
        (lambda d: d["points"][0]["energy"].update(method="guess"), "is not one of"),
    ],
)
def test_schema_rejects_broken_documents(
    measurement: Measurement, change: Any, message: str
) -> None:
    document = to_json(measurement)
    change(document)
    with pytest.raises(jsonschema.ValidationError, match=message):
        _validate(json.loads(json.dumps(document)))


def test_reader_refuses_other_documents_and_majors(measurement: Measurement) -> None:
    with pytest.raises(ValueError, match="schema must be one of"):
        from_json({"schema": "something.else"})
    newer = {**to_json(measurement), "schema_version": "2.0"}
    with pytest.raises(ValueError, match=r"schema_version '2\.0'"):
        from_json(newer)
    minor = {**to_json(measurement), "schema_version": "1.7"}
    assert isinstance(from_json(minor), Measurement)  # a later minor only adds fields


def test_nan_is_refused_rather_than_written(measurement: Measurement) -> None:
    point = measurement.points[0]
    broken = dataclasses.replace(
        measurement,
        points=(dataclasses.replace(point, throughput_per_s=math.nan), *measurement.points[1:]),
    )
    with pytest.raises(ValueError, match="Out of range float"):
        dumps(broken)
