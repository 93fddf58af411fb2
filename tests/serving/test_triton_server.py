"""The real tritonserver over a repository of the bundled model: HTTP and gRPC requests give the images
`tqdit sample` and the API draw (bit for bit on ONNX Runtime), bad requests get a clear error and the
server keeps serving, a cancelled request and a server stopped mid-load leave it able to serve again."""
import concurrent.futures
import json
import queue
import time

import numpy as np
import pytest

from tqdit_export.api import open_pipeline, to_uint8
from tqdit_export.cli import main
from tqdit_export.io import file_sha256, load_samples

httpclient = pytest.importorskip("tritonclient.http")
grpcclient = pytest.importorskip("tritonclient.grpc")
from tritonclient.utils import InferenceServerException  # noqa: E402

from tqdit_export.serving.server import (  # noqa: E402
    SHM_PREFIX_FLAG, TritonServer, find_tritonserver, free_port, stub_environment_path)

try:
    find_tritonserver()
    HAVE_SERVER = (stub_environment_path() / "bin" / "python3").is_file()
except FileNotFoundError:
    HAVE_SERVER = False
pytestmark = pytest.mark.skipif(not HAVE_SERVER, reason="no tritonserver or stub environment: run `make setup`")

MAX_IMAGES = 8


@pytest.fixture(scope="module")
def repo(digits_export, tmp_path_factory):
    _, export = digits_export
    out = tmp_path_factory.mktemp("triton") / "repo"
    assert main(["triton-repo", "--from", str(export), "--out", str(out), "--max-images", str(MAX_IMAGES)]) == 0
    return out


def _server(repo):
    return TritonServer(repo, free_port(), free_port(), free_port(), exit_timeout=3)


@pytest.fixture(scope="module")
def server(repo):
    with _server(repo) as s:
        yield s


def _inputs(module, labels, seed=0, steps=8, sampler=None, guidance=None, n=None):
    n = len(labels) if n is None else n
    arrays = {"class_label": np.asarray(labels, dtype=np.int64).reshape(-1, 1),
              "seed": np.full((n, 1), seed, dtype=np.int64), "steps": np.full((n, 1), steps, dtype=np.int32)}
    if sampler is not None:
        arrays["sampler"] = np.full((n, 1), sampler.encode(), dtype=object)
    if guidance is not None:
        arrays["guidance_scale"] = np.full((n, 1), guidance, dtype=np.float32)
    types = {"class_label": "INT64", "seed": "INT64", "steps": "INT32", "sampler": "BYTES", "guidance_scale": "FP32"}
    out = []
    for name, a in arrays.items():
        i = module.InferInput(name, list(a.shape), types[name])
        i.set_data_from_numpy(a)
        out.append(i)
    return out


def test_http_and_grpc_return_the_images_tqdit_sample_draws(server, digits_export, tmp_path):
    record, export = digits_export
    npz = tmp_path / "s.npz"
    assert main(["sample", "--model", "dit-digits", "--record", str(record), "--backend", "ort", "--onnx", str(export),
                 "--class", "3", "--num", "6", "--steps", "8", "--seed", "7", "--save-npz", str(npz), "--quiet"]) == 0
    expected = load_samples(npz)[0]
    with httpclient.InferenceServerClient(server.http_url) as c:
        r = c.infer("tqdit_sampler", _inputs(httpclient, [3] * 6, seed=7, steps=8))
        np.testing.assert_array_equal(r.as_numpy("samples"), expected)
        np.testing.assert_array_equal(r.as_numpy("images"), to_uint8(expected))
        assert r.as_numpy("images").shape == (6, 8, 8, 1) and r.as_numpy("images").dtype == np.uint8
    # gRPC, DDIM and another guidance scale: the API draws the same.
    api = open_pipeline(export).sample([0, 5, 9], seed=3, steps=6, sampler="ddim", guidance=2.0)
    with grpcclient.InferenceServerClient(server.grpc_url) as c:
        r = c.infer("tqdit_sampler", _inputs(grpcclient, [0, 5, 9], seed=3, steps=6, sampler="ddim", guidance=2.0))
        np.testing.assert_array_equal(r.as_numpy("samples"), api)


def test_concurrent_requests_batched_together_each_get_their_own_draw(server, digits_export):
    _, export = digits_export
    pipe = open_pipeline(export)
    seeds = [11, 12, 13]
    with httpclient.InferenceServerClient(server.http_url, concurrency=len(seeds)) as c:
        pending = [c.async_infer("tqdit_sampler", _inputs(httpclient, [s % 10, 1], seed=s, steps=5)) for s in seeds]
        results = [p.get_result().as_numpy("samples") for p in pending]
    for s, got in zip(seeds, results):
        np.testing.assert_array_equal(got, pipe.sample([s % 10, 1], seed=s, steps=5))


def test_concurrent_requests_of_different_settings_each_get_their_own_draw(server, digits_export):
    _, export = digits_export
    pipe = open_pipeline(export)
    settings = [dict(steps=5), dict(steps=3, sampler="ddim"), dict(steps=5, guidance=2.0), dict(steps=5)]
    with httpclient.InferenceServerClient(server.http_url, concurrency=len(settings)) as c:
        pending = [c.async_infer("tqdit_sampler", _inputs(httpclient, [i, 7], seed=20 + i, **kw))
                   for i, kw in enumerate(settings)]
        results = [p.get_result().as_numpy("samples") for p in pending]
    for i, (kw, got) in enumerate(zip(settings, results)):
        expected = pipe.sample([i, 7], seed=20 + i, steps=kw["steps"], sampler=kw.get("sampler", "ddpm"),
                               guidance=kw.get("guidance", 1.5))
        np.testing.assert_array_equal(got, expected)


def _refused(client, inputs, *messages):
    with pytest.raises(InferenceServerException) as err:
        client.infer("tqdit_sampler", inputs)
    text = str(err.value)
    for m in messages:
        assert m in text, text
    return text


def test_bad_requests_get_a_clear_error_and_the_server_keeps_serving(server, digits_export):
    _, export = digits_export
    with httpclient.InferenceServerClient(server.http_url) as c:
        bad_dtype = _inputs(httpclient, [3, 3])
        bad_dtype[0] = httpclient.InferInput("class_label", [2, 1], "FP32")
        bad_dtype[0].set_data_from_numpy(np.full((2, 1), 3, dtype=np.float32))
        _refused(c, bad_dtype, "class_label", "FP32")
        bad_shape = _inputs(httpclient, [3, 3])
        bad_shape[0] = httpclient.InferInput("class_label", [1, 2], "INT64")
        bad_shape[0].set_data_from_numpy(np.full((1, 2), 3, dtype=np.int64))
        _refused(c, bad_shape, "class_label")
        _refused(c, _inputs(httpclient, [3, 10]), "class_label", "class label 10 is out of range", "0..9")
        _refused(c, _inputs(httpclient, [3], steps=0), "steps 0")
        _refused(c, _inputs(httpclient, [3], steps=1001), "steps 1001", "1..1000")
        _refused(c, _inputs(httpclient, [3], guidance=-1.0), "guidance scale -1")
        _refused(c, _inputs(httpclient, [3], steps=37, sampler="ddim"), "steps", "36 or 38")
        _refused(c, _inputs(httpclient, [3] * (MAX_IMAGES + 1)), f"batch-size must be <= {MAX_IMAGES}")
        _refused(c, _inputs(httpclient, [3])[::2], "seed")  # class_label and steps only: seed missing
        assert server.alive()
        r = c.infer("tqdit_sampler", _inputs(httpclient, [4], seed=1, steps=4))
        np.testing.assert_array_equal(r.as_numpy("samples"), open_pipeline(export).sample([4], seed=1, steps=4))


def test_a_cancelled_request_leaves_the_server_serving(server, digits_export):
    _, export = digits_export
    done = queue.Queue()
    with grpcclient.InferenceServerClient(server.grpc_url) as c:
        def stats(model):
            return c.get_inference_statistics(model_name=model).model_stats[0]

        def denoiser_calls():
            return sum(stats(f"tqdit_denoiser_g{g}").execution_count for g in (0, 1))

        def finished():
            sampler = stats("tqdit_sampler").inference_stats
            return sampler.success.count + sampler.fail.count

        calls_before, finished_before = denoiser_calls(), finished()
        call = c.async_infer("tqdit_sampler", _inputs(grpcclient, [2] * 4, steps=1000),
                             callback=lambda result, error: done.put((result, error)))
        time.sleep(1.0)  # let it reach the sampler (not a timed assert: any moment is a valid test)
        call.cancel()
        result, error = done.get(timeout=60)
        assert result is None and "cancel" in str(error).lower()

        # The sampler notices at its next step and answers CANCELLED long before its 1000 steps:
        # its execution ends (Triton counts it) and the denoisers saw far fewer calls.
        for _ in range(600):
            if finished() > finished_before:
                break
            time.sleep(0.1)
        assert finished() > finished_before
        assert denoiser_calls() - calls_before < 1000
        r = c.infer("tqdit_sampler", _inputs(grpcclient, [2], seed=5, steps=4))
    np.testing.assert_array_equal(r.as_numpy("samples"), open_pipeline(export).sample([2], seed=5, steps=4))
    assert server.alive()


def test_a_server_stopped_mid_load_exits_and_the_next_start_serves(repo, digits_export):
    _, export = digits_export
    marker = json.loads((repo / "tqdit_repository.json").read_text())
    server = _server(repo).start()
    try:
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            def one(i):
                with httpclient.InferenceServerClient(server.http_url, network_timeout=120) as c:
                    try:
                        return c.infer("tqdit_sampler", _inputs(httpclient, [i], seed=i, steps=300))
                    except Exception as err:  # noqa: BLE001 - the server went away: any clean error
                        return err
            futures = [pool.submit(one, i) for i in range(4)]
            time.sleep(1.5)  # requests in flight
            status = server.stop()
            outcomes = [f.result(timeout=120) for f in futures]
        assert status is not None and not server.alive()
        assert len(outcomes) == 4  # every client got an answer or an error: nothing hung
        assert server.shared_memory_regions() == []
    finally:
        server.close()
    for name, entry in marker["files"].items():  # the repository is as written
        assert file_sha256(repo / name / "1" / entry["file"]) == entry["sha256"]
    with _server(repo) as again:
        with httpclient.InferenceServerClient(again.http_url) as c:
            r = c.infer("tqdit_sampler", _inputs(httpclient, [8], seed=2, steps=4))
    np.testing.assert_array_equal(r.as_numpy("samples"), open_pipeline(export).sample([8], seed=2, steps=4))


@pytest.mark.parametrize("signame", ["SIGTERM", "SIGINT", "SIGHUP"])
def test_tqdit_serve_waits_until_ready_and_stops_cleanly_on_a_signal(repo, tmp_path, signame):
    import signal
    import subprocess
    import sys

    ports = [str(free_port()) for _ in range(3)]
    proc = subprocess.Popen([sys.executable, "-m", "tqdit_export.cli", "serve", "--repo", str(repo),
                             "--http-port", ports[0], "--grpc-port", ports[1], "--metrics-port", ports[2],
                             "--log", str(tmp_path / "server.log"), "--exit-timeout", "3"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = ""
        while "ready" not in line:  # the command prints its ready line only once Triton answers ready
            line = proc.stdout.readline()
            assert line, proc.stderr.read()
        with httpclient.InferenceServerClient(f"127.0.0.1:{ports[0]}") as c:
            assert c.is_server_ready() and c.is_model_ready("tqdit_sampler")
        proc.send_signal(getattr(signal, signame))
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert f"stopped ({signame}" in out


def test_the_single_layout_serves_the_same_draw_as_the_api(digits_export, tmp_path):
    record, _ = digits_export
    export, repo = tmp_path / "single", tmp_path / "repo"
    assert main(["export", "--model", "dit-digits", "--record", str(record), "--layout", "single",
                 "--out", str(export)]) == 0
    assert main(["triton-repo", "--from", str(export), "--out", str(repo), "--max-images", "4"]) == 0
    with _server(repo) as s, grpcclient.InferenceServerClient(s.grpc_url) as c:
        r = c.infer("tqdit_sampler", _inputs(grpcclient, [1, 6], seed=4, steps=6))
    np.testing.assert_array_equal(r.as_numpy("samples"), open_pipeline(export).sample([1, 6], seed=4, steps=6))


def test_a_server_asked_to_stop_while_loading_stops_without_waiting_for_ready(repo):
    from tqdit_export.serving.server import StartCancelled

    server = _server(repo)
    try:
        with pytest.raises(StartCancelled, match="while its models loaded"):
            server.start(should_stop=lambda: True)
        assert not server.alive() and server.process.returncode is not None
    finally:
        server.close()


def test_a_tritonserver_older_than_the_response_senders_is_refused(server):
    from tqdit_export.serving.server import check_server_version

    assert server.version is not None
    check_server_version(server.version, "tritonserver")  # the one the tests run: accepted
    check_server_version("2.47.0", "tritonserver")
    for old in ("2.46.0", "2.9.1"):
        with pytest.raises(RuntimeError, match=r"version .*unanswered; use 2\.47 \(Triton 24\.06\) or newer"):
            check_server_version(old, "/opt/old/tritonserver")
    for odd in (None, "", "dev"):
        with pytest.raises(RuntimeError, match="not MAJOR.MINOR"):
            check_server_version(odd, "tritonserver")


def test_another_server_on_the_port_is_not_taken_for_ours(repo):
    """The readiness check reads the server's --id back from /v2: a foreign server answering ready is not ours."""
    import http.server
    import threading

    class Foreign(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - the http.server API
            body = json.dumps({"name": "someone-else", "version": "2.51.0"}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    foreign = http.server.HTTPServer(("127.0.0.1", 0), Foreign)
    threading.Thread(target=foreign.serve_forever, daemon=True).start()
    try:
        server = TritonServer(repo, foreign.server_port, free_port(), free_port())
        try:
            assert not server.ready()
            server.server_id = "someone-else"  # what ready() would see from that server if it were ours
            assert server.ready()
        finally:
            server.close()
    finally:
        foreign.shutdown()
        foreign.server_close()


def test_a_short_request_batched_with_a_long_one_is_answered_when_its_own_loop_ends(digits_export, tmp_path):
    """One sampler instance and a long queue delay put both requests in one batch (Triton counts one
    execution); the short loop runs first and its answer leaves before the long loop's steps."""
    _, export = digits_export
    repo = tmp_path / "repo"
    assert main(["triton-repo", "--from", str(export), "--out", str(repo), "--max-images", "4",
                 "--sampler-instances", "1", "--sampler-queue-delay-us", "1000000"]) == 0
    pipe = open_pipeline(export)
    done = queue.Queue()
    with _server(repo) as s, grpcclient.InferenceServerClient(s.grpc_url) as c, \
            grpcclient.InferenceServerClient(s.grpc_url) as watcher:  # its own channel, for the callbacks
        def stats(model):
            return watcher.get_inference_statistics(model_name=model).model_stats[0]

        def denoiser_calls():
            return sum(stats(f"tqdit_denoiser_g{g}").execution_count for g in (0, 1))

        executions = stats("tqdit_sampler").execution_count
        for name, steps in (("long", 300), ("short", 2)):  # the long one first: it arrives first
            c.async_infer("tqdit_sampler", _inputs(grpcclient, [3], seed=1, steps=steps),
                          callback=lambda result, error, name=name: done.put((name, result, error, denoiser_calls())))
        first, second = done.get(timeout=120), done.get(timeout=120)
        # Triton counts an execution when execute() returns, which is after its last response has
        # left: the count may lag the second answer by a moment, so wait for it to move first.
        deadline = time.monotonic() + 30
        while stats("tqdit_sampler").execution_count == executions and time.monotonic() < deadline:
            time.sleep(0.05)
        assert stats("tqdit_sampler").execution_count == executions + 1  # one batch held both
    assert first[0] == "short" and first[2] is None and second[2] is None
    # The long loop went on calling the denoisers after the short answer left (~298 calls).
    assert second[3] - first[3] > 100
    np.testing.assert_array_equal(first[1].as_numpy("samples"), pipe.sample([3], seed=1, steps=2))
    np.testing.assert_array_equal(second[1].as_numpy("samples"), pipe.sample([3], seed=1, steps=300))


def test_a_killed_server_leaves_no_shared_memory_behind(repo):
    """The Python backend's /dev/shm regions outlive a SIGKILLed server (the OOM killer's way); stop()
    removes this server's own, named by its --id, and no other's."""
    import os
    import signal

    server = _server(repo).start()
    try:
        regions = server.shared_memory_regions()
        assert regions and all(r.name.startswith(f"{server.server_id}_") for r in regions)
        os.killpg(server.process.pid, signal.SIGKILL)
        server.process.wait()
        assert all(r.exists() for r in regions)  # what Triton leaves
        server.stop()
        assert not any(r.exists() for r in regions)
    finally:
        server.close()
    # A prefix the user chose may be shared with other servers: used as given, never cleaned.
    theirs = TritonServer(repo, free_port(), free_port(), free_port(), extra_args=(f"{SHM_PREFIX_FLAG}=mine_",))
    assert theirs.shm_prefix is None and theirs.shared_memory_regions() == []
    assert [a for a in theirs.command(repo) if a.startswith(SHM_PREFIX_FLAG)] == [f"{SHM_PREFIX_FLAG}=mine_"]
    theirs.close()
    # ... also in tritonserver's global form, which our backend-specific flag would otherwise override.
    glob = "--backend-config=shm-region-prefix-name=all_"
    theirs = TritonServer(repo, free_port(), free_port(), free_port(), extra_args=(glob,))
    assert theirs.shm_prefix is None and not any(a.startswith(SHM_PREFIX_FLAG) for a in theirs.command(repo))
    theirs.close()
