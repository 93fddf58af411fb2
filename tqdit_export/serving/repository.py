"""A Triton model repository for a quantized DiT, in Triton's documented layout:

    REPO/
      tqdit_repository.json          what was written, from what (written last: the marker)
      tqdit_sampler/                 Python backend (BLS): labels, seed, steps, sampler, guidance -> images
        config.pbtxt
        1/model.py, 1/pipeline.json  model spec, time groups, which denoiser serves which group
      tqdit_denoiser_g0/ ...         one per time group (per-group layout), or tqdit_denoiser (single/plugin)
        config.pbtxt
        1/model.plan                 TensorRT targets: platform tensorrt_plan
        1/libtqdit_trt_plugins.so    plugin layout: the build's C++ plugin, which Triton loads with
                                     --backend-config=tensorrt,plugins=... (`backend_config_args`)
        1/model.onnx + 1/model.py    CPU: a Python-backend model running the graph with ONNX Runtime

The CPU denoisers are Python-backend models rather than `platform: onnxruntime_onnx`: the
Q/DQ MatMuls reach ONNX Runtime's integer kernels only with the `MatMulAddFusion` optimizer
disabled (1.59x over FP32 on a DiT block; 0.75x with defaults), which Triton's ONNX Runtime
backend cannot be told, and the tritonserver of the nvidia-pytriton wheel ships only the
Python backend. The repository copies the graphs / engines (self-contained); its Python
code is this package, which the Python environment of the server must have installed.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from ..api import ModelSpec, export_folder_of, spec_of_export
from ..diffusion.schedule import NUM_TRAIN_TIMESTEPS
from ..io import atomic_folder, file_sha256
from ..onnx.manifest import BUILD_MANIFEST, BuildManifest, ExportManifest, Layout, graph_path, verified_file

REPOSITORY_MARKER = "tqdit_repository.json"
REPOSITORY_VERSION = 1
SAMPLER_MODEL = "tqdit_sampler"
PIPELINE_JSON = "pipeline.json"
DEFAULT_MAX_IMAGES = 64  # images per sampler batch on the CPU (the denoiser then takes 2x: CFG pairs)

SAMPLER_MODEL_PY = '''"""tqdit sampler (Triton Python backend, BLS): the code is tqdit_export.serving.triton_sampler."""
from tqdit_export.serving.triton_sampler import TritonPythonModel  # noqa: F401
'''
ORT_DENOISER_MODEL_PY = '''"""tqdit denoiser on ONNX Runtime (Triton Python backend): the code is tqdit_export.serving.triton_ort_denoiser."""
from tqdit_export.serving.triton_ort_denoiser import TritonPythonModel  # noqa: F401
'''


@dataclass(frozen=True)
class RepositoryOptions:
    """How the repository serves. Defaults: up to 64 images per sampler batch on the CPU (TensorRT:
    half the engines' profile maximum, as CFG doubles the batch), 2 sampler instances and 1
    instance per denoiser, dynamic batching on with a 2 ms queue delay, ONNX Runtime with its
    default intra-op threads (the physical cores). The sampler's queue delay can differ from the
    denoisers': the sampler's is paid once per request, the denoisers' at every step of a loop
    that runs alone."""

    max_images: int | None = None
    sampler_instances: int = 2
    denoiser_instances: int = 1
    dynamic_batching: bool = True
    queue_delay_us: int = 2000
    sampler_queue_delay_us: int | None = None  # None: queue_delay_us
    threads: int = 0  # ONNX Runtime intra-op threads per denoiser instance; 0: ORT's default
    # Defaults: what the export recorded (`model.sampling`), else the digits rule and all channels.
    pixel_space: bool | None = None
    cfg_channels: int | None = None

    def __post_init__(self) -> None:
        for name in ("sampler_instances", "denoiser_instances"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} {getattr(self, name)}: must be at least 1")
        if self.max_images is not None and self.max_images < 1:
            raise ValueError(f"--max-images {self.max_images}: must be at least 1")
        if self.queue_delay_us < 0 or self.threads < 0 or (self.sampler_queue_delay_us or 0) < 0:
            raise ValueError("--queue-delay-us, --sampler-queue-delay-us and --threads must be >= 0")

    @property
    def sampler_delay_us(self) -> int:
        return self.queue_delay_us if self.sampler_queue_delay_us is None else self.sampler_queue_delay_us


@dataclass(frozen=True)
class Denoiser:
    """One denoiser model of the repository: its name, the time group it serves ("input": every
    group, fed `time_group`), and whether Triton batches it (max_batch_size > 0)."""

    name: str
    time_group: int | str
    batched: bool


def _dims(values: tuple[int, ...]) -> str:
    return "[ " + ", ".join(str(v) for v in values) + " ]"


def _tensor(name: str, dtype: str, dims: tuple[int, ...], reshape: tuple[int, ...] | None = None,
            optional: bool = False) -> str:
    fields = [f'name: "{name}"', f"data_type: {dtype}", f"dims: {_dims(dims)}"]
    if reshape is not None:
        fields.append(f"reshape: {{ shape: {_dims(reshape)} }}")
    if optional:
        fields.append("optional: true")
    return "  {\n    " + "\n    ".join(fields) + "\n  }"


def _batching(options: RepositoryOptions, max_batch: int, delay_us: int) -> str:
    if not options.dynamic_batching or max_batch == 0:
        return ""
    return f"dynamic_batching {{\n  max_queue_delay_microseconds: {delay_us}\n}}\n"


def denoiser_config(denoiser: Denoiser, spec: ModelSpec, platform: str, max_batch: int,
                    options: RepositoryOptions, parameters: dict[str, str]) -> str:
    """config.pbtxt of one denoiser model: x (C,H,W) FP32, t and y INT64 per row, out (2C,H,W) FP32.

    Batched (per-group layout): t and y are dims [1] reshaped to the graphs' (N,). The single and
    plugin layouts take a scalar `time_group` beside the batch, which Triton cannot batch (two
    requests of different groups cannot share one call), so they run unbatched (max_batch_size 0).
    """
    c, h, w = spec.shape
    if denoiser.batched:
        # TensorRT's (N,) t and y: dims [1] reshaped away. The Python backend gets (N, 1) as sent: with
        # a reshape to [] its input byte sizes came out 0 (tritonserver 2.51), so it flattens them itself.
        flat = () if platform == "tensorrt_plan" else None
        inputs = [_tensor("x", "TYPE_FP32", (c, h, w)), _tensor("t", "TYPE_INT64", (1,), flat),
                  _tensor("y", "TYPE_INT64", (1,), flat)]
        outputs = [_tensor("out", "TYPE_FP32", (2 * c, h, w))]
    else:
        # The graphs' time_group is a 0-d scalar, which a non-batching Triton model cannot declare (an
        # empty reshape is refused: "scalar tensors are not supported"): it is sent as [1]. The Python
        # model reshapes it to (); whether TensorRT's backend binds [1] to a 0-d engine input has not
        # been checked (no TensorRT here): prefer the per-group layout for Triton on GPUs.
        inputs = [_tensor("x", "TYPE_FP32", (-1, c, h, w)), _tensor("t", "TYPE_INT64", (-1,)),
                  _tensor("y", "TYPE_INT64", (-1,)), _tensor("time_group", "TYPE_INT64", (1,))]
        outputs = [_tensor("out", "TYPE_FP32", (-1, 2 * c, h, w))]
    batch = max_batch if denoiser.batched else 0
    head = f'name: "{denoiser.name}"\n'
    if platform == "tensorrt_plan":
        head += 'platform: "tensorrt_plan"\ndefault_model_filename: "model.plan"\n'
        kind = "KIND_GPU"
    else:
        head += 'backend: "python"\n'
        kind = "KIND_CPU"
    text = (head + f"max_batch_size: {batch}\n"
            + "input [\n" + ",\n".join(inputs) + "\n]\n"
            + "output [\n" + ",\n".join(outputs) + "\n]\n"
            + f"instance_group [\n  {{\n    count: {options.denoiser_instances}\n    kind: {kind}\n  }}\n]\n"
            + _batching(options, batch, options.queue_delay_us))
    for key, value in parameters.items():
        text += f'parameters {{\n  key: "{key}"\n  value: {{ string_value: "{value}" }}\n}}\n'
    return text


def sampler_config(spec: ModelSpec, max_images: int, options: RepositoryOptions) -> str:
    """config.pbtxt of the sampler: every input is one value per image (Triton batches along the
    images); seed, steps, sampler and guidance_scale must be equal over the rows of one request."""
    c, h, w = spec.shape
    inputs = [_tensor("class_label", "TYPE_INT64", (1,)), _tensor("seed", "TYPE_INT64", (1,)),
              _tensor("steps", "TYPE_INT32", (1,)), _tensor("sampler", "TYPE_STRING", (1,), optional=True),
              _tensor("guidance_scale", "TYPE_FP32", (1,), optional=True)]
    outputs = [_tensor("images", "TYPE_UINT8", (h, w, c)), _tensor("samples", "TYPE_FP32", (c, h, w))]
    return (f'name: "{SAMPLER_MODEL}"\nbackend: "python"\nmax_batch_size: {max_images}\n'
            + "input [\n" + ",\n".join(inputs) + "\n]\n"
            + "output [\n" + ",\n".join(outputs) + "\n]\n"
            + f"instance_group [\n  {{\n    count: {options.sampler_instances}\n    kind: KIND_CPU\n  }}\n]\n"
            + _batching(options, max_images, options.sampler_delay_us)
            + f'parameters {{\n  key: "pipeline"\n  value: {{ string_value: "{PIPELINE_JSON}" }}\n}}\n')


def _source(folder: Path) -> tuple[ExportManifest, BuildManifest | None]:
    """The export manifest of `--from` and, for a build folder, its build manifest (with engines)."""
    if (folder / BUILD_MANIFEST).is_file():
        build = BuildManifest.read(folder, require_engines=False)
        if not build.engines:
            raise ValueError(f"--from {folder}: the build has no TensorRT engines ({build.raw.get('status')}: "
                             f"{build.raw.get('reason', 'no reason recorded')}); build on a machine with TensorRT "
                             f"and a GPU, or serve its graphs on the CPU with --from {folder / 'onnx'}")
        return ExportManifest.read(folder / "onnx"), build
    return ExportManifest.read(export_folder_of(folder)), None


def write_repository(source: str | Path, out: str | Path, options: RepositoryOptions = RepositoryOptions()) -> dict:
    """Write the Triton repository for `source` (an export folder: ONNX Runtime on the CPU; a build
    folder with engines: TensorRT) to `out`, atomically; returns the contents of its marker file."""
    source, out = Path(source), Path(out)
    manifest, build = _source(source)
    kind = "ort" if build is None else "tensorrt"
    export = manifest.folder
    layout = manifest.layout if build is None else build.layout
    spec = spec_of_export(manifest, options.pixel_space, options.cfg_channels)
    if build is not None:
        profile_max, entries, platform = build.max_batch, build.engines, "tensorrt_plan"
    else:
        profile_max, entries, platform = 2 * (options.max_images or DEFAULT_MAX_IMAGES), manifest.graphs, "python"
    if profile_max < 2:
        raise ValueError(f"{source}: the engines' profile takes at most {profile_max} row, and guidance needs 2 per "
                         "image; build the engines again with `tqdit build` (its targets' profiles take 4 or more)")
    max_images = options.max_images or profile_max // 2
    check_max_images(max_images, profile_max)
    plugin_library = _triton_plugin_library(build, source) if build is not None and layout is Layout.PLUGIN else None
    batched = not layout.feeds_time_group
    denoisers = [Denoiser(f"tqdit_denoiser_g{e['time_group']}" if batched else "tqdit_denoiser",
                          e["time_group"], batched) for e in entries]
    with atomic_folder(out, REPOSITORY_MARKER) as tmp:
        files: dict[str, str] = {}  # denoiser model -> the graph or plan it loads
        plugins: list[str] = []  # libraries Triton's TensorRT backend must load, relative to the repository
        for d, entry in zip(denoisers, entries):
            version = tmp / d.name / "1"
            version.mkdir(parents=True)
            if kind == "tensorrt":
                plan = verified_file(source, entry["file"], entry.get("sha256"), "engine")
                shutil.copy2(plan, version / "model.plan")
                params = {}
                if plugin_library is not None:  # beside the plan: Triton serves only folders with a config.pbtxt
                    shutil.copy2(plugin_library, version / plugin_library.name)
                    plugins.append(f"{d.name}/1/{plugin_library.name}")
                files[d.name] = "model.plan"
            else:
                graph = graph_path(export, entry)
                shutil.copy2(graph, version / "model.onnx")
                if "external_data" in entry:  # the graph names its data file: keep the name beside it
                    data = version / entry["external_data"]
                    data.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(export / entry["external_data"], data)
                (version / "model.py").write_text(ORT_DENOISER_MODEL_PY)
                params = {"graph": "model.onnx", "threads": str(options.threads),
                          "expand_plugin_nodes": "1" if layout is Layout.PLUGIN else "0"}
                files[d.name] = "model.onnx"
            (tmp / d.name / "config.pbtxt").write_text(
                denoiser_config(d, spec, platform, 2 * max_images, options, params))
        version = tmp / SAMPLER_MODEL / "1"
        version.mkdir(parents=True)
        (version / "model.py").write_text(SAMPLER_MODEL_PY)
        pipeline = {"version": REPOSITORY_VERSION, "spec": spec.as_json(), "layout": layout.value,
                    "time_groups": list(manifest.time_groups.edges), "num_train_timesteps": NUM_TRAIN_TIMESTEPS,
                    "max_images": max_images, "denoisers": [asdict(d) for d in denoisers]}
        (version / PIPELINE_JSON).write_text(json.dumps(pipeline, indent=2, sort_keys=True) + "\n")
        (tmp / SAMPLER_MODEL / "config.pbtxt").write_text(sampler_config(spec, max_images, options))
        # Every file the server reads (configs, model.py, pipeline.json, graphs, data, plans), hashed
        # once and checked before a server starts (read_repository(verify=True)).
        hashes = {p.relative_to(tmp).as_posix(): file_sha256(p) for p in sorted(tmp.rglob("*")) if p.is_file()}
        info = {"version": REPOSITORY_VERSION, "source": str(source), "runtime": kind, "layout": layout.value,
                "platform": platform, "model": manifest.raw["model"], "max_images": max_images,
                "models": [SAMPLER_MODEL] + [d.name for d in denoisers],
                "files": {name: {"file": f, "sha256": hashes[f"{name}/1/{f}"]} for name, f in files.items()},
                "plugins": plugins,
                "options": asdict(options), "sha256": hashes}
        (tmp / REPOSITORY_MARKER).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    return info


PLUGIN_FOR_TRITON = ("Triton's TensorRT backend (C++) loads only the C++ plugin library, not the Python plugin "
                     "(tensorrt.plugin, which needs an interpreter in the process running the engines): build the "
                     "engines with --plugin-library libtqdit_trt_plugins.so (cmake -S trt_plugins/csrc), or with "
                     "--layout per-group (no plugin, and Triton batches its requests)")


def _triton_plugin_library(build: BuildManifest, source: Path) -> Path:
    """The C++ plugin library of a plugin-layout build, which Triton's TensorRT backend loads, or an
    error before anything is written: engines built with the Python plugin need a Python interpreter
    in the process running them, which that backend (C++) does not have."""
    library = build.plugin_library()
    if library is None:
        why = ("were built with the Python plugin (tensorrt.plugin)" if build.plugin.get("kind") == "python"
               else "do not record which plugin built them (a build.json from before builds recorded it)")
        raise ValueError(f"--from {source}: its plugin-layout engines {why}; {PLUGIN_FOR_TRITON}")
    return library


TRT_PLUGINS_FLAG = "--backend-config=tensorrt,plugins="


def backend_config_args(repo: str | Path, marker: dict, extra_args: tuple[str, ...] = ()) -> list[str]:
    """`extra_args` (tritonserver flags) with what the repository needs: its plugin libraries for
    the TensorRT backend, by absolute path. tritonserver keeps only the last
    `--backend-config=tensorrt,plugins=` flag, so every such flag the caller passes is merged, in
    order, with the repository's libraries into one, where the caller's first one stood (or last)."""
    ours = [str((Path(repo) / p).resolve()) for p in marker.get("plugins") or []]
    theirs = [p for a in extra_args if a.startswith(TRT_PLUGINS_FLAG) for p in a[len(TRT_PLUGINS_FLAG):].split(";") if p]
    if not ours:
        return list(extra_args)
    merged = TRT_PLUGINS_FLAG + ";".join(dict.fromkeys(theirs + ours))  # each library once, the caller's first
    args, placed = [], False
    for a in extra_args:
        if a.startswith(TRT_PLUGINS_FLAG):
            if not placed:
                args.append(merged)
                placed = True
            continue
        args.append(a)
    return args if placed else args + [merged]


def check_max_images(max_images: int | None, profile_max: int) -> None:
    """Refuse more images per request than the engines' profile takes (None: the default, half of it)."""
    if max_images and 2 * max_images > profile_max:
        raise ValueError(f"--max-images {max_images}: the engines' profile takes at most {profile_max} rows, and "
                         f"guidance doubles every batch; use --max-images {profile_max // 2} or less")


def read_repository(repo: str | Path, verify: bool = False) -> dict:
    """The marker of a repository written by `write_repository`, or an error saying how to write one.
    `verify`: every file it wrote (configs, model code, pipeline.json, graphs, their data, engines) is
    checked against the sha256 the marker recorded: a file edited or replaced in the repository is
    refused before a server loads it (a repository written before that record: its graphs and engines)."""
    path = Path(repo) / REPOSITORY_MARKER
    if not path.is_file():
        raise FileNotFoundError(f"--repo {repo}: no {REPOSITORY_MARKER}; write the repository with "
                                "`tqdit triton-repo --from EXPORT_OR_BUILD_DIR --out DIR`")
    try:
        marker = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: not a readable repository marker ({err}); write the repository again with "
                         "`tqdit triton-repo`") from err
    if verify:
        recorded = marker.get("sha256") or {f"{model}/1/{e['file']}": e.get("sha256")
                                            for model, e in (marker.get("files") or {}).items()}
        for name, sha256 in recorded.items():
            verified_file(repo, name, sha256, "file of the repository")
        unknown = [p for p in marker.get("plugins") or [] if p not in recorded]
        if unknown:  # a library handed to tritonserver is one the writer copied and hashed
            raise ValueError(f"{path}: plugins {unknown} are not files the repository writer recorded; write the "
                             "repository again with `tqdit triton-repo`")
    return marker


def lint_model_config(path: str | Path) -> list[str]:
    """Findings in one config.pbtxt: parsed with Triton's own ModelConfig protobuf (tritonclient's
    model_config_pb2: unknown fields or enum values are errors), then the rules Triton applies
    when it loads a model. Empty when the config is sound."""
    from google.protobuf import text_format

    try:
        from tritonclient.grpc import model_config_pb2
    except ImportError as err:
        raise RuntimeError("linting config.pbtxt needs tritonclient: pip install 'tritonclient[grpc]' "
                           "(or tqdit-export[serve])") from err
    path = Path(path)
    config = model_config_pb2.ModelConfig()
    try:
        text_format.Parse(path.read_text(), config)
    except text_format.ParseError as err:
        return [f"{path}: not a Triton ModelConfig: {err}"]
    findings = []
    folder = path.parent
    if config.name != folder.name:
        findings.append(f"{path}: name {config.name!r} differs from its folder {folder.name!r}")
    if bool(config.platform) == bool(config.backend):
        findings.append(f"{path}: exactly one of platform and backend must be set")
    versions = [p for p in folder.iterdir() if p.is_dir() and p.name.isdigit()]
    if not versions:
        findings.append(f"{folder}: no numeric version folder (Triton serves <model>/<version>/)")
    filename = config.default_model_filename or {"tensorrt_plan": "model.plan", "onnxruntime_onnx": "model.onnx"}.get(
        config.platform, "model.py")
    for v in versions:
        if not (v / filename).is_file():
            findings.append(f"{v}: no {filename}, the file Triton loads for this model")
    for tensor in list(config.input) + list(config.output):
        if tensor.data_type == model_config_pb2.TYPE_INVALID:
            findings.append(f"{path}: tensor {tensor.name!r} has no data_type")
        if not tensor.dims:
            findings.append(f"{path}: tensor {tensor.name!r} has no dims")
        if any(d < -1 or d == 0 for d in tensor.dims):
            findings.append(f"{path}: tensor {tensor.name!r} dims {list(tensor.dims)}: each is -1 or positive")
    if config.max_batch_size == 0 and config.HasField("dynamic_batching"):
        findings.append(f"{path}: dynamic_batching needs max_batch_size > 0")
    for group in config.instance_group:
        if group.count < 1:
            findings.append(f"{path}: instance_group count {group.count} must be at least 1")
    return findings


def lint_repository(repo: str | Path) -> list[str]:
    """Findings over every model folder of a repository (see `lint_model_config`)."""
    repo = Path(repo)
    models = sorted(p for p in repo.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not models:
        return [f"{repo}: no model folders"]
    findings = []
    for model in models:
        config = model / "config.pbtxt"
        if not config.is_file():
            findings.append(f"{model}: no config.pbtxt")
            continue
        findings += lint_model_config(config)
    return findings
