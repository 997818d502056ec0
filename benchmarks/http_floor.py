"""The floor under any Python server on this stack: uvicorn (httptools, uvloop, the same
settings as inferopt's server) with an ASGI app that reads each inference request's body and
answers a fixed, valid response, running no model at all.

benchmarks/serving.py measures it like a server. Its throughput bounds what any server built
on uvicorn can do on one core, whatever its model: a request costs at least 1 / floor seconds
of the core before the model runs. So for a model that takes t seconds per item in process,
no such server exceeds 1 / (1 / floor + t) requests per second.

    python benchmarks/http_floor.py PORT METADATA_JSON   # the model's v2 metadata
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import orjson
import uvicorn

from inferopt.serve.eventloop import loop_factory


def app_for(metadata: dict[str, Any]) -> Any:
    described = orjson.dumps(metadata)
    output = {"name": "y", "datatype": "FP32", "shape": [1], "data": [0.0]}
    answer = orjson.dumps({"model_name": metadata["name"], "outputs": [output]})

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        more = True
        while more:  # read the whole body, as a real server must
            message = await receive()
            more = message.get("more_body", False)
        body = answer if scope["method"] == "POST" else described
        headers = [(b"content-type", b"application/json"),
                   (b"content-length", str(len(body)).encode())]  # fmt: skip
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return app


def main() -> None:
    port, metadata = int(sys.argv[1]), orjson.loads(sys.argv[2])
    config = uvicorn.Config(app_for(metadata), port=port, log_config=None,
                            log_level="warning", access_log=False, lifespan="off",
                            http="httptools", ws="none", proxy_headers=False)  # fmt: skip
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        runner.run(uvicorn.Server(config).serve())


if __name__ == "__main__":
    main()
