"""The integer-GEMM ceiling on this CPU: ONNX Runtime FP32 MatMul vs a Q/DQ INT8 MatMul, one GEMM at a time.

    python benchmarks/gemm_cpu.py                 # DiT-S/2 and DiT-B/2 linear layers, batch 8
    python benchmarks/gemm_cpu.py --models DiT-S/2 --threads 1

A whole INT8 graph cannot be faster than FP32 by more than its GEMMs are, so this measures
each linear layer of a DiT block alone, at the shapes of one denoiser call: M = batch x
tokens rows, [K, N] weights. The INT8 graph is what the exporter writes for a linear site
(x -> QuantizeLinear -> DequantizeLinear -> MatMul <- DequantizeLinear <- int8 W, per output
channel), which ONNX Runtime fuses into one MatMulIntegerToFloat; the kernel it runs is
checked in the optimised graph. Weights use 7-bit codes on CPUs without VNNI, as the
exporter does there. A third column re-encodes the same activation codes as uint8 with zero
point 128 (exact, but TensorRT refuses non-zero zero points): whether ONNX Runtime's u8 x s8
kernel beats its s8 x s8 one on this CPU. Median of `--repeats` runs; writes
benchmarks/results/gemm_cpu_<cpu kind>.{json,md} (vnni or avx2: each kind its own table).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from tqdit_export.edge.ort_runtime import DISABLED_OPTIMIZERS
from tqdit_export.hardware import cpu_description, cpu_has_vnni
from tqdit_export.io import atomic_output, write_json
from tqdit_export.models import DIT_CONFIGS

RESULTS = Path(__file__).resolve().parent / "results"


def linear_shapes(name: str, batch: int) -> list[tuple[str, int, int, int]]:
    """(layer, M, K, N) of the linear layers of one DiT block at `batch` images per call."""
    c = DIT_CONFIGS[name]
    tokens = (c.input_size // c.patch_size) ** 2
    d, m = c.hidden_size, batch * tokens
    hidden = int(d * c.mlp_ratio)
    return [("qkv", m, d, 3 * d), ("proj", m, d, d), ("fc1", m, d, hidden), ("fc2", m, hidden, d)]


def fp32_graph(k: int, n: int, w: np.ndarray) -> onnx.ModelProto:
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "fp32",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["m", k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["m", n])],
                              [numpy_helper.from_array(w, "w")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def int8_graph(k: int, n: int, w: np.ndarray, weight_bits: int, uint8_activations: bool = False) -> onnx.ModelProto:
    """The exporter's linear site: symmetric int8 activation Q/DQ, per-channel int8 weight DQ
    (`uint8_activations`: the same codes shifted by 128, zero point 128)."""
    qmax = 2 ** (weight_bits - 1) - 1
    w_scale = (np.abs(w).max(axis=0) / qmax).astype(np.float32)
    codes = np.clip(np.round(w / w_scale), -qmax, qmax).astype(np.int8)
    nodes = [helper.make_node("QuantizeLinear", ["x", "x_s", "x_zp"], ["x_q"]),
             helper.make_node("DequantizeLinear", ["x_q", "x_s", "x_zp"], ["x_dq"]),
             helper.make_node("DequantizeLinear", ["w_q", "w_s", "w_zp"], ["w_dq"], axis=1),
             helper.make_node("MatMul", ["x_dq", "w_dq"], ["y"])]
    inits = [numpy_helper.from_array(np.array(4.0 / 127, np.float32), "x_s"),
             numpy_helper.from_array(np.array(128, np.uint8) if uint8_activations else np.array(0, np.int8), "x_zp"),
             numpy_helper.from_array(codes, "w_q"),
             numpy_helper.from_array(w_scale, "w_s"), numpy_helper.from_array(np.zeros(n, np.int8), "w_zp")]
    graph = helper.make_graph(nodes, "int8", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["m", k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["m", n])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def session(model: onnx.ModelProto, threads: int, optimized: Path | None = None) -> ort.InferenceSession:
    """A session with the project's optimizer settings; `optimized`: where to write the optimised graph."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    if optimized is not None:
        opts.optimized_model_filepath = str(optimized)
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"],
                                disabled_optimizers=DISABLED_OPTIMIZERS)


def median_ms(sess: ort.InferenceSession, x: np.ndarray, repeats: int) -> float:
    for _ in range(3):
        sess.run(None, {"x": x})
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        sess.run(None, {"x": x})
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["DiT-S/2", "DiT-B/2"])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--out", type=Path, default=None,
                   help="results path without suffix (default: benchmarks/results/gemm_cpu_<cpu kind>)")
    args = p.parse_args(argv)
    cpu = cpu_description()
    # Figures of one CPU kind never stand in a table of another: each kind has its own file.
    args.out = args.out or RESULTS / f"gemm_cpu_{cpu['kind']}"
    weight_bits = 8 if cpu_has_vnni() else 7
    rng = np.random.default_rng(0)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            totals = {"fp32": 0.0, "int8": 0.0, "u8": 0.0}
            for layer, m, k, n in linear_shapes(name, args.batch):
                w = (rng.standard_normal((k, n)) / np.sqrt(k)).astype(np.float32)
                x = rng.standard_normal((m, k)).astype(np.float32)
                fp32 = median_ms(session(fp32_graph(k, n, w), args.threads), x, args.repeats)
                int8_sess = session(int8_graph(k, n, w, weight_bits), args.threads, Path(tmp) / "int8.onnx")
                kernel = ", ".join(sorted({node.op_type for node in onnx.load(str(Path(tmp) / "int8.onnx")).graph.node}))
                int8 = median_ms(int8_sess, x, args.repeats)
                u8 = median_ms(session(int8_graph(k, n, w, weight_bits, uint8_activations=True), args.threads), x,
                               args.repeats)
                totals["fp32"] += fp32
                totals["int8"] += int8
                totals["u8"] += u8
                gmacs = m * k * n / 1e9
                rows.append({"model": name, "layer": layer, "m": m, "k": k, "n": n, "fp32_ms": round(fp32, 3),
                             "int8_ms": round(int8, 3), "speedup": round(fp32 / int8, 2), "int8_kernels": kernel,
                             "u8_act_ms": round(u8, 3), "u8_act_speedup": round(fp32 / u8, 2),
                             "fp32_gmac_per_s": round(gmacs / fp32 * 1000, 1),
                             "int8_gmac_per_s": round(gmacs / int8 * 1000, 1)})
                print(rows[-1], flush=True)
            rows.append({"model": name, "layer": "block (sum)", "m": None, "k": None, "n": None,
                         "fp32_ms": round(totals["fp32"], 3), "int8_ms": round(totals["int8"], 3),
                         "speedup": round(totals["fp32"] / totals["int8"], 2), "int8_kernels": "",
                         "u8_act_ms": round(totals["u8"], 3), "u8_act_speedup": round(totals["fp32"] / totals["u8"], 2),
                         "fp32_gmac_per_s": None, "int8_gmac_per_s": None})
    command = ("python benchmarks/gemm_cpu.py " + " ".join(argv if argv is not None else sys.argv[1:])).strip()
    machine = (f"{cpu['name']} ({cpu['kind']}), {args.threads} threads, VNNI: {cpu_has_vnni()}, "
               f"onnxruntime {ort.__version__}, INT8 weights {weight_bits}-bit codes")
    write_json(args.out.with_suffix(".json"), {"command": command, "machine": machine, "cpu": cpu, "batch": args.batch,
                                               "repeats": args.repeats, "rows": rows})
    lines = ["# Integer-GEMM ceiling on this CPU (ONNX Runtime, one linear layer at a time)", "",
             f"Command: `{command}`  ", f"Machine: {machine}  ",
             f"Batch {args.batch} per call (M = batch x tokens), median of {args.repeats} runs.", "",
             "| model | layer | M x K x N | FP32 ms | INT8 ms | speed-up | FP32 GMAC/s | INT8 GMAC/s | INT8 kernel | "
             "u8-activation INT8 ms (speed-up) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        shape = f"{r['m']} x {r['k']} x {r['n']}" if r["m"] else "—"
        lines.append(f"| {r['model']} | {r['layer']} | {shape} | {r['fp32_ms']} | {r['int8_ms']} | {r['speedup']}x | "
                     f"{r['fp32_gmac_per_s'] or '—'} | {r['int8_gmac_per_s'] or '—'} | {r['int8_kernels'] or '—'} | "
                     f"{r['u8_act_ms']} ({r['u8_act_speedup']}x) |")
    with atomic_output(args.out.with_suffix(".md")) as tmp_md:
        tmp_md.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
