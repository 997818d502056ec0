"""Schemathesis against the OpenAPI description of a server with a generator: generated
requests to the generation endpoints (OpenAI's and OIP's generate), conforming ones and
schema-violating ones, never get a 5xx, and every refusal says why."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import schemathesis
from schemathesis import GenerationMode

sys.path.insert(0, str(Path(__file__).parent))
from generation_support import add_generator

from inferopt.serve import BackgroundServer, ServerConfig

GENERATION = ("/v1/", "/generate")
MAX_EXAMPLES = 12  # generated requests per operation


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    repo = tmp_path_factory.mktemp("generation-openapi")
    add_generator(repo, "tiny")
    config = ServerConfig(host="127.0.0.1", http_port=0, grpc_port=None)
    with BackgroundServer(repo, config) as background:
        background.wait_ready()
        yield background.http_url


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_no_generated_generation_request_gets_a_server_error(
    url: str, mode: GenerationMode, fuzz: Callable[..., int]
) -> None:
    schema = schemathesis.openapi.from_url(f"http://{url}/v2/openapi.json")
    operations = [
        op
        for op in (result.ok() for result in schema.get_all_operations())
        if any(part in op.path for part in GENERATION)
    ]
    assert len(operations) == 8  # 4 OpenAI, generate and generate_stream with and without version
    fuzzed = fuzz(operations, mode, MAX_EXAMPLES)
    assert fuzzed >= (len(operations) if mode == GenerationMode.POSITIVE else 4)
