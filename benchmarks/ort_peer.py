"""Peer: ONNX Runtime's own `quantize_static` on the FP32 graph vs our TQ-DiT export, W8A8.

    python benchmarks/ort_peer.py [--num 500] [--steps 100]

The peer gets the same calibration trajectories as our calibration (FP sampling, cfg 1.5,
G = 10 groups x 32 samples, seed 0), fed through a CalibrationDataReader; it quantizes the
MatMul/Gemm inputs and weights (symmetric int8, per-channel weights, min-max; 7-bit codes
where the CPU lacks VNNI, as our export does) into one graph for all timesteps: ORT's
tooling has no notion of time groups or two-region quantizers. Quality: 500 digits, DDPM,
same noise as the FP and TQ-DiT rows of `quality.md`; speed: ms per denoiser call at batch
8, median of repeated calls, same session options for every graph. Writes
benchmarks/results/ort_peer.{json,md}.
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from calibration.record import CalibrationRecord
from calibration.time_groups import TimeGroups
from tqdit_export.api import ModelSpec, OrtSessionDenoiser, Pipeline, balanced_labels
from tqdit_export.edge.ort_runtime import OrtDenoiser
from tqdit_export.eval import evaluate_digits, paired_psnr
from tqdit_export.hardware import cpu_has_vnni, cpu_name
from tqdit_export.io import atomic_output, load_samples, write_json
from tqdit_export.models import resolve_model
from tqdit_export.onnx import export_dit
from tqdit_export.onnx.export import _example_inputs, export_onnx
from tqdit_export.quant.dit_calibration import collect_calibration_data

RESULTS = Path(__file__).resolve().parent / "results"


class _Reader:
    """onnxruntime.quantization.CalibrationDataReader over our per-group calibration batches."""

    def __init__(self, batches: list[dict[str, np.ndarray]]) -> None:
        self.batches = iter(batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self.batches, None)


def ms_per_call(run, feeds: dict, repeats: int) -> float:
    for _ in range(3):
        run(feeds)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run(feeds)
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--num", type=int, default=500)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--workdir", type=Path, default=Path("runs/ort_peer"))
    p.add_argument("--tqdit-record", type=Path, default=Path("runs/quality/tqdit_W8A8"),
                   help="our W8A8 record (benchmarks/quality.py writes it)")
    p.add_argument("--out", type=Path, default=RESULTS / "ort_peer")
    p.add_argument("--part", choices=("quality", "speed", "both"), default="both",
                   help="measure speed on an otherwise idle machine; parts merge into the same results")
    args = p.parse_args(argv)
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    args.workdir.mkdir(parents=True, exist_ok=True)
    model = resolve_model("dit-digits").model
    fp32 = args.workdir / "fp32.onnx"
    export_onnx(copy.deepcopy(model).eval(), _example_inputs(model), fp32)

    start = time.perf_counter()
    data = collect_calibration_data(model, TimeGroups.uniform(10), 32, seed=0, cfg_scale=1.5, steps=100,
                                    clip_denoised=True, progress=False)
    batches = [{"x": g.inputs[0].numpy(), "t": g.inputs[1].numpy(), "y": g.inputs[2].numpy()} for g in data]
    peer = args.workdir / "ort_quantize_static.onnx"
    quantize_static(str(fp32), str(peer), _Reader(batches), quant_format=QuantFormat.QDQ,
                    op_types_to_quantize=["MatMul", "Gemm"], per_channel=True, reduce_range=not cpu_has_vnni(),
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.MinMax,
                    extra_options={"ActivationSymmetric": True, "WeightSymmetric": True})
    peer_seconds = time.perf_counter() - start

    record = CalibrationRecord.load(args.tqdit_record, model)
    ours_dir = args.workdir / "tqdit_per_group"
    if not (ours_dir / "manifest.json").exists():
        export_dit(model, record, ours_dir)

    threads = torch.get_num_threads()
    backends = {"ORT FP32": OrtSessionDenoiser(fp32, threads), "ORT quantize_static W8A8": OrtSessionDenoiser(peer, threads),
                "TQ-DiT W8A8 (ours, per-group)": OrtDenoiser(ours_dir, threads=threads)}
    spec = ModelSpec(1, 8, 10, pixel_space=True)
    fp_path = Path("runs/quality") / f"fp_ddpm{args.steps}_seed{args.seed}_n{args.num}.npz"
    fp_images = load_samples(fp_path)[0] if fp_path.exists() else None
    labels = balanced_labels(args.num, 10)
    json_path = args.out.with_suffix(".json")
    previous = json.loads(json_path.read_text()) if json_path.exists() else {}
    rows_by_graph = {r["graph"]: r for r in previous.get("rows", [])}
    torch.manual_seed(1)
    feeds = {"x": torch.randn(8, 1, 8, 8).numpy(), "t": np.full((8,), 500), "y": np.array([0, 1, 2, 3, 10, 10, 10, 10])}
    for name, backend in backends.items():
        row = rows_by_graph.setdefault(name, {"graph": name})
        if args.part in ("speed", "both"):
            row["ms_per_call_batch8"] = round(ms_per_call(lambda f: backend(f["x"], f["t"], f["y"]), feeds,
                                                          args.repeats), 2)
        if args.part in ("quality", "both"):
            start = time.perf_counter()
            x = Pipeline(backend, spec).sample(labels, seed=args.seed, steps=args.steps, guidance=1.5)
            metrics = evaluate_digits(x, labels, seed=args.seed)
            row.update(fd=metrics["fd"], accuracy=metrics["accuracy"],
                       psnr_vs_fp=paired_psnr(x, fp_images) if fp_images is not None and name != "ORT FP32" else None,
                       sample_seconds=round(time.perf_counter() - start, 1))
        print(json.dumps(row), flush=True)
    rows = list(rows_by_graph.values())
    command = "python benchmarks/ort_peer.py " + " ".join(argv if argv is not None else sys.argv[1:])
    commands = previous.get("commands", []) + [command] * (command not in previous.get("commands", []))

    results = {"commands": commands,
               "machine": f"{cpu_name()}, {threads} threads, VNNI {cpu_has_vnni()}", "num": args.num,
               "steps": args.steps, "seed": args.seed, "peer_calibration_seconds": round(peer_seconds, 1),
               "tqdit_calibration_seconds": record.method.get("wall_seconds"), "rows": rows}
    write_json(args.out.with_suffix(".json"), results)
    lines = ["# Peer: ONNX Runtime `quantize_static` vs TQ-DiT, W8A8, bundled model", "",
             "Commands: " + "; ".join(f"`{c}`" for c in commands) + "  ", f"Machine: {results['machine']}  ",
             f"DDPM {args.steps} steps, cfg 1.5, {args.num} samples (seed {args.seed}, the noise of the FP row of "
             "quality.md); speed: one denoiser call at batch 8, median of "
             f"{args.repeats}. Calibration: quantize_static {results['peer_calibration_seconds']} s "
             f"(trajectories + min-max), TQ-DiT {results['tqdit_calibration_seconds']} s.", "",
             "| graph | FD | accuracy | PSNR vs FP (dB) | ms per call |", "|---|---|---|---|---|"]
    for r in rows:
        psnr = f"{r['psnr_vs_fp']:.2f}" if r.get("psnr_vs_fp") is not None else "—"
        fd = f"{r['fd']:.3f}" if "fd" in r else "—"
        acc = f"{r['accuracy']:.3f}" if "accuracy" in r else "—"
        lines.append(f"| {r['graph']} | {fd} | {acc} | {psnr} | {r.get('ms_per_call_batch8', '—')} |")
    with atomic_output(args.out.with_suffix(".md")) as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
