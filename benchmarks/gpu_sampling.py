"""Torch sampling speed on a GPU, FP32 vs FP16: time per denoiser call and per 50-step DDPM image batch.

    python benchmarks/gpu_sampling.py                          # DiT-XL/2 and DiT-B/2, random weights, cuda
    python benchmarks/gpu_sampling.py --device cpu --models DiT-tiny --repeats 2   # a smoke run anywhere

What a GPU can measure without TensorRT: the float model's speed in PyTorch, FP32 (TF32 off,
the strict baseline) and FP16 (torch.autocast), each at batch `--batch` (CFG doubles it inside
the sampler: `--batch` images make 2x rows per call). Random weights (cost does not depend on
the values; labelled). Median of `--repeats` timed calls after warm-up, synchronised on the
device. Writes benchmarks/results/gpu_sampling.{json,md} (or --out).
"""
from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from pathlib import Path

import torch

from tqdit_export.diffusion import SamplerConfig, sample
from tqdit_export.engines.torch_backend import TorchBackend
from tqdit_export.hardware import cpu_name
from tqdit_export.io import atomic_output, write_json
from tqdit_export.models import DIT_CONFIGS, DiT

RESULTS = Path(__file__).resolve().parent / "results"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _precision(name: str, device: torch.device):
    if name == "fp16":
        return torch.autocast(device.type, dtype=torch.float16 if device.type == "cuda" else torch.bfloat16)
    return contextlib.nullcontext()


class _Autocast(TorchBackend):
    """The torch backend inside autocast: the one sampling loop drives it as it drives any backend."""

    def __init__(self, model: DiT, device: torch.device, precision: str) -> None:
        super().__init__(model, device)
        self.precision = precision

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with _precision(self.precision, self.device):
            return super().__call__(x, t, y).float()


def time_calls(backend: _Autocast, rows: int, repeats: int) -> float:
    """Median ms of one denoiser call on `rows` rows."""
    cfg = backend.model.config
    x = torch.randn(rows, cfg.in_channels, cfg.input_size, cfg.input_size, device=backend.device)
    t = torch.full((rows,), 500, device=backend.device)
    y = torch.arange(rows, device=backend.device) % cfg.num_classes
    for _ in range(3):
        backend(x, t, y)
    times = []
    for _ in range(repeats):
        _sync(backend.device)
        start = time.perf_counter()
        backend(x, t, y)
        _sync(backend.device)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["DiT-XL/2", "DiT-B/2"], choices=sorted(DIT_CONFIGS))
    p.add_argument("--device", default="cuda")
    p.add_argument("--batch", type=int, default=16, help="images per call (rows = 2x with CFG); default 16")
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--steps", type=int, default=50, help="DDPM steps of the timed sampling run; default 50")
    p.add_argument("--out", type=Path, default=RESULTS / "gpu_sampling")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {args.device}: this torch ({torch.__version__}) sees no CUDA GPU")
    torch.backends.cuda.matmul.allow_tf32 = False  # FP32 means FP32 here
    torch.backends.cudnn.allow_tf32 = False
    machine = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    rows = []
    for name in args.models:
        torch.manual_seed(0)
        model = DiT(DIT_CONFIGS[name]).eval()
        for precision in ("fp32", "fp16"):
            backend = _Autocast(model, device, precision)
            per_call = time_calls(backend, 2 * args.batch, args.repeats)
            cfg = model.config
            _sync(device)
            start = time.perf_counter()
            sample(backend, torch.arange(args.batch) % cfg.num_classes, (cfg.in_channels, cfg.input_size, cfg.input_size),
                   SamplerConfig("ddpm", args.steps, 1.5), model.null_class, seed=0, progress=False)
            _sync(device)
            label = precision if device.type == "cuda" or precision == "fp32" else "bf16"  # CPU autocast is bf16
            rows.append({"model": f"{name} (random weights)", "precision": label, "device": str(device),
                         "machine": machine, "batch_images": args.batch, "rows_per_call": 2 * args.batch,
                         "ms_per_call": round(per_call, 2), "steps": args.steps,
                         "seconds_per_batch": round(time.perf_counter() - start, 2),
                         "peak_gpu_mib": (torch.cuda.max_memory_allocated(device) >> 20) if device.type == "cuda" else None})
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
    command = "python benchmarks/gpu_sampling.py " + " ".join(argv if argv is not None else sys.argv[1:])
    write_json(args.out.with_suffix(".json"), {"command": command, "torch": torch.__version__, "rows": rows})
    lines = ["# Torch sampling speed, FP32 (TF32 off) vs FP16 autocast", "", f"Command: `{command}`; torch "
             f"{torch.__version__}.", "",
             "| model | precision | device | machine | images | ms per call | s per sampling run (steps) | peak GPU MiB |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['precision']} | {r['device']} | {r['machine']} | {r['batch_images']} | "
                     f"{r['ms_per_call']} | {r['seconds_per_batch']} ({r['steps']}) | {r['peak_gpu_mib'] or '—'} |")
    with atomic_output(args.out.with_suffix(".md")) as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
