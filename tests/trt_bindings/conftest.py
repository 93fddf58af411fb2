"""Fixtures: the real TensorRT bindings of each version found (see trt_wheels.py), importable here.

Skips cleanly where no wheel was downloaded or no C compiler builds the stub libraries, and
reports at the end of the run which versions were checked.
"""
from __future__ import annotations

import pytest

from trt_wheels import CHECKED, Bindings, available_wheels, build_stubs, unpack, wheel_folder


@pytest.fixture(scope="session")
def trt_versions(tmp_path_factory) -> dict[str, Bindings]:
    """{version: Bindings} for every bindings wheel available; skips when there is none to use."""
    wheels = available_wheels()
    if not wheels:
        pytest.skip(f"no tensorrt-cu12-bindings wheel in {wheel_folder()} (make setup downloads them; "
                    "or set TQDIT_TRT_WHEELS)")
    folder = tmp_path_factory.mktemp("trt-bindings")
    stubs = build_stubs(folder / "stubs")
    if stubs is None:
        pytest.skip("no C compiler to build the stub TensorRT libraries")
    return {v: unpack(w, v, folder, stubs) for v, w in wheels.items()}


def pytest_terminal_summary(terminalreporter) -> None:
    for what, versions in CHECKED.items():
        terminalreporter.write_line(f"TensorRT bindings: {what} checked against {', '.join(sorted(set(versions)))}")
