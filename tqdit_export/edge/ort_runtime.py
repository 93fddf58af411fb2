"""ONNX Runtime over an export folder, numpy in and out: the CPU stand-in for TensorRT on the edge
and the core of the torch `ort` backend.

On the CPU, ORT turns DQ -> MatMul <- DQ into integer GEMMs only when the optimizer
`MatMulAddFusion` is off (it would first fold MatMul + bias into a float Gemm): measured
1.59x over FP32 on a DiT block with it off, 0.75x with default settings. Plugin-layout
graphs run through the reference expansion of their TimeGroupQuantize nodes.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..onnx.manifest import ExportManifest, Layout, graph_path

# ClipQuantRewrite (drops a Clip that a QuantizeLinear's range makes redundant; our Clips never
# are) fails on float8 zero points in ORT 1.32, so FP8 graphs would not load with it on.
DISABLED_OPTIMIZERS = ["MatMulAddFusion", "ClipQuantRewrite"]


def make_session(path: str | Path, threads: int | None = None, providers: list[str] | None = None,
                 expand_plugin_nodes: bool = False, profile_prefix: str | None = None,
                 optimized_path: str | Path | None = None):
    """An InferenceSession with the options that keep Q/DQ MatMuls on integer kernels.

    `expand_plugin_nodes` (plugin layout): run TimeGroupQuantize nodes as their reference subgraph.
    `profile_prefix`: record ONNX Runtime's per-node profile into a JSON file of that prefix
    (`session.end_profiling()` writes it and returns its path); default off.
    `optimized_path`: write the graph ONNX Runtime runs, after its fusions, to that file.
    """
    import onnx
    import onnxruntime as ort

    source: str | bytes = str(path)
    if expand_plugin_nodes:
        from ..onnx.plugin_ref import expand_plugins

        source = expand_plugins(onnx.load(str(path))).SerializeToString()
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        opts.intra_op_num_threads = threads
    if profile_prefix:
        opts.enable_profiling = True
        opts.profile_file_prefix = profile_prefix
    if optimized_path:
        opts.optimized_model_filepath = str(optimized_path)
    available = ort.get_available_providers()
    providers = providers or [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
    return ort.InferenceSession(source, sess_options=opts, providers=providers, disabled_optimizers=DISABLED_OPTIMIZERS)


class OrtDenoiser:
    """`denoiser(x, t, y) -> out` on numpy arrays: per-group layout = one session per time group,
    picked by timestep; single / plugin layout = one session fed `time_group`."""

    def __init__(self, export_dir: str | Path, threads: int | None = None, providers: list[str] | None = None,
                 fp32: bool = False) -> None:
        self.manifest = ExportManifest.read(export_dir)
        self.groups, layout = self.manifest.time_groups, self.manifest.layout
        if fp32:
            if self.manifest.fp32 is None:
                raise ValueError(f"{export_dir}: no FP32 graph; export with --fp32")
            entries = [self.manifest.fp32]
        else:
            entries = self.manifest.graphs
        expand = layout is Layout.PLUGIN and not fp32
        self.sessions = [make_session(graph_path(self.manifest.folder, e), threads, providers, expand) for e in entries]
        self.feeds_group = layout.feeds_time_group and not fp32

    def session_for(self, t: np.ndarray):
        """The session that serves timesteps `t` (per-group layout: the session of their group)."""
        return self.sessions[0] if len(self.sessions) == 1 else self.sessions[self.groups.group_of(t)]

    def __call__(self, x: np.ndarray, t: np.ndarray, y: np.ndarray) -> np.ndarray:
        feeds = {"x": np.ascontiguousarray(x, dtype=np.float32), "t": np.asarray(t, dtype=np.int64),
                 "y": np.asarray(y, dtype=np.int64)}
        if self.feeds_group:
            feeds["time_group"] = np.array(self.groups.group_of(t), dtype=np.int64)
        return self.session_for(feeds["t"]).run(["out"], feeds)[0]
