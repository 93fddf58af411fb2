"""Quality of TQ-DiT against FP and baselines on the bundled model (the calibration issue's table).

    python benchmarks/quality.py                       # everything (hours on 2 CPU cores)
    python benchmarks/quality.py --bits W8A8 --rows fp minmax tqdit --steps 100 --seeds 0

Rows: fp; minmax (one scale for all timesteps, no MRQ/HO); tqdit (TGQ + MRQ + HO);
no-tgq, no-mrq, no-ho (TQ-DiT with one part switched off); mrq-saturate, mrq-shift, mrq-cheap
(TQ-DiT with the saturating softmax form, the shifted GELU form, or both); tqdit-ort (the tqdit record
exported to per-group Q/DQ ONNX and sampled with ONNX Runtime: the deployed numbers);
tqdit-fp8-ort (the same record's clipping ranges as FP8 E4M3 Q/DQ, ONNX Runtime); mrq-cheap-ort,
mrq-cheap-fp16-ort, mrq-cheap-trt-ort (the mrq-cheap record, i.e. the targets' MRQ forms, exported with
float32 float ops as today, with float16 ones as the strongly typed TensorRT targets export them, and
with float16 + TensorRT's fused-attention placement, what `tqdit build --target h100` exports; all
three with this CPU's weight codes, sampled by ONNX Runtime; the last two also report the paired
PSNR against the first one's images, `psnr_vs_fp32_graph`). For every (row, bits, sampler
steps, seed) it samples `--num` digits (balanced classes, cfg 1.5) from the same noise as
the FP row and reports FD, class accuracy, paired PSNR vs FP, and the calibration wall
time and peak memory (each calibration runs in its own process, so its peak RSS is its own).

Resumable: results accumulate in benchmarks/results/quality.json; a rerun skips the
(row, bits, steps, seed) cells already there, so the table can be filled over several runs.
FP samples are cached as `{workdir}/fp_ddpm{steps}_seed{seed}_n{num}.npz`, the format of
`tqdit sample --save-npz`: the same command line fills that cache (same noise, same images).
Calibration cost is measured when a record is first made; `--retime-calibration` re-runs the
cached calibrations on idle cores, checks they reproduce the cached records (scales byte for byte),
and replaces the cost in the cache and in the cells. `--report` only rewrites the markdown (and
the plot) from the JSON, e.g. after a change to the tables.
"""
from __future__ import annotations

import argparse
import json
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from calibration.record import CalibrationRecord, model_fingerprint
from tqdit_export.api import balanced_labels
from tqdit_export.diffusion import SamplerConfig, sample
from tqdit_export.engines import TorchBackend
from tqdit_export.engines.ort_backend import OrtBackend
from tqdit_export.eval import evaluate_digits, paired_psnr
from tqdit_export.io import atomic_output, load_samples, save_samples, write_json
from tqdit_export.models import resolve_model
from tqdit_export.onnx import export_dit
from tqdit_export.quant import FakeQuantBackend

RESULTS = Path(__file__).resolve().parent / "results"
ROWS = {
    "fp": None,
    "minmax": ["--method", "minmax", "--no-tgq"],
    "tqdit": [],
    "no-tgq": ["--no-tgq"],
    "no-mrq": ["--no-mrq"],
    "no-ho": ["--no-ho"],
    # The cheaper deployable MRQ forms (calibration/forms.py), each alone and both together
    "mrq-saturate": ["--softmax-mrq", "saturate"],
    "mrq-shift": ["--gelu-mrq", "shift"],
    "mrq-cheap": ["--softmax-mrq", "saturate", "--gelu-mrq", "shift"],
    "tqdit-ort": [],  # the tqdit record, exported per group and sampled by ONNX Runtime's INT8 kernels
    "tqdit-fp8-ort": [],  # the tqdit record's ranges as FP8 (E4M3) Q/DQ, sampled by ONNX Runtime
    "mrq-cheap-ort": [],  # the targets' forms, float32 float ops (the pair of the next two)
    "mrq-cheap-fp16-ort": [],  # ... float16 float ops and Q/DQ scales (strongly typed TensorRT targets)
    "mrq-cheap-trt-ort": [],  # ... float16 + the fused-attention placement (tqdit build --target h100)
}
# Deployed rows: (record row, export options, folder suffix, row whose images the paired PSNR is taken against)
DEPLOYED = {
    "tqdit-ort": ("tqdit", {}, "", None),
    "tqdit-fp8-ort": ("tqdit", {"precision": "fp8"}, "_fp8", None),
    "mrq-cheap-ort": ("mrq-cheap", {}, "_mrq-cheap", None),
    "mrq-cheap-fp16-ort": ("mrq-cheap", {"float_precision": "fp16"}, "_mrq-cheap_fp16", "mrq-cheap-ort"),
    "mrq-cheap-trt-ort": ("mrq-cheap", {"float_precision": "fp16", "fused_attention": True}, "_mrq-cheap_trt",
                          "mrq-cheap-ort"),
}
DEPLOYED_ROWS = tuple(DEPLOYED)


def record_row(row: str) -> str | None:
    """The row whose calibration record `row` samples: its own, the record row of a deployed row, None for fp."""
    if ROWS[row] is None:
        return None
    return DEPLOYED[row][0] if row in DEPLOYED else row


def deployed_images_path(workdir: Path, row: str, bits: str, steps: int, seed: int, num: int) -> Path:
    """Where a deployed row's samples are cached, so a paired row can compare with them."""
    return workdir / f"{row}_{bits}_ddpm{steps}_seed{seed}_n{num}.npz"


def record_path(workdir: Path, row: str, bits: str) -> Path:
    return workdir / f"{row}_{bits}"


def claim_workdir(workdir: Path, model: torch.nn.Module, name: str) -> str:
    """Tie `workdir`'s caches (FP samples, records, exports) to the weights of `model`.

    The cache files are named by row, bits, steps and seed, not by weights: after the
    bundled model is retrained, a stale FP sample set would be reused silently. The first
    run writes the weights' sha256 into the folder; a run with other weights stops here.
    """
    fingerprint = model_fingerprint(model)
    stamp = workdir / "weights_sha256.txt"
    if stamp.exists() and stamp.read_text().strip() != fingerprint:
        raise SystemExit(f"{workdir} caches samples and records of other {name} weights "
                         f"({stamp.read_text().strip()[:12]}…, now {fingerprint[:12]}…): "
                         "pass another --workdir, or move that folder away")
    workdir.mkdir(parents=True, exist_ok=True)
    stamp.write_text(fingerprint + "\n")
    return fingerprint


def run_calibration(model: str, row: str, bits: str, out: Path) -> dict:
    """`tqdit calibrate` for one row in a fresh process (so its peak RSS is its own); returns its cost."""
    cmd = [sys.executable, "-m", "tqdit_export.cli", "calibrate", "--model", model, "--bits", bits,
           "--out", str(out), "--quiet", *ROWS[row]]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"calibration failed: {' '.join(cmd)}\n{proc.stderr}")
    m = re.search(r"\): ([\d.]+) s, peak RSS (\d+) MiB", proc.stdout)
    return {"calib_seconds": float(m.group(1)), "calib_peak_rss_mib": int(m.group(2))}


def calibrate(model: str, row: str, bits: str, workdir: Path) -> tuple[Path, dict]:
    """Calibrate once (cached in workdir); returns the record and its cost."""
    out = record_path(workdir, row, bits)
    cost_file = out.with_suffix(".cost.json")
    if out.exists() and cost_file.exists():
        return out, json.loads(cost_file.read_text())
    cost = run_calibration(model, row, bits, out)
    cost_file.write_text(json.dumps(cost))
    return out, cost


def _record_content(path: Path) -> bytes | dict:
    """A record file's content, less the wall time it records (the one thing a rerun changes)."""
    if path.name != "record.json":
        return path.read_bytes()
    content = json.loads(path.read_text())
    content.get("method", {}).pop("wall_seconds", None)
    return content


def retime_calibrations(model: str, rows: list[str], bits_list: list[str], workdir: Path, results: dict) -> None:
    """Re-run the cached calibrations and replace their cost in the cache and in the cells.

    Calibration time is measured once, when a record is first made; a record made while
    other work shared the cores carries a wall time that says more about the load than
    about the method. Records are deterministic, so a rerun must reproduce the cached one
    (scales byte for byte; record.json but for its own `wall_seconds`, which is left as
    the first run wrote it); if it does not, the cells were sampled with another record and
    nothing is changed.
    """
    for bits in bits_list:
        for row in rows:
            if record_row(row) != row:  # fp has no record; the deployed rows sample tqdit's
                continue
            cached = record_path(workdir, row, bits)
            if not (cached / "record.json").exists():
                print(f"{row} {bits}: no cached record in {cached}, nothing to retime")
                continue
            with tempfile.TemporaryDirectory(dir=workdir) as tmp:
                fresh = Path(tmp) / "record"
                cost = run_calibration(model, row, bits, fresh)
                changed = [f.name for f in sorted(cached.iterdir()) if f.is_file()
                           and _record_content(f) != _record_content(fresh / f.name)]
            if changed:
                raise SystemExit(f"{row} {bits}: recalibrating did not reproduce {cached} ({', '.join(changed)} "
                                 "differ); its cells were sampled with that record, so their cost is left as it "
                                 "was. Rerun those cells in another --workdir")
            cached.with_suffix(".cost.json").write_text(json.dumps(cost))
            users = {r for r in ROWS if record_row(r) == row}
            for cell in results["cells"]:
                if cell["bits"] == bits and cell["row"] in users:
                    cell.update(cost)
            print(f"{row} {bits}: {cost['calib_seconds']} s, peak RSS {cost['calib_peak_rss_mib']} MiB", flush=True)


def draw(backend, num: int, steps: int, seed: int, num_classes: int, null_class: int) -> tuple[np.ndarray, np.ndarray]:
    """`num` samples exactly as `tqdit sample --num num --seed seed` draws them (one batch)."""
    labels = balanced_labels(num, num_classes)
    x = sample(backend, torch.from_numpy(labels), (1, 8, 8), SamplerConfig("ddpm", steps, 1.5, clip_denoised=True),
               null_class, seed=seed, progress=False)
    return x.numpy(), labels


def _first(group: list[dict], key: str):
    """The first value of `key` among a row's cells (cells from older runs may lack it)."""
    return next((c[key] for c in group if c.get(key) is not None), "—")


def mean_std(vals: list[float], digits: int) -> str:
    """One value as it is, several as mean ± std."""
    if len(vals) == 1:
        return f"{vals[0]:.{digits}f}"
    return f"{statistics.mean(vals):.{digits}f} ± {statistics.stdev(vals):.{digits}f}"


def write_tables(results: dict, out: Path) -> None:
    write_json(out.with_suffix(".json"), results)
    cells = results["cells"]
    lines = [f"# TQ-DiT quality on `{results['model']}`", "",
             "Commands (cells accumulate over runs): " + "; ".join(f"`{c}`" for c in results["commands"]) + "  ",
             f"Machine: {results['machine']}  ",
             f"Weights: `{results['model']}` sha256 {results['weights_sha256'][:12]}…  ",
             f"DDPM, cfg 1.5, {results['num']} samples per cell ({results['num'] // 10} per class), same noise for every row. "
             "FD: Fréchet distance to the held-out digits (bundled classifier features; lower is better); "
             "PSNR: paired with the FP samples of the same noise. Mean ± std over seeds where there are several.",
             "", "| bits | row | steps | seeds | FD | FD reference | accuracy | PSNR vs FP (dB) | calib s | "
             "calib peak RSS MiB |", "|---|---|---|---|---|---|---|---|---|---|"]

    steps_order = {100: 0, 250: 1, 50: 2}
    keys = sorted({(c["bits"], c["row"], c["steps"]) for c in cells},
                  key=lambda k: (k[0] != "FP", k[0], list(ROWS).index(k[1]), steps_order.get(k[2], k[2])))
    for bits, row, steps in keys:
        group = [c for c in cells if (c["bits"], c["row"], c["steps"]) == (bits, row, steps)]
        psnr = [c["psnr_vs_fp"] for c in group if c["psnr_vs_fp"] is not None]
        lines.append(
            f"| {bits} | {row} | {steps} | {len(group)} | {mean_std([c['fd'] for c in group], 3)} | "
            f"{mean_std([c['fd_reference'] for c in group], 3)} | "
            f"{mean_std([c['accuracy'] for c in group], 3)} | {mean_std(psnr, 2) if psnr else '—'} | "
            f"{_first(group, 'calib_seconds')} | {_first(group, 'calib_peak_rss_mib')} |")
    lines += ["", "FD reference: real train digits (as many as the samples) vs the held-out set, with the "
              "cell's seed choosing the draw: what a perfect generator would score."]
    lines += forms_table(cells)
    paired = [c for c in cells if c.get("psnr_vs_fp32_graph") is not None]
    if paired:
        lines += ["", "Paired PSNR of deployed rows against the images of their float32-float-ops graph "
                  "(same record, same noise):", "",
                  "| bits | row | steps | seed | against | PSNR (dB) |", "|---|---|---|---|---|---|"]
        lines += [f"| {c['bits']} | {c['row']} | {c['steps']} | {c['seed']} | {DEPLOYED[c['row']][3]} | "
                  f"{c['psnr_vs_fp32_graph']:.2f} |" for c in paired]
    plot = write_plot(results, out.with_suffix(".png"))
    if plot is not None:
        lines += ["", f"![FD and paired PSNR per row]({plot.name})"]
    with atomic_output(out.with_suffix(".md")) as tmp:
        tmp.write_text("\n".join(lines) + "\n")


# The MRQ forms compared with the paper's (forms_table): row and what it quantizes how.
FORM_ROWS = {
    "tqdit": "paper forms (compare + Where on A; two fc2 GEMMs)",
    "mrq-saturate": "saturating softmax, paper GELU",
    "mrq-shift": "paper softmax, shifted GELU",
    "mrq-cheap": "saturating softmax + shifted GELU (targets' default)",
    "no-mrq": "no MRQ (uniform)",
}


def forms_table(cells: list[dict]) -> list[str]:
    """The MRQ forms against the paper's at 100 steps: FD and PSNR over the seeds each row has,
    and the PSNR difference paired by seed (same noise, same FP samples) over the seeds both have."""
    at100 = {(c["row"], c["bits"], c["seed"]): c for c in cells if c["steps"] == 100 and c["row"] in FORM_ROWS}
    bits_list = [b for b in ("W8A8", "W6A6", "W4A8") if any(k[1] == b and k[0].startswith("mrq-") for k in at100)]
    if not bits_list:
        return []
    lines = ["", "MRQ forms against the paper's (DDPM 100 steps; mean ± std over the row's seeds; "
             "Δ PSNR: the difference to the tqdit row, paired by seed, over the seeds both rows have):", "",
             "| bits | row | MRQ forms | seeds | FD | accuracy | PSNR vs FP (dB) | Δ PSNR vs paper forms (dB) |",
             "|---|---|---|---|---|---|---|---|"]

    for bits in bits_list:
        for row, what in FORM_ROWS.items():
            group = sorted((k[2], c) for k, c in at100.items() if k[:2] == (row, bits))
            if not group:
                lines.append(f"| {bits} | {row} | {what} | none | not measured | | | |")
                continue
            seeds = [s for s, _ in group]
            paired = {s: c["psnr_vs_fp"] - at100[("tqdit", bits, s)]["psnr_vs_fp"] for s, c in group
                      if ("tqdit", bits, s) in at100}  # seed -> PSNR difference to the paper forms
            delta = "—" if row == "tqdit" else (
                f"{statistics.mean(paired.values()):+.2f} (seeds {', '.join(map(str, paired))})"
                if paired else "no paired seed")
            lines.append(f"| {bits} | {row} | {what} | {', '.join(map(str, seeds))} | "
                         f"{mean_std([c['fd'] for _, c in group], 3)} | {mean_std([c['accuracy'] for _, c in group], 3)} | "
                         f"{mean_std([c['psnr_vs_fp'] for _, c in group], 2)} | {delta} |")
    return lines


def write_plot(results: dict, path: Path) -> Path | None:
    """FD (mean ± std over seeds) and paired PSNR per row and bit width, at 100 steps."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot (pip install matplotlib)")
        return None
    cells = [c for c in results["cells"] if c["steps"] == 100]
    fp = [c["fd"] for c in cells if c["row"] == "fp"]
    bits = sorted({c["bits"] for c in cells if c["bits"] != "FP"}, key=lambda b: ["W8A8", "W6A6", "W4A8"].index(b)
                  if b in ("W8A8", "W6A6", "W4A8") else 9)
    rows = [r for r in ROWS if r != "fp" and any(c["row"] == r for c in cells)]
    fig, (ax_fd, ax_psnr) = plt.subplots(1, 2, figsize=(11, 4))
    width = 0.8 / max(len(bits), 1)
    for i, b in enumerate(bits):
        fd_mean, fd_std, psnr = [], [], []
        for r in rows:
            group = [c for c in cells if c["row"] == r and c["bits"] == b]
            fds = [c["fd"] for c in group]
            fd_mean.append(statistics.mean(fds) if fds else float("nan"))
            fd_std.append(statistics.stdev(fds) if len(fds) > 1 else 0.0)
            ps = [c["psnr_vs_fp"] for c in group if c["psnr_vs_fp"] is not None]
            psnr.append(statistics.mean(ps) if ps else float("nan"))
        xs = [j + i * width for j in range(len(rows))]
        ax_fd.bar(xs, fd_mean, width, yerr=fd_std, label=b, capsize=2)
        ax_psnr.bar(xs, psnr, width, label=b)
    if fp:
        ax_fd.axhline(statistics.mean(fp), color="k", linestyle="--", label="FP")
    for ax, title in ((ax_fd, "FD to held-out digits (lower is better)"), (ax_psnr, "paired PSNR vs FP (dB)")):
        ax.set_xticks([j + width * (len(bits) - 1) / 2 for j in range(len(rows))], rows, rotation=20)
        ax.set_title(title)
        ax.legend(fontsize=8)
    fig.suptitle(f"{results['model']}: DDPM 100 steps, cfg 1.5, {results['num']} samples per cell")
    fig.tight_layout()
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="dit-digits")
    p.add_argument("--bits", nargs="+", default=["W8A8", "W6A6", "W4A8"])
    p.add_argument("--rows", nargs="+", choices=list(ROWS), default=list(ROWS))
    p.add_argument("--steps", type=int, nargs="+", default=[100, 250, 50])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds at 100 steps (others: first)")
    p.add_argument("--num", type=int, default=500)
    p.add_argument("--out", type=Path, default=RESULTS / "quality")
    p.add_argument("--workdir", type=Path, default=Path("runs/quality"))
    p.add_argument("--retime-calibration", action="store_true",
                   help="only re-run the cached calibrations of --rows/--bits (on idle cores) and replace "
                        "their wall time and peak memory; samples nothing")
    p.add_argument("--report", action="store_true",
                   help="only rewrite the markdown table and plot from the JSON; samples and records nothing")
    args = p.parse_args(argv)
    if args.report:
        if not args.out.with_suffix(".json").exists():
            raise SystemExit(f"--report: {args.out.with_suffix('.json')} does not exist; run some cells first "
                             "(or pass the --out of an earlier run)")
        write_tables(json.loads(args.out.with_suffix(".json").read_text()), args.out)
        return

    resolved = resolve_model(args.model)
    model = resolved.model
    fingerprint = claim_workdir(args.workdir, model, args.model)
    json_path = args.out.with_suffix(".json")
    results = json.loads(json_path.read_text()) if json_path.exists() else {"cells": [], "weights_sha256": fingerprint}
    if results.get("weights_sha256") != fingerprint:  # resuming would mix cells of two models
        raise SystemExit(f"{json_path} holds cells of other {args.model} weights "
                         f"({str(results.get('weights_sha256'))[:12]}…, now {fingerprint[:12]}…): "
                         "pass another --out, or move those results away")
    command = ("python benchmarks/quality.py " + " ".join(argv if argv is not None else sys.argv[1:])).strip()
    # Cells accumulate over runs: keep every command that contributed some.
    commands = results.get("commands", [results["command"]] if "command" in results else [])
    results.update({"model": args.model, "num": args.num, "commands": commands + [command] * (command not in commands),
                    "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"})
    results.pop("command", None)
    if args.retime_calibration:
        retime_calibrations(args.model, args.rows, args.bits, args.workdir, results)
        write_tables(results, args.out)
        return
    done = {(c["row"], c["bits"], c["steps"], c["seed"]) for c in results["cells"]}
    fp_cache: dict[tuple[int, int], np.ndarray] = {}

    def fp_samples(steps: int, seed: int) -> np.ndarray:
        path = args.workdir / f"fp_ddpm{steps}_seed{seed}_n{args.num}.npz"
        if (steps, seed) not in fp_cache:
            if path.exists():
                fp_cache[(steps, seed)] = load_samples(path)[0]
            else:
                images, labels = draw(TorchBackend(model), args.num, steps, seed, 10, model.null_class)
                save_samples(path, images, labels, {"model": args.model, "dataset": "digits", "steps": steps,
                                                    "seed": seed, "sampler": "ddpm", "cfg": 1.5})
                fp_cache[(steps, seed)] = images
        return fp_cache[(steps, seed)]

    for bits in args.bits:
        for row in args.rows:
            cost = {}
            backend = TorchBackend(model)
            if row in DEPLOYED_ROWS:
                record_dir, cost = calibrate(args.model, record_row(row), bits, args.workdir)
                _, options, suffix, _ = DEPLOYED[row]
                onnx_dir = args.workdir / f"onnx_{bits}{suffix}"
                if not (onnx_dir / "manifest.json").exists():
                    export_dit(model, CalibrationRecord.load(record_dir, model), onnx_dir, **options)
                backend = OrtBackend(onnx_dir, threads=torch.get_num_threads())
            elif row != "fp":
                record_dir, cost = calibrate(args.model, row, bits, args.workdir)
                backend = FakeQuantBackend(model, CalibrationRecord.load(record_dir, model))
            for steps in args.steps:
                for seed in args.seeds if steps == 100 else args.seeds[:1]:
                    cell_bits = "FP" if row == "fp" else bits
                    if (row, cell_bits, steps, seed) in done:
                        continue
                    start = time.perf_counter()
                    if row == "fp":
                        images, labels = fp_samples(steps, seed), balanced_labels(args.num, 10)
                    else:
                        images, labels = draw(backend, args.num, steps, seed, 10, model.null_class)
                    metrics = evaluate_digits(images, labels, seed=seed)
                    psnr = None if row == "fp" else paired_psnr(images, fp_samples(steps, seed))
                    pair = {}
                    if row in DEPLOYED:
                        save_samples(deployed_images_path(args.workdir, row, bits, steps, seed, args.num), images,
                                     labels, {"model": args.model, "row": row, "steps": steps, "seed": seed})
                        paired_row = DEPLOYED[row][3]
                        paired = paired_row and deployed_images_path(args.workdir, paired_row, bits, steps, seed,
                                                                     args.num)
                        if paired and paired.exists():
                            pair = {"psnr_vs_fp32_graph": paired_psnr(images, load_samples(paired)[0])}
                    cell = {"row": row, "bits": cell_bits, "steps": steps, "seed": seed, "fd": metrics["fd"],
                            "fd_reference": metrics["fd_reference"], "fd_terms": metrics["fd_terms"],
                            "class_terms": metrics["class_terms"], "accuracy": metrics["accuracy"],
                            "psnr_vs_fp": psnr, **pair, "sample_seconds": round(time.perf_counter() - start, 1),
                            **cost}
                    results["cells"].append(cell)
                    done.add((row, cell_bits, steps, seed))
                    print(json.dumps(cell), flush=True)
                    write_tables(results, args.out)
    write_tables(results, args.out)
    print(args.out.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
