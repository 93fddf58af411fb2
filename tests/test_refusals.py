"""Bad values that used to run silently: refused up front, with the input named, nothing written."""
import shutil

import pytest
from safetensors.torch import load_file, save_file

from tqdit_export.cli import main
from tqdit_export.models import save_dit


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, make_tiny_dit):
    root = tmp_path_factory.mktemp("refusals")
    ckpt, rec = root / "tiny.safetensors", root / "rec"
    save_dit(make_tiny_dit(), ckpt)
    assert main(["calibrate", "--model", str(ckpt), "--groups", "2", "--samples-per-group", "2",
                 "--trajectory-steps", "4", "--rounds", "1", "--method", "minmax", "--out", str(rec),
                 "--quiet", "--device", "cpu"]) == 0
    return ckpt, rec


@pytest.mark.parametrize("bad", [0.0, float("nan")])
def test_a_record_with_zero_or_nan_scales_is_refused_when_loaded(tiny, tmp_path, capsys, bad):
    ckpt, rec = tiny
    broken = tmp_path / "broken"
    shutil.copytree(rec, broken)
    tensors = load_file(str(broken / "scales.safetensors"))
    key = next(k for k in sorted(tensors) if k.endswith(".input.scale"))
    tensors[key][0] = bad
    save_file(tensors, str(broken / "scales.safetensors"))
    assert main(["sample", "--model", str(ckpt), "--record", str(broken), "--steps", "2", "--num", "2",
                 "--save-npz", str(tmp_path / "s.npz"), "--quiet", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "scales.safetensors" in err and key in err and not (tmp_path / "s.npz").exists()


@pytest.mark.parametrize("extra,message", [(["--batch-size", "0"], "--batch-size 0"),
                                           (["--eta", "0.5"], "DDIM sampler only"),
                                           (["--sampler", "ddim", "--eta", "-1"], "eta=-1")])
def test_sampling_values_it_would_misread_are_refused(tiny, tmp_path, capsys, extra, message):
    ckpt, _ = tiny
    assert main(["sample", "--model", str(ckpt), "--num", "2", "--steps", "2", "--save-npz",
                 str(tmp_path / "s.npz"), "--quiet", "--device", "cpu", *extra]) == 2
    assert message in capsys.readouterr().err and not (tmp_path / "s.npz").exists()
