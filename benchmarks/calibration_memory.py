"""Resident memory of one calibration capture pass (one time group, batch 2n), with and without
the recomputed blocks and the heap settings of the capture phase (`calibration.heap`).

    python benchmarks/calibration_memory.py --model DiT-S/2 [--samples-per-group 8] [--no-recompute] [--return-freed]

Random weights. Prints the peak (VmHWM) and current (VmRSS) resident size after the pass, in MiB.
"""
from __future__ import annotations

import argparse

import torch

from calibration import heap
from calibration.calibrate import CalibrationConfig, GroupData, _capture, site_blocks
from tqdit_export.models import DiT, dit_config
from tqdit_export.quant import denoising_loss, dit_sites


def status() -> dict[str, float]:
    with open("/proc/self/status") as f:
        return {k: int(v.split()[0]) / 1024 for k, v in (line.split(":", 1) for line in f)
                if k in ("VmHWM", "VmRSS")}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="DiT-S/2")
    p.add_argument("--samples-per-group", type=int, default=8)
    p.add_argument("--no-recompute", action="store_true")
    p.add_argument("--return-freed", action="store_true")
    args = p.parse_args()
    if args.return_freed:
        heap.manage()
        heap.phase("capture")
    torch.manual_seed(0)
    cfg = dit_config(args.model)
    model = DiT(cfg).eval().requires_grad_(False)
    n = args.samples_per_group
    x = torch.randn(n, cfg.in_channels, cfg.input_size, cfg.input_size)
    t, y = torch.randint(0, 100, (n,)), torch.randint(cfg.num_classes, (n,))
    inputs = (torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, torch.full_like(y, model.null_class)]))
    data = GroupData(inputs, (torch.randn_like(inputs[0]), torch.randn_like(inputs[0]), inputs[0], inputs[1]))
    sites = dit_sites(model)
    names = {s.name for s in sites}
    recompute = None if args.no_recompute else [b for b, _ in site_blocks(sites) if b not in names and "." in b]
    before = status()
    _capture(model, sites, data, denoising_loss, CalibrationConfig(), torch.Generator(), recompute)
    after = status()
    print(f"{args.model} n={n} recompute={not args.no_recompute} return_freed={args.return_freed}: model "
          f"{before['VmRSS']:.0f} MiB; after one capture pass peak {after['VmHWM']:.0f} MiB, now {after['VmRSS']:.0f} MiB")


if __name__ == "__main__":
    main()
