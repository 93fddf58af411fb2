"""CalibrationRecord: everything an exporter needs, in safetensors (tensors) + JSON (metadata).

A record folder holds `record.json` and `scales.safetensors` (and the inventory that
`folders.atomic_folder` writes in every artifact folder). Tensors are named
`{site}.{operand}.{field}`:
- `weight.scale` (out,): per-output-channel weight scales (axis 0 of the torch [out, in] weight);
- uniform activation: `scale` (G,), one per time group;
- softmax MRQ: `boundary` (G,) r = 2^-i, `scale_low` (G,) step of [0, r), `scale_high` (G,) step of [r, 1];
- GELU MRQ: `boundary` (G,) = 0, `scale_low` (G,) step of the negative region, `scale_high` (G,) positive.
Loading a record against a model whose weights differ from the calibrated ones is an error.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file

from .folders import atomic_folder
from .sites import Site
from .time_groups import TimeGroups

SCHEMA_VERSION = 1
RECORD_JSON = "record.json"
SCALES_FILE = "scales.safetensors"
RECORD_FILES = (RECORD_JSON, SCALES_FILE)  # the record itself; a folder also holds its inventory


def model_fingerprint(model: nn.Module) -> str:
    """sha256 over every state-dict tensor (name, dtype, shape, bytes) in name order."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


@dataclass
class CalibrationRecord:
    """Calibrated scales of every site and operand, per time group, plus what they belong to."""

    model_config: dict
    model_hash: str
    weight_bits: int
    activation_bits: int
    time_groups: TimeGroups
    sites: list[Site]
    tensors: dict[str, torch.Tensor]
    method: dict = field(default_factory=dict)  # how it was calibrated (method, tgq, mrq, ho, samples, seed...)

    def tensor(self, site: str, operand: str, name: str) -> torch.Tensor:
        key = f"{site}.{operand}.{name}"
        if key not in self.tensors:
            raise KeyError(f"record has no tensor {key!r}")
        return self.tensors[key]

    def check_model(self, model: nn.Module) -> None:
        """Raise if `model` is not the model this record was calibrated on."""
        found = model_fingerprint(model)
        if found != self.model_hash:
            raise ValueError(
                f"calibration record belongs to another model: weights hash {self.model_hash[:12]}… was "
                f"calibrated, this model has {found[:12]}…; calibrate this model (tqdit calibrate) first"
            )

    def to_json(self) -> dict:
        return {
            "schema_version": SCHEMA_VERSION,
            "model": {"config": self.model_config, "weights_sha256": self.model_hash},
            "bits": {"weights": self.weight_bits, "activations": self.activation_bits},
            "time_groups": {"edges": list(self.time_groups.edges), "axis": "training timestep"},
            "method": self.method,
            "sites": {
                s.name: {
                    "kind": s.kind,
                    "operands": {
                        **({"weight": {"granularity": "per_channel", "axis": 0}} if s.kind == "linear" else {}),
                        **{op: {"granularity": "per_tensor", "per_time_group": True, "region": s.region(op)}
                           for op in s.activation_operands},
                    },
                }
                for s in self.sites
            },
        }

    def save(self, folder: str | Path) -> Path:
        """Write the record folder atomically: a complete folder replaces an older record, or nothing changes."""
        with atomic_folder(folder, RECORD_JSON) as tmp:
            save_file({k: v.detach().cpu().float().contiguous() for k, v in self.tensors.items()},
                      str(tmp / SCALES_FILE))
            (tmp / RECORD_JSON).write_text(json.dumps(self.to_json(), indent=2, sort_keys=True) + "\n")
        return Path(folder)

    @classmethod
    def load(cls, folder: str | Path, model: nn.Module | None = None) -> "CalibrationRecord":
        """Read a record folder; with `model`, also check it is the calibrated model."""
        folder = Path(folder)
        meta_path, scales_path = folder / RECORD_JSON, folder / SCALES_FILE
        if not meta_path.exists() or not scales_path.exists():
            raise FileNotFoundError(
                f"{folder}: not a calibration record (needs {RECORD_JSON} and {SCALES_FILE}); "
                "create one with `tqdit calibrate --out DIR`"
            )
        meta = json.loads(meta_path.read_text())
        if meta.get("schema_version") != SCHEMA_VERSION:
            raise ValueError(f"{meta_path}: schema version {meta.get('schema_version')} is not "
                             f"{SCHEMA_VERSION}; re-run the calibration with this version")
        sites = [
            Site(name, spec["kind"], {op: o["region"] for op, o in spec["operands"].items()
                                      if op != "weight" and o["region"] != "uniform"})
            for name, spec in meta["sites"].items()
        ]
        record = cls(
            model_config=meta["model"]["config"],
            model_hash=meta["model"]["weights_sha256"],
            weight_bits=meta["bits"]["weights"],
            activation_bits=meta["bits"]["activations"],
            time_groups=TimeGroups(tuple(meta["time_groups"]["edges"])),
            sites=sites,
            tensors=load_file(str(scales_path)),
            method=meta.get("method", {}),
        )
        record.check_scales(scales_path)
        if model is not None:
            record.check_model(model)
        return record

    def check_scales(self, source: str | Path = SCALES_FILE) -> None:
        """Raise unless every scale is finite and strictly positive (an MRQ boundary too; a GELU
        boundary is 0 by definition): a 0 or NaN scale would sample black or NaN images silently."""
        for key, value in sorted(self.tensors.items()):
            zero_ok = key.endswith(".boundary") and bool((value == 0).all())
            bad = ~torch.isfinite(value) | ((value <= 0) & (not zero_ok))
            if bad.any():
                raise ValueError(f"{source}: {key} holds {int(bad.sum())} scale(s) that are 0, negative, NaN or "
                                 f"infinite (e.g. {value[bad].flatten()[0].item()}); this record cannot quantize "
                                 "anything: calibrate again (tqdit calibrate)")
