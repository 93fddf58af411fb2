"""calibration.folders: a folder replaces an older one whole, and never takes a user's files with it."""
import json

import pytest

from calibration.folders import INVENTORY, atomic_folder, foreign_entries


def _write(path, marker="m.json", files=("a.bin",), nested=None):
    with atomic_folder(path, marker) as tmp:
        (tmp / marker).write_text("{}")
        for f in files:
            (tmp / f).parent.mkdir(parents=True, exist_ok=True)
            (tmp / f).write_text(f)
        if nested:
            with atomic_folder(tmp / nested, "n.json") as sub:
                (sub / "n.json").write_text("{}")


def test_the_inventory_lists_every_entry_nested_ones_too(tmp_path):
    _write(tmp_path / "out", files=("a.bin", "sub/b.bin"), nested="rec")
    entries = json.loads((tmp_path / "out" / INVENTORY).read_text())["entries"]
    assert entries == ["a.bin", "m.json", "rec/", f"rec/{INVENTORY}", "rec/n.json", "sub/", "sub/b.bin"]
    assert foreign_entries(tmp_path / "out") == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_foreign_entry_deep_inside_is_found_and_many_are_counted(tmp_path):
    out = tmp_path / "out"
    _write(out, files=("sub/b.bin",))
    (out / "sub" / "mine.txt").write_text("keep")
    for i in range(7):
        (out / f"note{i}.txt").write_text("keep")
    with pytest.raises(FileExistsError, match=r"8 entries .*note0.txt, note1.txt, note2.txt, note3.txt, "
                                              r"note4.txt and 3 more"):
        _write(out)
    assert (out / "sub" / "mine.txt").read_text() == "keep" and (out / "sub" / "b.bin").exists()


def test_a_nested_folder_rewritten_on_its_own_still_counts_as_written(tmp_path):
    out = tmp_path / "build"
    _write(out, nested="onnx")
    with atomic_folder(out / "onnx", "n.json") as sub:  # e.g. `tqdit export --out build/onnx`
        (sub / "n.json").write_text("{}")
        (sub / "single.onnx").write_text("graph")
    assert foreign_entries(out) == []
    _write(out)  # the build is replaced: its onnx/ was the tool's
    assert not (out / "onnx").exists()


def test_a_symbolic_link_is_refused_and_a_dot_old_folder_beside_is_kept(tmp_path):
    real = tmp_path / "real"
    _write(real)
    (tmp_path / "link").symlink_to(real)
    with pytest.raises(FileExistsError, match="symbolic link"):
        _write(tmp_path / "link")
    (tmp_path / ".real.old").mkdir()  # someone's folder, with the name older versions used for the swap
    (tmp_path / ".real.old" / "x").write_text("keep")
    _write(real, files=("c.bin",))
    assert (real / "c.bin").exists() and not (real / "a.bin").exists()
    assert (tmp_path / ".real.old" / "x").read_text() == "keep"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".real.old", "link", "real"]
