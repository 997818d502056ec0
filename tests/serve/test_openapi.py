"""Schemathesis against the OpenAPI description the server serves: generated requests to every
endpoint, conforming ones and schema-violating ones, never get a 5xx.

(Schemathesis' pytest plugin does not run under this pytest; its strategies are driven by
hypothesis directly instead.)
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import schemathesis
from schemathesis import GenerationMode

from inferopt.serve import BackgroundServer

MAX_EXAMPLES = 15  # generated requests per operation


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_no_generated_request_gets_a_server_error(
    zoo_server: BackgroundServer, mode: GenerationMode, fuzz: Callable[..., int]
) -> None:
    schema = schemathesis.openapi.from_url(f"http://{zoo_server.http_url}/v2/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    fuzzed = fuzz(operations, mode, MAX_EXAMPLES)
    assert fuzzed >= (len(operations) if mode == GenerationMode.POSITIVE else 10)
