"""Deployment targets: what each one runs best, shared by `tqdit calibrate`, `tqdit export` and `tqdit build`.

A target fixes the choices a user should not have to make one by one:
- which MRQ form each skewed operand gets (`calibration.forms`; chosen at calibration, so
  `tqdit calibrate --target` picks them and `tqdit export --target` warns when a record has others);
- whether the activation x activation GEMMs (Q·Kᵀ, A·V) are quantized;
- the graph layout, and for ONNX Runtime's CPU kernel whether 8-bit weights need 7-bit codes
  (no VNNI: its u8 x s8 kernel adds pairs of products in saturating int16);
- for TensorRT: network typing, the optimisation profile's largest batch, FP8 support, and the
  type of the non-quantized ops: a strongly typed network runs every op in the type the graph
  gives it, so those targets export them (and the Q/DQ scales) in float16; a weakly typed one
  (TensorRT 10.3 on Jetson) picks FP16 itself under its FP16 builder flag and keeps the float32 graph;
  ONNX Runtime's CPU FP16 kernels are slower than its FP32 ones, so `cpu` stays float32.
Explicit flags (`--layout`, `--attention`, `--softmax-mrq`, ...) override a target.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Target:
    """What a deployment target runs best. `reduce_range=None`: detect (VNNI) on this CPU."""

    description: str
    layout: str
    engine: str  # "ort" (ONNX Runtime, no engine step) | "tensorrt"
    max_batch: int
    strongly_typed: bool = True  # False: TensorRT 10.3 (JetPack 6) weakly typed network + INT8/FP16 flags
    fp8: bool = False  # FP8 tensor cores: Ada (sm_89) and Hopper (sm_90) and newer
    attention: bool = True  # quantize Q·Kᵀ and A·V
    softmax_mrq: str = "saturate"  # MRQ form of the post-softmax A (calibration.forms)
    gelu_mrq: str = "shift"  # MRQ form of the post-GELU fc2 input
    reduce_range: bool | None = False
    float_precision: str = "fp16"  # type of the non-quantized ops and Q/DQ scales (onnx.qdq.FLOAT_PRECISIONS)
    # TensorRT's fused INT8 attention placement (onnx.export.qdq_model) where the head size and
    # token count allow it, in the per-group layout; ONNX Runtime gains nothing from it and keeps MRQ on A.
    fused_attention: bool = True

    def float_precision_for(self, trt_major: int | None = None) -> str:
        """The float type to export for a build with TensorRT `trt_major` (None: not known here).
        TensorRT 11 has only strongly typed networks, so every TensorRT target gets float16 there."""
        if self.engine == "tensorrt" and trt_major is not None and trt_major >= 11:
            return "fp16"
        return self.float_precision

    def as_json(self) -> dict:
        return asdict(self)


# The cheap MRQ forms (no compare/Where on A; one fc2 GEMM) are every target's default: they
# save GEMMs and elementwise work on every backend, and their quality was measured against
# the paper's forms (benchmarks/results/quality.md).
TARGETS: dict[str, Target] = {
    # ONNX Runtime runs Q·Kᵀ and A·V as integer kernels (MatMulIntegerToFloat, QLinearMatMul).
    "cpu": Target("CPU with ONNX Runtime (7-bit weight codes unless the CPU has AVX-512 VNNI)", "per-group", "ort",
                  max_batch=0, reduce_range=None, float_precision="fp32",
                  fused_attention=False),
    "h100": Target("NVIDIA H100 / H200 (Hopper), TensorRT >= 10", "per-group", "tensorrt", 64, fp8=True),
    "a100": Target("NVIDIA A100 (Ampere), TensorRT >= 10", "per-group", "tensorrt", 64),
    "l40s": Target("NVIDIA L40S / RTX 4090 (Ada), TensorRT >= 10", "per-group", "tensorrt", 32, fp8=True),
    # Jetson: memory is shared with the CPU, so the weights are stored once (single layout);
    # JetPack 6 ships TensorRT 10.3, whose INT8 path is the weakly typed one.
    "orin": Target("Jetson AGX Orin / Orin NX (JetPack 6, TensorRT 10.3)", "single", "tensorrt", 8,
                   strongly_typed=False, float_precision="fp32"),
    "orin-nano": Target("Jetson Orin Nano (JetPack 6, TensorRT 10.3)", "single", "tensorrt", 4,
                        strongly_typed=False, float_precision="fp32"),
}
ENGINE_TARGETS = tuple(k for k, t in TARGETS.items() if t.engine == "tensorrt")


def target(name: str) -> Target:
    """The Target called `name`, or a ValueError listing them."""
    if name not in TARGETS:
        raise ValueError(f"--target {name!r} is unknown; choose one of {', '.join(TARGETS)}")
    return TARGETS[name]


def record_forms_note(record, spec: Target, name: str) -> str | None:
    """A note when `record`'s MRQ forms are not the ones `spec` runs best (None when they are)."""
    from calibration.forms import form_name

    wanted = {form_name("softmax", spec.softmax_mrq), form_name("gelu", spec.gelu_mrq)}
    used = {r for s in record.sites for r in s.regions.values() if r != "uniform"}
    other = sorted(r for r in used if r not in wanted)
    if not other:
        return None
    return (f"the record's MRQ forms {', '.join(other)} are not the ones target {name} runs best "
            f"({', '.join(sorted(wanted))}); the export keeps the record's forms. Calibrate with "
            f"`tqdit calibrate --target {name}` for the target's forms")
