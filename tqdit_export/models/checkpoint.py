"""The project's own checkpoint format: safetensors weights with the DiT config inside.

A checkpoint carries its config (metadata key `dit_config`), so loading needs nothing
else. Extra JSON metadata (how it was trained) travels under `info`.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ..io import atomic_output
from .dit import DiT, DiTConfig

FORMAT = "tqdit-dit"


def save_dit(model: DiT, path: str | Path, info: dict | None = None) -> None:
    """Write `model` (weights + config + info) to `path` atomically (temp file, then rename)."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    metadata = {"format": FORMAT, "dit_config": model.config.to_json(), "info": json.dumps(info or {})}
    with atomic_output(path) as tmp:
        save_file(tensors, tmp, metadata=metadata)


def read_dit_metadata(path: str | Path) -> tuple[DiTConfig, dict]:
    """Config and info of a checkpoint, without loading the weights."""
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except SafetensorError as err:
        raise ValueError(f"{path}: not a readable safetensors file ({err}); write the checkpoint again") from err
    if meta.get("format") != FORMAT or "dit_config" not in meta:
        raise ValueError(
            f"{path}: not a tqdit DiT checkpoint (no '{FORMAT}' metadata); for official .pt or "
            "diffusers weights use load_official_checkpoint / load_diffusers_checkpoint"
        )
    try:  # TypeError: fields of the wrong kind in an edited file
        config, info = DiTConfig.from_json(meta["dit_config"]), json.loads(meta.get("info", "{}"))
    except (ValueError, TypeError) as err:
        raise ValueError(f"{path}: its stored DiT config cannot be read ({err}); write the checkpoint again "
                         "with save_dit") from err
    return config, info


def load_dit(path: str | Path, device: str | torch.device = "cpu") -> DiT:
    """Rebuild the DiT stored at `path` in eval mode."""
    from safetensors.torch import load_file

    config, _ = read_dit_metadata(path)
    model = DiT(config)
    try:
        state = load_file(str(path), device=str(device))
    except SafetensorError as err:
        raise ValueError(f"{path}: not a readable safetensors file ({err}); write the checkpoint again") from err
    expected = model.state_dict()
    wrong = [f"{k} {tuple(v.shape)} (expected {tuple(expected[k].shape)})" for k, v in sorted(state.items())
             if k in expected and v.shape != expected[k].shape]
    if wrong:
        raise ValueError(f"{path}: tensor shapes do not match the stored config: {', '.join(wrong[:5])}")
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"{path}: keys do not match the stored config: missing {missing}, unexpected {unexpected}")
    return model.to(device).eval()
