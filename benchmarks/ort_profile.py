"""Where the time of one denoiser call goes: ONNX Runtime's profiler, summed per op type.

    python benchmarks/ort_profile.py                          # DiT-S/2 and DiT-B/2
    python benchmarks/ort_profile.py --models DiT-B/2 --calls 5 --variants fp32 "int8 plain"

The graphs are speed_cpu.py's (same records, exports and call: batch 8, t = 500, random
weights for DiT-S/2 and DiT-B/2), one session each with ONNX Runtime's profiler on. After
`--warmup` calls, `--calls` calls are profiled; every node's kernel time is summed by op
type (ONNX Runtime's fused ops: MatMulIntegerToFloat is an integer GEMM with its float
epilogue) and divided by the calls. The sequential executor runs one node at a time (each
on `--threads` intra-op threads), so the op types' times add up to the call, less ORT's
own overhead (the "not in a kernel" row). Writes
benchmarks/results/ort_profile_<cpu kind>.{json,md}: each kind its own file.
"""
from __future__ import annotations

import argparse
import collections
import json
import sys
import tempfile
from pathlib import Path

import onnxruntime as ort

from speed_cpu import VARIANTS, call_inputs, export_variant, graph_at, load, make_records
from tqdit_export.edge.ort_runtime import make_session
from tqdit_export.hardware import cpu_description
from tqdit_export.io import atomic_output, write_json

RESULTS = Path(__file__).resolve().parent / "results"
DEFAULT_VARIANTS = ("fp32", "int8 plain", "int8 + paper MRQ (full TQ-DiT, paper forms)",
                    "int8 + cheap MRQ (full TQ-DiT, saturate + shift)", "int8 + cheap MRQ, attention float")
INTEGER_GEMMS = {"MatMulIntegerToFloat", "QLinearMatMul", "MatMulInteger", "DynamicQuantizeMatMul"}
FLOAT_GEMMS = {"MatMul", "Gemm", "FusedMatMul", "FusedGemm"}


def op_times(events: list[dict], skip: int, calls: int) -> tuple[dict[str, float], float]:
    """(op type -> ms per call, ms per whole call) over the `calls` runs that follow the first `skip`
    (warm-up) runs of an ORT profile's events (ORT cannot start profiling mid-session)."""
    runs = sorted((e for e in events if e.get("cat") == "Session" and e["name"] == "model_run"), key=lambda e: e["ts"])
    if len(runs) != skip + calls:
        raise RuntimeError(f"the profile holds {len(runs)} runs, expected {skip + calls}")
    start = runs[skip]["ts"]
    per_op: dict[str, float] = collections.defaultdict(float)
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["ts"] >= start:
            per_op[e["args"]["op_name"]] += e["dur"]
    run_us = sum(r["dur"] for r in runs[skip:])
    return {op: us / calls / 1000 for op, us in per_op.items()}, run_us / calls / 1000


def profile_graph(graph: Path, inputs: tuple, args, workdir: Path) -> tuple[dict[str, float], float]:
    """`op_times` of one graph (FP32 or a per-group graph) over `args.calls` calls after `args.warmup`."""
    session = make_session(graph, args.threads, ["CPUExecutionProvider"], profile_prefix=str(workdir / "profile"))
    feeds = dict(zip(("x", "t", "y"), inputs))
    for _ in range(args.warmup + args.calls):
        session.run(["out"], feeds)
    path = Path(session.end_profiling())
    try:
        return op_times(json.loads(path.read_text()), args.warmup, args.calls)
    finally:
        path.unlink()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["DiT-S/2", "DiT-B/2"])
    p.add_argument("--variants", nargs="+", default=list(DEFAULT_VARIANTS), choices=[v[0] for v in VARIANTS
                                                                                    if v[2] != "single"
                                                                                    and not v[0].startswith("peer")])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--calls", type=int, default=5)
    p.add_argument("--top", type=int, default=8, help="op types listed per variant (the rest summed as 'other')")
    p.add_argument("--out", type=Path, default=None,
                   help="results path without suffix (default: benchmarks/results/ort_profile_<cpu kind>)")
    args = p.parse_args(argv)
    cpu = cpu_description()
    args.out = args.out or RESULTS / f"ort_profile_{cpu['kind']}"
    variants = [v for v in VARIANTS if v[0] in args.variants]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        for name in args.models:
            model, label = load(name)
            records, _ = make_records(model, name, {v[1] for v in variants})
            inputs = call_inputs(model, args.batch)
            for variant in variants:
                out = export_variant(model, name, records, variant, workdir)
                graph = out / ("fp32.onnx" if variant[3] == "fp32" else graph_at(out, int(inputs[1][0])))
                times, run_ms = profile_graph(graph, inputs, args, workdir)
                rows.append({"model": label, "variant": variant[0], "ms_per_call": round(run_ms, 2),
                             "integer_gemm_ms": round(sum(v for k, v in times.items() if k in INTEGER_GEMMS), 2),
                             "float_gemm_ms": round(sum(v for k, v in times.items() if k in FLOAT_GEMMS), 2),
                             "not_in_a_kernel_ms": round(run_ms - sum(times.values()), 2),
                             "ops_ms": {k: round(v, 3) for k, v in sorted(times.items(), key=lambda kv: -kv[1])}})
                print({k: v for k, v in rows[-1].items() if k != "ops_ms"}, flush=True)
    command = ("python benchmarks/ort_profile.py " + " ".join(argv if argv is not None else sys.argv[1:])).strip()
    machine = f"{cpu['name']} ({cpu['kind']}), {args.threads} threads, onnxruntime {ort.__version__}"
    write_json(args.out.with_suffix(".json"), {"command": command, "machine": machine, "cpu": cpu, "batch": args.batch,
                                               "calls": args.calls, "rows": rows})
    lines = ["# Where a denoiser call's time goes (ONNX Runtime profiler, per op type)", "",
             f"Command: `{command}`  ", f"Machine: {machine}  ",
             f"Batch {args.batch} per call (CFG pairs), t = 500, mean of {args.calls} profiled calls after "
             f"{args.warmup} warm-up calls; ms per call (share of the call).", "",
             "| model | variant | ms per call | integer GEMMs | float GEMMs | op types, most time first |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        ops = list(r["ops_ms"].items())
        shown = [f"{k} {v:.1f} ({v / r['ms_per_call']:.0%})" for k, v in ops[:args.top]]
        rest = sum(v for _, v in ops[args.top:]) + r["not_in_a_kernel_ms"]
        shown.append(f"other + not in a kernel {rest:.1f} ({rest / r['ms_per_call']:.0%})")
        lines.append(f"| {r['model']} | {r['variant']} | {r['ms_per_call']} | {r['integer_gemm_ms']} | "
                     f"{r['float_gemm_ms']} | {'; '.join(shown)} |")
    with atomic_output(args.out.with_suffix(".md")) as tmp_md:
        tmp_md.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
