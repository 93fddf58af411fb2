"""Q/DQ ONNX export of calibrated DiTs."""
from .export import MANIFEST, cpu_has_vnni, export_onnx, export_per_group, qdq_model
from .lint import Finding, LintError, lint_file, lint_model

__all__ = ["MANIFEST", "cpu_has_vnni", "export_onnx", "export_per_group", "qdq_model", "Finding", "LintError",
           "lint_file", "lint_model"]
