"""TQ-DiT on a tiny random DiT: record, determinism, ablation switches, HO gradients, reuse across samplers."""
import pytest
import torch

from calibration.calibrate import CalibrationConfig, GroupData, _capture, calibrate
from calibration.record import CalibrationRecord
from calibration.time_groups import TimeGroups
from tqdit_export.diffusion import SamplerConfig, sample
from tqdit_export.quant import FakeQuantBackend, calibrate_dit, collect_calibration_data, denoising_loss, dit_sites


FAST = dict(samples_per_group=4, trajectory_steps=20, progress=False)


@pytest.fixture(scope="module")
def model(make_tiny_dit):
    return make_tiny_dit()


@pytest.fixture(scope="module")
def record(model):
    return calibrate_dit(model, CalibrationConfig(num_groups=4, rounds=1), **FAST)


@torch.no_grad()
def _rel_err(backend, model, t=500):
    torch.manual_seed(1)
    x, y = torch.randn(4, 1, 8, 8), torch.tensor([1, 2, 10, 10])
    tt = torch.full((4,), t)
    ref = model(x, tt, y)
    return float((backend(x, tt, y) - ref).norm() / ref.norm())


def test_sites_cover_every_block_gemm_and_mark_mrq(model):
    sites = {s.name: s for s in dit_sites(model)}
    per_block = ["attn.qkv", "attn.matmul_qk", "attn.matmul_av", "attn.proj", "mlp.fc1", "mlp.fc2"]
    assert set(sites) == {f"blocks.{i}.{n}" for i in range(2) for n in per_block} | {"final_layer.linear"}
    assert sites["blocks.0.attn.matmul_av"].region("a") == "softmax"
    assert sites["blocks.1.mlp.fc2"].region("input") == "gelu"
    assert not any("adaLN" in n or "embedder" in n for n in sites)
    assert "blocks.0.mlp.fc1" not in {s.name for s in dit_sites(model, exclude=r".*fc1")}


def test_record_holds_deployable_numbers_per_group(record):
    g = record.time_groups.num_groups
    assert g == 4
    qkv = record.tensor("blocks.0.attn.qkv", "input", "scale")
    assert qkv.shape == (g,) and (qkv > 0).all()
    assert record.tensor("blocks.0.attn.qkv", "weight", "scale").shape == (96,)
    r = record.tensor("blocks.0.attn.matmul_av", "a", "boundary")
    assert torch.equal(torch.log2(r), torch.log2(r).round())  # r = 2^-i
    assert (record.tensor("blocks.0.mlp.fc2", "input", "scale_low") > 0).all()
    assert all((v > 0).all() for k, v in record.tensors.items() if "scale" in k)


def test_fake_quant_w8a8_is_close_and_w4a8_is_worse(model, record):
    w8 = _rel_err(FakeQuantBackend(model, record), model)
    w4 = _rel_err(FakeQuantBackend(model, calibrate_dit(model, CalibrationConfig(4, 8, num_groups=4, rounds=1),
                                                        **FAST)), model)
    assert w8 < 0.03
    assert w4 > w8


def test_same_seed_gives_a_bit_identical_record(model, record):
    again = calibrate_dit(model, CalibrationConfig(num_groups=4, rounds=1), **FAST)
    assert record.tensors.keys() == again.tensors.keys()
    assert all(torch.equal(record.tensors[k], again.tensors[k]) for k in record.tensors)


def test_record_roundtrip_and_wrong_model(tmp_path, model, record, make_tiny_dit):
    folder = record.save(tmp_path / "rec")
    loaded = CalibrationRecord.load(folder, model)
    assert all(torch.equal(loaded.tensors[k], record.tensors[k]) for k in record.tensors)
    assert loaded.to_json() == record.to_json()
    with pytest.raises(ValueError, match="another model"):
        CalibrationRecord.load(folder, make_tiny_dit(seed=1))
    with pytest.raises(FileNotFoundError, match="tqdit calibrate"):
        CalibrationRecord.load(tmp_path / "nothing")


def test_ablation_switches(model):
    no_tgq = calibrate_dit(model, CalibrationConfig(num_groups=4, rounds=1, tgq=False), **FAST)
    assert no_tgq.time_groups.edges == (0, 1000)
    assert no_tgq.tensor("blocks.0.attn.qkv", "input", "scale").shape == (1,)
    no_mrq = calibrate_dit(model, CalibrationConfig(num_groups=4, rounds=1, mrq=False), **FAST)
    assert not any(k.endswith("boundary") for k in no_mrq.tensors)
    minmax = calibrate_dit(model, CalibrationConfig(num_groups=4, method="minmax", tgq=False), **FAST)
    assert minmax.method["method"] == "minmax" and not any(k.endswith("boundary") for k in minmax.tensors)
    w = model.get_submodule("blocks.0.mlp.fc1").weight
    torch.testing.assert_close(minmax.tensor("blocks.0.mlp.fc1", "weight", "scale"), w.abs().amax(1) / 127)
    pct = calibrate_dit(model, CalibrationConfig(num_groups=4, method="percentile", tgq=False, percentile=99.0),
                        **FAST)
    act = [k for k in pct.tensors if k.endswith("input.scale")]
    assert all((pct.tensors[k] <= minmax.tensors[k]).all() for k in act)
    assert any((pct.tensors[k] < minmax.tensors[k]).any() for k in act)


def test_ho_gradients_are_nonzero_and_change_the_scales(model):
    groups = TimeGroups.uniform(2)
    data = collect_calibration_data(model, groups, 4, steps=20, progress=False)
    sites = dit_sites(model)
    caps = _capture(model, sites, data[0], denoising_loss, CalibrationConfig(num_groups=2), torch.Generator())
    for s in sites:  # every site, the variance output channels included, gets a real gradient
        grad2 = caps[s.name].grad2
        assert grad2.sum() > 0, s.name
    assert (caps["final_layer.linear"].grad2.reshape(-1, 8).sum(0) > 0).all()
    ho = calibrate(model, sites, data, denoising_loss, CalibrationConfig(num_groups=2, rounds=1), groups, {}, False)
    mse = calibrate(model, sites, data, denoising_loss, CalibrationConfig(num_groups=2, rounds=1, ho=False),
                    groups, {}, False)
    changed = [k for k in ho.tensors if not torch.equal(ho.tensors[k], mse.tensors[k])]
    assert len(changed) > len(ho.tensors) // 4


def test_nan_in_calibration_data_is_a_clear_error(model):
    groups = TimeGroups.uniform(1)
    x = torch.randn(2, 1, 8, 8)
    x[0, 0, 0, 0] = float("nan")
    bad = [GroupData((x, torch.tensor([5, 5]), torch.tensor([1, 10])), (torch.randn(2, 1, 8, 8),) * 2 +
                     (x, torch.tensor([5, 5])))]
    with pytest.raises(ValueError, match="NaN or Inf"):
        calibrate(model, dit_sites(model), bad, denoising_loss, CalibrationConfig(num_groups=1), groups, {}, False)


@pytest.mark.parametrize("sampler,steps", [("ddpm", 250), ("ddpm", 100), ("ddpm", 50), ("ddim", 20)])
def test_one_record_serves_every_sampler_and_step_count(model, record, sampler, steps):
    backend = FakeQuantBackend(model, record)
    seen = []
    original = backend.selector.set
    backend.selector.set = lambda g: (seen.append(g), original(g))
    out = sample(backend, torch.tensor([3, 7]), (1, 8, 8), SamplerConfig(sampler, steps), model.null_class,
                 progress=False)
    assert torch.isfinite(out).all()
    assert sorted(set(seen)) == [0, 1, 2, 3]  # every time group is visited, from noisy to clean
    assert seen == sorted(seen, reverse=True)
