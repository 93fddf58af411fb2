"""TensorRT's fused INT8 attention placement: Q/DQ before Q·Kᵀ, one uniform Q/DQ on A after the
softmax (one A·V GEMM), and a Q/DQ on A·V's output before the head transpose, with proj's scale."""
import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from calibration.forms import OperandQuant, Part
from tqdit_export.engines.ort_backend import OrtBackend
from tqdit_export.models import dit_config
from tqdit_export.onnx import export_dit, lint_file, qdq_model
from tqdit_export.onnx.export import fused_attention_fits, fused_attention_operands
from tqdit_export.quant import FakeQuantBackend


def _rel(a, b) -> float:
    return float((a - b).norm() / b.norm())


@pytest.fixture(scope="module")
def fused(model, record, tmp_path_factory):
    out = tmp_path_factory.mktemp("fused") / "per_group"
    return record, out, export_dit(model, record, out, weight_reduce_range=True, fused_attention=True)


@pytest.mark.parametrize("name,input_size,fits", [
    ("DiT-S/2", 32, True), ("DiT-B/2", 32, True), ("DiT-L/2", 32, True),  # head 64, 256 tokens
    ("DiT-XL/2", 32, False),  # head size 72
    ("DiT-B/2", 64, False),  # 512x512: 1024 tokens
    ("DiT-B/4", 64, True),  # 512x512 at patch 4: 256 tokens
    ("DiT-digits", 8, True), ("DiT-tiny", 8, True),  # head 32 / 16
])
def test_fused_attention_fits_the_head_sizes_and_token_counts_tensorrt_fuses(name, input_size, fits):
    assert fused_attention_fits(dit_config(name, input_size=input_size)) is fits


def test_uniform_reading_of_a_softmax_operand_spans_zero_to_one():
    r = (2.0**-4, 2.0**-6)
    saturate = OperandQuant("s", "a", "softmax-saturate", 8, (Part("all", tuple(v / 127 for v in r)),
                                                             Part("excess", tuple((1 - v) / 127 for v in r), r)))
    paper = OperandQuant("s", "a", "softmax", 8, (Part("below", tuple(v / 127 for v in r), r),
                                                  Part("at_or_above", (1 / 127, 1 / 127), r)))
    for q in (saturate, paper):
        u = q.uniform()
        assert u.region == "uniform" and len(u.parts) == 1 and u.parts[0].selection == "all"
        assert u.parts[0].scale == pytest.approx((1 / 127, 1 / 127))


def _graph(out, manifest):
    return onnx.load(str(out / manifest["graphs"][0]["file"])).graph


def test_attention_has_qdq_before_qk_after_softmax_and_after_av(fused, model):
    record, out, manifest = fused
    assert manifest["fused_attention"] == [f"blocks.{i}.attn" for i in range(model.config.depth)]
    assert "softmax" not in " ".join(manifest["mrq_forms"])  # A is uniform in every block
    for g in manifest["graphs"]:
        assert lint_file(out / g["file"]) == []
    graph = _graph(out, manifest)
    producer = {o: n for n in graph.node for o in n.output}
    consumers = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    consts = {n.output[0]: numpy_helper.to_array(n.attribute[0].t) for n in graph.node if n.op_type == "Constant"}

    def chain(tensor, *ops):
        """The nodes that follow `tensor` through single consumers of the given op types (a Clip in
        front of a QuantizeLinear is how activations below 8 bits are written, and is skipped)."""
        nodes = []
        for op in ops:
            (user,) = consumers[tensor]
            if op == "QuantizeLinear" and user.op_type == "Clip":
                (user,) = consumers[user.output[0]]
            assert user.op_type == op, f"{tensor} feeds {user.op_type}, expected {op}"
            nodes.append(user)
            tensor = user.output[0]
        return nodes

    for i in range(model.config.depth):
        bmm = [n for n in graph.node if n.op_type == "MatMul" and f"blocks.{i}/attn/matmul" in n.name]
        qk = [n for n in bmm if "matmul_qk" in n.name]
        (av,) = [n for n in bmm if "matmul_av" in n.name]  # one A·V GEMM: no second MRQ region
        (qk,) = qk
        # before BMM1: both inputs from Q -> DQ
        for x in qk.input:
            assert producer[x].op_type == "DequantizeLinear" and producer[producer[x].input[0]].op_type == "QuantizeLinear"
        # after the softmax: its only consumer is the Q of A, whose DQ feeds BMM2
        (softmax,) = chain(qk.output[0], "Softmax")
        q_a, dq_a = chain(softmax.output[0], "QuantizeLinear", "DequantizeLinear")
        assert dq_a.output[0] == av.input[0] and producer[av.input[1]].op_type == "DequantizeLinear"
        assert np.isclose(consts[q_a.input[1]], 1 / (2 ** (record.activation_bits - 1) - 1))  # uniform over [0, 1]
        # after BMM2: Q/DQ, then the head transpose and reshape, then proj's input Q/DQ with the same scale
        q_out, _, _, _, q_proj, dq_proj = chain(av.output[0], "QuantizeLinear", "DequantizeLinear", "Transpose",
                                                "Reshape", "QuantizeLinear", "DequantizeLinear")
        assert consts[q_out.input[1]] == consts[q_proj.input[1]]
        (proj,) = consumers[dq_proj.output[0]]
        assert proj.op_type == "MatMul" and "proj" in proj.name


@pytest.mark.parametrize("t", [10, 500, 900])
def test_ort_runs_the_fused_placement_as_the_fake_quant_model_with_uniform_a(fused, model, t):
    record, out, manifest = fused
    torch.manual_seed(t)
    x, tt, y = torch.randn(6, 1, 8, 8), torch.full((6,), t), torch.tensor([0, 4, 9, 10, 10, 10])
    uniform = fused_attention_operands(manifest["fused_attention"])
    g = record.time_groups.group_of(tt)
    with torch.no_grad():
        module = qdq_model(model, record, g, weight_reduce_range=True, fused_attention=True)(x, tt, y)
        reference = FakeQuantBackend(model, record, reduce_range=True, exact_sums=True, uniform_operands=uniform)(x, tt, y)
        plain = FakeQuantBackend(model, record, reduce_range=True, exact_sums=True)(x, tt, y)
    got = OrtBackend(out, threads=1)(x, tt, y)
    # The Q/DQ on A·V's output re-quantizes values on proj's grid: the torch module is the fake-quant model
    assert _rel(module, reference) < 1e-5
    assert _rel(got, reference) < 5e-3
    if any(s.region("a") != "uniform" for s in record.sites if s.name.endswith("matmul_av")):
        assert _rel(reference, plain) > 1e-4  # the MRQ form's second region of A is really gone


def test_other_layouts_keep_the_plain_placement(model, record, tmp_path):
    manifest = export_dit(model, record, tmp_path / "single", layout="single", weight_reduce_range=True,
                          fused_attention=True)
    assert manifest["fused_attention"] == []
    with pytest.raises(ValueError, match="per-group"):
        from tqdit_export.onnx.qdq import GroupInput
        qdq_model(model, record, GroupInput(), fused_attention=True)


def test_fused_placement_images_stay_close_to_the_fake_quant_images(fused, model):
    # The fused placement changes only A's quantizer (uniform instead of the MRQ form): its images
    # stay near the plain export's, and ORT draws exactly what its own fake-quant reference draws.
    from tqdit_export.diffusion import SamplerConfig, sample
    from tqdit_export.eval import paired_psnr

    record, out, manifest = fused
    labels, config = torch.tensor([0, 3, 5, 9]), SamplerConfig("ddpm", 20, 1.5, clip_denoised=True)
    uniform = fused_attention_operands(manifest["fused_attention"])
    images = {name: sample(backend, labels, (1, 8, 8), config, 10, seed=5, progress=False).numpy()
              for name, backend in (("fused-ort", OrtBackend(out, threads=1)),
                                    ("fused", FakeQuantBackend(model, record, reduce_range=True,
                                                               uniform_operands=uniform)),
                                    ("plain", FakeQuantBackend(model, record, reduce_range=True)),
                                    ("fp", lambda x, t, y: model(x, t, y)))}
    psnr = {k: paired_psnr(images[k], images["fp"]) for k in ("fused", "plain")}
    print(f"PSNR vs FP: fused placement {psnr['fused']:.2f} dB, plain placement {psnr['plain']:.2f} dB; "
          f"fused ORT vs its fake-quant {paired_psnr(images['fused-ort'], images['fused']):.2f} dB")
    assert paired_psnr(images["fused-ort"], images["fused"]) > 60
    assert psnr["fused"] > 35
