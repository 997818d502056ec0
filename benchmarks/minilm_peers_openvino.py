"""The OpenVINO side of benchmarks/minilm_peers.py, run by it as a subprocess in its own venv
(build/openvino-venv: openvino, nncf, onnx, numpy) so that inferopt's venv never imports
OpenVINO. Not meant to be run by hand.

Protocol: one JSON object per line on stdin, one JSON reply per line on stdout (library
output is sent to stderr so it cannot corrupt the replies). Feed files are .npz with keys
`<feed index>/<input name>`; output files are .npz with keys `<feed index>` (the first output).

    {"op": "quantize", "onnx": PATH, "calibration": NPZ, "out": XML}  NNCF post-training INT8
    {"op": "load", "name": KEY, "model": ONNX_OR_XML, "threads": 2, "precision": "f32"}
        compile for CPU, latency hint; precision: INFERENCE_PRECISION_HINT (absent: the default)
    {"op": "feeds", "name": KEY, "npz": NPZ}                            keep a feed set in memory
    {"op": "embed", "model": KEY, "feeds": KEY, "out": NPZ}             run each feed, save outputs
    {"op": "time", "model": KEY, "feeds": KEY}                          one pass: {"seconds": s}
    {"op": "quit"}
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

import numpy as np

Feeds = list[dict[str, np.ndarray]]


def read_feeds(path: str) -> Feeds:
    """The feed list from an .npz keyed `<index>/<input name>`, in index order."""
    feeds: dict[int, dict[str, np.ndarray]] = {}
    with np.load(path, allow_pickle=False) as npz:
        for key in npz.files:
            index, name = key.split("/", 1)
            feeds.setdefault(int(index), {})[name] = npz[key]
    return [feeds[i] for i in sorted(feeds)]


def quantize(onnx_path: str, calibration: str, out: str) -> dict[str, Any]:
    """NNCF's post-training INT8 of the ONNX model (transformer preset), saved as OpenVINO IR."""
    import nncf  # type: ignore[import-not-found]  # only in build/openvino-venv
    import openvino as ov  # type: ignore[import-not-found]

    model = ov.convert_model(onnx_path)
    samples = read_feeds(calibration)
    quantized = nncf.quantize(
        model,
        nncf.Dataset(samples),
        model_type=nncf.ModelType.TRANSFORMER,
        subset_size=len(samples),
    )
    ov.save_model(quantized, out)
    return {"saved": out, "calibration_samples": len(samples)}


class Worker:
    def __init__(self) -> None:
        import openvino as ov  # type: ignore[import-not-found]

        self.core = ov.Core()
        self.models: dict[str, Any] = {}  # name -> infer request
        self.feeds: dict[str, Feeds] = {}

    def load(self, name: str, model: str, threads: int, precision: str | None) -> dict[str, Any]:
        config: dict[str, Any] = {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"}
        if precision:
            config["INFERENCE_PRECISION_HINT"] = precision
        compiled = self.core.compile_model(self.core.read_model(model), "CPU", config)
        self.models[name] = compiled.create_infer_request()
        props = ("INFERENCE_PRECISION_HINT", "INFERENCE_NUM_THREADS", "NUM_STREAMS")
        return {p: str(compiled.get_property(p)) for p in props}

    def run(self, model: str, feed: dict[str, np.ndarray]) -> np.ndarray:
        request = self.models[model]
        request.infer(feed)
        return np.array(request.get_output_tensor(0).data, copy=True)

    def embed(self, model: str, feeds: str, out: str) -> dict[str, Any]:
        outputs = {str(i): self.run(model, f) for i, f in enumerate(self.feeds[feeds])}
        np.savez(out, **outputs)  # type: ignore[arg-type]
        return {"saved": out, "rows": len(outputs)}

    def time(self, model: str, feeds: str) -> dict[str, Any]:
        request = self.models[model]
        start = time.perf_counter()
        for feed in self.feeds[feeds]:
            request.infer(feed)
        return {"seconds": time.perf_counter() - start}

    def handle(self, msg: dict[str, Any]) -> dict[str, Any]:
        op = msg["op"]
        if op == "quantize":
            return quantize(msg["onnx"], msg["calibration"], msg["out"])
        if op == "load":
            threads = int(msg.get("threads", 2))
            return self.load(msg["name"], msg["model"], threads, msg.get("precision"))
        if op == "feeds":
            self.feeds[msg["name"]] = read_feeds(msg["npz"])
            return {"feeds": len(self.feeds[msg["name"]])}
        if op == "embed":
            return self.embed(msg["model"], msg["feeds"], msg["out"])
        if op == "time":
            return self.time(msg["model"], msg["feeds"])
        raise ValueError(f"unknown op {op!r}")


def main() -> None:
    replies = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # anything a library prints goes to stderr, not into the replies
    import nncf  # type: ignore[import-not-found]  # only in build/openvino-venv
    import openvino as ov  # type: ignore[import-not-found]

    worker = Worker()
    versions = {"openvino": ov.__version__, "nncf": nncf.__version__}
    replies.write(json.dumps({"ready": versions, "python": sys.version.split()[0]}) + "\n")
    replies.flush()
    for line in sys.stdin:
        msg = json.loads(line)
        if msg["op"] == "quit":
            break
        try:
            reply = worker.handle(msg)
        except Exception as exc:  # the parent reports it and stops
            reply = {"error": f"{type(exc).__name__}: {exc}"}
        replies.write(json.dumps(reply) + "\n")
        replies.flush()


if __name__ == "__main__":
    main()
