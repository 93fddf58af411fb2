"""FP16 exports vs the float32 ones on the bundled model, per denoiser call (issue 15's bound).

    python benchmarks/fp16_parity.py

The exports of `benchmarks/quality.py`'s rows mrq-cheap-ort (float32 float ops),
mrq-cheap-fp16-ort (float16 float ops and Q/DQ scales) and mrq-cheap-trt-ort (float16 + the
fused-attention placement), from its cache folder (run those rows first; exported here when
missing), with this CPU's weight codes. For every time group, `--samples` calibration points
(x2 with CFG) go through ONNX Runtime, and the relative L2 error ||fp16 - fp32|| / ||fp32|| is
taken per group; beside it, what rounding only the input x to float16 does to the float32 Q/DQ
graph (the size of a quantized graph's response to a float16-sized perturbation), and the float
graph alone in float16 vs `fp32.onnx`. Writes benchmarks/results/fp16_parity.{json,md}.
"""
from __future__ import annotations

import argparse
import copy
import platform
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from calibration.record import CalibrationRecord
from quality import DEPLOYED, calibrate, claim_workdir
from tqdit_export.engines.ort_backend import OrtBackend
from tqdit_export.hardware import cpu_has_vnni, cpu_name
from tqdit_export.io import atomic_output, write_json
from tqdit_export.models import resolve_model
from tqdit_export.onnx import export_dit
from tqdit_export.onnx.export import Float16Graph, _example_inputs, export_onnx, float32_to_float16
from tqdit_export.quant import collect_calibration_data

RESULTS = Path(__file__).resolve().parent / "results"
ROWS = ("mrq-cheap-ort", "mrq-cheap-fp16-ort", "mrq-cheap-trt-ort")


def _rel(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bits", default="W8A8")
    p.add_argument("--samples", type=int, default=8, help="trajectory points per group (default 8)")
    p.add_argument("--workdir", type=Path, default=Path("runs/quality"))
    p.add_argument("--out", type=Path, default=RESULTS / "fp16_parity")
    args = p.parse_args(argv)
    model = resolve_model("dit-digits").model
    claim_workdir(args.workdir, model, "dit-digits")
    threads = torch.get_num_threads()
    backends = {}
    for row in ROWS:
        record_row, options, suffix, _ = DEPLOYED[row]
        record_dir, _ = calibrate("dit-digits", record_row, args.bits, args.workdir)
        record = CalibrationRecord.load(record_dir, model)
        onnx_dir = args.workdir / f"onnx_{args.bits}{suffix}"
        if not (onnx_dir / "manifest.json").exists():
            export_dit(model, record, onnx_dir, **options)
        backends[row] = OrtBackend(onnx_dir, threads=threads)
    # the float graph alone, float32 (the model's own export) and float16
    float_dir = args.workdir / "float_graphs"
    float_dir.mkdir(exist_ok=True)
    example = _example_inputs(model)
    export_onnx(copy.deepcopy(model).eval(), example, float_dir / "fp32.onnx")
    export_onnx(Float16Graph(float32_to_float16(copy.deepcopy(model).eval())), example, float_dir / "fp16.onnx",
                opset=19, metadata={"float_precision": "fp16"})
    float_sessions = {k: ort.InferenceSession(str(float_dir / f"{k}.onnx"), providers=["CPUExecutionProvider"])
                      for k in ("fp32", "fp16")}
    data = collect_calibration_data(model, record.time_groups, args.samples, seed=7, clip_denoised=True,
                                    progress=False)
    rows = []
    for g, batch in enumerate(data):
        x, t, y = batch.inputs
        ref = backends["mrq-cheap-ort"](x, t, y)
        feeds = {"x": x.numpy(), "t": t.numpy(), "y": y.numpy()}
        f32, f16 = (float_sessions[k].run(None, feeds)[0] for k in ("fp32", "fp16"))
        rows.append({"group": g, "fp16_vs_fp32": _rel(backends["mrq-cheap-fp16-ort"](x, t, y), ref),
                     "fp16_fused_vs_fp32": _rel(backends["mrq-cheap-trt-ort"](x, t, y), ref),
                     "fp32_x_rounded_vs_fp32": _rel(backends["mrq-cheap-ort"](x.half().float(), t, y), ref),
                     "float_graph_fp16_vs_fp32": _rel(f16, f32)})
        print(rows[-1], flush=True)
    machine = f"{cpu_name()}, {platform.machine()}, {threads} threads, VNNI: {cpu_has_vnni()}, onnxruntime {ort.__version__}"
    command = "python benchmarks/fp16_parity.py" + (" " + " ".join(argv) if argv else "")
    write_json(args.out.with_suffix(".json"), {"command": command, "machine": machine, "bits": args.bits,
                                               "samples_per_group": args.samples, "groups": rows})
    keys = ("fp16_vs_fp32", "fp16_fused_vs_fp32", "fp32_x_rounded_vs_fp32", "float_graph_fp16_vs_fp32")
    lines = [f"Command: `{command}`  ", f"Machine: {machine}  ",
             f"{args.bits}, the mrq-cheap record, {args.samples} calibration points per group (x2 with CFG); "
             "relative L2 per call against the float32 graph of the same kind.", "",
             "| group | FP16 Q/DQ vs FP32 Q/DQ | FP16 + fused attention vs FP32 Q/DQ | FP32 Q/DQ, only x rounded to "
             "FP16 | float graph FP16 vs FP32 |", "|---|---|---|---|---|"]
    lines += [f"| {r['group']} | " + " | ".join(f"{r[k]:.2e}" for k in keys) + " |" for r in rows]
    lines.append("| max | " + " | ".join(f"{max(r[k] for r in rows):.2e}" for k in keys) + " |")
    with atomic_output(args.out.with_suffix(".md")) as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
