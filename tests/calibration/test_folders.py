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


def test_what_a_killed_write_left_is_named_and_kept(tmp_path):
    from calibration.folders import LeftoverWarning

    out = tmp_path / "export"
    left = tmp_path / ".export.k3j2ab_9.tmp"  # a write killed while it filled its temporary folder
    left.mkdir()
    (left / "g0.onnx").write_bytes(b"x" * 2**20)
    (tmp_path / ".exports.zzzzzzzz.tmp").mkdir()  # another output's: not this one's
    (tmp_path / ".export.npz.zzzzzzzz.tmp").mkdir()  # nor a sibling file's (export.npz)
    (tmp_path / ".export.old").mkdir()  # nor a user's folder: not a name the tool makes
    with pytest.warns(LeftoverWarning, match=r"1 temporary entry beside it.*\.export\.k3j2ab_9\.tmp; 1\.0 MiB") as seen:
        _write(out)
    assert len(seen) == 1 and left.is_dir() and (out / "m.json").is_file()  # written; nothing removed
    # Killed between the two renames of a replace: the output is gone, the .old is the previous one.
    old = tmp_path / ".export.x9x9x9x9.old"
    out.rename(old)
    with pytest.warns(LeftoverWarning) as seen:
        _write(out)
    messages = [str(w.message) for w in seen]
    assert any(f"{out} is missing" in m and f"mv {old} {out}.previous" in m for m in messages)
    assert (old / "m.json").is_file() and (out / "m.json").is_file()
    # With the output back in place, an .old is only a leftover (its removal was cut short).
    with pytest.warns(LeftoverWarning, match="2 temporary entries") as seen:
        _write(out)
    assert not any("is missing" in str(w.message) for w in seen)


def test_a_file_write_names_its_leftovers_and_commands_print_them_as_warnings(tmp_path, capsys):
    from calibration.folders import LeftoverWarning
    from tqdit_export.errors import run_command
    from tqdit_export.io import write_json

    (tmp_path / ".s.json.abcdefgh.tmp").write_text("half")
    with pytest.warns(LeftoverWarning, match=r"\.s\.json\.abcdefgh\.tmp"):
        write_json(tmp_path / "s.json", {"a": 1})
    assert run_command("tqdit x", lambda: write_json(tmp_path / "s.json", {"a": 2}) and 0) == 0
    assert "tqdit x: warning:" in capsys.readouterr().err and (tmp_path / ".s.json.abcdefgh.tmp").exists()
