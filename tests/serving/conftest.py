"""An export of the bundled model (min-max calibration, 2 time groups: seconds), shared by the serving tests."""
import pytest

from tqdit_export.cli import main


@pytest.fixture(scope="session")
def digits_export(tmp_path_factory):
    """(record folder, export folder) of dit-digits, W8A8 min-max, 2 time groups, per-group layout."""
    root = tmp_path_factory.mktemp("digits_export")
    record, export = root / "record", root / "onnx"
    assert main(["calibrate", "--model", "dit-digits", "--method", "minmax", "--groups", "2",
                 "--samples-per-group", "2", "--trajectory-steps", "4", "--rounds", "1", "--out", str(record),
                 "--quiet", "--device", "cpu"]) == 0
    assert main(["export", "--model", "dit-digits", "--record", str(record), "--out", str(export)]) == 0
    return record, export
