"""The torch-free edge path: the numpy sampler draws the same images as the torch sampler from
the same denoiser and noise (ONNX Runtime standing in for TensorRT), without importing torch."""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from calibration.calibrate import CalibrationConfig
from calibration.time_groups import TimeGroups
from tqdit_export.diffusion import SamplerConfig, sample
from tqdit_export.diffusion.samplers import torch_noise
from tqdit_export.edge import OrtDenoiser, sample_numpy
from tqdit_export.edge.trt_runtime import TrtDenoiser
from tqdit_export.engines.ort_backend import OrtBackend
from tqdit_export.io import load_samples
from tqdit_export.onnx import export_dit
from tqdit_export.quant import calibrate_dit


@pytest.fixture(scope="module")
def export_dir(make_tiny_dit, tmp_path_factory):
    model = make_tiny_dit()
    record = calibrate_dit(model, CalibrationConfig(8, 8, num_groups=3, rounds=1), samples_per_group=4,
                           trajectory_steps=20, progress=False)
    out = tmp_path_factory.mktemp("edge") / "export"
    export_dit(model, record, out, layout="per-group", weight_reduce_range=True)
    return out


@pytest.mark.parametrize("sampler,steps,eta,cfg", [("ddpm", 20, 0.0, 1.5), ("ddim", 10, 0.0, 1.5),
                                                    ("ddim", 10, 0.5, 1.0), ("ddpm", 7, 0.0, 1.0)])
def test_numpy_sampler_draws_the_images_of_the_torch_sampler(export_dir, sampler, steps, eta, cfg):
    labels = np.array([0, 3, 7, 9])
    reference = sample(OrtBackend(export_dir, threads=1), torch.from_numpy(labels), (1, 8, 8),
                       SamplerConfig(sampler, steps, cfg, clip_denoised=True, eta=eta), 10, seed=5,
                       progress=False).numpy()
    got = sample_numpy(OrtDenoiser(export_dir, threads=1), labels, (1, 8, 8),
                       SamplerConfig(sampler, steps, cfg, clip_denoised=True, eta=eta), 10,
                       noise_fn=torch_noise(5))
    assert got.dtype == np.float32 and got.shape == reference.shape
    # One loop for both paths: equal bit for bit on any CPU, so a quantized denoiser sees the
    # same inputs and flips no code (two loops in two float orders failed here on VNNI CPUs).
    np.testing.assert_array_equal(got, reference)


def test_edge_path_runs_without_torch(export_dir, tmp_path):
    script = f"""
import sys
import numpy as np
from tqdit_export.edge import OrtDenoiser, SamplerConfig, sample_numpy
x = sample_numpy(OrtDenoiser({str(export_dir)!r}, threads=1), np.array([1, 2]), (1, 8, 8),
                 SamplerConfig("ddim", 5), 10)
assert np.isfinite(x).all()
print("torch" in sys.modules)
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False"


def test_edge_cli_samples_with_onnx_runtime(export_dir, tmp_path):
    out = tmp_path / "s.npz"
    proc = subprocess.run([sys.executable, "-m", "tqdit_export.edge", "--onnx", str(export_dir), "--num", "3",
                           "--steps", "4", "--out", str(out)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    images, labels, meta = load_samples(out)
    assert images.shape == (3, 1, 8, 8) and labels.tolist() == [0, 1, 2] and meta["runtime"] == "ort"
    assert json.loads(proc.stdout)["num"] == 3


def test_time_groups_take_the_edge_runtime_numpy_timesteps():
    groups = TimeGroups.uniform(10)
    for t in (0, 99, 100, 555, 999):
        assert groups.group_of(np.array([t, t])) == groups.group_of(t) == groups.group_of(torch.tensor([t, t]))
    with pytest.raises(ValueError, match="span"):
        groups.group_of(np.array([99, 100]))


def test_trt_runtime_names_what_is_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="tqdit build"):
        TrtDenoiser(tmp_path)
    (tmp_path / "build.json").write_text(json.dumps({"engines": [], "status": "onnx-only: TensorRT missing"}))
    with pytest.raises(RuntimeError, match="no engines"):
        TrtDenoiser(tmp_path)


def test_a_graph_changed_after_export_is_refused_when_loaded(export_dir, tmp_path):
    """One Q scale set to NaN in a graph of the export: the manifest's sha256 no longer matches."""
    import shutil

    import onnx
    from onnx import numpy_helper

    tampered = tmp_path / "tampered"
    shutil.copytree(export_dir, tampered)
    graph = onnx.load(str(tampered / "group_01.onnx"))
    name = next(n.input[1] for n in graph.graph.node if n.op_type == "QuantizeLinear")
    nan = numpy_helper.from_array(np.array(np.nan, dtype=np.float32), name)
    tensors = [i for i in graph.graph.initializer if i.name == name] + [
        a.t for n in graph.graph.node if n.op_type == "Constant" and n.output[0] == name for a in n.attribute]
    tensors[0].CopyFrom(nan)
    onnx.save(graph, str(tampered / "group_01.onnx"))
    with pytest.raises(ValueError, match=r"group_01\.onnx: this graph was changed"):
        OrtDenoiser(tampered)
    (tampered / "group_01.onnx").unlink()
    with pytest.raises(FileNotFoundError, match=r"group_01\.onnx: the graph named by the manifest is missing"):
        OrtDenoiser(tampered)
    (tampered / "manifest.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"manifest\.json: not a readable manifest"):
        OrtDenoiser(tampered)


def test_the_edge_refuses_class_and_guided_channels_before_loading(export_dir, tmp_path, capsys):
    """The manifest answers both questions: a graph that would fail to load is never reached."""
    import shutil

    from tqdit_export.edge.__main__ import main as edge_main

    broken = tmp_path / "broken"
    shutil.copytree(export_dir, broken)
    for graph in broken.glob("*.onnx"):
        graph.write_bytes(b"not a graph")  # loading any of them would be refused for its sha256
    out = tmp_path / "s.npz"
    assert edge_main(["--onnx", str(broken), "--cfg-channels", "99", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "cfg_channels 99" in err and "changed" not in err
    assert edge_main(["--onnx", str(broken), "--class", "10", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "--class 10" in err and "changed" not in err
    assert edge_main(["--onnx", str(broken), "--out", str(out)]) == 2  # and the graph is refused when loaded
    assert "changed" in capsys.readouterr().err and not out.exists()
