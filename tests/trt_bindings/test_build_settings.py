"""Network and builder flags per TensorRT version, computed with the real enums of each version.

TensorRT 10.x: strongly typed through NetworkDefinitionCreationFlag.STRONGLY_TYPED, the weak
INT8 (+FP16) path for JetPack 6's 10.3; TensorRT 11: strongly typed only, no precision flags.
"""
from __future__ import annotations

from trt_wheels import note_checked

FLAGS = r"""
import json
import tensorrt as trt
from tqdit_export.engines.trt_build import BuildSettings, builder_flags, network_flags

def attempt(fn):
    try:
        return fn()
    except ValueError as err:
        return "refused: " + str(err)

out = {
    "strong_network": network_flags(trt, BuildSettings()),
    "strong_builder": [str(f) for f in builder_flags(trt, BuildSettings())],
    "weak_network": attempt(lambda: network_flags(trt, BuildSettings(strongly_typed=False))),
    "weak_builder": attempt(lambda: [str(f) for f in builder_flags(trt, BuildSettings(strongly_typed=False))]),
    "weak_fp8_builder": attempt(lambda: [str(f) for f in builder_flags(trt, BuildSettings(strongly_typed=False, fp8=True))]),
}
if int(trt.__version__.split(".")[0]) < 11:
    out["strongly_typed_bit"] = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
print(json.dumps(out))
"""


def test_flags_follow_each_tensorrt_version(trt_versions):
    for version, bindings in sorted(trt_versions.items()):
        got = bindings.run_json(FLAGS)
        assert got["strong_builder"] == []
        if version.startswith("11."):
            assert got["strong_network"] == 0  # every 11.x network is strongly typed
            assert got["weak_network"].startswith("refused") and got["weak_builder"].startswith("refused")
        else:
            assert got["strong_network"] == got["strongly_typed_bit"] != 0
            assert got["weak_network"] == 0
            assert got["weak_builder"] == ["BuilderFlag.INT8", "BuilderFlag.FP16"]
            assert got["weak_fp8_builder"] == ["BuilderFlag.FP8", "BuilderFlag.FP16"]
        note_checked("build flags", version)
