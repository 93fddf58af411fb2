"""Wall time and peak memory of `tqdit calibrate`, each run in a fresh process.

    python benchmarks/calibration_cost.py                                   # dit-digits, W8A8, CPU
    python benchmarks/calibration_cost.py --model DiT-XL/2 --device cuda    # random weights, cost only

A DiT config name (e.g. DiT-XL/2) calibrates that architecture with random weights: the
numbers are the cost, not a quality result. Writes benchmarks/results/calibration_cost.{json,md}
(rows accumulate across runs, keyed by model, bits, device, groups and samples per group).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from tqdit_export.hardware import cpu_name
from tqdit_export.io import atomic_output, write_json
from tqdit_export.models import DIT_CONFIGS, DiT, save_dit

RESULTS = Path(__file__).resolve().parent / "results"


def machine(device: str) -> str:
    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"{cpu_name()}, {torch.get_num_threads()} threads"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="dit-digits", help="bundled name, checkpoint path, or a DiT config name")
    p.add_argument("--bits", default="W8A8")
    p.add_argument("--groups", type=int, default=10)
    p.add_argument("--samples-per-group", type=int, default=32)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", type=Path, default=RESULTS / "calibration_cost")
    args = p.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        model_arg = args.model
        if args.model in DIT_CONFIGS:  # an architecture: random weights are enough for the cost
            torch.manual_seed(0)
            model_arg = str(Path(tmp) / "random.safetensors")
            save_dit(DiT(DIT_CONFIGS[args.model]), model_arg)
        cmd = [sys.executable, "-m", "tqdit_export.cli", "calibrate", "--model", model_arg, "--bits", args.bits,
               "--groups", str(args.groups), "--samples-per-group", str(args.samples_per_group),
               "--device", args.device, "--out", str(Path(tmp) / "record"), "--quiet",
               "--cost-json", str(Path(tmp) / "cost.json")]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"calibration failed:\n{proc.stderr}")
        cost = json.loads((Path(tmp) / "cost.json").read_text())
    row = {"model": args.model + (" (random weights)" if args.model in DIT_CONFIGS else ""), "bits": args.bits,
           "groups": args.groups, "samples_per_group": args.samples_per_group, "device": args.device,
           "machine": machine(args.device), "seconds": cost["wall_seconds"], "peak_rss_mib": round(cost["peak_rss_mib"]),
           "peak_gpu_mib": None if cost["peak_gpu_mib"] is None else round(cost["peak_gpu_mib"]),
           "command": "python benchmarks/calibration_cost.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    print(proc.stdout.strip())
    json_path = args.out.with_suffix(".json")
    rows = json.loads(json_path.read_text())["rows"] if json_path.exists() else []
    key = ("model", "bits", "device", "groups", "samples_per_group")
    rows = [r for r in rows if tuple(r[k] for k in key) != tuple(row[k] for k in key)] + [row]
    write_json(json_path, {"rows": rows})
    lines = ["# Calibration cost (`tqdit calibrate`, TQ-DiT: TGQ + MRQ + HO, 3 rounds)", "",
             "| model | bits | G | samples/group | device | machine | wall s | peak RSS MiB | peak GPU MiB | command |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['bits']} | {r['groups']} | {r['samples_per_group']} | {r['device']} | "
                     f"{r['machine']} | {r['seconds']} | {r['peak_rss_mib']} | {r['peak_gpu_mib'] or '—'} | "
                     f"`{r['command']}` |")
    with atomic_output(args.out.with_suffix(".md")) as tmp_md:
        tmp_md.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
