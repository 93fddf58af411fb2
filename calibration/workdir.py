"""The work folder of a resumable calibration: captures spilled to disk and finished blocks.

A calibration of DiT-XL/2 runs for hours; a folder beside the record (`tqdit calibrate`
uses `<out>.partial/`) keeps what is finished so that an interrupted run (Ctrl-C, SIGTERM,
a killed process, a full machine) continues where it stopped:

    run.json                          what this folder belongs to (config, model hash, sites, data hash)
    capture/group-0003.safetensors    the rows kept for the search of every site, one file per time group,
                                      with the row-sampling generator's state after that group
    blocks/block-0005.safetensors     the searched scales of one block's sites

Every file is written to a temporary name (a leading '.') and renamed into place, so a
file with its final name is complete; temporaries of a killed run are removed on the next
start. A folder written for another run (other config, model, seed or data) is refused,
never mixed in. Memory-mapped reads (`safe_open`) load one block's rows at a time.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

WORK_FORMAT = 1
RUN_JSON = "run.json"
KNOWN = {RUN_JSON, "data.safetensors", "capture", "blocks"}  # what a checkpoint folder holds


def _flat(identity: dict, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for k, v in identity.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


def save_tensors_atomic(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """Write a safetensors file under a temporary name, then rename it into place."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


class WorkFolder:
    """The work folder of one calibration run; `open` checks it belongs to the run described by `identity`."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.capture_dir = self.path / "capture"
        self.blocks_dir = self.path / "blocks"

    @classmethod
    def open(cls, path: str | Path, identity: dict) -> "WorkFolder":
        """Create the folder for `identity`, or reopen one written for the same run.

        Raises ValueError for a folder of another run (naming what differs) or one this tool
        did not write, so nothing of another calibration is ever mixed into this one.
        """
        work = cls(path)
        identity = json.loads(json.dumps(identity))  # as it reads back: tuples become lists
        run = work.path / RUN_JSON
        if run.is_file():
            try:
                stored = json.loads(run.read_text())["identity"]
            except (OSError, ValueError, KeyError, TypeError) as err:
                raise ValueError(f"{run}: not a calibration checkpoint this tool can read ({err}); remove "
                                 f"{work.path} (rm -r) to start the calibration again") from None
            if stored != identity:
                old, new = _flat(stored), _flat(identity)
                differ = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
                shown = ", ".join(differ[:6]) + (f" and {len(differ) - 6} more" if len(differ) > 6 else "")
                raise ValueError(
                    f"{work.path} holds a checkpoint of another calibration (it differs in {shown}); it cannot "
                    f"be continued with these settings: run the command that started it, or remove {work.path} "
                    "(rm -r) to start this one")
        else:
            cls.check_foreign(work.path)
        work.capture_dir.mkdir(parents=True, exist_ok=True)
        work.blocks_dir.mkdir(parents=True, exist_ok=True)
        for d in (work.path, work.capture_dir, work.blocks_dir):  # temporaries of a killed run
            for tmp in d.glob(".*.tmp"):
                tmp.unlink(missing_ok=True)
        if not run.is_file():
            tmp = run.with_name(f".{RUN_JSON}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps({
                "format": WORK_FORMAT,
                "note": "checkpoint of a running tqdit calibration; rerun the same command to continue, "
                        "or remove this folder to start over",
                "identity": identity}, indent=2, sort_keys=True) + "\n")
            os.replace(tmp, run)
        return work

    @staticmethod
    def check_foreign(path: Path) -> None:
        """Raise unless `path` is absent or holds only what a starting calibration writes first."""
        if not os.path.lexists(path):
            return
        if not path.is_dir() or path.is_symlink():
            raise ValueError(f"{path} exists and is not a calibration checkpoint folder; move it away or choose "
                             "another --out")
        foreign = sorted(e.name for e in path.iterdir() if e.name not in KNOWN and not e.name.endswith(".tmp"))
        if foreign and not (path / RUN_JSON).is_file():
            raise ValueError(f"{path} exists and is not a calibration checkpoint (no {RUN_JSON}; it holds "
                             f"{', '.join(foreign[:5])}); move it away or choose another --out")

    def group_file(self, g: int) -> Path:
        return self.capture_dir / f"group-{g:04d}.safetensors"

    def block_file(self, b: int) -> Path:
        return self.blocks_dir / f"block-{b:04d}.safetensors"

    def finished_blocks(self) -> list[int]:
        return sorted(int(p.stem.split("-")[1]) for p in self.blocks_dir.glob("block-*.safetensors"))


def read_tensors(path: Path, names: list[str] | None = None, device: str | torch.device = "cpu"
                 ) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors `names` (all without) and the metadata of a safetensors file, read through a memory map."""
    with safe_open(str(path), framework="pt", device="cpu") as f:
        keys = list(f.keys()) if names is None else names
        return {k: f.get_tensor(k).to(device) for k in keys}, dict(f.metadata() or {})
