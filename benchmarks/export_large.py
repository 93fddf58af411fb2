"""DiT-XL/2 (random weights) through export: external data, lint, ORT load, time and peak memory.

    python benchmarks/export_large.py                      # DiT-XL/2, single layout + fp32 graph
    python benchmarks/export_large.py --model DiT-B/2      # a quicker dry run

Random weights (every tensor non-zero, like a trained checkpoint) and a min-max record (G=2, one calibration sample per group from a 2-step
trajectory): this measures the export path at full size, not quality. The FP32 graph
(~2.7 GB) exceeds protobuf's 2 GB and must go to external data; the INT8 graph keeps
its int8 weights plus the float adaLN / embedder weights. Writes
benchmarks/results/export_large.{json,md}.
"""
from __future__ import annotations

import argparse
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from calibration.calibrate import CalibrationConfig
from tqdit_export.cli import peak_rss_mib
from tqdit_export.edge import OrtDenoiser
from tqdit_export.hardware import cpu_name
from tqdit_export.io import atomic_output, write_json
from tqdit_export.models.dit import DIT_CONFIGS, DiT
from tqdit_export.onnx import export_dit, lint_file
from tqdit_export.quant import calibrate_dit

RESULTS = Path(__file__).resolve().parent / "results"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="DiT-XL/2", choices=sorted(DIT_CONFIGS))
    p.add_argument("--layout", default="single", choices=("single", "per-group", "plugin"))
    p.add_argument("--workdir", type=Path, default=None, help="where the export goes (default: a temp dir, removed)")
    p.add_argument("--out", type=Path, default=RESULTS / "export_large")
    args = p.parse_args(argv)

    stages: dict[str, dict] = {}

    def stage(name: str, start: float) -> None:
        stages[name] = {"seconds": round(time.perf_counter() - start, 1), "peak_rss_mib_so_far": round(peak_rss_mib())}
        print(name, stages[name], flush=True)

    start = time.perf_counter()
    torch.manual_seed(0)
    model = DiT(DIT_CONFIGS[args.model]).eval()
    # adaLN-Zero initialises the modulation and final layers to 0: the exporter would store those
    # identical zero matrices once, understating a trained checkpoint's size. Give every weight values.
    with torch.no_grad():
        for param in model.parameters():
            if not param.any():
                param.normal_(0, 0.02)
    params = sum(p.numel() for p in model.parameters())
    stage("build model", start)

    start = time.perf_counter()
    record = calibrate_dit(model, CalibrationConfig(8, 8, num_groups=2, method="minmax", mrq=False, rounds=1),
                           samples_per_group=1, trajectory_steps=2, progress=False)
    stage("min-max record", start)

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="export_large_", dir="."))
    try:
        start = time.perf_counter()
        manifest = export_dit(model, record, workdir / "onnx", layout=args.layout, fp32=True, weight_reduce_range=False)
        stage("export (quantized + fp32, lint on each)", start)
        files = {}
        for entry in [*manifest["graphs"], manifest["fp32"]]:
            names = [entry["file"]] + ([entry["external_data"]] if "external_data" in entry else [])
            files[entry["file"]] = {"bytes": sum((workdir / "onnx" / n).stat().st_size for n in names),
                                    "external_data": entry.get("external_data"),
                                    "lint_errors": sum(f.severity == "error" for f in lint_file(workdir / "onnx" / entry["file"])),
                                    "lint_warnings": sum(f.severity == "warning" for f in lint_file(workdir / "onnx" / entry["file"]))}
        del model
        start = time.perf_counter()
        c = DIT_CONFIGS[args.model]
        x = np.random.default_rng(0).standard_normal((2, c.in_channels, c.input_size, c.input_size), dtype=np.float32)
        t, y = np.array([500, 500]), np.array([1, c.num_classes])
        out = OrtDenoiser(workdir / "onnx", threads=torch.get_num_threads(), fp32=True)(x, t, y)
        assert out.shape == (2, 2 * c.in_channels, c.input_size, c.input_size) and np.isfinite(out).all()
        stage("ONNX Runtime loads the fp32 graph (external data) and runs batch 2", start)
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)

    results = {"command": "python benchmarks/export_large.py " + " ".join(argv if argv is not None else sys.argv[1:]),
               "model": args.model, "parameters": params, "layout": args.layout,
               "machine": f"{cpu_name()}, {platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
               "stages": stages, "files": files, "peak_rss_mib": round(peak_rss_mib())}
    write_json(args.out.with_suffix(".json"), results)
    lines = [f"# {args.model} (random weights) export", "", f"Command: `{results['command']}`  ",
             f"Machine: {results['machine']}; {params / 1e6:.0f}M parameters; peak RSS of the whole run "
             f"{results['peak_rss_mib']} MiB.", "", "| stage | seconds | peak RSS so far (MiB) |", "|---|---|---|"]
    lines += [f"| {k} | {v['seconds']} | {v['peak_rss_mib_so_far']} |" for k, v in stages.items()]
    lines += ["", "| graph | size (MiB, with external data) | external data file | lint errors | lint warnings |",
              "|---|---|---|---|---|"]
    lines += [f"| {k} | {v['bytes'] / 2**20:.0f} | {v['external_data'] or '—'} | {v['lint_errors']} | "
              f"{v['lint_warnings']} |" for k, v in files.items()]
    with atomic_output(args.out.with_suffix(".md")) as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
