"""Which kernels ONNX Runtime runs for each quantized GEMM of our graphs (after its QDQ fusions).

    python benchmarks/ort_kernels.py

Exports the bundled model (a quick min-max record, and TQ-DiT records with the paper's and
the cheap MRQ forms: 8 samples per group, one round; kernels do not depend on the scales),
lets ONNX Runtime optimise each graph as a session does, and counts the node that computes
each GEMM site (qkv, proj, fc1, fc2, Q·Kᵀ, A·V, final): an integer kernel
(MatMulIntegerToFloat, QLinearMatMul, MatMulInteger) or a float MatMul / Gemm. Writes
benchmarks/results/ort_kernels_<cpu kind>.{json,md}.
"""
from __future__ import annotations

import collections
import re
import sys
import tempfile
from pathlib import Path

import onnx
import onnxruntime as ort

from calibration.calibrate import CalibrationConfig
from tqdit_export.edge.ort_runtime import make_session
from tqdit_export.hardware import cpu_description
from tqdit_export.io import atomic_output, write_json
from tqdit_export.models import resolve_model
from tqdit_export.onnx import export_dit
from tqdit_export.quant import calibrate_dit

RESULTS = Path(__file__).resolve().parent / "results"
SITE = re.compile(r"/(?:blocks\.\d+/)?(attn/qkv|attn/proj|attn/matmul_qk|attn/matmul_av|mlp/fc1|mlp/fc2|"
                  r"final_layer/linear)/")
GEMM_OPS = {"MatMul", "Gemm", "MatMulIntegerToFloat", "QLinearMatMul", "MatMulInteger", "FusedMatMul"}


def kernels(graph_path: Path, workdir: Path) -> dict[str, dict[str, int]]:
    """site kind -> {op type: count} in ONNX Runtime's optimised graph."""
    optimized = workdir / "optimized.onnx"
    make_session(graph_path, None, ["CPUExecutionProvider"], optimized_path=optimized)  # the project's options
    table: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for node in onnx.load(str(optimized)).graph.node:
        m = SITE.search(node.name + "/")
        if m and node.op_type in GEMM_OPS:
            table[m.group(1)][node.op_type] += 1
    return {k: dict(v) for k, v in sorted(table.items())}


def main(argv: list[str] | None = None) -> None:
    model = resolve_model("dit-digits").model
    common = dict(samples_per_group=8, trajectory_steps=20, clip_denoised=True, progress=False)
    records = {
        "int8 plain (min-max)": (calibrate_dit(model, CalibrationConfig(num_groups=1, method="minmax", tgq=False),
                                               **common), True),
        "paper MRQ": (calibrate_dit(model, CalibrationConfig(num_groups=1, tgq=False, rounds=1), **common), True),
        "cheap MRQ": (calibrate_dit(model, CalibrationConfig(num_groups=1, tgq=False, rounds=1,
                                                             softmax_mrq="saturate", gelu_mrq="shift"), **common), True),
    }
    records["cheap MRQ, attention float"] = (records["cheap MRQ"][0], False)
    cpu = cpu_description()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, (record, attention) in records.items():
            out = Path(tmp) / re.sub(r"\W+", "_", name)
            export_dit(model, record, out, attention=attention)
            for site, ops in kernels(out / "group_00.onnx", Path(tmp)).items():
                rows.append({"graph": name, "site": site, "kernels": ops})
                print(rows[-1], flush=True)
    command = ("python benchmarks/ort_kernels.py " + " ".join(argv if argv is not None else sys.argv[1:])).strip()
    stem = RESULTS / f"ort_kernels_{cpu['kind']}"
    write_json(stem.with_suffix(".json"), {"command": command, "cpu": cpu, "onnxruntime": ort.__version__,
                                           "rows": rows})
    lines = ["# ONNX Runtime kernels per GEMM site (bundled model, optimised session)", "",
             f"Command: `{command}`  ", f"Machine: {cpu['name']} ({cpu['kind']}), onnxruntime {ort.__version__}  ",
             "Counts over the model's blocks; integer kernels: MatMulIntegerToFloat, QLinearMatMul, MatMulInteger.", "",
             "| graph | site | kernels |", "|---|---|---|"]
    lines += [f"| {r['graph']} | {r['site']} | {', '.join(f'{k} x{v}' for k, v in r['kernels'].items())} |"
              for r in rows]
    with atomic_output(stem.with_suffix(".md")) as md:
        md.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
