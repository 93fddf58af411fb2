"""A denoiser model on ONNX Runtime (Triton Python backend): one export graph, the session options
that keep Q/DQ MatMuls on integer kernels (`edge.ort_runtime.make_session`).

Batched models (per-group layout): the requests of a dynamic batch are concatenated into one
session call and split again, so concurrent samplers at the same time group share one GEMM.
Unbatched models (single / plugin layout) run each request with its `time_group`.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

try:  # present only inside Triton's Python backend stub
    import triton_python_backend_utils as pb_utils
except ImportError:  # pragma: no cover
    pb_utils = None


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        from ..edge.ort_runtime import make_session

        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        path = Path(args["model_repository"]) / args["model_version"] / params.get("graph", "model.onnx")
        threads = int(params.get("threads", "0")) or None
        self.session = make_session(path, threads, expand_plugin_nodes=params.get("expand_plugin_nodes") == "1")
        self.batched = int(config.get("max_batch_size", 0)) > 0
        self.name = config["name"]

    def _inputs(self, request) -> dict[str, np.ndarray]:
        feeds = {}
        for name in ("x", "t", "y", "time_group"):
            tensor = pb_utils.get_input_tensor_by_name(request, name)
            if tensor is not None:
                feeds[name] = tensor.as_numpy()
        feeds["t"] = feeds["t"].reshape(-1).astype(np.int64)
        feeds["y"] = feeds["y"].reshape(-1).astype(np.int64)
        if "time_group" in feeds:
            feeds["time_group"] = np.asarray(feeds["time_group"], dtype=np.int64).reshape(())
        return feeds

    def execute(self, requests: list) -> list:
        try:
            feeds = [self._inputs(r) for r in requests]
            if self.batched and len(feeds) > 1:
                merged = {k: np.concatenate([f[k] for f in feeds]) for k in ("x", "t", "y")}
                out = self.session.run(["out"], merged)[0]
                sizes = np.cumsum([len(f["x"]) for f in feeds])[:-1]
                outs = np.split(out, sizes)
            else:
                outs = [self.session.run(["out"], f)[0] for f in feeds]
        except Exception as err:  # noqa: BLE001 - answer every request of the batch with the reason
            error = pb_utils.TritonError(f"{self.name}: ONNX Runtime failed: {err}")
            return [pb_utils.InferenceResponse(output_tensors=[], error=error) for _ in requests]
        return [pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("out", np.ascontiguousarray(o))])
                for o in outs]

    def finalize(self) -> None:
        self.session = None  # frees the session's memory when Triton unloads the model, not at process exit
