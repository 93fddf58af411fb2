"""Q/DQ ONNX export of calibrated DiTs, the TensorRT-conformance linter and the plugin reference.

Names load lazily, so the linter and `plugin_ref` (onnx + numpy) import without torch.
"""
from importlib import import_module

_EXPORTS = {
    "LAYOUTS": "export", "MANIFEST": "export", "SingleLayoutDiT": "export", "PluginLayoutDiT": "export",
    "export_onnx": "export", "export_dit": "export", "qdq_model": "export",
    "Finding": "lint", "LintError": "lint", "lint_file": "lint", "lint_model": "lint",
    "expand_plugins": "plugin_ref", "plugin_nodes": "plugin_ref",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
