"""Bad values that used to run silently: refused up front, with the input named, nothing written."""
import json
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


def _refused(capsys, *named: str) -> str:
    """stderr of a refusal: one `error:` line naming every `named` input, no traceback."""
    err = capsys.readouterr().err
    assert "error:" in err and "Traceback" not in err, err
    for name in named:
        assert name in err, (name, err)
    return err


@pytest.mark.parametrize("bits", ["W4A4", "W8A4", "W5A7", "W3A8", "8"])
def test_bits_outside_the_presets_are_refused_naming_them(tiny, tmp_path, capsys, bits):
    ckpt, _ = tiny
    out = tmp_path / "rec"
    assert main(["calibrate", "--model", str(ckpt), "--bits", bits, "--out", str(out), "--quiet"]) == 2
    _refused(capsys, f"--bits {bits}", "W8A8, W6A6, W4A8")
    assert not out.exists()


def test_bits_presets_are_read_in_either_case():
    from tqdit_export.quant import BITS_PRESETS, parse_bits

    assert parse_bits("w8a8") == parse_bits("W8A8") == (8, 8) and parse_bits("w4a8") == (4, 8)
    assert set(BITS_PRESETS) == {"W8A8", "W6A6", "W4A8"}  # the README's list


@pytest.mark.parametrize("flag,value", [("--samples-per-group", "0"), ("--groups", "0"), ("--groups", "1001"),
                                        ("--rounds", "0"), ("--trajectory-steps", "0")])
def test_calibration_counts_are_refused_by_their_flag_before_any_work(tiny, tmp_path, capsys, monkeypatch,
                                                                      flag, value):
    import tqdit_export.quant

    def fail(*args, **kwargs):
        raise AssertionError("calibration started before its flags were checked")

    monkeypatch.setattr(tqdit_export.quant, "calibrate_dit", fail)
    ckpt, _ = tiny
    out = tmp_path / "rec"
    for command in (["calibrate", "--out", str(out)], ["build", "--out", str(out)]):
        assert main([*command, "--model", str(ckpt), flag, value, "--quiet"]) == 2
        _refused(capsys, f"{flag} {value}")
        assert not out.exists()


def test_calibration_config_names_the_flags():
    from calibration.calibrate import CalibrationConfig

    with pytest.raises(ValueError, match="--groups 0"):
        CalibrationConfig(num_groups=0)
    with pytest.raises(ValueError, match="--rounds 0"):
        CalibrationConfig(rounds=0)


def test_lint_of_a_file_that_is_not_onnx_or_of_a_folder_is_refused(tmp_path, capsys):
    notes = tmp_path / "notes.onnx"
    notes.write_text("these are my notes, not a graph\n")
    assert main(["lint", str(notes)]) == 2
    _refused(capsys, str(notes), "not an ONNX model")
    assert main(["lint", str(tmp_path)]) == 2
    _refused(capsys, str(tmp_path), "a folder", "*.onnx")


def _sample_with(record, ckpt, tmp_path, *extra):
    return main(["sample", "--model", str(ckpt), "--record", str(record), "--steps", "2", "--num", "2",
                 "--save-npz", str(tmp_path / "s.npz"), "--quiet", "--device", "cpu", *extra])


def _broken_scales(folder):
    data = (folder / "scales.safetensors").read_bytes()
    (folder / "scales.safetensors").write_bytes(data[: len(data) // 2])


def _not_json(folder):
    (folder / "record.json").write_text('{"schema_version": 1, "model": ')


def _no_bits(folder):
    meta = json.loads((folder / "record.json").read_text())
    del meta["bits"]["activations"]
    (folder / "record.json").write_text(json.dumps(meta))


@pytest.mark.parametrize("damage,file,named", [(_broken_scales, "scales.safetensors", "not a readable safetensors"),
                                               (_not_json, "record.json", "not JSON"),
                                               (_no_bits, "record.json", "bits.activations")])
def test_a_corrupt_record_is_refused_naming_the_file(tiny, tmp_path, capsys, damage, file, named):
    ckpt, rec = tiny
    broken = tmp_path / "broken"
    shutil.copytree(rec, broken)
    damage(broken)
    assert _sample_with(broken, ckpt, tmp_path) == 2
    _refused(capsys, str(broken / file), named, "tqdit calibrate")
    assert not (tmp_path / "s.npz").exists()


def test_a_record_reads_back_with_its_fingerprint(tiny):
    from calibration.record import CalibrationRecord

    _, rec = tiny
    record = CalibrationRecord.load(rec)
    again = CalibrationRecord.load(rec)
    assert record.fingerprint() == again.fingerprint() and len(record.fingerprint()) == 64
    key = sorted(again.tensors)[0]
    again.tensors[key] = again.tensors[key] * 2
    assert again.fingerprint() != record.fingerprint()


@pytest.fixture(scope="module")
def two_records(tiny, tmp_path_factory):
    """A second record of the same model (another seed), and an export of the first."""
    ckpt, rec = tiny
    root = tmp_path_factory.mktemp("two_records")
    other, export = root / "other", root / "export"
    assert main(["calibrate", "--model", str(ckpt), "--groups", "2", "--samples-per-group", "2",
                 "--trajectory-steps", "4", "--rounds", "1", "--method", "minmax", "--seed", "1", "--out", str(other),
                 "--quiet", "--device", "cpu"]) == 0
    assert main(["export", "--model", str(ckpt), "--record", str(rec), "--out", str(export)]) == 0
    return other, export


def test_an_export_of_another_record_is_refused_naming_both(tiny, two_records, tmp_path, capsys):
    ckpt, rec = tiny
    other, export = two_records
    assert json.loads((export / "manifest.json").read_text())["record_fingerprint"]
    assert _sample_with(other, ckpt, tmp_path, "--backend", "ort", "--onnx", str(export)) == 2
    _refused(capsys, str(export), str(other), "another record")
    assert not (tmp_path / "s.npz").exists()
    assert main(["check", "--model", str(ckpt), "--record", str(other), "--onnx", str(export),
                 "--samples", "1"]) == 2
    _refused(capsys, str(export), str(other), "another record")
    assert _sample_with(rec, ckpt, tmp_path, "--backend", "ort", "--onnx", str(export)) == 0


def test_an_export_older_than_record_fingerprints_only_warns(tiny, two_records, tmp_path, capsys):
    ckpt, _ = tiny
    other, export = two_records
    old = tmp_path / "old_export"
    shutil.copytree(export, old)
    manifest = json.loads((old / "manifest.json").read_text())
    del manifest["record_fingerprint"]
    (old / "manifest.json").write_text(json.dumps(manifest))
    assert _sample_with(other, ckpt, tmp_path, "--backend", "ort", "--onnx", str(old)) == 0
    err = capsys.readouterr().err
    assert "tqdit sample: warning:" in err and "names no record" in err and str(other) in err


def test_every_refusal_of_the_cli_exits_2(tiny, tmp_path, capsys):
    ckpt, _ = tiny
    assert main(["sample", "--model", str(ckpt), "--backend", "ort", "--save-npz", str(tmp_path / "s.npz")]) == 2
    _refused(capsys, "--onnx DIR")
    assert main(["sample", "--model", str(ckpt), "--num", "0", "--save-npz", str(tmp_path / "s.npz")]) == 2
    _refused(capsys, "--num 0")
    assert main(["sample", "--model", str(ckpt), "--steps", "0", "--save-npz", str(tmp_path / "s.npz")]) == 2
    _refused(capsys, "--steps 0", "sampling steps")
    assert main(["sample", "--model", str(ckpt)]) == 2
    _refused(capsys, "nothing to write")


def test_edge_entry_point_refuses_missing_or_engineless_builds(tmp_path, capsys):
    from tqdit_export.edge.__main__ import main as edge_main

    out = tmp_path / "s.npz"
    assert edge_main(["--engines", str(tmp_path / "missing"), "--out", str(out)]) == 2
    _refused(capsys, str(tmp_path / "missing"), "tqdit build")
    build = tmp_path / "build"
    (build / "onnx").mkdir(parents=True)
    (build / "build.json").write_text(json.dumps({"status": "onnx-only", "engines": [], "reason": "no TensorRT"}))
    assert edge_main(["--engines", str(build), "--out", str(out)]) == 2
    err = _refused(capsys, str(build), "no engines", "--onnx")
    assert err.startswith("python -m tqdit_export.edge: error:")
    (build / "build.json").write_text("{cut short")
    assert edge_main(["--engines", str(build), "--out", str(out)]) == 2
    _refused(capsys, str(build / "build.json"), "tqdit build")
    assert edge_main(["--onnx", str(build), "--num", "0", "--out", str(out)]) == 2
    _refused(capsys, "--num 0")
    assert edge_main(["--onnx", str(build), "--steps", "0", "--out", str(out)]) == 2
    _refused(capsys, "--steps 0")
    assert not out.exists()


def test_edge_entry_point_ctrl_c_is_130_and_debug_shows_the_traceback(tmp_path, capsys, monkeypatch):
    import tqdit_export.edge.__main__ as edge

    class Interrupted:  # Ctrl-C while the export is read
        @staticmethod
        def read(*args, **kwargs):
            raise KeyboardInterrupt

    monkeypatch.setattr(edge, "ExportManifest", Interrupted)
    assert edge.main(["--onnx", str(tmp_path), "--out", str(tmp_path / "s.npz")]) == 130
    assert "interrupted; nothing was written" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError):
        edge.main(["--debug", "--engines", str(tmp_path / "missing"), "--out", str(tmp_path / "s.npz")])


def test_a_negative_shift_offset_is_a_valid_record():
    # gelu-shift centres [GELU_MIN, hi] on the codes: c = (hi + GELU_MIN) / 2 < 0 when hi < 0.17.
    import torch

    from calibration.record import CalibrationRecord
    from calibration.sites import Site
    from calibration.time_groups import TimeGroups

    record = CalibrationRecord({}, "0" * 64, 8, 8, TimeGroups((0, 1000)), [Site("fc2", "linear", {"input": "gelu-shift"})],
                               {"fc2.weight.scale": torch.ones(4), "fc2.input.scale": torch.tensor([0.001]),
                                "fc2.input.offset": torch.tensor([-0.05])})
    record.check_scales()
    record.tensors["fc2.input.offset"] = torch.tensor([float("nan")])
    with pytest.raises(ValueError, match="offset"):
        record.check_scales()
