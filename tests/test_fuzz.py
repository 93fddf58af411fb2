"""Random and mutated bytes as a checkpoint, a record folder and an ONNX file: every reader
either reads them or raises one of its own errors (ValueError, FileNotFoundError) naming the
file, never another exception (a traceback for the user).

Bounded: a fixed number of examples each, derandomized (the same inputs on every run, so CI
is reproducible), no example database; the whole module runs in seconds.
"""
import json
import shutil
from datetime import timedelta

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from calibration.calibrate import CalibrationConfig
from calibration.record import RECORD_JSON, SCALES_FILE, CalibrationRecord
from tqdit_export.models import save_dit
from tqdit_export.models.loaders import load_checkpoint, save_official_state_dict
from tqdit_export.onnx.lint import lint_file
from tqdit_export.quant import calibrate_dit

EXPECTED = (ValueError, FileNotFoundError)  # the project's errors for a bad input (UsageError is a ValueError)
FUZZ = settings(max_examples=60, deadline=timedelta(seconds=5), derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
HEAD = 4096  # headers (safetensors JSON, protobuf fields) sit at the start: half the mutations land there


@st.composite
def mutated(draw, base: bytes) -> bytes:
    """`base` with 1-6 bytes replaced (half of them in its first HEAD bytes), maybe cut short."""
    data = bytearray(base)
    for _ in range(draw(st.integers(1, 6))):
        where = draw(st.one_of(st.integers(0, min(len(data), HEAD) - 1), st.integers(0, len(data) - 1)))
        data[where] = draw(st.integers(0, 255))
    if draw(st.booleans()):
        data = data[: draw(st.integers(0, len(data)))]
    return bytes(data)


def inputs(base: bytes):
    return st.one_of(st.binary(max_size=512), mutated(base))


def _read_or_refuse(read, path) -> None:
    try:
        read(path)
    except EXPECTED as err:
        assert str(path) in str(err), f"the message does not name {path}: {err}"


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


@pytest.fixture(scope="module")
def checkpoints(root, make_tiny_dit):
    """The bytes of a tiny DiT in this tool's safetensors format and as an official .pt."""
    model = make_tiny_dit()
    save_dit(model, root / "tiny.safetensors")
    save_official_state_dict(model, root / "tiny.pt")
    return (root / "tiny.safetensors").read_bytes(), (root / "tiny.pt").read_bytes()


@pytest.fixture(scope="module")
def record_folder(root, make_tiny_dit):
    """A real record folder (min-max, 2 groups: seconds) whose files the test mutates."""
    record = calibrate_dit(make_tiny_dit(), CalibrationConfig(8, 8, num_groups=2, method="minmax", rounds=1),
                           samples_per_group=2, trajectory_steps=4, progress=False)
    return record.save(root / "record")


def test_checkpoint_bytes_load_or_are_refused(root, checkpoints):
    ours, official = checkpoints
    path = root / "fuzzed_checkpoint"

    @FUZZ
    @given(data=st.one_of(inputs(ours), inputs(official)))
    def check(data):
        path.write_bytes(data)
        _read_or_refuse(load_checkpoint, path)

    check()


def _json_paths(value, prefix=()):
    """Every (path) into a JSON tree of dicts and lists."""
    yield prefix
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, child in items:
        yield from _json_paths(child, (*prefix, key))


@st.composite
def edited_meta(draw, meta: dict) -> bytes:
    """record.json with one field deleted or replaced by another JSON value."""
    meta = json.loads(json.dumps(meta))
    paths = [p for p in _json_paths(meta) if p]
    path = draw(st.sampled_from(paths))
    parent = meta
    for key in path[:-1]:
        parent = parent[key]
    other = st.one_of(st.none(), st.booleans(), st.integers(-3, 2000), st.floats(allow_nan=True),
                      st.text(max_size=6), st.lists(st.integers(-1, 1001), max_size=4), st.just({}))
    if isinstance(parent, dict) and draw(st.booleans()):
        del parent[path[-1]]
    else:
        parent[path[-1]] = draw(other)
    return json.dumps(meta).encode()


def test_record_folder_bytes_load_or_are_refused(root, record_folder):
    meta_bytes = (record_folder / RECORD_JSON).read_bytes()
    scales_bytes = (record_folder / SCALES_FILE).read_bytes()
    folder = root / "fuzzed_record"
    shutil.copytree(record_folder, folder)
    meta_inputs = st.one_of(st.just(meta_bytes), inputs(meta_bytes), edited_meta(json.loads(meta_bytes)))

    @FUZZ
    @given(meta=meta_inputs, scales=st.one_of(st.just(scales_bytes), inputs(scales_bytes)))
    def check(meta, scales):
        (folder / RECORD_JSON).write_bytes(meta)
        (folder / SCALES_FILE).write_bytes(scales)
        _read_or_refuse(CalibrationRecord.load, folder)

    check()


def _qdq_graph() -> bytes:
    """X -> Q/DQ -> MatMul with a per-channel int8 weight DQ -> Y: what the linter reads."""
    inits = [numpy_helper.from_array(np.array(0.1, np.float32), "x_s"),
             numpy_helper.from_array(np.array(0, np.int8), "x_zp"),
             numpy_helper.from_array(np.arange(12, dtype=np.int8).reshape(4, 3), "w_q"),
             numpy_helper.from_array(np.full(3, 0.02, np.float32), "w_s"),
             numpy_helper.from_array(np.zeros(3, np.int8), "w_zp")]
    nodes = [helper.make_node("QuantizeLinear", ["X", "x_s", "x_zp"], ["x_q"], name="act_q"),
             helper.make_node("DequantizeLinear", ["x_q", "x_s", "x_zp"], ["x_dq"], name="act_dq"),
             helper.make_node("DequantizeLinear", ["w_q", "w_s", "w_zp"], ["w_dq"], name="weight_dq", axis=1),
             helper.make_node("MatMul", ["x_dq", "w_dq"], ["Y"], name="gemm")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("X", TensorProto.FLOAT, [2, 4])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [2, 3])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def _short_initializer() -> bytes:
    """The graph with a weight whose bytes do not fill its shape (found by fuzzing: numpy's reshape error)."""
    model = onnx.load_from_string(_qdq_graph())
    weight = next(i for i in model.graph.initializer if i.name == "w_q")
    weight.raw_data = weight.raw_data[:6]
    return model.SerializeToString()


def test_onnx_bytes_lint_or_are_refused(root):
    base = _qdq_graph()
    assert lint_file_bytes(root, base) == []  # the unmutated graph is clean
    path = root / "fuzzed.onnx"

    @settings(FUZZ, max_examples=200)  # a small graph lints in a millisecond: more mutations for the same time
    @given(data=inputs(base))
    @example(data=_short_initializer())
    def check(data):
        path.write_bytes(data)
        _read_or_refuse(lint_file, path)

    check()


def lint_file_bytes(root, data: bytes):
    path = root / "clean.onnx"
    path.write_bytes(data)
    onnx.checker.check_model(onnx.load(str(path)))
    return lint_file(path)
