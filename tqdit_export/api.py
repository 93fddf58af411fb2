"""The library face of the whole job: open a denoiser, draw images. The CLI, the Triton sampler
model and the benchmarks all call this; none of them writes its own sampling code.

    from tqdit_export.api import open_pipeline
    pipe = open_pipeline("out/export")                 # an export or build folder, ONNX Runtime
    images = pipe.sample([3] * 16, seed=0, steps=50)   # (16, C, H, W) float32 in the model's range

A `Pipeline` is a numpy denoiser plus what sampling needs to know about its model
(`ModelSpec`). Every draw goes through the one loop, `diffusion.loop.sample_numpy`, with the
noise of a CPU torch generator seeded with the request's seed, so a served request, an API
call and `tqdit sample` give the same images, bit for bit, from the same denoiser.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .diffusion.loop import NumpyDenoiser, sample_numpy
from .diffusion.schedule import NUM_TRAIN_TIMESTEPS, SamplerConfig

__all__ = ["ModelSpec", "SampleSettings", "ImageRequest", "Pipeline", "OrtSessionDenoiser", "balanced_labels",
           "open_pipeline", "open_backend", "model_pipeline", "spec_of_config", "to_uint8", "chunk_seed"]


def is_digits_architecture(in_channels: int, input_size: int, num_classes: int) -> bool:
    """The digits architecture (1 channel, 8x8, 10 classes): such a user checkpoint samples pixels
    (x0 clipped to [-1, 1]) and is evaluated as digits; any other is read as a latent model."""
    return in_channels == 1 and input_size == 8 and num_classes == 10


@dataclass(frozen=True)
class ModelSpec:
    """What sampling needs to know about a denoiser's model: the sample shape, the classes, the
    null class of classifier-free guidance, whether x0 is clipped to [-1, 1] (pixel-space models),
    and the default number of guided channels (None: all; facebookresearch/DiT checkpoints: 3)."""

    in_channels: int
    input_size: int
    num_classes: int
    pixel_space: bool
    cfg_channels: int | None = None
    name: str = ""

    @property
    def shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one sample."""
        return (self.in_channels, self.input_size, self.input_size)

    @property
    def null_class(self) -> int:
        """The label of the unconditional embedding (DiT: the row after the last class)."""
        return self.num_classes

    def as_json(self) -> dict:
        return {"in_channels": self.in_channels, "input_size": self.input_size, "num_classes": self.num_classes,
                "pixel_space": self.pixel_space, "cfg_channels": self.cfg_channels, "name": self.name}

    @classmethod
    def from_json(cls, data: dict) -> "ModelSpec":
        return cls(int(data["in_channels"]), int(data["input_size"]), int(data["num_classes"]),
                   bool(data["pixel_space"]), data.get("cfg_channels"), str(data.get("name", "")))


def spec_of_config(config: dict, name: str = "", pixel_space: bool | None = None,
                   cfg_channels: int | None = None) -> ModelSpec:
    """The spec of a model from its config dict (an export manifest's `model.config`).

    `pixel_space` default: the digits rule (`is_digits_architecture`: 1 channel 8x8 with 10
    classes samples pixels; anything else latents).
    """
    c, size, classes = int(config["in_channels"]), int(config["input_size"]), int(config["num_classes"])
    if pixel_space is None:
        pixel_space = is_digits_architecture(c, size, classes)
    if cfg_channels is not None and not 1 <= cfg_channels <= c:  # here, not at the first step of a loop
        raise ValueError(f"cfg_channels {cfg_channels}: this model has {c} epsilon channels; guide 1..{c} "
                         "(or leave it unset: the export's recorded default, else every channel)")
    return ModelSpec(c, size, classes, pixel_space, cfg_channels, name)


def spec_of_export(manifest, pixel_space: bool | None = None, cfg_channels: int | None = None) -> ModelSpec:
    """The spec of the model an export or build folder holds (`manifest`: its `ExportManifest` or
    `BuildManifest`); torch-free, so the edge runtime resolves it the same way.

    Defaults: the model's sampling as the export recorded it (`model.sampling`: pixel space, and
    the official checkpoints' 3 guided channels), else the digits rule and every channel."""
    name = str((manifest.raw.get("calibration") or {}).get("model", "")
               or (manifest.raw.get("model") or {}).get("name", ""))
    recorded = manifest.sampling
    if pixel_space is None:
        pixel_space = recorded.get("pixel_space")
    if cfg_channels is None:
        cfg_channels = recorded.get("cfg_channels")
    missing = [k for k in ("in_channels", "input_size", "num_classes") if k not in manifest.model_config]
    if missing:
        raise ValueError(f"{manifest.folder}: the manifest's model.config lacks {missing}; export the folder again "
                         "with `tqdit export`")
    return spec_of_config(manifest.model_config, name, pixel_space, cfg_channels)


@dataclass(frozen=True)
class SampleSettings:
    """How to sample one request. Defaults: DDPM, 100 steps, guidance 1.5, DDIM eta 0, the model's
    guided channels. Validated on creation: a bad value is a ValueError naming it."""

    sampler: str = "ddpm"
    steps: int = 100
    guidance: float = 1.5
    eta: float = 0.0
    cfg_channels: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.steps, (int, np.integer)) or not 1 <= self.steps <= NUM_TRAIN_TIMESTEPS:
            raise ValueError(f"steps {self.steps}: must be 1..{NUM_TRAIN_TIMESTEPS} (the model's training "
                             "timesteps)")
        if not np.isfinite(self.guidance) or self.guidance < 1.0:
            raise ValueError(f"guidance scale {self.guidance}: must be a finite number >= 1 (1 turns guidance off; "
                             "1.5 is the paper's)")
        self.config(ModelSpec(1, 1, 1, False))  # the sampler's own checks (sampler name, eta, channels)

    def config(self, spec: ModelSpec) -> SamplerConfig:
        """The loop's SamplerConfig for a model of `spec`."""
        channels = self.cfg_channels if self.cfg_channels is not None else spec.cfg_channels
        return SamplerConfig(self.sampler, int(self.steps), float(self.guidance), clip_denoised=spec.pixel_space,
                             eta=float(self.eta), cfg_channels=channels)


@dataclass(frozen=True)
class ImageRequest:
    """One request: class labels, one noise seed for all its images, and the settings."""

    labels: tuple[int, ...]
    seed: int = 0
    settings: SampleSettings = field(default_factory=SampleSettings)


def balanced_labels(num: int, num_classes: int, classes: Sequence[int] | None = None) -> np.ndarray:
    """`num` int64 labels cycling over `classes` (default all), sorted, so 500 over 10 classes is 50 each."""
    pool = list(range(num_classes)) if not classes else list(classes)
    for c in pool:
        if not 0 <= c < num_classes:
            raise ValueError(f"--class {c} is out of range: this model has classes 0..{num_classes - 1}")
    return np.array(sorted(pool[i % len(pool)] for i in range(num)), dtype=np.int64)


def chunk_seed(seed: int, index: int) -> int:
    """The noise seed of the index-th batch of a run: a run is reproducible for a given (seed, batch size)."""
    return seed if index == 0 else seed * 1_000_003 + index


def _torch_generators_noise(parts: list[tuple[int, int]]) -> Callable[[tuple[int, ...]], np.ndarray]:
    """Noise for several requests sampled in one loop: each request's rows come from its own CPU torch
    generator, drawn in the loop's order, so every request gets exactly the noise it gets alone."""
    import torch

    gens = [(torch.Generator().manual_seed(seed), n) for seed, n in parts]

    def draw(shape: tuple[int, ...]) -> np.ndarray:
        rest = tuple(shape[1:])
        if len(gens) == 1:
            return torch.randn((gens[0][1], *rest), generator=gens[0][0]).numpy()
        return np.concatenate([torch.randn((n, *rest), generator=g).numpy() for g, n in gens])

    return draw


def check_labels(labels: Sequence[int] | np.ndarray, num_classes: int) -> np.ndarray:
    """Labels as int64 (N,), each in 0..num_classes-1; an error names the first bad one."""
    y = np.asarray(labels)
    if y.ndim != 1 or y.size == 0 or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"class labels: expected a non-empty list of integers, got {y.dtype} of shape {y.shape}")
    bad = y[(y < 0) | (y >= num_classes)]
    if bad.size:
        raise ValueError(f"class label {int(bad[0])} is out of range: this model has classes 0..{num_classes - 1}")
    return y.astype(np.int64)


def settings_groups(requests: Sequence[ImageRequest]) -> dict[SampleSettings, list[int]]:
    """The indices of the requests that share one sampling loop: those of equal settings, in order."""
    groups: dict[SampleSettings, list[int]] = {}
    for i, r in enumerate(requests):
        groups.setdefault(r.settings, []).append(i)
    return groups


class Pipeline:
    """A denoiser and its model's spec: `sample` draws images through the one sampling loop.

    `denoiser(x, t, y) -> out` on numpy arrays (see `diffusion.loop`); `name` says which backend
    it is (ort, ort-fp32, torch, torch-fakequant, trt, triton)."""

    def __init__(self, denoiser: NumpyDenoiser, spec: ModelSpec, name: str = "") -> None:
        self.denoiser = denoiser
        self.spec = spec
        self.name = name

    def check_labels(self, labels: Sequence[int] | np.ndarray) -> np.ndarray:
        """Labels as int64 (N,), each a class of this model; an error names the first bad one."""
        return check_labels(labels, self.spec.num_classes)

    def sample_requests(self, requests: Sequence[ImageRequest], progress: bool = False) -> list[np.ndarray]:
        """Draw every request; requests with equal settings share one loop (one denoiser batch per
        step, as a dynamic batcher wants), each with its own noise. Returns one (N_i, C, H, W)
        float32 array per request, in order, equal to what each gives when sampled alone."""
        out: list[np.ndarray | None] = [None] * len(requests)
        for settings, members in settings_groups(requests).items():
            labels = [self.check_labels(requests[i].labels) for i in members]
            noise = _torch_generators_noise([(int(requests[i].seed), len(y)) for i, y in zip(members, labels)])
            x = sample_numpy(self.denoiser, np.concatenate(labels), self.spec.shape, settings.config(self.spec),
                             self.spec.null_class, noise_fn=noise, progress=progress)
            first = 0
            for i, y in zip(members, labels):
                out[i], first = x[first:first + len(y)], first + len(y)
        return out  # type: ignore[return-value]

    def sample(self, labels: Sequence[int] | np.ndarray, seed: int = 0, steps: int = 100, sampler: str = "ddpm",
               guidance: float = 1.5, eta: float = 0.0, cfg_channels: int | None = None,
               batch_size: int | None = None, progress: bool = False) -> np.ndarray:
        """Images (N, C, H, W) float32 for `labels`. Defaults: seed 0, DDPM 100 steps, guidance 1.5,
        all at once; with `batch_size`, batch i has seed `chunk_seed(seed, i)` (as `tqdit sample`)."""
        y = self.check_labels(labels)
        settings = SampleSettings(sampler, steps, guidance, eta, cfg_channels)
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch size {batch_size}: must be at least 1 (or None: all at once)")
        batch = batch_size or len(y)
        parts = [self.sample_requests([ImageRequest(tuple(y[first:first + batch]), chunk_seed(seed, i), settings)],
                                      progress)[0] for i, first in enumerate(range(0, len(y), batch))]
        return parts[0] if len(parts) == 1 else np.concatenate(parts)


def to_uint8(images: np.ndarray) -> np.ndarray:
    """(N, C, H, W) samples in [-1, 1] -> (N, H, W, C) uint8 0..255, the mapping of the PNG grids."""
    x = np.clip((np.asarray(images, dtype=np.float32) + 1) * 127.5, 0, 255)
    return np.rint(x).astype(np.uint8).transpose(0, 2, 3, 1)


class OrtSessionDenoiser:
    """A numpy denoiser over one ONNX graph without time groups (an FP32 graph, a peer's graph), with
    the session options that keep Q/DQ MatMuls on integer kernels. `run(feeds)` may be any callable
    mapping the x/t/y feeds to the output (another runtime compiling the same graph)."""

    def __init__(self, path: str | Path | None = None, threads: int | None = None,
                 run: Callable[[dict], np.ndarray] | None = None) -> None:
        if run is None:
            if path is None:
                raise ValueError("OrtSessionDenoiser: give the ONNX file or a run(feeds) callable")
            from .edge.ort_runtime import make_session

            session = make_session(path, threads)
            run = lambda feeds: session.run(["out"], feeds)[0]  # noqa: E731
        self.run = run

    def __call__(self, x: np.ndarray, t: np.ndarray, y: np.ndarray) -> np.ndarray:
        return self.run({"x": np.ascontiguousarray(x, dtype=np.float32), "t": np.asarray(t, dtype=np.int64),
                         "y": np.asarray(y, dtype=np.int64)})


def export_folder_of(folder: str | Path) -> Path:
    """The export folder inside `folder`: itself (manifest.json), or a build's onnx/ (build.json)."""
    from .edge.trt_runtime import BUILD_MANIFEST
    from .onnx.manifest import MANIFEST

    folder = Path(folder)
    if (folder / MANIFEST).is_file():
        return folder
    if (folder / BUILD_MANIFEST).is_file() and (folder / "onnx" / MANIFEST).is_file():
        return folder / "onnx"
    raise FileNotFoundError(f"{folder}: neither an export folder ({MANIFEST}) nor a build folder "
                            f"({BUILD_MANIFEST} + onnx/); write one with `tqdit export` or `tqdit build`")


def open_pipeline(folder: str | Path, fp32: bool = False, threads: int | None = None,
                  providers: list[str] | None = None, pixel_space: bool | None = None,
                  cfg_channels: int | None = None) -> Pipeline:
    """ONNX Runtime over an export folder or a build's onnx/: its quantized graphs (default) or its
    FP32 graph. `threads`: ORT intra-op threads (default: the physical cores, as torch's default);
    `pixel_space` / `cfg_channels`: see `spec_of_export` (default: what the export recorded, else the
    digits rule and every channel)."""
    from .edge.ort_runtime import OrtDenoiser
    from .onnx.manifest import ExportManifest

    export = export_folder_of(folder)
    spec = spec_of_export(ExportManifest.read(export), pixel_space, cfg_channels)
    if threads is None:
        import torch

        threads = torch.get_num_threads()
    return Pipeline(OrtDenoiser(export, threads, providers, fp32), spec, "ort-fp32" if fp32 else "ort")


def open_backend(model, record: str | Path | None = None, backend: str = "torch", onnx: str | Path | None = None,
                 device: str = "cpu"):
    """The torch-facing denoiser `tqdit sample` drives for a loaded DiT: torch (FP, or fake-quant with a
    `record` folder), ort (ONNX Runtime over the `onnx` export: its Q/DQ graphs with a record, else its
    FP32 graph) or trt (TensorRT engines built from the export; needs the record)."""
    import torch

    from .engines import TorchBackend
    from .errors import UsageError

    loaded = None
    if record is not None:
        from calibration.record import CalibrationRecord

        loaded = CalibrationRecord.load(record, model)
    if backend in ("ort", "trt") and onnx is None:
        raise UsageError(f"--backend {backend} needs --onnx DIR, a folder written by `tqdit export`")
    if backend == "trt" and loaded is None:
        raise UsageError("--backend trt builds the quantized graphs: give --record too")
    if backend in ("ort", "trt") and loaded is not None:  # before any session or engine is built
        from .onnx.manifest import check_record, read_manifest

        check_record(read_manifest(onnx), onnx, loaded, record)
    if backend == "trt":
        from .engines.trt_backend import TrtBackend

        return TrtBackend(onnx)
    if backend == "ort":
        from .engines.ort_backend import OrtBackend

        return OrtBackend(onnx, threads=torch.get_num_threads(), fp32=loaded is None)
    if loaded is not None:
        from .quant import FakeQuantBackend

        return FakeQuantBackend(model, loaded, device)
    return TorchBackend(model, device)


def model_pipeline(resolved, backend, cfg_channels: int | None = None) -> Pipeline:
    """A Pipeline over a torch-facing `backend` (from `open_backend`) of a resolved model
    (`models.resolve_model`)."""
    from .diffusion.samplers import numpy_denoiser

    cfg = resolved.model.config
    spec = ModelSpec(cfg.in_channels, cfg.input_size, cfg.num_classes, resolved.pixel_space,
                     cfg_channels if cfg_channels is not None else resolved.cfg_channels, resolved.name)
    return Pipeline(numpy_denoiser(backend), spec, getattr(backend, "name", ""))
