"""Atomic writes of every artifact the tool produces: a reader never sees half a file.

Each writer fills a temporary file beside the target, and only a complete file is renamed
into place; on any error the temporary file is removed and an older target stays intact.
Folders (records, exports, builds, demos) are written by `calibration.folders`, re-exported
here with its checks, which the CLI runs on every output before any work starts.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from calibration.folders import (  # noqa: F401 (re-exported: one implementation for calibration/ and here)
    atomic_folder, check_output_file, check_output_folder, warn_leftovers)


@contextlib.contextmanager
def atomic_output(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` if the block succeeds.

    An existing folder or special file at `path`, or a folder that cannot be created, is refused first.
    """
    path = Path(path)
    check_output_file(path)
    warn_leftovers(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; artifacts are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def file_sha256(path: str | Path) -> str:
    """sha256 of a file, read in 1 MiB chunks (ONNX graphs and weights can be gigabytes)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_json(path: str | Path, data: Any) -> Path:
    """Write `data` as indented JSON to `path`, atomically."""
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    return Path(path)


def save_samples(path: str | Path, images: np.ndarray, labels: np.ndarray, meta: dict) -> Path:
    """Save samples (N, C, H, W float32, model range), labels (N,) and JSON metadata to an .npz."""
    with atomic_output(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, images=images.astype(np.float32), labels=labels.astype(np.int64),
                 meta=np.array(json.dumps(meta, sort_keys=True)))
    return Path(path)


def load_samples(path: str | Path) -> tuple[np.ndarray, np.ndarray, dict]:
    """Read an .npz written by `save_samples`: images, labels, metadata."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"--samples {path}: no such file; write one with `tqdit sample --save-npz`")
    with np.load(path, allow_pickle=False) as data:
        missing = {"images", "labels"} - set(data.files)
        if missing:
            raise ValueError(f"{path}: missing arrays {sorted(missing)}; expected a file from `tqdit sample --save-npz`")
        meta = json.loads(str(data["meta"])) if "meta" in data.files else {}
        return data["images"], data["labels"], meta
