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

    def fingerprint(self) -> str:
        """sha256 of the record as it is saved: its canonical JSON, then every tensor (name, shape,
        float32 bytes) in name order. A record and the same record read back give the same one, so
        an export can name the record it was made from (`manifest.json` "record_fingerprint")."""
        # One JSON round trip first: what is saved and read back (int keys become strings, tuples lists).
        canonical = json.dumps(json.loads(json.dumps(self.to_json())), sort_keys=True, separators=(",", ":"))
        h = hashlib.sha256(canonical.encode())
        for name, tensor in sorted(self.tensors.items()):
            t = tensor.detach().cpu().float().contiguous()
            h.update(f"|{name}|{tuple(t.shape)}|".encode())
            h.update(t.numpy().tobytes())
        return h.hexdigest()

    @classmethod
    def load(cls, folder: str | Path, model: nn.Module | None = None) -> "CalibrationRecord":
        """Read a record folder; with `model`, also check it is the calibrated model.

        A `record.json` that is not JSON or lacks a field, or a `scales.safetensors` cut short or
        not of this record, is a ValueError that names the file and says to calibrate again.
        """
        folder = Path(folder)
        meta_path, scales_path = folder / RECORD_JSON, folder / SCALES_FILE
        if not meta_path.is_file() or not scales_path.is_file():
            raise FileNotFoundError(
                f"{folder}: not a calibration record (needs {RECORD_JSON} and {SCALES_FILE}); "
                "create one with `tqdit calibrate --out DIR`"
            )
        meta = _read_meta(meta_path)
        if meta.get("schema_version") != SCHEMA_VERSION:
            raise ValueError(f"{meta_path}: schema version {meta.get('schema_version')} is not "
                             f"{SCHEMA_VERSION}; re-run the calibration with this version")
        edges = _entry(meta_path, meta, "time_groups", "edges", kind=list)
        if not all(isinstance(e, int) and not isinstance(e, bool) for e in edges):
            raise ValueError(f"{meta_path}: time_groups.edges {edges} are not all integers; {_again(folder)}")
        try:
            time_groups = TimeGroups(tuple(edges))
        except ValueError as err:
            raise ValueError(f"{meta_path}: {err}; {_again(folder)}") from err
        record = cls(
            model_config=_entry(meta_path, meta, "model", "config", kind=dict),
            model_hash=_entry(meta_path, meta, "model", "weights_sha256", kind=str),
            weight_bits=_bits(meta_path, meta, "weights"),
            activation_bits=_bits(meta_path, meta, "activations"),
            time_groups=time_groups,
            sites=_read_sites(meta_path, meta),
            tensors=_read_tensors(scales_path),
            method=_entry(meta_path, meta, "method", kind=dict) if "method" in meta else {},
        )
        record._check_tensors(scales_path)
        record.check_scales(scales_path)
        if model is not None:
            record.check_model(model)
        return record

    def _check_tensors(self, source: Path) -> None:
        """Raise unless every tensor is a float32 vector of a site of record.json (and the activation
        ones hold one value per time group): a file of another record, or edited, is refused."""
        names = {s.name for s in self.sites}
        groups = self.time_groups.num_groups
        for key, value in sorted(self.tensors.items()):
            parts = key.rsplit(".", 2)
            if len(parts) != 3 or parts[0] not in names:
                raise ValueError(f"{source}: tensor {key!r} belongs to no site of {RECORD_JSON}; "
                                 f"{_again(source.parent)}")
            expected = None if parts[1] == "weight" else groups
            if value.dtype != torch.float32 or value.ndim != 1 or (expected is not None and len(value) != expected):
                want = f"float32 ({expected},)" if expected is not None else "a float32 vector"
                raise ValueError(f"{source}: tensor {key!r} is {str(value.dtype).removeprefix('torch.')} "
                                 f"{tuple(value.shape)}, expected {want}; {_again(source.parent)}")

    def check_scales(self, source: str | Path = SCALES_FILE) -> None:
        """Raise unless every scale is finite and strictly positive (an MRQ boundary too; a GELU
        boundary is 0 by definition; a shifted form's offset may have either sign): a 0 or NaN scale
        would sample black or NaN images silently."""
        for key, value in sorted(self.tensors.items()):
            zero_ok = key.endswith(".boundary") and bool((value == 0).all())
            any_sign = key.endswith(".offset")  # c = (hi + GELU_MIN) / 2 is negative when hi < 0.17
            bad = ~torch.isfinite(value) | ((value <= 0) & (not zero_ok) & (not any_sign))
            if bad.any():
                raise ValueError(f"{source}: {key} holds {int(bad.sum())} scale(s) that are 0, negative, NaN or "
                                 f"infinite (e.g. {value[bad].flatten()[0].item()}); this record cannot quantize "
                                 "anything: calibrate again (tqdit calibrate)")


def _again(folder: Path) -> str:
    return f"this is not a record `tqdit calibrate` wrote (cut short or edited?): calibrate again with --out {folder}"


def _read_meta(path: Path) -> dict:
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: not JSON ({err}); {_again(path.parent)}") from err
    if not isinstance(meta, dict):
        raise ValueError(f"{path}: holds a JSON {type(meta).__name__}, expected an object; {_again(path.parent)}")
    return meta


def _entry(path: Path, meta: dict, *keys: str, kind: type = object):
    """meta[keys[0]][keys[1]]..., or a ValueError naming the missing or mistyped field."""
    value = meta
    for i, key in enumerate(keys):
        if not isinstance(value, dict) or key not in value:
            raise ValueError(f"{path}: no field {'.'.join(keys[:i + 1])!r}; {_again(path.parent)}")
        value = value[key]
    if not isinstance(value, kind):
        raise ValueError(f"{path}: field {'.'.join(keys)!r} is a {type(value).__name__}, expected a "
                         f"{kind.__name__}; {_again(path.parent)}")
    return value


def _bits(path: Path, meta: dict, operand: str) -> int:
    bits = _entry(path, meta, "bits", operand, kind=int)
    if isinstance(bits, bool) or not 2 <= bits <= 8:
        raise ValueError(f"{path}: bits.{operand} = {bits!r}, expected a width of 2..8 bits; {_again(path.parent)}")
    return bits


def _read_sites(path: Path, meta: dict) -> list[Site]:
    sites = []
    for name, spec in _entry(path, meta, "sites", kind=dict).items():
        where = f"sites.{name}"
        kind = _entry(path, meta, "sites", name, "kind", kind=str)
        if kind not in ("linear", "matmul"):
            raise ValueError(f"{path}: {where}.kind is {kind!r}, expected 'linear' or 'matmul'; {_again(path.parent)}")
        site = Site(name, kind, {})
        operands = _entry(path, meta, "sites", name, "operands", kind=dict)
        allowed = {"weight"} if kind == "linear" else set()
        unknown = sorted(set(operands) - allowed - set(site.activation_operands))
        if unknown:
            raise ValueError(f"{path}: {where} has operands {unknown}, which a {kind} site has not; "
                             f"{_again(path.parent)}")
        regions = {op: _entry(path, meta, "sites", name, "operands", op, "region", kind=str)
                   for op in operands if op != "weight"}
        sites.append(Site(name, kind, {op: r for op, r in regions.items() if r != "uniform"}))
    return sites


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError

    try:
        return load_file(str(path))
    except (SafetensorError, ValueError, RuntimeError) as err:  # cut short, a corrupt header, not safetensors
        raise ValueError(f"{path}: not a readable safetensors file ({err}); {_again(path.parent)}") from err
