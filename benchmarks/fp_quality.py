"""Quality of the bundled full-precision DiT: FD and class accuracy at several step counts.

    python benchmarks/fp_quality.py                # 500 samples, DDPM 100/250/50, cfg 1.5
    python benchmarks/fp_quality.py --steps 100 --num 100

Writes benchmarks/results/fp_quality.{json,md}. Each row is one `tqdit sample` +
`tqdit eval` run (same code path), timed on the machine that ran it.
"""
from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

from tqdit_export.cli import main as tqdit
from tqdit_export.io import atomic_output, write_json

RESULTS = Path(__file__).resolve().parent / "results"


def run(model: str, sampler: str, steps: int, cfg: float, num: int, seed: int, workdir: Path) -> dict:
    npz, report = workdir / f"{sampler}{steps}_s{seed}.npz", workdir / f"{sampler}{steps}_s{seed}.json"
    start = time.perf_counter()
    rc = tqdit(["sample", "--model", model, "--sampler", sampler, "--steps", str(steps), "--cfg", str(cfg),
                "--num", str(num), "--seed", str(seed), "--save-npz", str(npz), "--quiet"])
    seconds = time.perf_counter() - start
    if rc != 0 or tqdit(["eval", "--samples", str(npz), "--json", str(report)]) != 0:
        raise SystemExit(f"run {sampler} {steps} steps failed")
    import json

    result = json.loads(report.read_text())
    return {"sampler": sampler, "steps": steps, "cfg": cfg, "num": num, "seed": seed, "fd": result["fd"],
            "fd_reference": result["fd_reference"], "accuracy": result["accuracy"],
            "sample_seconds": round(seconds, 1)}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="dit-digits")
    p.add_argument("--steps", type=int, nargs="+", default=[100, 250, 50])
    p.add_argument("--sampler", default="ddpm")
    p.add_argument("--cfg", type=float, default=1.5)
    p.add_argument("--num", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=RESULTS / "fp_quality")
    args = p.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for steps in args.steps:
            rows.append(run(args.model, args.sampler, steps, args.cfg, args.num, args.seed, Path(tmp)))
            print(rows[-1], flush=True)
    command = "python benchmarks/fp_quality.py " + " ".join(argv if argv is not None else sys.argv[1:])
    machine = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    write_json(args.out.with_suffix(".json"), {"command": command.strip(), "machine": machine, "model": args.model,
                                               "rows": rows})
    lines = [f"# FP quality of `{args.model}`", "", f"Command: `{command.strip()}`  ", f"Machine: {machine}", "",
             "| sampler | steps | cfg | samples | FD | FD reference (real) | FD / reference | class accuracy | sampling s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['sampler']} | {r['steps']} | {r['cfg']} | {r['num']} | {r['fd']:.3f} | "
                     f"{r['fd_reference']:.3f} | {r['fd'] / r['fd_reference']:.2f} | {r['accuracy']:.3f} | "
                     f"{r['sample_seconds']} |")
    with atomic_output(args.out.with_suffix(".md")) as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
