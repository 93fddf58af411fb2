"""TensorRT plugins of tqdit-export: `TimeGroupQuantize` switches quantization scales by time group.

One engine serves every time group: the plugin reads the step's group index (int32, on
the device) and quantizes its input with that group's scale. Three implementations of one
function, kept identical by tests:
- `csrc/` C++/CUDA `IPluginV3` (CMake; TensorRT loads `libtqdit_trt_plugins.so`);
- `python_plugin` the `tensorrt.plugin` (quickly deployable plugin) variant;
- `reference` the numpy CPU reference (and `csrc/cpuReference.cpp`, the C++ kernel arithmetic on the CPU).
Nothing here imports torch or tensorrt at module import.
"""
from .reference import PLUGIN_NAME, PLUGIN_NAMESPACE, PLUGIN_VERSION, time_group_quantize

__all__ = ["PLUGIN_NAME", "PLUGIN_NAMESPACE", "PLUGIN_VERSION", "time_group_quantize"]
