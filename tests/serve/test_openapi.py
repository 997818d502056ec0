"""Schemathesis against the OpenAPI description the server serves: generated requests to every
endpoint, conforming ones and schema-violating ones, never get a 5xx.

(Schemathesis' pytest plugin does not run under this pytest; its strategies are driven by
hypothesis directly instead.)
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from inferopt.serve import BackgroundServer


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_no_generated_request_gets_a_server_error(
    zoo_server: BackgroundServer, mode: GenerationMode
) -> None:
    schema = schemathesis.openapi.from_url(f"http://{zoo_server.http_url}/v2/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    fuzzed = 0
    for operation in operations:

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(
            max_examples=15, deadline=None, database=None, suppress_health_check=list(HealthCheck)
        )
        def no_server_error(case: schemathesis.Case) -> None:
            response = case.call(timeout=60)
            where = f"{case.method} {case.formatted_path}"
            assert response.status_code < 500, f"{where}: {response.text}"
            if response.status_code >= 400:
                assert response.json()["error"], where  # every refusal says why

        try:
            no_server_error()
        except Unsatisfiable:
            # Nothing to violate (no parameters, or only a free-form string in the path).
            assert mode == GenerationMode.NEGATIVE, operation.label
            continue
        fuzzed += 1
    assert fuzzed >= (len(operations) if mode == GenerationMode.POSITIVE else 10)
