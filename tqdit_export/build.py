"""`tqdit build`: checkpoint (+ record) -> export -> lint -> TensorRT engines, one command for CI.

The output folder:
    record/       the calibration record (its files copied, or calibrated here when none is given)
    onnx/         the export (manifest.json + graphs of the target's layout)
    lint.json     TensorRT-conformance findings per graph
    engines/      serialized engines (only where TensorRT and a GPU are present)
    plugins/      plugin layout with the C++ plugin: the library the engines were built with
    build.json    what was built, from what (hashes), for which target, TensorRT version, GPU, sizes

Everything that needs neither TensorRT nor a GPU is produced first; when either is
missing, build.json says `status: "onnx-only"` with the reason and the command exits
with ENGINES_MISSING, so a CI job can tell "no engine" from "broken".
The folder is written atomically: a complete build (or an onnx-only one) or nothing; an
existing folder is replaced only if it is a build holding nothing the tool did not write.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path

from calibration.record import RECORD_FILES, RECORD_JSON, CalibrationRecord

from .io import atomic_folder, file_sha256
from .models.dit import DiT
from .onnx import export_dit, lint_file
from .onnx.manifest import BUILD_MANIFEST, Layout, in_group_order
from .targets import ENGINE_TARGETS, TARGETS, Target, record_forms_note, target

BUILD_VERSION = 1
ENGINES_MISSING = 3  # exit status: artifacts written, engines not built (no TensorRT or no GPU)


def record_sha256(record_dir: Path) -> str:
    """One hash over the record's files (name + content, sorted: record.json, scales.safetensors).

    Only those: the folder's inventory is bookkeeping, and anything else kept beside the record
    is not part of it, so a record hashes the same whichever version or user wrote its folder.
    """
    h = hashlib.sha256()
    for name in sorted(RECORD_FILES):
        h.update(name.encode())
        h.update(file_sha256(Path(record_dir) / name).encode())
    return h.hexdigest()


def _engines_unavailable_reason() -> str | None:
    """Why engines cannot be built here, or None when TensorRT (with its builder) and a CUDA GPU are present.

    The GPU is found without torch (cuda-python, pycuda, nvidia-smi, then torch): the project's
    machines install a CPU torch, which must not hide a GPU that TensorRT can use.
    """
    from .engines.trt_build import build_gpu, import_tensorrt

    try:
        import_tensorrt(builder=True)
        build_gpu()
    except RuntimeError as err:
        return str(err)
    return None


def _check_tensorrt_precision(precision: str) -> None:
    """Where TensorRT is installed, refuse a precision its version cannot build before any work is done."""
    from .engines.trt_build import check_precision_supported, import_tensorrt

    try:
        trt = import_tensorrt(builder=True)
    except RuntimeError:
        return  # no TensorRT: an onnx-only build, checked again where engines are built
    check_precision_supported(trt.__version__, precision)


# What TensorRT does with each weight width: it has integer GEMMs for INT8 x INT8 (and FP8 x
# FP8), but INT4 weights are weight-only there (dequantized inside an FP16/BF16 GEMM), so a W4A8
# graph runs its GEMMs in float with the activations' Q/DQ pairs folded away, not as integer GEMMs.
W4A8_NOTE = ("W4A8: TensorRT has no INT4 x INT8 GEMM; INT4 weights are weight-only there, so these GEMMs run in "
             "FP16 on dequantized weights (the memory for weights is 4-bit; the arithmetic is not integer)")


def _installed_trt_major() -> int | None:
    """The major version of the TensorRT installed here, or None (then the target's default applies)."""
    try:
        import tensorrt as trt
    except ImportError:
        return None
    try:
        return int(str(trt.__version__).split(".")[0])
    except (AttributeError, ValueError):
        return None


def build_layout(target_name: str, layout: str | None) -> Layout:
    """The layout a build writes: `layout` (--layout), else the target's default."""
    return Layout.of(layout or target(target_name).layout, "--layout")


def build(model: DiT, model_name: str, record: CalibrationRecord, record_dir: Path, out: Path, target: str,
          layout: str | None = None, plugin_library: Path | None = None, command: str = "",
          precision: str = "int8", float_precision: str | None = None,
          sampling: dict | None = None) -> tuple[dict, int]:
    """Write the build folder; returns (build.json contents, exit status: 0 or ENGINES_MISSING).
    `sampling`: the model's sampling defaults for the export manifest (`ResolvedModel.sampling()`).

    `float_precision=None`: the target's for the TensorRT installed here (fp16 wherever the
    network is strongly typed, `Target.float_precision_for`)."""
    if target not in ENGINE_TARGETS:
        hint = " (ONNX Runtime needs no engine: use `tqdit export --target cpu`)" if target in TARGETS else ""
        raise ValueError(f"--target {target!r} is not a TensorRT target{hint}; choose one of {', '.join(ENGINE_TARGETS)}")
    spec = TARGETS[target]
    layout = build_layout(target, layout).value
    if precision == "fp8" and not spec.fp8:
        raise ValueError(f"--precision fp8: target {target!r} has no FP8 tensor cores; use one of "
                         f"{sorted(k for k, t in TARGETS.items() if t.fp8)} or --precision int8")
    _check_tensorrt_precision(precision)
    float_precision = float_precision or spec.float_precision_for(_installed_trt_major())
    start = time.perf_counter()
    with atomic_folder(out, BUILD_MANIFEST) as tmp:
        with atomic_folder(tmp / "record", RECORD_JSON) as copy:  # the record's files, not what else is beside them
            for name in RECORD_FILES:
                shutil.copy2(Path(record_dir) / name, copy / name)
        # GPU targets: full 8-bit weights (7-bit codes are an ONNX Runtime CPU workaround).
        manifest = export_dit(model, record, tmp / "onnx", layout=layout, weight_reduce_range=False,
                              precision=precision, attention=spec.attention, target=target,
                              float_precision=float_precision, fused_attention=spec.fused_attention,
                              sampling=sampling)
        graphs = [g["file"] for g in manifest["graphs"]]
        lint = {f: [str(x) for x in lint_file(tmp / "onnx" / f)] for f in graphs}
        (tmp / "lint.json").write_text(json.dumps(lint, indent=2) + "\n")
        export_seconds = time.perf_counter() - start
        info = {
            "version": BUILD_VERSION,
            "command": command,
            "target": {"name": target, **spec.as_json(), "layout": layout},
            "notes": [n for n in [record_forms_note(record, spec, target),
                                  W4A8_NOTE if record.weight_bits <= 4 else None] if n],
            "layout": layout,
            "precision": precision,
            "float_precision": float_precision,
            "time_groups": manifest["time_groups"],
            "model": {"name": model_name, "config": record.model_config, "sampling": manifest["model"].get("sampling")},
            "inputs": {"weights_sha256": record.model_hash, "record_sha256": record_sha256(record_dir),
                       "onnx_sha256": {g["file"]: g["sha256"] for g in manifest["graphs"]}},
            "bits": manifest["bits"],
            "lint": {"file": "lint.json", "findings": sum(len(v) for v in lint.values())},
            "sizes_bytes": {"onnx": {f: (tmp / "onnx" / f).stat().st_size for g in manifest["graphs"]
                                     for f in (g["file"], g.get("external_data")) if f}},
            "seconds": {"export_and_lint": round(export_seconds, 2)},
            "engines": [],
        }
        reason = _engines_unavailable_reason()
        if reason is not None:
            info.update(status="onnx-only", reason=reason, tensorrt=None, gpu=None)
        else:
            info.update(_build_engines(tmp, manifest, spec, layout, plugin_library, precision))
        (tmp / BUILD_MANIFEST).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    return info, 0 if info["status"] == "complete" else ENGINES_MISSING


def _build_engines(folder: Path, manifest: dict, spec: Target, layout: str, plugin_library: Path | None,
                   precision: str) -> dict:
    """Engines for every graph of the export (runs only with TensorRT and a GPU)."""
    from .engines.trt_build import (BuildSettings, build_engine, build_gpu, check_precision_supported,
                                    import_tensorrt, trt_major)

    trt = import_tensorrt(builder=True)
    gpu = build_gpu()
    check_precision_supported(trt.__version__, precision, gpu)
    plugin, library = plugin_record(folder, plugin_library) if layout == Layout.PLUGIN else (None, None)
    # TensorRT 11 has only strongly typed networks; the weak INT8 path is for 10.x (JetPack 6).
    strongly_typed = spec.strongly_typed or trt_major(trt) >= 11
    settings = BuildSettings(strongly_typed=strongly_typed, max_batch=spec.max_batch, fp8=precision == "fp8")
    start = time.perf_counter()
    engines = []
    for graph in in_group_order(manifest["graphs"], folder / "onnx"):
        plan = build_engine(folder / "onnx" / graph["file"], folder / "engines", settings,
                            plugin_library=library, load_plugin=layout == Layout.PLUGIN)
        engines.append({"file": f"engines/{plan.name}", "time_group": graph["time_group"],
                        "timesteps": graph.get("timesteps"), "sha256": file_sha256(plan),
                        "bytes": plan.stat().st_size})
    return {"status": "complete", "tensorrt": trt.__version__, "strongly_typed": strongly_typed, "gpu": gpu.name,
            "compute_capability": gpu.compute_capability, "engines": engines,
            "seconds_engines": round(time.perf_counter() - start, 2), **({"plugin": plugin} if plugin else {})}


def plugin_record(folder: Path, plugin_library: Path | None) -> tuple[dict, Path | None]:
    """Which TimeGroupQuantize the plugin-layout engines of `folder` are built with, as build.json
    records it, and the library file to build them with (None: the Python plugin).

    The C++ library (`plugin_library`, else $TQDIT_TRT_PLUGIN_LIB) is copied into the build's
    plugins/ first and the engines are built against that copy, so the folder carries the very
    library its engines need wherever it goes (the edge runtime and the Triton repository load it)."""
    from .edge.trt_runtime import chosen_plugin_library

    chosen = chosen_plugin_library(plugin_library)
    if chosen is None:
        return {"kind": "python", "module": "trt_plugins.python_plugin"}, None
    copy = folder / "plugins" / chosen.name
    copy.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(chosen, copy)
    return {"kind": "library", "file": f"plugins/{chosen.name}", "sha256": file_sha256(copy)}, copy
