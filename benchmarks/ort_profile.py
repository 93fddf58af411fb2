"""Where the time of one denoiser call goes: ONNX Runtime's profiler, summed per op type.

    python benchmarks/ort_profile.py                          # DiT-S/2 and DiT-B/2
    python benchmarks/ort_profile.py --models DiT-B/2 --calls 5 --variants fp32 "int8 plain"

The graphs are speed_cpu.py's (same records, exports and call: batch 8, t = 500, random
weights for DiT-S/2 and DiT-B/2), one session each with ONNX Runtime's profiler on. After
`--warmup` calls each, the variants of a model are called in `--calls` rounds (one call of
each per round, so a drifting machine shifts them alike); every node's kernel time is summed
by op type per call (ONNX Runtime's fused ops: MatMulIntegerToFloat is an integer GEMM with
its float epilogue), and the table gives each op type's median over the calls. The
sequential executor runs one node at a time (each on `--threads` intra-op threads), so the
op types' times add up to about the call, less ORT's own overhead (the "not in a kernel"
part; medians need not add up exactly). Writes
benchmarks/results/ort_profile_<cpu kind>.{json,md}: each kind its own file.
"""
from __future__ import annotations

import argparse
import bisect
import collections
import json
import statistics
import sys
import tempfile
from pathlib import Path

import onnxruntime as ort

from speed_cpu import VARIANTS, call_inputs, export_variant, graph_at, load, make_records, time_interleaved
from tqdit_export.edge.ort_runtime import make_session
from tqdit_export.hardware import cpu_description
from tqdit_export.io import atomic_output, write_json

RESULTS = Path(__file__).resolve().parent / "results"
DEFAULT_VARIANTS = ("fp32", "int8 plain", "int8 + paper MRQ (full TQ-DiT, paper forms)",
                    "int8 + cheap MRQ (full TQ-DiT, saturate + shift)", "int8 + cheap MRQ, attention float")
INTEGER_GEMMS = {"MatMulIntegerToFloat", "QLinearMatMul", "MatMulInteger", "DynamicQuantizeMatMul"}
FLOAT_GEMMS = {"MatMul", "Gemm", "FusedMatMul", "FusedGemm"}


def op_times(events: list[dict], skip: int) -> tuple[dict[str, float], float]:
    """(op type -> median ms per call, median ms of a whole call) over the runs of an ORT profile
    after its first `skip` (warm-up) runs (ORT cannot start profiling mid-session)."""
    runs = sorted((e for e in events if e.get("cat") == "Session" and e["name"] == "model_run"), key=lambda e: e["ts"])
    timed = runs[skip:]
    if not timed:
        raise RuntimeError(f"the profile holds {len(runs)} runs, none after the {skip} warm-up runs")
    per_run: list[dict[str, float]] = [collections.defaultdict(float) for _ in timed]
    starts = [r["ts"] for r in timed]
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["ts"] >= starts[0]:
            per_run[bisect.bisect_right(starts, e["ts"]) - 1][e["args"]["op_name"]] += e["dur"] / 1000
    ops = {op for run in per_run for op in run}
    return ({op: statistics.median(run.get(op, 0.0) for run in per_run) for op in ops},
            statistics.median(r["dur"] / 1000 for r in timed))


def profile_graphs(graphs: list[Path], inputs: tuple, args, workdir: Path) -> list[tuple[dict[str, float], float]]:
    """`op_times` of each graph (FP32 or a per-group graph), all profiled in rounds: after
    `args.warmup` calls each, one call of each graph per round, `args.calls` rounds (a machine
    whose speed drifts shifts every graph alike)."""
    sessions = [make_session(g, args.threads, ["CPUExecutionProvider"], profile_prefix=str(workdir / f"profile{i}"))
                for i, g in enumerate(graphs)]
    calls = [lambda x, t, y, s=s: s.run(["out"], {"x": x, "t": t, "y": y}) for s in sessions]
    time_interleaved(calls, *inputs, args.calls, args.warmup)  # the profiles hold the times; its medians unused
    results = []
    for session in sessions:
        path = Path(session.end_profiling())
        try:
            results.append(op_times(json.loads(path.read_text()), args.warmup))
        finally:
            path.unlink()
    return results


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["DiT-S/2", "DiT-B/2"])
    p.add_argument("--variants", nargs="+", default=list(DEFAULT_VARIANTS), choices=[v[0] for v in VARIANTS
                                                                                    if v[2] != "single"
                                                                                    and not v[0].startswith("peer")])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--calls", type=int, default=7)
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
            graphs = []
            for variant in variants:
                out = export_variant(model, name, records, variant, workdir)
                graphs.append(out / ("fp32.onnx" if variant[3] == "fp32" else graph_at(out, int(inputs[1][0]))))
            for variant, (times, run_ms) in zip(variants, profile_graphs(graphs, inputs, args, workdir)):
                rows.append({"model": label, "variant": variant[0], "ms_per_call": round(run_ms, 2),
                             "integer_gemm_ms": round(sum(v for k, v in times.items() if k in INTEGER_GEMMS), 2),
                             "float_gemm_ms": round(sum(v for k, v in times.items() if k in FLOAT_GEMMS), 2),
                             "not_in_a_kernel_ms": round(max(0.0, run_ms - sum(times.values())), 2),
                             "ops_ms": {k: round(v, 3) for k, v in sorted(times.items(), key=lambda kv: -kv[1])}})
                print({k: v for k, v in rows[-1].items() if k != "ops_ms"}, flush=True)
    command = ("python benchmarks/ort_profile.py " + " ".join(argv if argv is not None else sys.argv[1:])).strip()
    machine = f"{cpu['name']} ({cpu['kind']}), {args.threads} threads, onnxruntime {ort.__version__}"
    write_json(args.out.with_suffix(".json"), {"command": command, "machine": machine, "cpu": cpu, "batch": args.batch,
                                               "calls": args.calls, "rows": rows})
    lines = ["# Where a denoiser call's time goes (ONNX Runtime profiler, per op type)", "",
             f"Command: `{command}`  ", f"Machine: {machine}  ",
             f"Batch {args.batch} per call (CFG pairs), t = 500, median of {args.calls} profiled calls after "
             f"{args.warmup} warm-up calls, the variants of a model called in rounds; ms per call (share of the "
             "call).", "",
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
