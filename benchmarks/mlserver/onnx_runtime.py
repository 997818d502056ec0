"""A minimal MLServer runtime that runs an ONNX model with ONNX Runtime, for the serving
benchmark (MLServer ships no ONNX runtime of its own). It runs inside MLServer's own virtual
environment (build/mlserver-venv), so it imports only what that environment has.

The model file and thread count come from model-settings.json:
    "parameters": {"uri": "/path/model.onnx", "extra": {"intra_op_threads": 1}}
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse


class OnnxModel(MLModel):
    async def load(self) -> bool:
        parameters = self.settings.parameters
        extra = (parameters.extra if parameters else None) or {}
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(extra.get("intra_op_threads", 1))
        options.inter_op_num_threads = 1
        # Same session settings as inferopt's server: no spinning between runs.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        uri = parameters.uri if parameters else None
        self._session = ort.InferenceSession(uri, options, providers=["CPUExecutionProvider"])
        self._outputs = [o.name for o in self._session.get_outputs()]
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        feeds = {i.name: NumpyCodec.decode_input(i) for i in payload.inputs}
        feeds = {name: np.ascontiguousarray(array) for name, array in feeds.items()}
        values = self._session.run(self._outputs, feeds)
        return InferenceResponse(
            model_name=self.name,
            model_version=self.version,
            outputs=[
                NumpyCodec.encode_output(name, value)
                for name, value in zip(self._outputs, values, strict=True)
            ],
        )
