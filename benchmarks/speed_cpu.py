"""Time per denoiser call on the CPU: ONNX Runtime FP32 vs INT8 Q/DQ graphs, peers, and artifact sizes.

    python benchmarks/speed_cpu.py                            # dit-digits, DiT-S/2, DiT-B/2
    python benchmarks/speed_cpu.py --quick                    # a check in a few minutes (no DiT-B/2)
    python benchmarks/speed_cpu.py --models dit-digits --threads 2

For every model: FP32 graph; INT8 per-group graphs without MRQ ("plain"); INT8 with the
paper's MRQ on the post-softmax sites only, on the post-GELU sites only, and on both (what
MRQ costs per site); the cheap MRQ forms (calibration/forms.py: saturating softmax, shifted
GELU), each alone and both, with attention quantized or in float; the single layout
(time_group input). Peers in the same run: ONNX Runtime's `quantize_static` (QDQ, min-max,
one graph, per-channel weights) on the FP32 graph, and OpenVINO (when installed) running the
FP32 graph and our cheap-MRQ Q/DQ graph with f32 float ops, and the FP32 graph in bf16 where
the CPU has BF16 (OpenVINO's own default there). The bundled
model uses its trained weights and a TQ-DiT record; DiT-S/2 and DiT-B/2 (32x32x4 latents)
use random weights and a min-max record (labelled: speed only, no quality meaning).
Median of `--repeats` timed calls after warm-up, every variant of a model timed in rounds
(one call of each per round, so a drifting machine shifts them alike), batch `--batch` (CFG
doubles a batch of images, so 8 = 4 images), `--threads` intra-op threads. Writes
benchmarks/results/speed_cpu_<cpu kind>.{json,md} (vnni or avx2: each kind its own table).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from calibration.calibrate import CalibrationConfig
from calibration.record import CalibrationRecord
from calibration.sites import Site
from tqdit_export.api import OrtSessionDenoiser
from tqdit_export.edge.ort_runtime import OrtDenoiser
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
    """The MRQ record with multi-region quantizers only where the region is `region` (e.g. "softmax"
    or "gelu-shift"); the other MRQ operands get their high-region (or only) step as one uniform
    scale. For speed only: the graph has the GEMMs of that mix, the dropped operands are not calibrated."""
    tensors, sites = dict(record.tensors), []
    for site in record.sites:
        for operand, kind in site.regions.items():
            if kind != region:
                key = f"{site.name}.{operand}"
                tensors[f"{key}.scale"] = tensors.get(f"{key}.scale_high", tensors.get(f"{key}.scale"))
        sites.append(Site(site.name, site.kind, {op: k for op, k in site.regions.items() if k == region}))
    return dataclasses.replace(record, sites=sites, tensors=tensors)


# Between two timed calls of different sessions: ONNX Runtime's pool threads spin for a while after a
# call, and a session's spinning threads would take the cores from the next session's call (measured
# on the bundled model: 8 ms per call instead of 3.5 without this pause).
SESSION_SWITCH_PAUSE_S = 0.05


def time_interleaved(backends: list, x, t, y, repeats: int, warmup: int = 3) -> list[float]:
    """Median ms per call of each backend, timed in rounds (one call of each per round, after
    `warmup` calls each): a machine whose speed drifts during the run (a shared host) shifts
    every variant alike, so the ratios within a model hold."""
    for backend in backends:
        for _ in range(warmup):
            backend(x, t, y)
    times: list[list[float]] = [[] for _ in backends]
    for _ in range(repeats):
        for backend, own in zip(backends, times):
            time.sleep(SESSION_SWITCH_PAUSE_S)
            start = time.perf_counter()
            backend(x, t, y)
            own.append(time.perf_counter() - start)
    return [1000 * statistics.median(own) for own in times]


# (label, record, layout, graph): graph is "fp32", "int8", "int8 float-attention" or a peer.
VARIANTS = [
    ("fp32", "plain", "—", "fp32"),
    ("int8 plain", "plain", "per-group", "int8"),
    ("int8 + paper MRQ on A (post-softmax) only", "mrq-softmax", "per-group", "int8"),
    ("int8 + paper MRQ on fc2 input (post-GELU) only", "mrq-gelu", "per-group", "int8"),
    ("int8 + paper MRQ (full TQ-DiT, paper forms)", "mrq", "per-group", "int8"),
    ("int8 + saturating softmax MRQ only", "mrq-saturate", "per-group", "int8"),
    ("int8 + shifted GELU MRQ only", "mrq-shift", "per-group", "int8"),
    ("int8 + cheap MRQ (full TQ-DiT, saturate + shift)", "mrq-cheap", "per-group", "int8"),
    ("int8 + cheap MRQ, attention float", "mrq-cheap", "per-group", "int8 float-attention"),
    ("int8 + cheap MRQ, single layout", "mrq-cheap", "single", "int8"),
    ("peer: ORT quantize_static (QDQ, min-max, one graph)", "plain", "—", "quantize_static"),
    ("peer: OpenVINO FP32", "plain", "—", "openvino fp32"),
    ("peer: OpenVINO BF16 (its default on CPUs with BF16)", "plain", "—", "openvino bf16"),
    ("peer: OpenVINO, our cheap-MRQ Q/DQ graph", "mrq-cheap", "per-group", "openvino int8"),
]
QUICK_VARIANTS = ("fp32", "int8 plain", "int8 + paper MRQ (full TQ-DiT, paper forms)",
                  "int8 + cheap MRQ (full TQ-DiT, saturate + shift)", "int8 + cheap MRQ, attention float",
                  "peer: ORT quantize_static (QDQ, min-max, one graph)", "peer: OpenVINO, our cheap-MRQ Q/DQ graph")


def ort_session(path: Path, threads: int) -> OrtSessionDenoiser:
    return OrtSessionDenoiser(path, threads)


def openvino_session(path: Path, threads: int, precision: str = "f32") -> OrtSessionDenoiser | str:
    """OpenVINO's CPU plugin compiling the same ONNX graph, its float ops in `precision` ("f32" or
    "bf16"), or why it cannot run here. The precision is set, never left to OpenVINO: its default
    is bf16 wherever the CPU has BF16 (AVX512-BF16, AMX), which made an "FP32" row a BF16 one."""
    try:
        import openvino as ov
    except ImportError:
        return "openvino is not installed (pip install openvino)"
    core = ov.Core()
    if precision == "bf16" and "BF16" not in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        return "this CPU has no BF16 (OpenVINO runs f32 here)"
    compiled = core.compile_model(str(path), "CPU", {"INFERENCE_NUM_THREADS": threads, "NUM_STREAMS": 1,
                                                     "INFERENCE_PRECISION_HINT": precision})
    request = compiled.create_infer_request()
    out = compiled.output(0)
    return OrtSessionDenoiser(run=lambda feeds: request.infer(feeds)[out])


def quantize_static_graph(fp32: Path, model: DiT, out: Path) -> Path:
    """ONNX Runtime's own static quantization of the FP32 graph (min-max over a few denoiser inputs)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    c = model.config
    gen = torch.Generator().manual_seed(2)
    batches = iter([{"x": torch.randn(8, c.in_channels, c.input_size, c.input_size, generator=gen).numpy(),
                     "t": torch.full((8,), t).numpy(), "y": (torch.arange(8) % c.num_classes).numpy()}
                    for t in (50, 500, 950)])

    class Reader:
        def get_next(self):
            return next(batches, None)

    quantize_static(str(fp32), str(out), Reader(), quant_format=QuantFormat.QDQ, op_types_to_quantize=["MatMul", "Gemm"],
                    per_channel=True, reduce_range=not cpu_has_vnni(), activation_type=QuantType.QInt8,
                    weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax,
                    extra_options={"ActivationSymmetric": True, "WeightSymmetric": True})
    return out


def make_records(model: DiT, name: str, needed: set[str], quick: bool = False) -> tuple[dict[str, CalibrationRecord], int]:
    """The records the variants in `needed` (their record labels) export, and the number of time groups."""
    random_weights = name in DIT_CONFIGS
    groups = 2 if random_weights else 10  # speed does not depend on G; sizes scale with it
    # quick calibrates the bundled model on 8 samples per group, one round: speed does not depend on it
    common = dict(samples_per_group=2 if random_weights else (8 if quick else 32),
                  trajectory_steps=10 if random_weights else 100, clip_denoised=not random_weights, progress=False)
    method = "minmax" if random_weights else "tqdit"  # MRQ exists only in the TQ-DiT search

    def tqdit(**forms) -> CalibrationRecord:
        # random weights: one round without HO (speed does not depend on the scales)
        return calibrate_dit(model, CalibrationConfig(num_groups=groups, rounds=1 if random_weights or quick else 3,
                                                      ho=not random_weights, **forms), **common)

    records = {"plain": calibrate_dit(model, CalibrationConfig(num_groups=groups, method=method, mrq=False), **common)}
    if needed & {"mrq", "mrq-softmax", "mrq-gelu"}:
        records["mrq"] = tqdit()
        records["mrq-softmax"] = mrq_only(records["mrq"], "softmax")
        records["mrq-gelu"] = mrq_only(records["mrq"], "gelu")
    if needed & {"mrq-cheap", "mrq-saturate", "mrq-shift"}:
        records["mrq-cheap"] = tqdit(softmax_mrq="saturate", gelu_mrq="shift")
        records["mrq-saturate"] = mrq_only(records["mrq-cheap"], "softmax-saturate")
        records["mrq-shift"] = mrq_only(records["mrq-cheap"], "gelu-shift")
    return records, groups


def call_inputs(model: DiT, batch: int) -> tuple:
    """x, t (= 500), y of one timed denoiser call: `batch` rows, the second half the null class (CFG)."""
    c = model.config
    torch.manual_seed(1)
    x = torch.randn(batch, c.in_channels, c.input_size, c.input_size)
    t = torch.full((batch,), 500)
    y = torch.cat([torch.arange(batch // 2) % c.num_classes, torch.full((batch - batch // 2,), model.null_class)])
    return x.numpy(), t.numpy(), y.numpy()


def export_variant(model: DiT, name: str, records: dict[str, CalibrationRecord], variant: tuple,
                   workdir: Path) -> Path:
    """The export folder of one `VARIANTS` entry (written once per record, layout and attention)."""
    _, rec, layout, graph = variant
    attention = graph != "int8 float-attention"
    out = workdir / f"{name.replace('/', '_')}_{rec}_{layout.replace('—', 'fp32')}_{attention}"
    if not out.exists():
        export_dit(model, records[rec], out, layout="per-group" if layout == "—" else layout,
                   fp32=graph in ("fp32", "quantize_static", "openvino fp32", "openvino bf16"), attention=attention)
    return out


def graph_at(out: Path, t: int) -> str:
    """The file of an export's graph that serves timestep `t` (per-group layout; the single graph otherwise)."""
    graphs = json.loads((out / "manifest.json").read_text())["graphs"]
    return next(g["file"] for g in graphs if "timesteps" not in g or g["timesteps"][0] <= t < g["timesteps"][1])


def bench_model(name: str, args, workdir: Path) -> list[dict]:
    model, label = load(name)
    variants = [v for v in VARIANTS if not args.quick or v[0] in QUICK_VARIANTS]
    records, groups = make_records(model, name, {v[1] for v in variants}, args.quick)
    x, t, y = call_inputs(model, args.batch)
    opened = []  # (variant, layout, backend, folder, files): every session open at once, timed in rounds
    for variant, rec, layout, graph in variants:
        out = export_variant(model, name, records, (variant, rec, layout, graph), workdir)
        if graph.startswith("int8"):
            backend = OrtDenoiser(out, threads=args.threads)
            files = [g["file"] for g in backend.manifest.graphs]
        elif graph == "fp32":
            backend, files = ort_session(out / "fp32.onnx", args.threads), ["fp32.onnx"]
        elif graph == "quantize_static":
            path = quantize_static_graph(out / "fp32.onnx", model, out / "quantize_static.onnx")
            backend, files = ort_session(path, args.threads), [path.name]
        else:  # OpenVINO: the FP32 graph, or our per-group graph of the group that t = 500 is in
            gfile = "fp32.onnx" if graph in ("openvino fp32", "openvino bf16") else graph_at(out, 500)
            backend, files = openvino_session(out / gfile, args.threads, "bf16" if graph == "openvino bf16"
                                              else "f32"), [gfile]
            if isinstance(backend, str):
                print(f"{variant}: {backend}: skipped", flush=True)
                continue
        opened.append((variant, layout, backend, out, files))
    times = time_interleaved([o[2] for o in opened], x, t, y, args.repeats)
    ms_of = {o[0]: ms for o, ms in zip(opened, times)}
    fp32_ms, plain_ms = ms_of.get("fp32"), ms_of.get("int8 plain")
    rows = []
    for (variant, layout, _, out, files), ms in zip(opened, times):
        rows.append({"model": label, "variant": variant, "layout": layout, "groups": groups,
                     "ms_per_call": round(ms, 2), "speedup_vs_fp32": round(fp32_ms / ms, 2),
                     "time_vs_int8_plain": round(ms / plain_ms, 2) if variant != "fp32" else None,
                     "artifact_mib": round(sum((out / f).stat().st_size for f in files) / 2**20, 2)})
        print(rows[-1], flush=True)
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["dit-digits", "DiT-S/2", "DiT-B/2"])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--quick", action="store_true",
                   help="a check in minutes: dit-digits and DiT-S/2 (unless --models), the main variants, "
                        "5 repeats (unless --repeats); writes speed_cpu_<kind>_quick")
    p.add_argument("--out", type=Path, default=None,
                   help="results path without suffix (default: benchmarks/results/speed_cpu_<cpu kind>)")
    args = p.parse_args(argv)
    given = set(argv if argv is not None else sys.argv[1:])
    if args.quick:
        args.models = args.models if "--models" in given else ["dit-digits", "DiT-S/2"]
        args.repeats = args.repeats if "--repeats" in given else 5
    cpu = cpu_description()
    # Figures of one CPU kind never stand in a table of another: each kind has its own file.
    args.out = args.out or RESULTS / f"speed_cpu_{cpu['kind']}{'_quick' if args.quick else ''}"
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
             f"Machine: {machine}  ", f"Batch {args.batch} per call (CFG pairs), median of {args.repeats} calls, the "
             "variants of a model timed in rounds (one call of each per round).", "",
             "| model | variant | layout | G | ms per call | speed-up vs FP32 | time vs INT8 plain | artifact MiB |",
             "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['variant']} | {r['layout']} | {r['groups']} | {r['ms_per_call']} | "
              f"{r['speedup_vs_fp32']}x | {'—' if r['time_vs_int8_plain'] is None else str(r['time_vs_int8_plain']) + 'x'} "
              f"| {r['artifact_mib']} |" for r in rows]
    with atomic_output(args.out.with_suffix(".md")) as tmp_md:
        tmp_md.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
