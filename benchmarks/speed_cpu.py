"""Time per denoiser call on the CPU: ONNX Runtime FP32 vs INT8 Q/DQ graphs, and artifact sizes.

    python benchmarks/speed_cpu.py                            # dit-digits, DiT-S/2, DiT-B/2
    python benchmarks/speed_cpu.py --models dit-digits --threads 2

For every model: FP32 graph; INT8 per-group graphs without MRQ ("plain"); INT8 with MRQ on
the post-softmax sites only, on the post-GELU sites only, and on both (what MRQ costs per
site); INT8 single layout (time_group input). The bundled
model uses its trained weights and a TQ-DiT record; DiT-S/2 and DiT-B/2 (32x32x4 latents)
use random weights and a min-max record (labelled: speed only, no quality meaning).
Median of `--repeats` timed calls after warm-up, batch `--batch` (CFG doubles a batch of
images, so 8 = 4 images), `--threads` intra-op threads. Writes
benchmarks/results/speed_cpu_<cpu kind>.{json,md} (vnni or avx2: each kind its own table).
"""
from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from calibration.calibrate import CalibrationConfig
from calibration.record import CalibrationRecord
from calibration.sites import Site
from tqdit_export.engines.ort_backend import OrtBackend
from tqdit_export.io import atomic_output, write_json
from tqdit_export.models import DIT_CONFIGS, DiT, resolve_model
from tqdit_export.hardware import cpu_description, cpu_has_vnni
from tqdit_export.onnx import export_dit
from tqdit_export.quant import calibrate_dit

RESULTS = Path(__file__).resolve().parent / "results"


def load(name: str) -> tuple[DiT, str]:
    if name in DIT_CONFIGS:
        torch.manual_seed(0)
        return DiT(DIT_CONFIGS[name]).eval(), f"{name} (random weights, min-max record)"
    return resolve_model(name).model, f"{name} (trained, TQ-DiT record)"


def mrq_only(record: CalibrationRecord, region: str) -> CalibrationRecord:
    """The MRQ record with two-region quantizers only where the region is `region` ("softmax" or
    "gelu"); the other MRQ operands get their high-region scale as one uniform scale. For speed
    only: the graph has the GEMMs of that mix, the dropped operands are not calibrated."""
    tensors, sites = dict(record.tensors), []
    for site in record.sites:
        for operand, kind in site.regions.items():
            if kind != region:
                tensors[f"{site.name}.{operand}.scale"] = tensors[f"{site.name}.{operand}.scale_high"]
        sites.append(Site(site.name, site.kind, {op: k for op, k in site.regions.items() if k == region}))
    return dataclasses.replace(record, sites=sites, tensors=tensors)


def time_calls(backend, x, t, y, repeats: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        backend(x, t, y)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        backend(x, t, y)
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def bench_model(name: str, args, workdir: Path) -> list[dict]:
    model, label = load(name)
    random_weights = name in DIT_CONFIGS
    groups = 2 if random_weights else 10  # speed does not depend on G; sizes scale with it
    common = dict(samples_per_group=2 if random_weights else 32, trajectory_steps=10 if random_weights else 100,
                  clip_denoised=not random_weights, progress=False)
    method = "minmax" if random_weights else "tqdit"  # MRQ exists only in the TQ-DiT search
    records = {
        "plain": calibrate_dit(model, CalibrationConfig(num_groups=groups, method=method, mrq=False), **common),
        # random weights: one round without HO (speed does not depend on the scales)
        "mrq": calibrate_dit(model, CalibrationConfig(num_groups=groups, rounds=1 if random_weights else 3,
                                                      ho=not random_weights), **common),
    }
    records["mrq-softmax"] = mrq_only(records["mrq"], "softmax")
    records["mrq-gelu"] = mrq_only(records["mrq"], "gelu")
    c = model.config
    torch.manual_seed(1)
    x = torch.randn(args.batch, c.in_channels, c.input_size, c.input_size)
    t = torch.full((args.batch,), 500)
    y = torch.cat([torch.arange(args.batch // 2) % c.num_classes, torch.full((args.batch - args.batch // 2,),
                                                                             model.null_class)])
    variants = [("fp32", "plain", "per-group", True), ("int8 plain", "plain", "per-group", False),
                ("int8 + MRQ on A (post-softmax) only", "mrq-softmax", "per-group", False),
                ("int8 + MRQ on fc2 input (post-GELU) only", "mrq-gelu", "per-group", False),
                ("int8 + MRQ", "mrq", "per-group", False), ("int8 + MRQ, single layout", "mrq", "single", False)]
    rows, fp32_ms = [], None
    for variant, rec, layout, fp32 in variants:
        out = workdir / f"{name.replace('/', '_')}_{rec}_{layout}"
        if not out.exists():
            export_dit(model, records[rec], out, layout=layout, fp32=fp32)
        backend = OrtBackend(out, threads=args.threads, fp32=fp32)
        ms = time_calls(backend, x, t, y, args.repeats)
        files = ["fp32.onnx"] if fp32 else [g["file"] for g in backend.manifest["graphs"]]
        size = sum((out / f).stat().st_size for f in files)
        fp32_ms = ms if fp32 else fp32_ms
        rows.append({"model": label, "variant": variant, "layout": "—" if fp32 else layout, "groups": groups,
                     "ms_per_call": round(ms, 2), "speedup_vs_fp32": round(fp32_ms / ms, 2),
                     "artifact_mib": round(size / 2**20, 2)})
        print(rows[-1], flush=True)
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["dit-digits", "DiT-S/2", "DiT-B/2"])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--out", type=Path, default=None,
                   help="results path without suffix (default: benchmarks/results/speed_cpu_<cpu kind>)")
    args = p.parse_args(argv)
    cpu = cpu_description()
    # Figures of one CPU kind never stand in a table of another: each kind has its own file.
    args.out = args.out or RESULTS / f"speed_cpu_{cpu['kind']}"
    torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            rows += bench_model(name, args, Path(tmp))
    command = "python benchmarks/speed_cpu.py " + " ".join(argv if argv is not None else sys.argv[1:])
    machine = f"{cpu['name']} ({cpu['kind']}), {args.threads} threads, VNNI: {cpu_has_vnni()}, onnxruntime {__import__('onnxruntime').__version__}"
    write_json(args.out.with_suffix(".json"), {"command": command.strip(), "machine": machine, "cpu": cpu, "batch": args.batch,
                                               "rows": rows})
    lines = ["# CPU speed per denoiser call (ONNX Runtime)", "", f"Command: `{command.strip()}`  ",
             f"Machine: {machine}  ", f"Batch {args.batch} per call (CFG pairs), median of {args.repeats} calls.", "",
             "| model | variant | layout | G | ms per call | speed-up vs FP32 | artifact MiB |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['variant']} | {r['layout']} | {r['groups']} | {r['ms_per_call']} | "
              f"{r['speedup_vs_fp32']}x | {r['artifact_mib']} |" for r in rows]
    with atomic_output(args.out.with_suffix(".md")) as tmp_md:
        tmp_md.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
