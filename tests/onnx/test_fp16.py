"""FP16 exports (the strongly typed TensorRT targets): every non-quantized op and every Q/DQ scale in
float16 except the named float32 ops; ONNX Runtime runs them, close to the float32 graphs.

Bounds, from float16's rounding (unit roundoff u = 2^-11 = 4.9e-4):
- the float graph (no Q/DQ) in FP16 vs FP32: each op rounds its output by at most u; measured
  ~3e-4 relative L2 per call, bound 4u = 2e-3;
- the Q/DQ graphs: a perturbation of float16's size moves an activation across a rounding
  boundary of its quantizer now and then, and each flipped code is an error of a whole step,
  so the output moves by ~sqrt(u * step / |x|) per quantized operand, not by u. The float32
  Q/DQ graph itself moves that much when only its input x is rounded to float16
  (`test_the_fp32_qdq_graph_moves_as_much_when_only_x_is_rounded`); the FP16 graph stays within
  3x that response and within 3e-2 relative L2 per call, and its sampled images within
  `PSNR_BOUND` dB paired PSNR of the float32 graph's (the same noise).
"""
import copy

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from tqdit_export.diffusion import SamplerConfig, sample
from tqdit_export.engines.ort_backend import OrtBackend
from tqdit_export.eval import paired_psnr
from tqdit_export.onnx import export_dit, lint_file
from tqdit_export.onnx.export import Float16Graph, export_onnx, float32_to_float16, _example_inputs
from tqdit_export.onnx.lint import FP16_EXCEPTIONS, lint_model
from tqdit_export.onnx.qdq import FP16_MIN_NORMAL, pow2_prescale, qdq
from tqdit_export.targets import TARGETS

U16 = 2.0**-11  # float16's unit roundoff
FLOAT_GRAPH_BOUND = 4 * U16
QDQ_BOUND = 3e-2
PSNR_BOUND = 40.0


def _rel(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def _inputs(t: int):
    torch.manual_seed(t)
    return torch.randn(6, 1, 8, 8), torch.full((6,), t), torch.tensor([0, 4, 9, 10, 10, 10])


@pytest.fixture(scope="module")
def exports(model, record, tmp_path_factory):
    """FP16 per-group and single exports and the float32 per-group export of the same record
    (7-bit weight codes in both, so ONNX Runtime's integer kernels are exact on every CPU)."""
    root = tmp_path_factory.mktemp("fp16")
    out = {}
    for name, layout, fp in (("fp16", "per-group", "fp16"), ("fp16-single", "single", "fp16"),
                             ("fp32", "per-group", "fp32")):
        out[name] = (root / name, export_dit(model, record, root / name, layout=layout, fp32=name == "fp32",
                                             weight_reduce_range=True, float_precision=fp))
    return record, out


def _types(proto: onnx.ModelProto) -> dict[str, int]:
    inferred = onnx.shape_inference.infer_shapes(proto).graph
    types = {v.name: v.type.tensor_type.elem_type for v in [*inferred.value_info, *inferred.output, *inferred.input]}
    types.update({i.name: i.data_type for i in proto.graph.initializer})
    for n in proto.graph.node:
        if n.op_type == "Constant":
            types[n.output[0]] = n.attribute[0].t.data_type
    return types


def test_fp16_exports_record_it_and_lint_clean(exports):
    _, out = exports
    for name in ("fp16", "fp16-single"):
        folder, manifest = out[name]
        assert manifest["float_precision"] == "fp16" and manifest["opset"] == 19
        assert set(manifest["float32_ops"]) == set(FP16_EXCEPTIONS)
        assert manifest["outputs"]["out"].startswith("float32")
        for g in manifest["graphs"]:
            assert lint_file(folder / g["file"]) == []  # not a warning either
    assert out["fp32"][1]["float_precision"] == "fp32"


def test_every_float_op_is_fp16_except_the_timestep_sinusoid_and_the_output_cast(exports):
    _, out = exports
    for name in ("fp16", "fp16-single"):
        folder, manifest = out[name]
        proto = onnx.load(str(folder / manifest["graphs"][0]["file"]))
        types = _types(proto)
        fp32_ops = [n for n in proto.graph.node if n.op_type not in ("Constant",)
                    and any(types.get(o) == onnx.TensorProto.FLOAT for o in n.output)]
        (output_cast,) = [n for n in fp32_ops if n.output[0] == "out"]
        assert output_cast.op_type == "Cast"
        sinusoid = [n for n in fp32_ops if n is not output_cast]
        # t -> float, * freqs, cos | sin, concat: all inside the timestep embedder, nothing else
        assert sorted(n.op_type for n in sinusoid) == ["Cast", "Concat", "Cos", "Mul", "Sin"]
        assert all("t_embedder" in n.name for n in sinusoid)
        # Every Q/DQ scale is float16, so every DQ output (and every quantized GEMM) is float16
        qdq = [n for n in proto.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
        assert qdq and all(types[n.input[1]] == onnx.TensorProto.FLOAT16 for n in qdq)
        assert {n.op_type for n in proto.graph.node if n.op_type in ("LayerNormalization", "Softmax", "Tanh")} == \
            {"LayerNormalization", "Softmax", "Tanh"}


def test_lint_reports_float32_ops_of_an_fp16_graph_except_the_named_ones():
    h, tp = onnx.helper, onnx.TensorProto
    nodes = [
        h.make_node("Cast", ["t"], ["tf"], to=tp.FLOAT, name="t_cast"),  # timestep-embedding: from t only
        h.make_node("Cos", ["tf"], ["tc"], name="t_cos"),
        h.make_node("Cast", ["tc"], ["tc16"], to=tp.FLOAT16, name="t_to16"),
        h.make_node("Cast", ["x"], ["x16"], to=tp.FLOAT16, name="x_to16"),
        h.make_node("Add", ["x16", "tc16"], ["h16"], name="add16"),
        h.make_node("Cast", ["h16"], ["h32"], to=tp.FLOAT, name="leak_cast"),  # float32 again ...
        h.make_node("Softmax", ["h32"], ["s32"], name="leaked_softmax"),  # ... and a softmax in FP32
        h.make_node("Cast", ["s32"], ["s16"], to=tp.FLOAT16, name="s_to16"),
        h.make_node("Cast", ["s16"], ["out"], to=tp.FLOAT, name="out_cast"),  # graph-output
    ]
    graph = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", tp.FLOAT, [2, 3]),
                                      h.make_tensor_value_info("t", tp.INT64, [2, 1])],
                         [h.make_tensor_value_info("out", tp.FLOAT, [2, 3])])
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 19)])
    flagged = {f.node for f in lint_model(model) if f.rule == "fp32-op"}
    assert flagged == {"leak_cast", "leaked_softmax"}
    # The same graph without any float16 op is an FP32 graph: nothing to report
    fp32_model = h.make_model(h.make_graph([h.make_node("Softmax", ["x"], ["out"])], "g", graph.input[:1],
                                           graph.output), opset_imports=[h.make_opsetid("", 19)])
    assert lint_model(fp32_model) == []


def test_the_float_graph_in_fp16_is_within_float16_rounding_of_fp32(exports, model, tmp_path):
    _, out = exports
    fp32_dir, _ = out["fp32"]
    path = tmp_path / "float16.onnx"
    export_onnx(Float16Graph(float32_to_float16(copy.deepcopy(model).eval())), _example_inputs(model), path,
                opset=19, metadata={"float_precision": "fp16"})
    sessions = [ort.InferenceSession(str(p), providers=["CPUExecutionProvider"])
                for p in (path, fp32_dir / "fp32.onnx")]
    for t in (10, 400, 900):
        x, tt, y = _inputs(t)
        feeds = {"x": x.numpy(), "t": tt.numpy(), "y": y.numpy()}
        got, ref = (s.run(None, feeds)[0] for s in sessions)
        assert got.dtype == np.float32 and _rel(got, ref) < FLOAT_GRAPH_BOUND


@pytest.fixture(scope="module")
def backends(exports):
    _, out = exports
    return {k: OrtBackend(out[k][0], threads=1) for k in ("fp16", "fp16-single", "fp32")}


def _per_call_errors(backends, t):
    x, tt, y = _inputs(t)
    fp16, fp16_single, fp32 = (backends[k] for k in ("fp16", "fp16-single", "fp32"))
    ref = fp32(x, tt, y)
    x_rounded = x.half().float()
    return _rel(fp16(x, tt, y), ref), _rel(fp16_single(x, tt, y), ref), _rel(fp32(x_rounded, tt, y), ref)


@pytest.mark.parametrize("t", [10, 400, 900])
def test_ort_fp16_qdq_graphs_match_the_fp32_graph_per_call(backends, t):
    per_group, single, x_rounded = _per_call_errors(backends, t)
    print(f"t={t}: fp16 per-group {per_group:.2e}, single {single:.2e}; fp32 graph, x rounded {x_rounded:.2e}")
    assert per_group < QDQ_BOUND and single < QDQ_BOUND
    # What float16 rounding alone does to a quantized graph sets the scale of the difference
    assert per_group < 3 * x_rounded + 4 * FLOAT_GRAPH_BOUND and single < 3 * x_rounded + 4 * FLOAT_GRAPH_BOUND


def test_ort_fp16_sampled_images_match_the_fp32_graph_images(backends, model):
    labels, config = torch.tensor([0, 3, 5, 9]), SamplerConfig("ddpm", 20, 1.5, clip_denoised=True)
    images = {name: sample(backend, labels, (1, 8, 8), config, 10, seed=5, progress=False).numpy()
              for name, backend in (("fp16", backends["fp16"]), ("fp32", backends["fp32"]),
                                    ("fp", lambda x, t, y: model(x, t, y)))}
    psnr = paired_psnr(images["fp16"], images["fp32"])
    print(f"paired PSNR fp16 vs fp32 graph {psnr:.2f} dB; fp32 graph vs FP {paired_psnr(images['fp32'], images['fp']):.2f}"
          f"; fp16 graph vs FP {paired_psnr(images['fp16'], images['fp']):.2f}")
    assert psnr > PSNR_BOUND
    # FP16 adds little to what quantization costs: the images stay as close to the FP model's
    assert paired_psnr(images["fp16"], images["fp"]) > paired_psnr(images["fp32"], images["fp"]) - 1.0


def test_tiny_scales_are_lifted_into_float16s_normal_range_exactly():
    assert pow2_prescale([1e-3, 5e-2]) == 1.0
    f = pow2_prescale([3e-7, 1e-3])
    assert f == 256.0 and 3e-7 * f >= FP16_MIN_NORMAL and 3e-7 * f / 2 < FP16_MIN_NORMAL
    torch.manual_seed(0)
    x = torch.rand(100_000) * 3e-5
    # Q/DQ(x * f, s * f) / f == Q/DQ(x, s): multiplying by a power of two is exact
    assert torch.equal(qdq(x * f, 3e-7 * f, 8) / f, qdq(x, 3e-7, 8))


def test_tensorrt_targets_export_float16_where_the_network_is_strongly_typed():
    strongly_typed = {k for k, t in TARGETS.items() if t.engine == "tensorrt" and t.strongly_typed}
    assert strongly_typed == {"h100", "a100", "l40s"}
    assert all(TARGETS[k].float_precision_for(10) == "fp16" for k in strongly_typed)
    # ONNX Runtime's CPU FP16 kernels are slow; JetPack 6's TensorRT 10.3 picks FP16 under its builder flag
    assert TARGETS["cpu"].float_precision_for(11) == "fp32"
    assert TARGETS["orin"].float_precision_for(10) == "fp32" and TARGETS["orin"].float_precision_for(None) == "fp32"
    # TensorRT 11 builds are always strongly typed
    assert TARGETS["orin"].float_precision_for(11) == "fp16" and TARGETS["orin-nano"].float_precision_for(11) == "fp16"


@pytest.mark.parametrize("options", [dict(layout="plugin"), dict(precision="fp8")], ids=["plugin", "fp8"])
def test_plugin_and_fp8_exports_in_fp16_lint_clean_and_match_their_fp32_graphs(model, record, tmp_path, options):
    folders = {fp: tmp_path / fp for fp in ("fp16", "fp32")}
    for fp, folder in folders.items():
        # 7-bit int8 weight codes, so ONNX Runtime's integer kernels are exact on every CPU (FP8 has none)
        export_dit(model, record, folder, weight_reduce_range="precision" not in options, float_precision=fp,
                   **options)
    for graph in folders["fp16"].glob("*.onnx"):  # the plugin layout keeps a Cast to float32 before each plugin
        assert lint_file(graph) == []
    x, tt, y = _inputs(400)
    got, ref = (OrtBackend(folder, threads=1)(x, tt, y) for folder in (folders["fp16"], folders["fp32"]))
    assert _rel(got, ref) < QDQ_BOUND
