"""The real TensorRT Python bindings, importable without TensorRT's libraries.

The `tensorrt-cu12-bindings` wheels (10.3, 10.13, 11.x) hold the real `tensorrt` extension
module; it needs only a few C entry points from libnvinfer, libnvonnxparser and
libnvinfer_plugin to load (createInferBuilder_INTERNAL, getPluginRegistry, ...). A stub
library exporting those symbols (returning NULL: nothing can be built or run) lets the
module import, so its classes, methods, enums and signatures can be checked, and the pure
Python `tensorrt.plugin` package runs for real.

`make setup` downloads the wheels into .venv/trt-wheels (or set TQDIT_TRT_WHEELS to a folder of
them); each version runs in its own subprocess, since one process holds one `tensorrt`.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
WHEELS_ENV = "TQDIT_TRT_WHEELS"
WHEEL_RE = re.compile(r"tensorrt_cu1\d_bindings-(?P<version>[\d.]+(?:\.post\d+)?)-cp(?P<py>\d+)-")

# The C entry points the bindings' extension module imports (nm -D --undefined-only on the .so
# of 10.3.0, 10.13.3.9 and 11.4.0.106). Every one returns NULL or 0: nothing is built or run.
STUB_SOURCE = """
#include <stddef.h>
void* createInferBuilder_INTERNAL(void* logger, int version) { return NULL; }
void* createInferRefitter_INTERNAL(void* engine, void* logger, int version) { return NULL; }
void* createInferRuntime_INTERNAL(void* logger, int version) { return NULL; }
void* getPluginRegistry(void) { return NULL; }
void* getBuilderPluginRegistry(int capability) { return NULL; }
void* createNvOnnxParser_INTERNAL(void* network, void* logger, int version) { return NULL; }
void* createNvOnnxParserRefitter_INTERNAL(void* refitter, void* logger, int version) { return NULL; }
int getNvOnnxParserVersion(void) { return 0; }
int initLibNvInferPlugins(void* logger, const char* ns) { return 0; }
"""
STUB_LIBRARIES = ("nvinfer", "nvonnxparser", "nvinfer_plugin")


def wheel_folder() -> Path:
    """Where the bindings wheels are: $TQDIT_TRT_WHEELS, else <venv>/trt-wheels (written by `make setup`)."""
    return Path(os.environ.get(WHEELS_ENV) or Path(sys.prefix) / "trt-wheels")


def available_wheels() -> dict[str, Path]:
    """{TensorRT version: wheel} for the wheels of this Python version in `wheel_folder()`."""
    here = f"{sys.version_info.major}{sys.version_info.minor}"
    found = {}
    for wheel in sorted(wheel_folder().glob("tensorrt_cu1*_bindings-*.whl")):
        m = WHEEL_RE.match(wheel.name)
        if m and m["py"] == here:
            found[m["version"]] = wheel
    return found


CHECKED: dict[str, list[str]] = {}  # what was checked against which versions, for the run's summary


def note_checked(what: str, version: str) -> None:
    """Record that `what` was checked against TensorRT `version` (reported at the end of the run)."""
    CHECKED.setdefault(what, []).append(version)


@dataclass
class Bindings:
    """One TensorRT version's bindings, unpacked, with the stub libraries of its major version."""

    version: str
    site: Path  # holds `tensorrt/` (the wheel's tensorrt_bindings package, under the name users import)
    stubs: Path

    def run(self, code: str | Path, stdin: str | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
        """Run Python `code` (source, or the path of a script) in a subprocess where `import tensorrt`
        is these bindings and the repository's packages import."""
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(self.site), str(REPO)]),
                   LD_LIBRARY_PATH=os.pathsep.join(filter(None, [str(self.stubs), os.environ.get("LD_LIBRARY_PATH")])))
        argv = [str(code)] if isinstance(code, Path) else ["-c", code]
        return subprocess.run([sys.executable, *argv], input=stdin, capture_output=True, text=True,
                              env=env, timeout=timeout, cwd=REPO)

    def run_json(self, code: str | Path, payload: object = None) -> object:
        """Run `code`, which prints one JSON document last, and return it (an error shows its stderr)."""
        proc = self.run(code, None if payload is None else json.dumps(payload))
        if proc.returncode != 0:
            raise AssertionError(f"TensorRT {self.version} subprocess failed:\n{proc.stderr[-4000:]}")
        return json.loads(proc.stdout.strip().splitlines()[-1])


def build_stubs(folder: Path) -> Path | None:
    """Compile the stub libraries (sonames .so.10 and .so.11) into `folder`; None without a C compiler."""
    cc = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if cc is None:
        return None
    folder.mkdir(parents=True, exist_ok=True)
    source = folder / "stub.c"
    source.write_text(STUB_SOURCE)
    for major_version in (10, 11):
        for lib in STUB_LIBRARIES:
            name = f"lib{lib}.so.{major_version}"
            subprocess.run([cc, "-shared", "-fPIC", "-o", str(folder / name), f"-Wl,-soname,{name}", str(source)],
                           check=True, capture_output=True)
    return folder


def unpack(wheel: Path, version: str, folder: Path, stubs: Path) -> Bindings:
    """Unpack the wheel's `tensorrt_bindings` package as `tensorrt` under `folder/site-<version>`.

    The `tensorrt` package users import (from the `tensorrt-cu12` wheel or TensorRT's own wheel)
    is this package; importing it under that name makes `import tensorrt.plugin` resolve as it does
    in an installation.
    """
    site = folder / f"site-{version}"
    if not (site / "tensorrt" / "__init__.py").exists():
        tmp = folder / f".unpack-{version}"
        shutil.rmtree(tmp, ignore_errors=True)
        with zipfile.ZipFile(wheel) as z:
            z.extractall(tmp)
        site.mkdir(parents=True, exist_ok=True)
        shutil.move(str(tmp / "tensorrt_bindings"), str(site / "tensorrt"))
        shutil.rmtree(tmp, ignore_errors=True)
    return Bindings(version, site, stubs)
