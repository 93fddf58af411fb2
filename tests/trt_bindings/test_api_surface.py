"""Every TensorRT attribute, method and enum the project touches exists, with the arity used, in
each TensorRT version whose real bindings are available (10.3, 10.13, 11.x).

The uses come from walking the project's code (trt_usage.py), never from a hand list; they are
resolved against the real `tensorrt` module (trt_probe.py). What this proves: the names,
signatures and enum members exist as called. What it does not: that TensorRT builds or runs
anything (the libraries behind the bindings are stubs), which only a GPU run shows.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from trt_wheels import note_checked
from trt_usage import Use, project_uses

PROBE = Path(__file__).with_name("trt_probe.py")


def resolve(bindings, uses: list[Use]) -> dict:
    return bindings.run_json(PROBE, [u.as_json() for u in uses])


def test_the_walk_finds_the_project_s_tensorrt_calls():
    uses = {u.text() for u in project_uses()}
    # The walk must see through assignments and return types, or it would check nothing.
    for expected in ("trt.Builder(1).create_network(1).get_input(1).shape",
                     "trt.Runtime(1).deserialize_cuda_engine(1)",
                     "trt.IExecutionContext.execute_async_v3(1)",
                     "trt.ICudaEngine.create_execution_context(1)",
                     "trtp.register(1)"):
        assert expected in uses


def test_every_tensorrt_use_exists_with_its_arity(trt_versions):
    uses = project_uses()
    for version, bindings in sorted(trt_versions.items()):
        result = resolve(bindings, uses)
        assert result["version"] == version
        bad = [f"{u.where}: {u.text()}: {v['why']}" for u, v in zip(uses, result["verdicts"])
               if v["verdict"] not in ("ok", "not-run")]
        assert not bad, f"TensorRT {version}:\n" + "\n".join(bad)
        checked = sum(v["verdict"] == "ok" for v in result["verdicts"])
        assert checked >= 50, f"TensorRT {version}: only {checked} uses resolved"
        note_checked("API surface", version)


def test_the_check_catches_a_missing_member_and_a_wrong_arity(trt_versions):
    """The check can fail: the TensorRT 10 spelling device_memory_size, unguarded, is missing in
    11.x (review defect 9), and set_input_shape with one argument fits no signature."""
    engine = ("trt", (("attr", "ICudaEngine"), ("inst",)))
    context = ("trt", (("attr", "IExecutionContext"), ("inst",)))
    uses = [Use(engine[0], engine[1] + (("attr", "device_memory_size"),), "synthetic"),
            Use(context[0], context[1] + (("attr", "set_input_shape"), ("call", 1, ())), "synthetic"),
            Use("trt", (("attr", "NoSuchBuilder"),), "synthetic")]
    for version, bindings in trt_versions.items():
        verdicts = [v["verdict"] for v in resolve(bindings, uses)["verdicts"]]
        assert verdicts[1:] == ["arity", "missing"], version
        assert verdicts[0] == ("missing" if version.startswith("11.") else "ok"), version
