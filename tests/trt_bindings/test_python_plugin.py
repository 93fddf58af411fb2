"""The Python TimeGroupQuantize plugin registers with the real `tensorrt.plugin` (10.13, 11.x).

Review defect 1: `from __future__ import annotations` turned the plugin's annotations into
strings, and `tensorrt.plugin`'s decorators, which check them with inspect.signature and
issubclass, raised (10.13: "issubclass() arg 1 must be a class"; 11.4: "TensorDescs args should
come first"). Everything below runs the real decorators; only the registry they hand the
creator to is replaced, because the stub libnvinfer has none (getPluginRegistry returns NULL):
the creator TensorRT would receive is recorded and checked instead.
"""
from __future__ import annotations

import pytest

from trt_wheels import note_checked

REGISTER = r"""
import json
import tensorrt as trt
received = []

class Registry:  # stands in for libnvinfer's registry only: the stub library has none
    def register_creator(self, creator, namespace):
        received.append((creator, namespace))
        return True

    def get_creator(self, name, version, namespace):  # what was registered under that name
        return next(c for c, ns in received if c.name == name and c.plugin_version == version and ns == namespace)

trt.get_plugin_registry = lambda: Registry()
import trt_plugins.python_plugin as plugin
plugin.register()
plugin.register()  # idempotent
creator, namespace = received[0]
fields = [(f.name, str(f.type)) for f in creator.field_names]
print(json.dumps({"count": len(received), "name": creator.name, "namespace": namespace,
                  "version": creator.plugin_version, "fields": fields}))
"""


def test_python_plugin_registers_with_the_real_tensorrt_plugin(trt_versions):
    from trt_plugins.reference import PLUGIN_NAME, PLUGIN_NAMESPACE

    with_plugin = {v: b for v, b in trt_versions.items() if tuple(map(int, v.split(".")[:2])) >= (10, 7)}
    if not with_plugin:
        pytest.skip("no bindings of TensorRT >= 10.7 (the first with tensorrt.plugin)")
    for version, bindings in sorted(with_plugin.items()):
        got = bindings.run_json(REGISTER)
        assert got["count"] == 1, version
        assert (got["name"], got["namespace"]) == (PLUGIN_NAME, PLUGIN_NAMESPACE), version
        names = [n for n, _ in got["fields"]]
        assert names == ["scales", "bits"], (version, got["fields"])
        note_checked("tensorrt.plugin registration", version)


def test_without_tensorrt_plugin_the_error_names_the_alternatives(trt_versions):
    old = {v: b for v, b in trt_versions.items() if tuple(map(int, v.split(".")[:2])) < (10, 7)}
    if not old:
        pytest.skip("no bindings older than TensorRT 10.7")
    for version, bindings in old.items():
        proc = bindings.run("import trt_plugins.python_plugin as p; p.register()")
        assert proc.returncode != 0
        assert "TensorRT >= 10.7" in proc.stderr and "trt_plugins/csrc" in proc.stderr, proc.stderr[-2000:]
        note_checked("tensorrt.plugin absent: clear error", version)
