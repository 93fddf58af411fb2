"""The quality benchmark's cache folder is tied to the weights it was filled with."""
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import quality  # noqa: E402
from quality import claim_workdir  # noqa: E402


def test_a_cache_folder_of_other_weights_is_refused_and_left_as_it_was(tmp_path, make_tiny_dit):
    workdir = tmp_path / "quality"
    first = claim_workdir(workdir, make_tiny_dit(seed=0), "tiny")
    assert claim_workdir(workdir, make_tiny_dit(seed=0), "tiny") == first  # same weights: reused
    (workdir / "fp_ddpm100_seed0_n500.npz").write_bytes(b"cached samples")
    with pytest.raises(SystemExit, match=f"{workdir}.*other tiny weights.*another --workdir"):
        claim_workdir(workdir, make_tiny_dit(seed=1), "tiny")
    assert (workdir / "weights_sha256.txt").read_text().strip() == first
    assert (workdir / "fp_ddpm100_seed0_n500.npz").read_bytes() == b"cached samples"


def _fake_calibration(payload: bytes, seconds: float):
    """Stands in for `tqdit calibrate`: writes a record of `payload` and reports `seconds`."""
    def run(model, row, bits, out):
        out.mkdir(parents=True)
        (out / "record.json").write_text(json.dumps({"schema_version": 1, "method": {"wall_seconds": seconds}}))
        (out / "scales.safetensors").write_bytes(payload)
        return {"calib_seconds": seconds, "calib_peak_rss_mib": 700}
    return run


def _cached_record(workdir: Path, row: str, bits: str, payload: bytes, seconds: float) -> None:
    record = workdir / f"{row}_{bits}"
    record.mkdir(parents=True)
    (record / "record.json").write_text(json.dumps({"schema_version": 1, "method": {"wall_seconds": seconds}}))
    (record / "scales.safetensors").write_bytes(payload)
    record.with_suffix(".cost.json").write_text(json.dumps({"calib_seconds": seconds, "calib_peak_rss_mib": 800}))


def test_retiming_a_reproduced_record_replaces_its_cost_in_the_cache_and_every_cell_using_it(tmp_path, monkeypatch):
    _cached_record(tmp_path, "tqdit", "W8A8", b"scales", 421.0)
    monkeypatch.setattr(quality, "run_calibration", _fake_calibration(b"scales", 55.0))
    cells = [{"row": r, "bits": b, "calib_seconds": 421.0, "calib_peak_rss_mib": 800}
             for r, b in [("tqdit", "W8A8"), ("tqdit-ort", "W8A8"), ("tqdit", "W6A6"), ("minmax", "W8A8")]]
    results = {"cells": cells}
    quality.retime_calibrations("tiny", ["tqdit", "minmax"], ["W8A8"], tmp_path, results)
    assert [c["calib_seconds"] for c in cells] == [55.0, 55.0, 421.0, 421.0]  # other widths/rows untouched
    assert json.loads((tmp_path / "tqdit_W8A8.cost.json").read_text())["calib_seconds"] == 55.0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tqdit_W8A8", "tqdit_W8A8.cost.json"]  # no temp left


def test_retiming_that_does_not_reproduce_the_record_changes_nothing(tmp_path, monkeypatch):
    _cached_record(tmp_path, "no-ho", "W6A6", b"scales", 117.0)
    monkeypatch.setattr(quality, "run_calibration", _fake_calibration(b"other scales", 40.0))
    results = {"cells": [{"row": "no-ho", "bits": "W6A6", "calib_seconds": 117.0}]}
    with pytest.raises(SystemExit, match="no-ho W6A6.*did not reproduce.*scales.safetensors"):
        quality.retime_calibrations("tiny", ["no-ho"], ["W6A6"], tmp_path, results)
    assert results["cells"][0]["calib_seconds"] == 117.0
    assert json.loads((tmp_path / "no-ho_W6A6.cost.json").read_text())["calib_seconds"] == 117.0
    assert (tmp_path / "no-ho_W6A6" / "scales.safetensors").read_bytes() == b"scales"
