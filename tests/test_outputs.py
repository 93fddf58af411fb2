"""Every output location is checked before any work, and replacing a folder never deletes a user's files."""
import json
import shutil
from pathlib import Path

import pytest

import tqdit_export.onnx
import tqdit_export.quant
from calibration.folders import INVENTORY
from calibration.record import CalibrationRecord
from tqdit_export.cli import main
from tqdit_export.models import save_dit

FAST_CALIBRATION = ["--method", "minmax", "--groups", "2", "--samples-per-group", "2", "--trajectory-steps", "5",
                    "--rounds", "1", "--quiet", "--device", "cpu"]  # no search: these tests are about the folders


@pytest.fixture(scope="module")
def made(tmp_path_factory, make_tiny_dit):
    """A tiny checkpoint, a record and an export of it, written once by the CLI."""
    root = tmp_path_factory.mktemp("made")
    ckpt, rec, onnx_dir = root / "tiny.safetensors", root / "rec", root / "onnx"
    save_dit(make_tiny_dit(), ckpt)
    assert main(["calibrate", "--model", str(ckpt), *FAST_CALIBRATION, "--out", str(rec)]) == 0
    assert main(["export", "--model", str(ckpt), "--record", str(rec), "--out", str(onnx_dir)]) == 0
    return ckpt, rec, onnx_dir


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _leftovers(parent: Path) -> list[str]:
    return [p.name for p in parent.iterdir() if p.name.endswith((".tmp", ".old"))]


@pytest.fixture()
def no_work(monkeypatch):
    """Calibrating, exporting or sampling fails the test: a refusal must come before any of them."""
    def fail(*args, **kwargs):
        raise AssertionError("work started before the output location was checked")

    monkeypatch.setattr(tqdit_export.quant, "calibrate_dit", fail)
    monkeypatch.setattr(tqdit_export.onnx, "export_dit", fail)
    monkeypatch.setattr("tqdit_export.api.sample_numpy", fail)
    monkeypatch.setattr("tqdit_export.eval.evaluate_digits", fail)


@pytest.fixture()
def instant_calibration(monkeypatch, made):
    """calibrate_dit returns the made record at once (for tests about what happens when it is written)."""
    record = CalibrationRecord.load(made[1])
    monkeypatch.setattr(tqdit_export.quant, "calibrate_dit", lambda *a, **k: record)


def test_calibrate_refuses_a_record_folder_holding_a_foreign_file_before_calibrating(made, tmp_path, capsys, no_work):
    ckpt, rec, _ = made
    out = tmp_path / "rec_extra"
    shutil.copytree(rec, out)
    (out / "notes.txt").write_text("my notes")
    before = _files(out)
    assert main(["calibrate", "--model", str(ckpt), *FAST_CALIBRATION, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tqdit calibrate: error:") and str(out) in err and "notes.txt" in err
    assert "Move them out" in err and "another --out" in err
    assert _files(out) == before and _leftovers(tmp_path) == []


def test_export_refuses_an_export_folder_holding_a_foreign_subfolder(made, tmp_path, capsys, no_work):
    ckpt, rec, onnx_dir = made
    out = tmp_path / "onnx"
    shutil.copytree(onnx_dir, out)
    (out / "mydata").mkdir()
    for i in range(7):
        (out / "mydata" / f"img{i}.png").write_bytes(b"pixels")
    (out / "extra.txt").write_text("x")
    before = _files(out)
    assert main(["export", "--model", str(ckpt), "--record", str(rec), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert str(out) in err and "2 entries" in err and "extra.txt, mydata/;" in err  # the folder, not its 7 files
    assert _files(out) == before and _leftovers(tmp_path) == []


def test_rewriting_a_tool_folder_replaces_its_files(made, tmp_path, capsys):
    ckpt, rec, onnx_dir = made
    out = tmp_path / "onnx"
    shutil.copytree(onnx_dir, out)
    assert sorted(p.name for p in out.glob("*.onnx")) == ["group_00.onnx", "group_01.onnx"]
    assert main(["export", "--model", str(ckpt), "--record", str(rec), "--out", str(out), "--layout", "single"]) == 0
    assert sorted(p.name for p in out.glob("*.onnx")) == ["single.onnx"]  # the per-group graphs went with the folder
    assert json.loads((out / "manifest.json").read_text())["layout"] == "single"
    assert set(json.loads((out / INVENTORY).read_text())["entries"]) == {"manifest.json", "single.onnx"}
    assert _leftovers(tmp_path) == []


def test_demo_refuses_a_user_folder(made, tmp_path, capsys, no_work):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "photo.png").write_bytes(b"not the demo's")
    assert main(["demo", "--model", str(made[0]), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tqdit demo: error:") and str(out) in err and "demo.json" in err
    assert _files(out) == {"photo.png": b"not the demo's"} and _leftovers(tmp_path) == []


def test_a_failed_demo_leaves_nothing(made, tmp_path, capsys, monkeypatch, instant_calibration):
    def broken_export(*args, **kwargs):
        raise RuntimeError("export broke")

    monkeypatch.setattr(tqdit_export.onnx, "export_dit", broken_export)  # after the record is written
    out = tmp_path / "demo"
    assert main(["demo", "--model", str(made[0]), "--out", str(out), "--quiet"]) == 2
    assert "export broke" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_calibrate_into_a_user_folder_is_refused_before_calibrating(made, tmp_path, capsys, no_work):
    out = tmp_path / "results"
    out.mkdir()
    (out / "table.csv").write_text("a,b\n")
    assert main(["calibrate", "--model", str(made[0]), *FAST_CALIBRATION, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert str(out) in err and "not a folder this tool wrote (no record.json)" in err
    assert _files(out) == {"table.csv": b"a,b\n"} and _leftovers(tmp_path) == []


@pytest.mark.parametrize("command", ["calibrate", "export", "build", "demo"])
def test_an_out_that_cannot_be_created_is_refused_before_work(made, tmp_path, capsys, no_work, command):
    ckpt, rec, _ = made
    blocker = tmp_path / "results.txt"  # a file where a folder would have to be: fails as root too
    blocker.write_text("mine")
    out = blocker / "sub" / "out"
    args = {"calibrate": FAST_CALIBRATION, "export": ["--record", str(rec)], "build": ["--record", str(rec)],
            "demo": ["--quiet"]}[command]
    assert main([command, "--model", str(ckpt), *args, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"tqdit {command}: error: cannot write {out}: {blocker} is not a folder")
    assert blocker.read_text() == "mine" and sorted(p.name for p in tmp_path.iterdir()) == ["results.txt"]


def test_an_out_that_is_a_file_is_refused(made, tmp_path, capsys, no_work):
    out = tmp_path / "rec"
    out.write_text("mine")
    assert main(["calibrate", "--model", str(made[0]), *FAST_CALIBRATION, "--out", str(out)]) == 2
    assert f"{out} exists and is a file" in capsys.readouterr().err and out.read_text() == "mine"


@pytest.mark.parametrize("command", ["sample --out", "sample --save-npz", "eval --json", "check --json"])
def test_file_outputs_are_checked_before_work(made, tmp_path, capsys, no_work, command):
    ckpt, rec, onnx_dir = made
    name, flag = command.split()
    samples = tmp_path / "s.npz"
    samples.write_bytes(b"")  # never read: the output is refused first
    args = {"sample": ["--model", str(ckpt), "--quiet", "--device", "cpu"], "eval": ["--samples", str(samples)],
            "check": ["--model", str(ckpt), "--record", str(rec), "--onnx", str(onnx_dir)]}[name]
    folder = tmp_path / "a_folder"
    folder.mkdir()
    assert main([name, *args, flag, str(folder)]) == 2
    assert f"{folder} exists and is a folder" in capsys.readouterr().err
    blocker = tmp_path / "blocker"
    blocker.write_text("mine")
    assert main([name, *args, flag, str(blocker / "x.out")]) == 2
    assert f"cannot write {blocker / 'x.out'}: {blocker} is not a folder" in capsys.readouterr().err
    assert blocker.read_text() == "mine" and list(folder.iterdir()) == []


def test_an_os_error_while_writing_is_a_clear_error_and_leaves_nothing(made, tmp_path, capsys, monkeypatch,
                                                                     instant_calibration):
    import calibration.record

    def full_disk(tensors, filename):
        raise OSError(28, "No space left on device", filename)

    monkeypatch.setattr(calibration.record, "save_file", full_disk)
    out = tmp_path / "rec"
    assert main(["calibrate", "--model", str(made[0]), *FAST_CALIBRATION, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tqdit calibrate: error:") and "No space left on device" in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def test_a_folder_of_an_older_version_with_a_foreign_file_is_refused_at_commit(made, tmp_path, capsys,
                                                                              instant_calibration):
    ckpt, rec, _ = made
    out = tmp_path / "rec"
    shutil.copytree(rec, out)
    (out / INVENTORY).unlink()  # as older versions wrote it
    (out / "notes.txt").write_text("my notes")
    before = _files(out)
    assert main(["calibrate", "--model", str(ckpt), *FAST_CALIBRATION, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert str(out) in err and "1 entry this tool did not write: notes.txt" in err and "older version" in err
    assert _files(out) == before and _leftovers(tmp_path) == []


def test_a_folder_of_an_older_version_is_replaced_when_all_its_files_are_rewritten(made, tmp_path,
                                                                                  instant_calibration):
    ckpt, rec, _ = made
    out = tmp_path / "rec"
    shutil.copytree(rec, out)
    (out / INVENTORY).unlink()
    (out / "record.json").write_text("{}")  # an older record, replaced by the tool's
    assert main(["calibrate", "--model", str(ckpt), *FAST_CALIBRATION, "--out", str(out)]) == 0
    assert sorted(_files(out)) == [INVENTORY, "record.json", "scales.safetensors"]
    assert json.loads((out / "record.json").read_text())["schema_version"] == 1
    assert _leftovers(tmp_path) == []
