"""The Triton repository writer and its config linter (no server needed)."""
import json
import shutil

import numpy as np
import pytest

from tqdit_export.cli import main
from tqdit_export.io import file_sha256
from tqdit_export.serving.repository import (RepositoryOptions, lint_model_config,
                                             lint_repository, read_repository, write_repository)
from tqdit_export.serving.triton_sampler import parse_request
from tqdit_export.api import ModelSpec

pytest.importorskip("tritonclient.grpc")


def test_cpu_repository_has_triton_layout_and_passes_the_schema(digits_export, tmp_path, capsys):
    _, export = digits_export
    repo = tmp_path / "repo"
    assert main(["triton-repo", "--from", str(export), "--out", str(repo)]) == 0
    assert "Triton config schema: ok" in capsys.readouterr().out
    info = read_repository(repo)
    assert info["models"] == ["tqdit_sampler", "tqdit_denoiser_g0", "tqdit_denoiser_g1"]
    for name in info["models"]:
        assert (repo / name / "config.pbtxt").is_file() and (repo / name / "1" / "model.py").is_file()
    manifest = json.loads((export / "manifest.json").read_text())
    for g in manifest["graphs"]:  # self-contained: the graphs are copied, byte for byte
        assert file_sha256(repo / f"tqdit_denoiser_g{g['time_group']}" / "1" / "model.onnx") == g["sha256"]
    pipeline = json.loads((repo / "tqdit_sampler" / "1" / "pipeline.json").read_text())
    assert pipeline["time_groups"] == manifest["time_groups"] and pipeline["spec"]["pixel_space"] is True
    config = (repo / "tqdit_sampler" / "config.pbtxt").read_text()
    assert "max_batch_size: 64" in config and "dynamic_batching" in config and "count: 2" in config
    assert "max_batch_size: 128" in (repo / "tqdit_denoiser_g0" / "config.pbtxt").read_text()
    assert lint_repository(repo) == []


def test_the_sampler_queue_delay_is_set_apart_from_the_denoisers(digits_export, tmp_path, capsys):
    _, export = digits_export
    repo = tmp_path / "repo"
    assert main(["triton-repo", "--from", str(export), "--out", str(repo), "--queue-delay-us", "500",
                 "--sampler-queue-delay-us", "50000"]) == 0
    assert "max_queue_delay_microseconds: 50000" in (repo / "tqdit_sampler" / "config.pbtxt").read_text()
    for g in (0, 1):
        assert "max_queue_delay_microseconds: 500\n" in (repo / f"tqdit_denoiser_g{g}" / "config.pbtxt").read_text()
    # Unset, the sampler takes --queue-delay-us; a negative one is refused before anything is written.
    write_repository(export, repo, RepositoryOptions(queue_delay_us=700))
    assert "max_queue_delay_microseconds: 700\n" in (repo / "tqdit_sampler" / "config.pbtxt").read_text()
    assert main(["triton-repo", "--from", str(export), "--out", str(tmp_path / "r2"),
                 "--sampler-queue-delay-us", "-1"]) == 2
    assert "--sampler-queue-delay-us" in capsys.readouterr().err and not (tmp_path / "r2").exists()


def test_without_dynamic_batching_and_an_existing_foreign_folder(digits_export, tmp_path, capsys):
    _, export = digits_export
    repo = tmp_path / "repo"
    write_repository(export, repo, RepositoryOptions(dynamic_batching=False, max_images=8, sampler_instances=1))
    assert "dynamic_batching" not in (repo / "tqdit_sampler" / "config.pbtxt").read_text()
    assert "max_batch_size: 8" in (repo / "tqdit_sampler" / "config.pbtxt").read_text()
    # Written again over itself: fine. Over a folder holding a user's file: refused, nothing lost.
    write_repository(export, repo)
    (repo / "notes.txt").write_text("mine")
    assert main(["triton-repo", "--from", str(export), "--out", str(repo)]) == 2
    assert "notes.txt" in capsys.readouterr().err and (repo / "notes.txt").read_text() == "mine"
    assert main(["triton-repo", "--from", str(tmp_path / "nothing"), "--out", str(tmp_path / "r2")]) == 2
    assert "tqdit export" in capsys.readouterr().err and not (tmp_path / "r2").exists()


def _fake_build(export, folder, max_batch=64, plugin=None):
    """A `tqdit build` folder as a GPU machine leaves it: build.json naming one engine per graph
    (and, for the plugin layout, the plugin record `plugin`)."""
    shutil.copytree(export, folder / "onnx")
    (folder / "engines").mkdir()
    manifest = json.loads((export / "manifest.json").read_text())
    engines = []
    for i, g in enumerate(manifest["graphs"]):
        plan = folder / "engines" / f"g{i}.plan"
        plan.write_bytes(b"not a real plan " + bytes([i]))
        engines.append({"file": f"engines/{plan.name}", "time_group": g["time_group"], "sha256": file_sha256(plan)})
    info = {"status": "complete", "engines": engines, "layout": manifest["layout"],
            "time_groups": manifest["time_groups"], "target": {"name": "h100", "max_batch": max_batch}}
    if plugin is not None:
        info["plugin"] = plugin
    (folder / "build.json").write_text(json.dumps(info))
    return folder


@pytest.fixture(scope="module")
def plugin_export(digits_export, tmp_path_factory):
    record, _ = digits_export
    export = tmp_path_factory.mktemp("plugin") / "onnx"
    assert main(["export", "--model", "dit-digits", "--record", str(record), "--layout", "plugin",
                 "--out", str(export)]) == 0
    return export


def test_plugin_engines_serve_with_the_builds_c_plus_plus_plugin(plugin_export, tmp_path, capsys):
    from tqdit_export.serving.repository import backend_config_args

    library = tmp_path / "build" / "plugins" / "libtqdit_trt_plugins.so"
    library.parent.mkdir(parents=True)
    library.write_bytes(b"\x7fELF the plugin")
    build = _fake_build(plugin_export, tmp_path / "build", plugin={
        "kind": "library", "file": "plugins/libtqdit_trt_plugins.so", "sha256": file_sha256(library)})
    repo = tmp_path / "repo"
    assert main(["triton-repo", "--from", str(build), "--out", str(repo)]) == 0
    out = capsys.readouterr().out
    info = read_repository(repo, verify=True)
    assert info["models"] == ["tqdit_sampler", "tqdit_denoiser"]
    copy = repo / "tqdit_denoiser" / "1" / "libtqdit_trt_plugins.so"
    assert copy.read_bytes() == library.read_bytes() and info["plugins"] == ["tqdit_denoiser/1/libtqdit_trt_plugins.so"]
    flags = backend_config_args(repo, info)
    assert flags == [f"--backend-config=tensorrt,plugins={copy.resolve()}"] and flags[0] in out
    assert lint_repository(repo) == []
    # The per-group repositories need no flag; a plugins list the caller gives gets ours added to it
    # (a second tensorrt,plugins= flag would replace the first), other flags pass as they are.
    assert backend_config_args(repo, {"plugins": []}, ("--x=1",)) == ["--x=1"]
    mine = "--backend-config=tensorrt,plugins=/opt/mine.so"
    assert backend_config_args(repo, info, ("--x=1", mine)) == ["--x=1", f"{mine};{copy.resolve()}"]
    # Two plugins flags of the caller's: tritonserver would keep only the last, so all become one.
    two = (mine, "--x=1", "--backend-config=tensorrt,plugins=/opt/b.so;/opt/mine.so")
    assert backend_config_args(repo, info, two) == [f"{mine};/opt/b.so;{copy.resolve()}", "--x=1"]
    # A marker naming a plugin the writer did not copy (or outside the repository) is refused.
    marker = json.loads((repo / "tqdit_repository.json").read_text())
    for name in ("../libevil.so", "/tmp/libevil.so", "tqdit_denoiser/1/other.so"):
        edited = dict(marker, plugins=[name])
        (repo / "tqdit_repository.json").write_text(json.dumps(edited))
        with pytest.raises(ValueError, match="not files the repository writer recorded"):
            read_repository(repo, verify=True)
    (repo / "tqdit_repository.json").write_text(json.dumps(marker))

    # The server started over it loads the plugin, beside the caller's own.
    from tqdit_export.serving.server import TritonServer, find_tritonserver, stub_environment_path

    try:
        find_tritonserver()
    except FileNotFoundError:
        pytest.skip("no tritonserver to build a command line for: run `make setup`")
    if not (stub_environment_path() / "bin" / "python3").is_file():
        pytest.skip("no stub environment: run `make setup`")
    assert flags[0] in TritonServer(repo).command(tmp_path / "backends")
    command = TritonServer(repo, extra_args=(mine,)).command(tmp_path / "backends")
    assert f"{mine};{copy.resolve()}" in command and flags[0] not in command


@pytest.mark.parametrize("plugin,why", [({"kind": "python", "module": "trt_plugins.python_plugin"}, "Python plugin"),
                                        (None, "do not record which plugin")])
def test_plugin_engines_triton_cannot_load_are_refused(plugin_export, tmp_path, plugin, why):
    build = _fake_build(plugin_export, tmp_path / "build", plugin=plugin)
    with pytest.raises(ValueError, match=f"{why}.*--plugin-library.*--layout per-group"):
        write_repository(build, tmp_path / "repo")
    assert not (tmp_path / "repo").exists()


def test_a_plugin_library_changed_in_the_build_is_refused(plugin_export, tmp_path):
    library = tmp_path / "build" / "plugins" / "libtqdit_trt_plugins.so"
    library.parent.mkdir(parents=True)
    library.write_bytes(b"\x7fELF the plugin")
    build = _fake_build(plugin_export, tmp_path / "build", plugin={
        "kind": "library", "file": "plugins/libtqdit_trt_plugins.so", "sha256": file_sha256(library)})
    library.write_bytes(b"\x7fELF another build of it")
    with pytest.raises(ValueError, match="plugin library was changed"):
        write_repository(build, tmp_path / "repo")
    assert not (tmp_path / "repo").exists()


def test_gpu_repository_serves_tensorrt_plans_and_passes_the_schema(digits_export, tmp_path):
    _, export = digits_export
    build = _fake_build(export, tmp_path / "build")
    repo = tmp_path / "repo"
    info = write_repository(build, repo)
    assert info["platform"] == "tensorrt_plan" and info["max_images"] == 32
    config = (repo / "tqdit_denoiser_g1" / "config.pbtxt").read_text()
    assert 'platform: "tensorrt_plan"' in config and "KIND_GPU" in config and "max_batch_size: 64" in config
    assert "reshape: { shape: [  ] }" in config  # the engines take t and y as (N,)
    assert (repo / "tqdit_denoiser_g1" / "1" / "model.plan").read_bytes() == b"not a real plan \x01"
    assert not (repo / "tqdit_denoiser_g1" / "1" / "model.py").exists()
    assert lint_repository(repo) == []
    with pytest.raises(ValueError, match="--max-images 40"):
        write_repository(build, tmp_path / "r2", RepositoryOptions(max_images=40))
    # A build.json without the profile's maximum (read as 1 row) cannot be served: say how to fix it.
    info = json.loads((build / "build.json").read_text())
    old_build = tmp_path / "old_build"
    shutil.copytree(build, old_build)
    info["target"].pop("max_batch")
    (old_build / "build.json").write_text(json.dumps(info))
    with pytest.raises(ValueError, match="at most 1 row.*build the engines again"):
        write_repository(old_build, tmp_path / "r4")
    # An engine changed after the build wrote it is refused.
    (build / "engines" / "g0.plan").write_bytes(b"edited")
    with pytest.raises(ValueError, match="changed after it was written"):
        write_repository(build, tmp_path / "r3")
    assert not (tmp_path / "r3").exists()


def test_an_onnx_only_build_is_refused_with_what_to_do(digits_export, tmp_path):
    _, export = digits_export
    build = _fake_build(export, tmp_path / "build")
    # What `tqdit build` writes without TensorRT: the whole manifest, no engines.
    info = json.loads((build / "build.json").read_text())
    info.update(status="onnx-only", reason="no GPU", engines=[])
    (build / "build.json").write_text(json.dumps(info))
    with pytest.raises(ValueError, match="--from .*onnx"):
        write_repository(build, tmp_path / "repo")


def test_the_linter_finds_what_triton_would_refuse(digits_export, tmp_path):
    _, export = digits_export
    repo = tmp_path / "repo"
    write_repository(export, repo)
    config = repo / "tqdit_denoiser_g0" / "config.pbtxt"
    text = config.read_text()
    config.write_text(text.replace("TYPE_FP32", "TYPE_FLOAT32", 1))
    assert "not a Triton ModelConfig" in lint_model_config(config)[0]
    config.write_text(text.replace('name: "tqdit_denoiser_g0"', 'name: "other"'))
    assert any("differs from its folder" in f for f in lint_model_config(config))
    config.write_text(text.replace("max_batch_size: 128", "max_batch_size: 0"))
    assert any("dynamic_batching needs" in f for f in lint_model_config(config))
    (repo / "tqdit_denoiser_g0" / "1" / "model.py").unlink()
    config.write_text(text)
    assert any("no model.py" in f for f in lint_model_config(config))


SPEC = ModelSpec(1, 8, 10, True)


def _inputs(n=2, **over):
    base = {"class_label": np.full((n, 1), 3), "seed": np.zeros((n, 1)), "steps": np.full((n, 1), 10),
            "sampler": None, "guidance_scale": None}
    base.update(over)
    return base


@pytest.mark.parametrize("over,message", [
    ({"class_label": np.array([[3], [10]])}, "class label 10 is out of range"),
    ({"class_label": np.array([[-1], [1]])}, "class label -1 is out of range"),
    ({"steps": np.zeros((2, 1))}, "steps 0"),
    ({"steps": np.full((2, 1), 1001)}, "steps 1001"),
    ({"guidance_scale": np.full((2, 1), -1.0)}, "guidance scale -1"),
    ({"sampler": np.array([[b"euler"], [b"euler"]], dtype=object)}, "euler"),
    ({"sampler": np.array([[b"\xff\xfe"], [b"\xff\xfe"]], dtype=object)}, "input 'sampler'.*not UTF-8"),
    ({"sampler": np.array([[b"ddim"], [b"ddim"]], dtype=object), "steps": np.full((2, 1), 37)}, "steps=37.*36 or 38"),
    ({"seed": np.array([[0], [1]])}, "'seed' differs"),
    ({"seed": None}, "'seed' is missing"),
])
def test_sampler_requests_are_checked_with_a_message_naming_the_input(over, message):
    with pytest.raises(ValueError, match=message):
        parse_request(_inputs(**over), SPEC)


def test_a_sound_request_parses_with_defaults():
    r = parse_request(_inputs(), SPEC)
    assert r.labels == (3, 3) and r.seed == 0 and r.settings.steps == 10
    assert r.settings.sampler == "ddpm" and r.settings.guidance == 1.5


def test_single_layout_has_one_unbatched_denoiser_fed_the_time_group(digits_export, tmp_path):
    record, _ = digits_export
    export = tmp_path / "single"
    assert main(["export", "--model", "dit-digits", "--record", str(record), "--layout", "single",
                 "--out", str(export)]) == 0
    info = write_repository(export, tmp_path / "repo")
    assert info["models"] == ["tqdit_sampler", "tqdit_denoiser"]
    config = (tmp_path / "repo" / "tqdit_denoiser" / "config.pbtxt").read_text()
    assert "max_batch_size: 0" in config and '"time_group"' in config and "dynamic_batching" not in config
    assert lint_repository(tmp_path / "repo") == []


def test_build_triton_without_engines_writes_no_repository_and_says_how(digits_export, tmp_path, capsys):
    record, _ = digits_export
    code = main(["build", "--record", str(record), "--target", "h100", "--out", str(tmp_path / "build"),
                 "--triton", str(tmp_path / "triton"), "--quiet"])
    assert code == 3  # ENGINES_MISSING: no TensorRT or GPU here
    err = capsys.readouterr().err
    assert "--triton" in err and "tqdit triton-repo --from" in err and not (tmp_path / "triton").exists()
    # More images than the target's engines take: refused before calibration, export or engines.
    code = main(["build", "--record", str(record), "--target", "orin", "--out", str(tmp_path / "b2"),
                 "--triton", str(tmp_path / "t2"), "--max-images", "5", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "--max-images 5" in err and "--max-images 4 or less" in err
    assert not (tmp_path / "b2").exists() and not (tmp_path / "t2").exists()


def test_a_model_file_changed_in_the_repository_is_refused_before_a_server_starts(digits_export, tmp_path):
    from tqdit_export.serving.server import TritonServer

    _, export = digits_export
    repo = tmp_path / "repo"
    assert main(["triton-repo", "--from", str(export), "--out", str(repo)]) == 0
    assert read_repository(repo, verify=True)["models"]  # as written: accepted
    graph = repo / "tqdit_denoiser_g1" / "1" / "model.onnx"
    graph.write_bytes(graph.read_bytes() + b"\0")
    with pytest.raises(ValueError, match="tqdit_denoiser_g1/1/model.onnx.*changed after it was written"):
        TritonServer(repo)
    graph.unlink()
    with pytest.raises(FileNotFoundError, match="tqdit_denoiser_g1/1/model.onnx.*missing"):
        TritonServer(repo)
    # Not only the graphs: the sampler's pipeline.json (its spec, its time groups) too.
    assert main(["triton-repo", "--from", str(export), "--out", str(tmp_path / "r2")]) == 0
    pipeline = tmp_path / "r2" / "tqdit_sampler" / "1" / "pipeline.json"
    pipeline.write_text(pipeline.read_text().replace('"pixel_space": true', '"pixel_space": false'))
    with pytest.raises(ValueError, match="tqdit_sampler/1/pipeline.json.*changed after it was written"):
        TritonServer(tmp_path / "r2")


def test_ports_taken_or_given_twice_are_refused_naming_the_flag():
    import socket

    from tqdit_export.serving.server import check_ports_free, free_port

    a, b = free_port(), free_port()
    check_ports_free("127.0.0.1", {"--http-port": a, "--grpc-port": b})
    with pytest.raises(ValueError, match=f"--grpc-port {a}: the same port as --http-port"):
        check_ports_free("127.0.0.1", {"--http-port": a, "--grpc-port": a})
    with socket.socket() as held:
        held.bind(("127.0.0.1", a))
        held.listen()
        with pytest.raises(ValueError, match=f"--http-port {a}: 127.0.0.1:{a} is in use; another server"):
            check_ports_free("127.0.0.1", {"--http-port": a, "--grpc-port": b})


def test_one_settings_group_failing_or_cancelled_answers_only_its_own_requests(monkeypatch):
    """The sampler's execute over stand-ins for Triton's pb_utils: three settings groups in one batch;
    the loop of one fails, the requests of another are all cancelled, the third is served."""
    import types

    from tqdit_export.api import Pipeline
    from tqdit_export.diffusion.schedule import space_timesteps
    from tqdit_export.serving import triton_sampler as ts

    class Tensor:
        def __init__(self, name, array):
            self.name, self.array = name, np.asarray(array)

        def as_numpy(self):
            return self.array

    class Error:
        CANCELLED = "CANCELLED"

        def __init__(self, message, code=None):
            self.text, self.code = message, code

        def message(self):
            return self.text

    class Response:
        def __init__(self, output_tensors, error=None):
            self.outputs, self.error_ = {t.name: t for t in output_tensors}, error

        def has_error(self):
            return self.error_ is not None

        def error(self):
            return self.error_

    poison = set(space_timesteps(1000, 3)) - set(space_timesteps(1000, 4))  # timesteps only the 3-step loop sees

    def denoise(x, t):
        if poison & set(t.tolist()):
            raise RuntimeError("denoiser broke")
        eps = np.tanh(0.5 * x)
        return np.concatenate([eps, np.zeros_like(eps)], axis=1).astype(np.float32)

    class InferenceRequest:
        def __init__(self, model_name, requested_output_names, inputs):
            self.feeds = {t.name: t.array for t in inputs}

        def exec(self):
            return Response([Tensor("out", denoise(self.feeds["x"], self.feeds["t"].reshape(-1)))])

    final = 1
    logged = []
    stub = types.SimpleNamespace(
        Tensor=Tensor, TritonError=Error,
        InferenceResponse=Response, InferenceRequest=InferenceRequest,
        TRITONSERVER_RESPONSE_COMPLETE_FINAL=final, Logger=types.SimpleNamespace(log_error=logged.append),
        get_input_tensor_by_name=lambda request, name: request.inputs.get(name),
        get_output_tensor_by_name=lambda response, name: response.outputs[name])
    monkeypatch.setattr(ts, "pb_utils", stub)
    sent = []  # (request, response), in the order they left

    class Sender:
        def __init__(self, request):
            self.request = request

        def send(self, response, flags=0):
            assert flags == final  # one response per request, sent final
            if self.request.shm_full and response.outputs:
                raise RuntimeError("Failed to increase the shared memory pool size")
            sent.append((self.request, response))

    class Request:
        def __init__(self, steps, seed, cancelled=False, labels=([1], [2])):
            self.inputs = {"class_label": Tensor("class_label", list(labels)),
                           "seed": Tensor("seed", [[seed]] * len(labels)),
                           "steps": Tensor("steps", [[steps]] * len(labels))}
            self.cancelled = cancelled
            self.shm_full = False  # True: the images do not fit in the stub's shared memory

        def is_cancelled(self):
            return self.cancelled

        def get_response_sender(self):
            return Sender(self)

    model = ts.TritonPythonModel()
    model.spec = SPEC
    model.denoiser = ts.BlsDenoiser({"time_groups": [0, 500, 1000], "denoisers": [{"name": "d", "batched": True}]})
    model.pipeline = Pipeline(model.denoiser, SPEC, "triton")
    requests = [Request(4, 1), Request(3, 2), Request(5, 3, cancelled=True), Request(4, 4), Request(5, 5, True),
                Request(4, 6, labels=([1], [99]))]
    assert model.execute(requests) is None  # every answer went through the senders
    assert sorted(map(id, (r for r, _ in sent))) == sorted(map(id, requests))  # each answered once
    order = [requests.index(r) for r, _ in sent]
    assert order == [5, 1, 0, 3, 2, 4]  # the bad request at once, then the loops by steps: 3, 4, 5
    responses = {requests.index(r): response for r, response in sent}
    served = Pipeline(lambda x, t, y: denoise(x, t), SPEC)
    for i in (0, 3):  # the 4-step group: served, each with its own draw
        assert responses[i].error_ is None
        np.testing.assert_array_equal(responses[i].outputs["samples"].array,
                                      served.sample([1, 2], seed=requests[i].inputs["seed"].array[0, 0], steps=4))
    assert "sampling failed: denoiser broke" in responses[1].error_.text
    for i in (2, 4):
        assert "cancelled" in responses[i].error_.text and responses[i].error_.code == "CANCELLED"
    assert "class_label" in responses[5].error_.text
    assert model.denoiser.active == []
    # An unexpected error once answers have gone out: the requests not yet answered get it, each
    # answered once still, and nothing escapes execute (Triton would release answered requests twice).
    sent.clear()

    def broken(parsed):
        raise RuntimeError("scheduler bug")

    monkeypatch.setattr(ts, "loop_order", broken)
    requests = [Request(4, 1, labels=([1], [99])), Request(4, 2), Request(3, 3)]
    assert model.execute(requests) is None
    assert [requests.index(r) for r, _ in sent] == [0, 1, 2]
    assert "class_label" in sent[0][1].error_.text
    assert all("internal error: scheduler bug" in response.error_.text for _, response in sent[1:])
    # Images the stub cannot place in shared memory: that request gets an error saying so (logged), the
    # others their images.
    monkeypatch.undo()
    monkeypatch.setattr(ts, "pb_utils", stub)
    sent.clear()
    requests = [Request(4, 1), Request(4, 2)]
    requests[0].shm_full = True
    assert model.execute(requests) is None
    assert [requests.index(r) for r, _ in sent] == [0, 1]
    assert "could not be sent (Failed to increase the shared memory pool size)" in sent[0][1].error_.text
    assert sent[1][1].error_ is None and "images" in sent[1][1].outputs
    assert any("could not be sent" in line for line in logged)


def test_a_manifest_naming_files_outside_the_export_is_refused_before_writing(digits_export, tmp_path):
    _, export = digits_export
    copy = tmp_path / "onnx"
    shutil.copytree(export, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    (tmp_path / "outside.data").write_bytes(b"x")
    manifest["graphs"][0]["external_data"] = "../outside.data"  # the copy would land outside the repository too
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="not a path inside the folder"):
        write_repository(copy, tmp_path / "repo")
    assert not (tmp_path / "repo").exists()
