"""Models the CLI takes by name, and resolution of `--model NAME|PATH`."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .dit import DiT

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"


@dataclass(frozen=True)
class BundledModel:
    """A checkpoint shipped with the package, and how its samples are to be read."""

    file: Path
    description: str
    # Pixel-space models clip x0 to [-1, 1] while sampling; latent models (DiT-XL/2) do not.
    pixel_space: bool
    dataset: str | None = None


BUNDLED_MODELS: dict[str, BundledModel] = {
    "dit-digits": BundledModel(
        file=WEIGHTS_DIR / "dit-digits.safetensors",
        description="class-conditional DiT (depth 4, hidden 128, 8x8, patch 1) trained on sklearn digits",
        pixel_space=True,
        dataset="digits",
    ),
}


@dataclass(frozen=True)
class ResolvedModel:
    """A loaded model with what the sampler and evaluator need to know about it."""

    model: DiT
    name: str
    pixel_space: bool
    dataset: str | None
    # Epsilon channels guidance acts on by default (None: all): the official DiT code
    # guides 3 of 4, and its checkpoints reproduce the paper's FID only that way.
    cfg_channels: int | None = None

    def sampling(self) -> dict:
        """How this model is sampled by default, as an export manifest records it (`model.sampling`), so
        that what serves an export samples as `tqdit sample --model` does."""
        return {"pixel_space": self.pixel_space, "cfg_channels": self.cfg_channels}


def resolve_model(name_or_path: str, device: str = "cpu") -> ResolvedModel:
    """Load a bundled model by name, or any supported checkpoint file/folder by path."""
    from ..api import is_digits_architecture
    from ..diffusion.schedule import OFFICIAL_CFG_CHANNELS
    from .loaders import checkpoint_format, load_checkpoint

    if name_or_path in BUNDLED_MODELS:
        entry = BUNDLED_MODELS[name_or_path]
        if not entry.file.exists():
            raise FileNotFoundError(
                f"bundled model {name_or_path!r}: weights missing at {entry.file}; "
                "reinstall the package or run python -m tqdit_export.training.train_dit"
            )
        model = load_checkpoint(entry.file).to(device).eval()
        return ResolvedModel(model, name_or_path, entry.pixel_space, entry.dataset)
    path = Path(name_or_path)
    if not path.exists():
        raise FileNotFoundError(
            f"--model {name_or_path!r} is neither a bundled model ({sorted(BUNDLED_MODELS)}) nor an existing path"
        )
    fmt = checkpoint_format(path)
    model = load_checkpoint(path).to(device).eval()
    # A user checkpoint of the digits architecture is read as digits; anything else as latents.
    c = model.config
    is_digits = is_digits_architecture(c.in_channels, c.input_size, c.num_classes)
    official_guidance = fmt == "official" and model.config.in_channels > OFFICIAL_CFG_CHANNELS
    return ResolvedModel(model, str(path), is_digits, "digits" if is_digits else None,
                         OFFICIAL_CFG_CHANNELS if official_guidance else None)
