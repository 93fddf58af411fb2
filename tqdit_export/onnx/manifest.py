"""Names shared by the exporter and every runtime that reads an export folder (no torch here)."""
from __future__ import annotations

import hashlib
import json
import warnings
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path, PurePosixPath

from calibration.time_groups import TimeGroups

from ..errors import InputWarning
from ..io import file_sha256

MANIFEST = "manifest.json"
BUILD_MANIFEST = "build.json"
MANIFEST_VERSION = 1


class Layout(str, Enum):
    """How an export holds its time groups (the manifest's and build.json's "layout")."""

    PER_GROUP = "per-group"  # one graph per time group, the group's scales as constants
    SINGLE = "single"        # one graph; a time_group input selects rows of the scale tables (Gather)
    PLUGIN = "plugin"        # one graph; the TimeGroupQuantize plugin selects the scale

    @property
    def feeds_time_group(self) -> bool:
        """True when the graph takes the time group as an input (one graph for every group)."""
        return self is not Layout.PER_GROUP

    @classmethod
    def of(cls, value: object, source: str | Path = "the manifest") -> "Layout":
        """The layout named `value`, or an error naming `source` and the layouts there are."""
        try:
            return cls(value)
        except ValueError:
            raise ValueError(f"{source}: layout {value!r} is not one of {list(LAYOUTS)}; "
                             "write the folder again with `tqdit export` or `tqdit build`") from None


def read_manifest(export_dir: str | Path) -> dict:
    """The manifest of an export folder, or an error that names the file and says how to make one."""
    path = Path(export_dir) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{export_dir}: no {MANIFEST}; create the folder with `tqdit export` or `tqdit build`")
    try:
        manifest = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: not a readable manifest ({err}); export the folder again with `tqdit export`") from err
    if not isinstance(manifest, dict) or not isinstance(manifest.get("graphs"), list) or not manifest["graphs"]:
        raise ValueError(f"{path}: a manifest names its graphs under 'graphs'; export the folder again with `tqdit export`")
    return manifest


LAYOUTS = tuple(layout.value for layout in Layout)  # the names, as the CLI offers them


def _present(folder: str | Path, name: str, what: str) -> Path:
    # A name is a relative path inside the folder: an absolute one or one climbing out with ".."
    # would make readers load, and the writers that copy a folder write, files elsewhere.
    parts = PurePosixPath(name).parts if isinstance(name, str) else ()
    if not parts or name.startswith("/") or ".." in parts:
        raise ValueError(f"{folder}: the manifest names the {what} {name!r}, which is not a path inside the folder; "
                         "write the folder again")
    path = Path(folder) / name
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the {what} named by the manifest is missing; write the folder again")
    return path


def _check_sha256(path: Path, found: str, expected: str | None, what: str) -> None:
    if expected is not None and found != expected:
        raise ValueError(f"{path}: this {what} was changed after it was written (its sha256 differs from the "
                         "manifest's); write the folder again rather than editing it")


def verified_file(folder: str | Path, name: str, sha256: str | None, what: str = "graph") -> Path:
    """`folder / name`, checked against the sha256 its manifest holds: a file changed or replaced
    after the tool wrote it is refused (a NaN scale edited into a graph would otherwise run)."""
    path = _present(folder, name, what)
    if sha256 is not None:
        _check_sha256(path, file_sha256(path), sha256, what)
    return path


def verified_bytes(folder: str | Path, name: str, sha256: str | None, what: str = "engine") -> bytes:
    """The bytes of `folder / name`, checked against the manifest's sha256 (read once, hashed in memory)."""
    path = _present(folder, name, what)
    data = path.read_bytes()
    _check_sha256(path, hashlib.sha256(data).hexdigest(), sha256, what)
    return data


def graph_path(export_dir: str | Path, entry: dict) -> Path:
    """The ONNX file of one manifest entry, its graph and external data checked against their sha256."""
    if "external_data" in entry:
        verified_file(export_dir, entry["external_data"], entry.get("external_data_sha256"), "external data file")
    return verified_file(export_dir, entry["file"], entry.get("sha256"))


def check_record(manifest: dict, export_dir: str | Path, record, record_dir: str | Path | None = None) -> None:
    """Raise unless the export in `export_dir` (its `manifest`) was made from `record` (a
    CalibrationRecord, read from `record_dir`): the same model weights and the same record
    fingerprint. A manifest written before exports named their record only warns (InputWarning)."""
    given = f"the record {record_dir}" if record_dir is not None else "the given record"
    model = manifest.get("model")
    if not isinstance(model, dict) or model.get("weights_sha256") != record.model_hash:
        raise ValueError(f"{export_dir} was exported from another model than {given}; pass the record of its "
                         f"model, or export again: tqdit export --record {record_dir or 'DIR'} --out DIR")
    made_from = manifest.get("record_fingerprint")
    if made_from is None:
        warnings.warn(f"{Path(export_dir) / MANIFEST} names no record (written before exports did), so it cannot "
                      f"be told whether {given} is the one it was exported from; export again to have it checked",
                      InputWarning, stacklevel=2)
        return
    found = record.fingerprint()
    if made_from != found:
        raise ValueError(f"{export_dir} was exported from another record than {given} (record fingerprint "
                         f"{str(made_from)[:12]}… in its manifest, {found[:12]}… for {given}); pass the record it "
                         f"was exported from, or export again: tqdit export --record {record_dir or 'DIR'} --out DIR")


def in_group_order(entries: list[dict], source: str | Path) -> list[dict]:
    """Graphs or engines in time-group order, the one ordering every runtime uses: per-group
    entries by their group number (each of 0..G-1 once; numerically, so group 10 follows 9,
    not 1), a single entry (time_group "input") as it is."""
    if len(entries) == 1:
        return list(entries)
    groups = [e.get("time_group") for e in entries]
    if not all(isinstance(g, int) and not isinstance(g, bool) for g in groups) or \
            sorted(groups) != list(range(len(groups))):
        raise ValueError(f"{source}: the entries' time groups {groups} are not 0..{len(groups) - 1}, each once; "
                         "export or build the folder again")
    return sorted(entries, key=lambda e: e["time_group"])


@dataclass(frozen=True)
class ExportManifest:
    """An export folder's manifest as the runtimes read it: the layout, the time groups and the
    graphs in time-group order (each checked to be 0..G-1 once). `raw` keeps every field."""

    folder: Path
    layout: Layout
    time_groups: TimeGroups
    graphs: list[dict]
    fp32: dict | None
    model_config: dict
    raw: dict = field(repr=False)

    @classmethod
    def read(cls, export_dir: str | Path) -> "ExportManifest":
        """The manifest of `export_dir`, or an error naming the file and how to write it again."""
        folder = Path(export_dir)
        raw = read_manifest(folder)
        source = folder / MANIFEST
        return cls(folder, Layout.of(raw.get("layout"), source), _time_groups(raw, source),
                   in_group_order(raw["graphs"], folder), raw.get("fp32"), dict(raw.get("model", {}).get("config", {})),
                   raw)

    @property
    def sampling(self) -> dict:
        """The model's sampling defaults the export recorded (pixel_space, cfg_channels); {} if none."""
        return model_sampling(self.raw)


@dataclass(frozen=True)
class BuildManifest:
    """A `tqdit build` folder's build.json as the TensorRT runtimes read it: layout, time groups,
    the engines in time-group order and the optimisation profile's largest batch."""

    folder: Path
    layout: Layout
    time_groups: TimeGroups
    engines: list[dict]
    max_batch: int
    model_config: dict
    raw: dict = field(repr=False)

    @classmethod
    def read(cls, build_dir: str | Path, require_engines: bool = True) -> "BuildManifest":
        """build.json of `build_dir`; a clear error when it is missing, unreadable or (unless
        `require_engines` is False: the caller says what to do instead) has no engines."""
        folder = Path(build_dir)
        path = folder / BUILD_MANIFEST
        if not path.is_file():
            raise FileNotFoundError(f"{build_dir}: no {BUILD_MANIFEST}; create it with `tqdit build`")
        try:
            raw = json.loads(path.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ValueError(f"{path}: not a readable build manifest ({err}); build the folder again with "
                             "`tqdit build`") from err
        if not isinstance(raw, dict):
            raise ValueError(f"{path}: not a build manifest (a JSON {type(raw).__name__}); build the folder again "
                             "with `tqdit build`")
        if require_engines and not raw.get("engines"):
            raise RuntimeError(f"{build_dir}: the build has no engines ({raw.get('status', 'unknown status')}); "
                               "rerun `tqdit build` on a machine with TensorRT and a GPU, or run its graphs with "
                               f"ONNX Runtime (--onnx {folder / 'onnx'})")
        # A build.json without the profile's maximum (written before builds recorded it) runs one row at a time.
        max_batch = (raw.get("target") or {}).get("max_batch", 1)
        if not isinstance(max_batch, int) or isinstance(max_batch, bool) or max_batch < 1:
            raise ValueError(f"{path}: target.max_batch {max_batch!r} is not a positive integer; build the folder "
                             "again with `tqdit build`")
        return cls(folder, Layout.of(raw.get("layout"), path), _time_groups(raw, path),
                   in_group_order(list(raw.get("engines") or []), folder), max_batch,
                   dict((raw.get("model") or {}).get("config") or {}), raw)

    @property
    def sampling(self) -> dict:
        """The model's sampling defaults the build recorded (pixel_space, cfg_channels); {} if none."""
        return model_sampling(self.raw)

    @property
    def plugin(self) -> dict:
        """Which TimeGroupQuantize the plugin-layout engines were built with: {"kind": "library",
        "file", "sha256"} (the C++ library, copied into the build folder) or {"kind": "python"}
        (`tensorrt.plugin`); {} for the other layouts and for builds written before it was recorded."""
        plugin = self.raw.get("plugin") or {}
        return dict(plugin) if isinstance(plugin, dict) else {}

    def plugin_library(self) -> Path | None:
        """The build's copy of the C++ plugin library, checked against its sha256; None when the
        engines were built with the Python plugin or the build records none."""
        plugin = self.plugin
        if plugin.get("kind") != "library":
            return None
        if not isinstance(plugin.get("file"), str):
            raise ValueError(f"{self.folder / BUILD_MANIFEST}: plugin.file {plugin.get('file')!r} is not a file name; "
                             "build the folder again with `tqdit build`")
        return verified_file(self.folder, plugin["file"], plugin.get("sha256"), "plugin library")


def model_sampling(raw: dict) -> dict:
    """`model.sampling` of a manifest (export or build): how the model is sampled by default.
    Manifests written before it was recorded have none ({}): the readers' rule applies."""
    return dict((raw.get("model") or {}).get("sampling") or {})


def _time_groups(raw: dict, source: Path) -> TimeGroups:
    try:
        return TimeGroups(tuple(raw["time_groups"]))
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{source}: no valid time_groups ({err}); write the folder again") from None
