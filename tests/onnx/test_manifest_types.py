"""The typed manifests the runtimes read: layout enum, group order, and refusals that name the file."""
import json

import pytest

from tqdit_export.onnx.manifest import BUILD_MANIFEST, BuildManifest, Layout


def _write_build(folder, **fields):
    build = {"layout": "per-group", "time_groups": [0, 500, 1000], "target": {"max_batch": 8},
             "engines": [{"file": "engines/g1.plan", "time_group": 1}, {"file": "engines/g0.plan", "time_group": 0}],
             "model": {"config": {"num_classes": 10}}}
    build.update(fields)
    (folder / BUILD_MANIFEST).write_text(json.dumps(build))


def test_build_manifest_is_typed_and_in_group_order(tmp_path):
    _write_build(tmp_path)
    build = BuildManifest.read(tmp_path)
    assert build.layout is Layout.PER_GROUP and not build.layout.feeds_time_group
    assert [e["time_group"] for e in build.engines] == [0, 1]
    assert build.time_groups.num_groups == 2 and build.max_batch == 8 and build.model_config["num_classes"] == 10


@pytest.mark.parametrize("fields, message", [
    ({"layout": "per_group"}, "layout 'per_group' is not one of"),
    ({"target": {"max_batch": 0}}, "max_batch 0 is not a positive integer"),
    ({"time_groups": [0, 0]}, "no valid time_groups"),
    ({"engines": []}, "has no engines"),
])
def test_a_bad_build_manifest_is_refused_with_its_name(tmp_path, fields, message):
    _write_build(tmp_path, **fields)
    with pytest.raises((ValueError, RuntimeError), match=message):
        BuildManifest.read(tmp_path)


def test_layouts_feed_the_group_only_where_one_graph_serves_all():
    assert [layout.feeds_time_group for layout in Layout] == [False, True, True]
    assert Layout.of("plugin") is Layout.PLUGIN and Layout("single") == "single"


@pytest.mark.parametrize("name", ["../outside.plan", "engines/../../outside.plan", "/etc/hostname", ""])
def test_a_file_name_outside_the_folder_is_refused(tmp_path, name):
    from tqdit_export.onnx.manifest import verified_bytes, verified_file

    (tmp_path / "outside.plan").write_bytes(b"x")  # there, but not inside the build folder
    folder = tmp_path / "build"
    folder.mkdir()
    for read in (verified_file, verified_bytes):
        with pytest.raises(ValueError, match="not a path inside the folder"):
            read(folder, name, None, "engine")
