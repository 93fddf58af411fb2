"""Sample on an edge device without torch: engines of `tqdit build` (TensorRT + pycuda) or an
export folder (ONNX Runtime).

    python -m tqdit_export.edge --engines out/build --num 20 --steps 50 --out samples.npz
    python -m tqdit_export.edge --onnx out/build/onnx --num 20 --out samples.npz
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from ..api import spec_of_export
from ..diffusion.schedule import SAMPLERS, SamplerConfig
from ..errors import UsageError, run_command
from ..io import check_output_file, save_samples
from ..onnx.manifest import BuildManifest, ExportManifest
from ..diffusion.loop import sample_numpy


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tqdit_export.edge", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--engines", type=Path, help="a `tqdit build` folder (TensorRT engines)")
    src.add_argument("--onnx", type=Path, help="an export folder, run with ONNX Runtime")
    p.add_argument("--plugin-library", type=Path, help="libtqdit_trt_plugins.so for plugin-layout engines "
                   "(default: the copy `tqdit build --plugin-library` put in the build folder)")
    p.add_argument("--num", type=int, default=10)
    p.add_argument("--class", dest="cls", type=int, default=None, help="one class for every sample (default: all)")
    p.add_argument("--sampler", choices=SAMPLERS, default="ddpm")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--cfg", type=float, default=1.5)
    p.add_argument("--cfg-channels", type=int, default=None,
                   help="guide only the first N epsilon channels (default: what the export recorded, 3 for "
                        "facebookresearch/DiT checkpoints, else all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--latent", action="store_true",
                   help="latent-space model: do not clip x0 to [-1, 1] (default: what the export recorded, "
                        "else pixel space for the digits architecture only)")
    p.add_argument("--out", type=Path, required=True, help=".npz of images (N,C,H,W) in [-1, 1] and labels")
    p.add_argument("--debug", action="store_true", help="a traceback instead of the one-line error message")
    args = p.parse_args(argv)
    return run_command(p.prog, lambda: run(args), debug=args.debug)


def run(args: argparse.Namespace) -> int:
    """Sample with the parsed arguments of `main`; bad input raises (`main` turns it into exit 2)."""
    for flag, value in (("--num", args.num), ("--steps", args.steps)):
        if value < 1:
            raise UsageError(f"{flag} {value}: must be at least 1")
    check_output_file(args.out)  # before the engines load and the sampling runs
    # The flags, else what the export recorded (3 guided channels and latents for facebookresearch/DiT
    # checkpoints), else the digits rule and every channel: the one resolution the API and server use.
    # Read from the manifest, so --class and --cfg-channels are refused before the engines or graphs load.
    manifest = BuildManifest.read(args.engines) if args.engines else ExportManifest.read(args.onnx)
    spec = spec_of_export(manifest, False if args.latent else None, args.cfg_channels)
    cfg_channels = spec.cfg_channels
    num_classes = spec.num_classes
    labels = np.full(args.num, args.cls) if args.cls is not None else np.arange(args.num) % num_classes
    if labels.min() < 0 or labels.max() >= num_classes:
        raise UsageError(f"--class {args.cls}: this model has classes 0..{num_classes - 1}")
    sampler = SamplerConfig(args.sampler, args.steps, args.cfg, clip_denoised=spec.pixel_space,
                            cfg_channels=cfg_channels)
    if args.engines:
        from .trt_runtime import TrtDenoiser

        denoiser = TrtDenoiser(args.engines, args.plugin_library)
    else:
        from .ort_runtime import OrtDenoiser

        denoiser = OrtDenoiser(args.onnx)
    start = time.perf_counter()
    images = sample_numpy(denoiser, labels, spec.shape, sampler, num_classes, args.seed)
    elapsed = time.perf_counter() - start
    save_samples(args.out, images, labels, {"sampler": args.sampler, "steps": args.steps, "cfg": args.cfg,
                                            "cfg_channels": cfg_channels,
                                            "seed": args.seed, "runtime": "trt" if args.engines else "ort"})
    print(json.dumps({"out": str(args.out), "num": args.num, "seconds": round(elapsed, 2),
                      "ms_per_step": round(1000 * elapsed / args.steps, 2)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
