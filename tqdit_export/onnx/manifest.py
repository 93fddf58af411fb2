"""Names shared by the exporter and every runtime that reads an export folder (no torch here)."""
from __future__ import annotations

import json
from pathlib import Path

MANIFEST = "manifest.json"
MANIFEST_VERSION = 1


def read_manifest(export_dir: str | Path) -> dict:
    """The manifest of an export folder, or a FileNotFoundError that says how to make one."""
    path = Path(export_dir) / MANIFEST
    if not path.exists():
        raise FileNotFoundError(f"{export_dir}: no {MANIFEST}; create the folder with `tqdit export` or `tqdit build`")
    return json.loads(path.read_text())
