"""Request fields of the generation endpoints: parsed into a GenerationConfig, or refused with
the field named."""

from __future__ import annotations

import pytest

from inferopt.loadgen.streaming import StreamClient
from inferopt.serve.fields import InvalidField, sampling


def test_ignore_eos_is_read_and_checked() -> None:
    assert sampling({"ignore_eos": True}, 5).ignore_eos
    assert not sampling({}, 5).ignore_eos
    with pytest.raises(InvalidField) as bad:
        sampling({"ignore_eos": "yes"}, 5)
    assert bad.value.param == "ignore_eos"


@pytest.mark.parametrize("api", ["openai-completions", "openai-chat", "oip-generate"])
def test_the_stream_bench_asks_for_ignore_eos_when_told(api: str) -> None:
    client = StreamClient("127.0.0.1:9", "m", api, 8, 1.0, 1, ignore_eos=True)  # type: ignore[arg-type]
    _, body = client.request("hello")
    assert (body.get("parameters") or body)["ignore_eos"] is True
    plain = StreamClient("127.0.0.1:9", "m", api, 8, 1.0, 1)  # type: ignore[arg-type]
    assert "ignore_eos" not in (
        plain.request("hello")[1].get("parameters") or plain.request("hello")[1]
    )
