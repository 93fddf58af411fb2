"""Artifact folders written whole, that never take a user's files with them.

A folder is filled in a temporary folder beside its target and renamed into place, so a
reader sees a complete folder or the older one. On commit it gets an inventory,
`.tqdit-files.json`, listing every entry written into it (recursively; folders end in
`/`). An existing folder is replaced only when it holds its marker file (`record.json`,
`manifest.json`, `build.json`, `demo.json`) and no entry its inventories do not list: a
user's notes or data folder put there makes the command refuse, before any work, instead
of deleting them. A folder written before inventories existed (marker, no inventory) is
replaced only when every entry it holds is written again; that is known at commit only.

Torch-free: `tqdit_export.io` and the edge runtime use it too.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Iterator

INVENTORY = ".tqdit-files.json"
INVENTORY_VERSION = 1
NAMED = 5  # foreign entries a refusal names; the rest are counted


def _listing(folder: Path) -> list[os.DirEntry]:
    with os.scandir(folder) as it:
        return sorted(it, key=lambda e: e.name)


def folder_entries(folder: str | Path) -> list[str]:
    """Every entry under `folder`, relative and '/'-separated, folders ending in '/'; links are not followed."""
    entries = []

    def walk(d: Path, prefix: str) -> None:
        for e in _listing(d):
            if e.is_dir(follow_symlinks=False):
                entries.append(f"{prefix}{e.name}/")
                walk(Path(e.path), f"{prefix}{e.name}/")
            else:
                entries.append(prefix + e.name)

    walk(Path(folder), "")
    return entries


def write_inventory(folder: str | Path) -> Path:
    """Write `folder`'s inventory: every entry in it now (names only, so equal folders have equal inventories)."""
    folder = Path(folder)
    entries = [e for e in folder_entries(folder) if e != INVENTORY]
    path = folder / INVENTORY
    path.write_text(json.dumps({
        "version": INVENTORY_VERSION,
        "note": "entries tqdit wrote in this folder; it refuses to replace the folder while it holds others",
        "entries": entries,
    }, indent=2) + "\n")
    return path


def _read_inventory(folder: Path) -> set[str] | None:
    """The entries `folder`'s inventory lists, or None without a readable one."""
    try:
        data = json.loads((folder / INVENTORY).read_text())
        return set(data["entries"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def foreign_entries(folder: str | Path, new: str | Path | None = None) -> list[str] | None:
    """Entries of `folder` this tool did not write, topmost only (a foreign folder is not entered).

    Written are: what the inventories in `folder` list (its own and those of folders nested
    in it, e.g. `record/` inside a build) and the inventories themselves. Without an
    inventory of its own (older versions), what `new` (the folder replacing it) also holds
    counts as written; with neither, the answer is unknown: None.
    """
    folder = Path(folder)
    written = _read_inventory(folder)
    if written is None:
        if new is None:
            return None
        written = set(folder_entries(new))
    found = []

    def walk(d: Path, prefix: str) -> None:
        nested = _read_inventory(d) if prefix else None
        if nested:
            written.update(prefix + e for e in nested)
        for e in _listing(d):
            is_dir = e.is_dir(follow_symlinks=False)
            rel = prefix + e.name + ("/" if is_dir else "")
            if e.name == INVENTORY and not is_dir:
                continue
            if rel not in written:
                found.append(rel)
            elif is_dir:
                walk(Path(e.path), rel)

    walk(folder, "")
    return found


def _named(entries: list[str]) -> str:
    shown = ", ".join(entries[:NAMED])
    return shown + (f" and {len(entries) - NAMED} more" if len(entries) > NAMED else "")


def check_writable_location(path: str | Path) -> None:
    """Raise unless entries can be created beside `path`: its folder exists or can be created, and is writable.

    Tries it (creates and removes an empty folder in the nearest existing parent), which
    also holds for root, read-only file systems and parents that are files.
    """
    path = Path(path)
    nearest = path.parent
    while not os.path.lexists(nearest):  # '.' and '/' exist
        nearest = nearest.parent
    if not nearest.is_dir():
        raise NotADirectoryError(f"cannot write {path}: {nearest} is not a folder; choose another path")
    try:
        os.rmdir(tempfile.mkdtemp(dir=nearest, prefix=".tqdit-probe.", suffix=".tmp"))
    except OSError as err:
        raise PermissionError(f"cannot write {path}: nothing can be created in {nearest} ({err.strerror}); "
                              "choose another path or fix its permissions") from err


def check_output_folder(path: str | Path, marker: str, new: str | Path | None = None) -> None:
    """Raise unless `path` can be (re)written as an artifact folder marked by `marker`.

    Accepted: an absent `path` whose folder can be created and written, or a folder this
    tool wrote (it holds `marker`) with nothing the tool did not write (`foreign_entries`).
    `new`: at commit, the filled folder that will replace `path`, which decides for
    folders without an inventory. Raises FileExistsError, NotADirectoryError or PermissionError.
    """
    path = Path(path)
    if os.path.lexists(path):
        if path.is_symlink():
            raise FileExistsError(f"{path} is a symbolic link; replacing it would leave the folder it points to "
                                  "as it was: give that folder as --out, or choose another --out")
        if not path.is_dir():
            raise FileExistsError(f"{path} exists and is a file, not a folder this tool wrote; choose another --out")
        if not (path / marker).is_file():
            raise FileExistsError(f"{path} exists and is not a folder this tool wrote (no {marker}); "
                                  "choose another --out, or move its contents out and remove it")
        foreign = foreign_entries(path, new)
        if foreign:
            legacy = (" (it was written by an older version, which kept no list of its files, so whatever "
                      "this run does not write again counts as yours)" if _read_inventory(path) is None else "")
            raise FileExistsError(
                f"{path} holds {len(foreign)} entr{'y' if len(foreign) == 1 else 'ies'} this tool did not write: "
                f"{_named(foreign)}{legacy}; replacing the folder would delete them. Move them out of {path}, "
                "or choose another --out")
    check_writable_location(path)


def check_output_file(path: str | Path) -> None:
    """Raise unless `path` can be written as a file: not an existing folder or special file, and its folder writable."""
    path = Path(path)
    if os.path.lexists(path) and not path.is_file():
        kind = "a folder" if path.is_dir() else "not a regular file"
        raise FileExistsError(f"{path} exists and is {kind}; give the path of a file to write")
    check_writable_location(path)


class LeftoverWarning(UserWarning):
    """Temporary entries beside an output that a killed write left behind (the commands print
    it as `prog: warning: ...`): nothing is removed for the user, who may have another run
    writing the same output now."""


def _size(entry: Path) -> int:
    """Bytes under `entry`; what vanishes meanwhile (another run committing or removing it) counts 0."""
    total = 0
    for root, _, files in os.walk(entry):
        for f in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, f)).st_size
    if not total and not entry.is_dir():
        with contextlib.suppress(OSError):
            total = entry.lstat().st_size
    return total


def warn_leftovers(path: str | Path) -> list[Path]:
    """Warn about what an interrupted write of `path` left beside it, and return it.

    An atomic write fills `.NAME.*.tmp` and, replacing a folder, moves the old one to
    `.NAME.*.old` for an instant; a write killed (SIGKILL, power loss) in between leaves them,
    hidden, and an export of DiT-XL/2 is gigabytes. They are named with their size, never
    deleted here: a second run writing the same output at this moment owns its `.tmp`. When
    `path` is gone but an `.old` is there, the kill came between the two renames of a
    replace: the `.old` is the user's previous output, and the warning says how to put it back.
    """
    path = Path(path)
    # Exactly the names mkstemp / mkdtemp give (".NAME." + 8 random characters + suffix): not a
    # user's `.NAME.old`, nor a sibling output's (`.NAME.npz.<random>.tmp`).
    pattern = re.compile(rf"\.{re.escape(path.name)}\.[a-z0-9_]{{8}}\.(tmp|old)")
    try:
        found = sorted(p for p in path.parent.iterdir() if pattern.fullmatch(p.name))
    except OSError:  # no folder yet (or not readable): nothing was left there
        return []
    if not found:
        return []
    previous = [p for p in found if p.suffix == ".old"] if not os.path.lexists(path) else []
    for old in previous:
        warnings.warn(f"{path} is missing and {old} holds the output an interrupted write moved aside (the "
                      f"previous {path.name}); it is left as it is: to keep it, rename it, e.g. "
                      f"mv {old} {path}.previous", LeftoverWarning)
    rest = [p for p in found if p not in previous]
    if rest:
        mib = sum(_size(p) for p in rest) / 2**20
        warnings.warn(f"{path}: {len(rest)} temporary entr{'y' if len(rest) == 1 else 'ies'} beside it, left by an "
                      f"interrupted write or in use by another run writing it now ({_named([p.name for p in rest])}; "
                      f"{mib:.1f} MiB); nothing uses them once that run is over: remove them then", LeftoverWarning)
    return found


@contextlib.contextmanager
def atomic_folder(path: str | Path, marker: str) -> Iterator[Path]:
    """Yield a temporary folder beside `path`; on success it gets its inventory and replaces `path` whole.

    `path` is checked (`check_output_folder`) before the block and again at commit, when
    minutes may have passed and a folder of an older version can be judged against its
    replacement; a refusal or any error removes the temporary folder and changes nothing.
    """
    path = Path(path)
    check_output_folder(path, marker)
    warn_leftovers(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        yield tmp
        write_inventory(tmp)
        os.chmod(tmp, 0o755)
        check_output_folder(path, marker, new=tmp)
        if not os.path.lexists(path):
            os.replace(tmp, path)
            return
        # A fresh name: a fixed `.name.old` could be someone's folder.
        old = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".old"))
        try:
            os.replace(path, old)
        except BaseException:
            os.rmdir(old)
            raise
        try:
            os.replace(tmp, path)
        except BaseException:
            os.replace(old, path)
            raise
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
