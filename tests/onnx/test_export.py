"""Per-group Q/DQ ONNX export of a calibrated tiny DiT, run by ONNX Runtime's integer kernels."""
import json

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from tqdit_export.diffusion import SamplerConfig, sample
from tqdit_export.engines.ort_backend import OrtBackend
from tqdit_export.eval import paired_psnr
from tqdit_export.onnx import export_dit, qdq_model
from calibration.forms import OperandQuant, Part
from tqdit_export.onnx.qdq import ActivationQDQ, GroupInput
from tqdit_export.quant import FakeQuantBackend


@pytest.fixture(scope="module")
def exported(record, model, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "per_group"
    # 7-bit weights / B operands, as on CPUs without VNNI, so the test is the same on every CPU.
    manifest = export_dit(model, record, out, fp32=True, weight_reduce_range=True)
    return record, out, manifest


@pytest.fixture(scope="module")
def exported_single(record, model, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "single"
    return record, out, export_dit(model, record, out, layout="single", weight_reduce_range=True)


def _inputs(t):
    torch.manual_seed(t)
    return torch.randn(6, 1, 8, 8), torch.full((6,), t), torch.tensor([0, 4, 9, 10, 10, 10])


def _rel(a, b):
    return float((a - b).norm() / b.norm())


def test_manifest_names_every_group_graph(exported):
    record, out, manifest = exported
    assert json.loads((out / "manifest.json").read_text()) == manifest
    assert manifest["layout"] == "per-group" and len(manifest["graphs"]) == 3
    assert [g["timesteps"] for g in manifest["graphs"]] == [[0, 333], [333, 667], [667, 1000]]
    assert all((out / g["file"]).exists() for g in manifest["graphs"]) and (out / "fp32.onnx").exists()


def test_graphs_hold_explicit_symmetric_qdq_and_int8_weights(exported):
    _, out, manifest = exported
    graph = onnx.load(str(out / manifest["graphs"][0]["file"])).graph
    consts = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            consts[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    producer = {o: n for n in graph.node for o in n.output}
    qdq = [n for n in graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert len(qdq) > 20
    for node in qdq:
        scale, zp = consts[node.input[1]], consts[node.input[2]]
        assert (scale > 0).all() and (zp == 0).all() and zp.dtype == np.int8
    weight_dq = [n for n in qdq if n.op_type == "DequantizeLinear" and n.input[0] in consts]
    assert weight_dq and all(consts[n.input[0]].dtype == np.int8 for n in weight_dq)
    assert all(a.i == 1 for n in weight_dq for a in n.attribute if a.name == "axis")
    # Every quantized MatMul reads both operands straight from a DequantizeLinear.
    matmuls = [n for n in graph.node if n.op_type == "MatMul" and any(
        producer.get(i) is not None and producer[i].op_type == "DequantizeLinear" for i in n.input)]
    assert len(matmuls) >= 2 * 6 + 1
    assert all(producer[i].op_type == "DequantizeLinear" for n in matmuls for i in n.input)


@pytest.mark.parametrize("t", [10, 400, 900])
def test_ort_int8_matches_the_torch_reference_per_group(exported, model, t):
    record, out, _ = exported
    backend = OrtBackend(out, threads=1)
    x, tt, y = _inputs(t)
    g = record.time_groups.group_of(tt)
    with torch.no_grad():
        same_arithmetic = qdq_model(model, record, g, weight_reduce_range=True)(x, tt, y)
        fake_quant_same_widths = FakeQuantBackend(model, record, reduce_range=True)(x, tt, y)
        exact_sums = FakeQuantBackend(model, record, reduce_range=True, exact_sums=True)(x, tt, y)
        fake_quant = FakeQuantBackend(model, record)(x, tt, y)
    got = backend(x, tt, y)
    # The fake-quant model at the export's widths is the export module's arithmetic
    assert _rel(fake_quant_same_widths, same_arithmetic) < 1e-5
    # Against the torch module of the same arithmetic, only rounding-tie and kernel
    # differences remain; against the record's 8-bit fake quantization the reduced range
    # adds its own error (this random model's outputs are small, which magnifies it).
    assert _rel(got, same_arithmetic) < 5e-3 and _rel(got, fake_quant_same_widths) < 5e-3
    # float64 sums (the parity reference) are the same model, closer to the integer kernels' exact sums
    assert _rel(exact_sums, fake_quant_same_widths) < 5e-3 and _rel(got, exact_sums) < 5e-3
    assert _rel(got, fake_quant) < 3e-2


@pytest.mark.parametrize("layout", ["per-group", "single"])
def test_ort_sampled_images_match_the_fake_quant_images(exported, exported_single, model, layout):
    record, out, _ = exported if layout == "per-group" else exported_single
    labels, config = torch.tensor([0, 3, 5, 9]), SamplerConfig("ddpm", 20, 1.5, clip_denoised=True)
    images = {name: sample(backend, labels, (1, 8, 8), config, 10, seed=5, progress=False).numpy()
              for name, backend in (("ort", OrtBackend(out, threads=1)),
                                    ("fake_quant", FakeQuantBackend(model, record, reduce_range=True)),
                                    ("fp", lambda x, t, y: model(x, t, y)))}
    psnr_ort = paired_psnr(images["ort"], images["fake_quant"])
    # ORT draws the fake-quant model's images from the same noise, far closer than to FP's
    assert psnr_ort > 60 and psnr_ort > paired_psnr(images["fake_quant"], images["fp"]) + 10


def test_fp32_graph_matches_torch(exported, model):
    _, out, _ = exported
    x, t, y = _inputs(3)
    with torch.no_grad():
        ref = model(x, t, y)
    assert _rel(OrtBackend(out, threads=1, fp32=True)(x, t, y), ref) < 1e-5


def test_sampling_over_ort_sessions_picks_the_group_of_each_step(exported):
    record, out, _ = exported
    backend = OrtBackend(out, threads=1)
    used = []
    original = backend.denoiser.session_for  # numpy timesteps: the torch-free core picks the session
    backend.denoiser.session_for = lambda t: (used.append(record.time_groups.group_of(int(t[0]))), original(t))[1]
    images = sample(backend, torch.tensor([1, 2]), (1, 8, 8), SamplerConfig("ddim", 10), 10, progress=False)
    assert torch.isfinite(images).all() and used == sorted(used, reverse=True) and set(used) == {0, 1, 2}


def test_export_never_replaces_a_foreign_folder(exported, model, tmp_path):
    record = exported[0]
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not a folder this tool wrote"):
        export_dit(model, record, foreign)
    assert (foreign / "notes.txt").read_text() == "keep me"
    assert [p.name for p in tmp_path.iterdir()] == ["mine"]


def test_single_layout_matches_the_per_group_graphs(exported, exported_single):
    record, per_group_dir, _ = exported
    _, single_dir, manifest = exported_single
    assert manifest["layout"] == "single" and [g["file"] for g in manifest["graphs"]] == ["single.onnx"]
    graph = onnx.load(str(single_dir / "single.onnx")).graph
    assert [i.name for i in graph.input] == ["x", "t", "y", "time_group"]
    per_group, single = OrtBackend(per_group_dir, threads=1), OrtBackend(single_dir, threads=1)
    for t in (10, 400, 900):
        x, tt, y = _inputs(t)
        # the same codes in both layouts: only the float rounding of the output scales differs (~5e-8)
        assert _rel(single(x, tt, y), per_group(x, tt, y)) < 1e-5


def test_single_layout_stores_the_weights_once(exported, exported_single):
    _, per_group_dir, manifest = exported
    _, single_dir, _ = exported_single
    per_group_bytes = sum((per_group_dir / g["file"]).stat().st_size for g in manifest["graphs"])
    single_bytes = (single_dir / "single.onnx").stat().st_size
    assert single_bytes < per_group_bytes / 2


@pytest.mark.parametrize("bits", [8, 6])
def test_single_layout_codes_are_bit_identical_to_the_per_group_codes(bits):
    # The single layout divides by the group's scale and quantizes with scale 1: the same
    # float x / s_g is rounded as in Q/DQ(s_g), so not one code may differ (a multiply by
    # s0/s_g before Q(s0) rounds twice and flips a few codes in two million).
    torch.manual_seed(bits)
    table = [0.0123, 0.0371, 0.00517, 0.0291]
    x = torch.randn(2_000_000) * 0.5
    group = GroupInput()
    quant = OperandQuant("site", "input", "uniform", bits, (Part("all", tuple(table)),))
    single = ActivationQDQ(quant, group)
    for g, scale in enumerate(table):
        group.set(torch.tensor(g))
        [(codes, restore)] = single(x)
        [(per_group, _)] = ActivationQDQ(quant, g)(x)
        assert torch.equal(codes, torch.round(per_group / scale))
        assert restore.item() == torch.tensor(scale).item()


def test_cheap_mrq_forms_leave_no_compare_and_one_fc2_gemm(exported):
    # The saturating softmax form needs no Less/Where; the shifted GELU form quantizes the
    # fc2 input once (one GEMM, its offset in the bias) where the paper's form has two.
    record, out, manifest = exported
    regions = {r for s in record.sites for r in s.regions.values()}
    graph = onnx.load(str(out / manifest["graphs"][0]["file"])).graph
    ops = [n.op_type for n in graph.node]
    blocks = record.model_config["depth"]
    matmuls = ops.count("MatMul")
    # The zeros the parts' Where/Max compare with are 0-d constants, never a tensor filled at x's size per call
    assert "ConstantOfShape" not in ops
    if regions == {"softmax-saturate", "gelu-shift"}:
        assert "Where" not in ops and "Less" not in ops
        assert matmuls == blocks * (4 + 1 + 2) + 1  # qkv, proj, fc1, fc2; Q·Kᵀ; two A·V; final
    else:
        assert regions == {"softmax", "gelu"} and "Where" in ops
        assert matmuls == blocks * (4 + 1 + 1 + 2) + 1


def _ort_optimized_ops(path, tmp_path) -> list[str]:
    """The op types of the graph an ONNX Runtime session of the project runs (after its fusions)."""
    from tqdit_export.edge.ort_runtime import make_session

    make_session(path, 1, ["CPUExecutionProvider"], optimized_path=tmp_path / "optimized.onnx")
    return [n.op_type for n in onnx.load(str(tmp_path / "optimized.onnx")).graph.node]


def test_ort_runs_each_gelu_as_one_kernel_and_every_linear_on_integer_kernels(exported, model, tmp_path):
    """The exporter writes the tanh GELU in the node order ONNX Runtime fuses (one FastGelu per block
    instead of nine elementwise ops over the fc1 output), in the FP32 and the Q/DQ graphs alike."""
    _, out, manifest = exported
    depth = model.config.depth
    for name in (manifest["graphs"][0]["file"], "fp32.onnx"):
        ops = _ort_optimized_ops(out / name, tmp_path)
        assert ops.count("FastGelu") == depth and "Tanh" not in ops and "Pow" not in ops
    ops = _ort_optimized_ops(out / manifest["graphs"][0]["file"], tmp_path)
    # qkv, proj, fc1, fc2 (+ a second fc2 GEMM for the paper's GELU form) per block, and the final linear
    assert ops.count("MatMulIntegerToFloat") + ops.count("QLinearMatMul") >= 5 * depth + 1
    # The model keeps its own GELU modules: the export's form is swapped in for the export only.
    assert all(type(m.mlp.act) is torch.nn.GELU for m in model.blocks)
