"""The `tensorrt.plugin` (quickly deployable plugin, TensorRT >= 10.7) variant of TimeGroupQuantize.

    import trt_plugins.python_plugin as p; p.register()   # before parsing the plugin-layout ONNX

Same name, namespace, fields and arithmetic as the C++ `IPluginV3` in `csrc/`; register
one of the two in a process, not both. The implementation runs with torch on the
engine's CUDA stream; engines that embed it need this registration at load time too.

No `from __future__ import annotations` here: `tensorrt.plugin` checks the annotations of the
decorated functions with inspect.signature and issubclass, and string annotations make it
raise (10.13: "issubclass() arg 1 must be a class"; 11.x: "TensorDescs args should come
first"). tests/trt_bindings/test_python_plugin.py registers it with the real module.
"""

from .reference import PLUGIN_NAME, PLUGIN_NAMESPACE, check_table, code_range

_registered = False
PLUGIN_ID = f"{PLUGIN_NAMESPACE}::{PLUGIN_NAME}"


def register() -> None:
    """Register the plugin with TensorRT's plugin registry (idempotent)."""
    global _registered
    if _registered:
        return
    try:
        import numpy as np
        import numpy.typing as npt
        import tensorrt as trt
        import tensorrt.plugin as trtp
    except ImportError as err:
        raise RuntimeError("the Python TimeGroupQuantize plugin needs TensorRT >= 10.7 with tensorrt.plugin "
                           "(pip install 'tqdit-export[trt-cu12]' or '[trt-cu13]'), or build the C++ plugin in trt_plugins/csrc") from err
    from typing import List, Tuple

    @trtp.register(PLUGIN_ID)
    def _describe(x: trtp.TensorDesc, time_group: trtp.TensorDesc, scales: npt.NDArray[np.float32],
                  bits: int) -> trtp.TensorDesc:
        check_table(scales, bits)
        return trtp.from_shape_expr(x.shape_expr, dtype=trt.int8)

    @trtp.autotune(PLUGIN_ID)
    def _formats(x: trtp.TensorDesc, time_group: trtp.TensorDesc, scales: npt.NDArray[np.float32], bits: int,
                 outputs: Tuple[trtp.TensorDesc]) -> List[trtp.AutoTuneCombination]:
        return [trtp.AutoTuneCombination("FP32, INT32, INT8", "LINEAR")]

    @trtp.impl(PLUGIN_ID)
    def _run(x: trtp.Tensor, time_group: trtp.Tensor, scales: npt.NDArray[np.float32], bits: int,
             outputs: Tuple[trtp.Tensor], stream: int) -> None:
        import torch

        lo, hi = code_range(bits)
        with torch.cuda.stream(torch.cuda.ExternalStream(stream)):
            xt = torch.as_tensor(x, device="cuda")
            table = torch.as_tensor(np.ascontiguousarray(scales, dtype=np.float32), device="cuda")
            g = torch.as_tensor(time_group, device="cuda").reshape(1).long().clamp(0, table.numel() - 1)
            codes = torch.clamp(torch.round(xt / table[g]), lo, hi).to(torch.int8)  # round: half to even, as rintf
            torch.as_tensor(outputs[0], device="cuda").copy_(codes)

    _registered = True
