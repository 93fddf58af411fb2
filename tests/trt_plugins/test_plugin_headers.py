"""The C++ TimeGroupQuantize plugin compiles (-fsyntax-only) against each TensorRT's headers.

TensorRT's headers come only with the TensorRT SDK or NVIDIA's packages (libnvinfer-dev), never
downloaded here: the test uses the system's (NvInfer.h under /usr/include) and every folder in
$TQDIT_TRT_INCLUDE (os.pathsep-separated, e.g. the include/ of NVIDIA/TensorRT at v10.3.0,
v10.13.3 and v11.1), and skips when there is none. CUDA's runtime headers come from
/usr/local/cuda or $CUDA_HOME. What it proves: the plugin's declarations match the interfaces
(IPluginV3 and its capabilities) of those versions; not that it links or runs.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

CSRC = Path(__file__).resolve().parents[2] / "trt_plugins" / "csrc"
SYSTEM_INCLUDES = ("/usr/include/x86_64-linux-gnu", "/usr/include/aarch64-linux-gnu", "/usr/include")


def tensorrt_includes() -> list[Path]:
    found = [Path(p) for p in os.environ.get("TQDIT_TRT_INCLUDE", "").split(os.pathsep) if p]
    found += [Path(p) for p in SYSTEM_INCLUDES if (Path(p) / "NvInfer.h").is_file()]
    return [p for p in dict.fromkeys(found) if (p / "NvInferVersion.h").is_file()]


def version_of(include: Path) -> str:
    text = (include / "NvInferVersion.h").read_text()
    parts = []
    for field in ("MAJOR", "MINOR", "PATCH"):
        m = re.search(rf"#define (?:NV_TENSORRT|TRT)_{field}(?:_ENTERPRISE)?\s+(\d+)", text)
        parts.append(m[1] if m else "?")
    return ".".join(parts)


def cuda_include() -> Path | None:
    for root in (os.environ.get("CUDA_HOME"), "/usr/local/cuda"):
        if root and (Path(root) / "include" / "cuda_runtime_api.h").is_file():
            return Path(root) / "include"
    return None


@pytest.mark.parametrize("include", tensorrt_includes() or [None], ids=lambda p: "none" if p is None else version_of(p))
def test_plugin_compiles_against_tensorrt_headers(include):
    if include is None:
        pytest.skip("no TensorRT headers (system NvInfer.h or $TQDIT_TRT_INCLUDE)")
    cxx = shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")
    cuda = cuda_include()
    if cxx is None or cuda is None:
        pytest.skip("needs a C++ compiler and CUDA's runtime headers")
    proc = subprocess.run([cxx, "-std=c++17", "-fsyntax-only", "-Wno-deprecated-declarations",
                           "-DTQDIT_WITH_CUDA_RUNTIME", f"-I{include}", f"-I{cuda}", f"-I{CSRC}",
                           str(CSRC / "timeGroupQuantizePlugin.cpp")], capture_output=True, text=True)
    assert proc.returncode == 0, f"TensorRT {version_of(include)} headers:\n{proc.stderr[-4000:]}"
