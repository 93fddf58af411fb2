"""Q/DQ ONNX export of calibrated DiTs."""
from .export import LAYOUTS, MANIFEST, SingleLayoutDiT, export_onnx, export_dit, qdq_model
from .lint import Finding, LintError, lint_file, lint_model

__all__ = ["LAYOUTS", "MANIFEST", "SingleLayoutDiT", "export_onnx", "export_dit", "qdq_model", "Finding", "LintError",
           "lint_file", "lint_model"]
