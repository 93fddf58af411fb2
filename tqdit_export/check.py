"""Parity of an export against the fake-quant reference, with Polygraphy's Comparator.

For every time group, real calibration inputs of that group (FP trajectory points, CFG
batch) go through the torch fake-quant model and the ONNX Runtime session of the export;
Polygraphy compares the outputs and this module adds the relative L2 error per group.
Exports with 7-bit weight codes (ONNX Runtime on CPUs without VNNI) are compared with the
fake-quant model at those widths, `FakeQuantBackend(..., reduce_range=True)`; the reference
sums its GEMMs in float64 (`exact_sums`), as the integer kernels sum exactly. FP8 exports
are compared with their own torch modules (float8e4m3fn Q/DQ), since the fake-quant model
simulates the integer grid.
"""
from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from calibration.record import CalibrationRecord

from .engines.ort_backend import OrtBackend
from .models.dit import DiT
from .onnx.export import fused_attention_operands
from .onnx.manifest import check_record, read_manifest
from .quant import FakeQuantBackend, collect_calibration_data


@dataclass
class GroupParity:
    """Error statistics of one time group; `rel_l2` = ||ort - ref|| / ||ref|| is the acceptance metric."""

    group: int
    rel_l2: float
    max_abs: float
    mean_abs: float
    polygraphy_pass: bool


class Fp8Reference:
    """What an FP8 export computes, in torch: the export modules of each time group."""

    def __init__(self, model: DiT, record: CalibrationRecord, attention: bool = True,
                 fused_attention: bool = False) -> None:
        from .onnx.export import qdq_model

        self.groups = record.time_groups
        self.models = [qdq_model(model, record, g, precision="fp8", attention=attention,
                                 fused_attention=fused_attention) for g in range(self.groups.num_groups)]

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.models[self.groups.group_of(t)](x, t, y)


def _torch_runner(backend, takes_time_group: bool):
    from polygraphy.backend.base import BaseRunner

    class FakeQuantRunner(BaseRunner):
        """Polygraphy runner over the torch fake-quant reference (CPU)."""

        def __init__(self) -> None:
            super().__init__(name="torch-fakequant", prefix="torch-fakequant")

        def activate_impl(self) -> None:
            pass

        def deactivate_impl(self) -> None:
            pass

        def get_input_metadata_impl(self):
            from polygraphy.common import TensorMetadata

            meta = TensorMetadata()
            meta.add("x", np.float32, (-1, -1, -1, -1))
            meta.add("t", np.int64, (-1,))
            meta.add("y", np.int64, (-1,))
            if takes_time_group:  # fed to both runners in the single layout; the reference picks it from t
                meta.add("time_group", np.int64, ())
            return meta

        def infer_impl(self, feed_dict):
            start = time.perf_counter()
            out = np.ascontiguousarray(backend(*(torch.from_numpy(feed_dict[k]) for k in ("x", "t", "y"))).numpy())
            self.inference_time = time.perf_counter() - start
            return OrderedDict(out=out)

    return FakeQuantRunner()


def check_export(model: DiT, record: CalibrationRecord, onnx_dir: str | Path, samples: int = 8, seed: int = 0,
                 tolerance: float = 1e-2, clip_denoised: bool = False, reduce_range: bool | None = None,
                 data: list | None = None, record_dir: str | Path | None = None) -> list[GroupParity]:
    """Compare ORT over `onnx_dir` with the fake-quant model, group by group, on calibration inputs.

    `reduce_range=None` gives the fake-quant model the export's weight widths (its manifest);
    False compares a 7-bit export with the 8-bit model as calibrated. `data`: the calibration
    inputs per group (`collect_calibration_data`), when several checks share them; by default
    `samples` points per group drawn from `seed`. An export of another record than `record`
    (read from `record_dir`, named in the message) is refused before anything runs: the errors
    would measure the difference between two records, not the export."""
    from polygraphy.backend.onnxrt import OnnxrtRunner
    from polygraphy.comparator import Comparator
    from polygraphy.comparator.compare import SimpleCompareFunc
    from polygraphy.logger import G_LOGGER

    G_LOGGER.module_severity = G_LOGGER.WARNING  # one summary line per group is printed by the caller

    check_record(read_manifest(onnx_dir), onnx_dir, record, record_dir)
    ort_backend = OrtBackend(onnx_dir)
    fp8 = ort_backend.manifest.raw.get("precision") == "fp8"
    # An export with 7-bit weight codes (CPUs without VNNI) is compared with the same widths.
    if reduce_range is None:
        reduce_range = bool(ort_backend.manifest.raw["bits"].get("reduce_range"))
    # An export that keeps attention in float (`--attention float`) is compared with the same model.
    attention = ort_backend.manifest.raw.get("attention", "int8") != "float"
    # The fused-attention placement reads A as one uniform part (its extra Q/DQ on A·V's output
    # re-quantizes what proj's input Q/DQ quantizes, so the reference needs nothing for it).
    fused = list(ort_backend.manifest.raw.get("fused_attention") or [])
    reference = (Fp8Reference(model, record, attention, bool(fused)) if fp8 else
                 FakeQuantBackend(model, record, reduce_range=reduce_range, exact_sums=True, attention=attention,
                                  uniform_operands=fused_attention_operands(fused)))
    if data is None:
        data = collect_calibration_data(model, record.time_groups, samples, seed=seed + 7,
                                        clip_denoised=clip_denoised, progress=False)
    results = []
    for g, batch in enumerate(data):
        x, t, y = batch.inputs
        feeds = {"x": x.numpy(), "t": t.numpy(), "y": y.numpy()}
        session = ort_backend.session_for(t)
        if ort_backend.feeds_group:
            feeds_ort = {**feeds, "time_group": np.array(g, dtype=np.int64)}
        else:
            feeds_ort = feeds
        runners = [_torch_runner(reference, ort_backend.feeds_group), OnnxrtRunner(session, name=f"onnxrt-group{g}")]
        run = Comparator.run(runners, data_loader=[feeds_ort])
        # Polygraphy's own verdict: the median element within `tolerance`, absolute or relative.
        compare = SimpleCompareFunc(atol=tolerance, rtol=tolerance, check_error_stat="median")
        passed = bool(Comparator.compare_accuracy(run, compare_func=compare))
        ref, got = (run[i][1][0]["out"] for i in range(2))
        diff = np.abs(got - ref)
        ref_norm, err_norm = np.linalg.norm(ref), np.linalg.norm(got - ref)
        rel = float(err_norm / ref_norm) if ref_norm > 0 else (0.0 if err_norm == 0 else float("inf"))
        results.append(GroupParity(g, rel, float(diff.max()),
                                   float(diff.mean()), passed))
    return results
