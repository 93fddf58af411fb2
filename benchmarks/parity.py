"""ONNX Runtime exports vs the torch fake-quant model on the bundled model: per denoiser call and per sampled image.

    python benchmarks/parity.py                        # W8A8 and W6A6, per-group and single layouts
    python benchmarks/parity.py --bits W8A8 --num 50

For every bit width: the TQ-DiT record of `benchmarks/quality.py` (same cache folder, so
the same record), exported in both layouts as this CPU needs it (7-bit weight codes
without VNNI). Per denoiser call: `tqdit check`'s relative L2 error against the fake-quant
model on real calibration inputs of every time group (the acceptance bound is 1e-2). Per
image: `--num` digits (DDPM, cfg 1.5) drawn from the same noise by the fake-quant model and
by each ORT export, paired PSNR ORT vs fake-quant. On CPUs without VNNI the export has
7-bit weight codes (and 7-bit B operands of Q.K^T and A.V), so both are reported against
two references: the fake-quant model with those widths (what the graph must compute) and
the 8-bit fake-quant model as calibrated (what the 7-bit codes cost on top).
Writes benchmarks/results/parity_<cpu kind>.{json,md} (vnni or avx2: each kind its own table).
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import torch

from calibration.record import CalibrationRecord
from quality import calibrate, claim_workdir, draw
from tqdit_export.check import check_export
from tqdit_export.engines.ort_backend import OrtBackend
from tqdit_export.eval import paired_psnr
from tqdit_export.hardware import cpu_has_vnni, cpu_kind, cpu_name
from tqdit_export.io import atomic_output, write_json
from tqdit_export.models import resolve_model
from tqdit_export.onnx import export_dit
from tqdit_export.onnx.manifest import read_manifest
from tqdit_export.quant import FakeQuantBackend, collect_calibration_data

RESULTS = Path(__file__).resolve().parent / "results"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bits", nargs="+", default=["W8A8", "W6A6"])
    p.add_argument("--num", type=int, default=100, help="sampled digits per backend (default 100)")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--check-samples", type=int, default=8, help="trajectory points per group for the per-call check")
    p.add_argument("--workdir", type=Path, default=Path("runs/quality"))
    p.add_argument("--out", type=Path, default=None,
                   help="results path without suffix (default: benchmarks/results/parity_<cpu kind>)")
    args = p.parse_args(argv)
    args.out = args.out or RESULTS / f"parity_{cpu_kind()}"
    model = resolve_model("dit-digits").model
    claim_workdir(args.workdir, model, "dit-digits")  # the quality benchmark's cache folder
    threads = torch.get_num_threads()
    reduce_range = not cpu_has_vnni()  # what `tqdit export` picks on this CPU
    rows = []
    for bits in args.bits:
        record_dir, _ = calibrate("dit-digits", "tqdit", bits, args.workdir)
        record = CalibrationRecord.load(record_dir, model)
        # the fake-quant model at the export's widths and, when those are 7-bit, the 8-bit one as calibrated
        widths = {"export": reduce_range, **({"calibrated": False} if reduce_range else {})}
        references = {name: draw(FakeQuantBackend(model, record, reduce_range=reduce), args.num, args.steps, args.seed,
                                 10, model.null_class)[0] for name, reduce in widths.items()}
        # the check's calibration inputs: one set for every layout and reference
        data = collect_calibration_data(model, record.time_groups, args.check_samples, seed=args.seed + 7,
                                        clip_denoised=True, progress=False)
        for layout in ("per-group", "single"):
            # exported afresh on every run (seconds for this model): a cached graph would hide export changes
            onnx_dir = args.workdir / f"parity_{bits}_{layout}"
            shutil.rmtree(onnx_dir, ignore_errors=True)
            export_dit(model, record, onnx_dir, layout=layout, weight_reduce_range=reduce_range)
            manifest = read_manifest(onnx_dir)
            row = {"bits": bits, "layout": layout, "weights_in_graph": manifest["bits"]["weights_in_graph"]}
            images, _ = draw(OrtBackend(onnx_dir, threads=threads), args.num, args.steps, args.seed, 10,
                             model.null_class)
            for name, reduce in widths.items():
                per_call = check_export(model, record, onnx_dir, reduce_range=reduce, data=data)
                row[f"max_rel_l2_vs_{name}"] = max(g.rel_l2 for g in per_call)
                row[f"rel_l2_per_group_vs_{name}"] = [round(g.rel_l2, 6) for g in per_call]
                row[f"psnr_vs_{name}"] = paired_psnr(images, references[name])
            for key in ("max_rel_l2_vs", "rel_l2_per_group_vs", "psnr_vs"):
                row.setdefault(f"{key}_calibrated", row[f"{key}_export"])  # the same reference
            rows.append(row)
            print(rows[-1], flush=True)
    command = ("python benchmarks/parity.py " + " ".join(argv if argv is not None else sys.argv[1:])).strip()
    machine = f"{cpu_name()}, {threads} threads, VNNI: {cpu_has_vnni()}"
    write_json(args.out.with_suffix(".json"), {"command": command, "machine": machine, "num": args.num,
                                               "steps": args.steps, "seed": args.seed, "rows": rows})
    lines = ["# ONNX Runtime exports vs the torch fake-quant model (`dit-digits`, TQ-DiT records)", "",
             f"Command: `{command}`  ", f"Machine: {machine}  ",
             f"Per call: largest relative L2 error over the time groups ({args.check_samples} calibration points "
             f"per group, x2 with CFG). Per image: {args.num} digits, DDPM {args.steps} steps, cfg 1.5, seed "
             f"{args.seed}, paired PSNR of the ORT samples vs the fake-quant samples from the same noise. "
             "Two references: the fake-quant model with the export's weight widths (7-bit codes on CPUs without "
             "VNNI) and the 8-bit one as calibrated.", "",
             "| bits | layout | weight codes in graph | max rel. L2 per call vs same widths | PSNR vs same widths (dB) "
             "| max rel. L2 per call vs 8-bit as calibrated | PSNR vs 8-bit as calibrated (dB) |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['bits']} | {r['layout']} | {r['weights_in_graph']}-bit | {r['max_rel_l2_vs_export']:.2e} | "
              f"{r['psnr_vs_export']:.2f} | {r['max_rel_l2_vs_calibrated']:.2e} | {r['psnr_vs_calibrated']:.2f} |"
              for r in rows]
    with atomic_output(args.out.with_suffix(".md")) as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
