"""tqdit-export: TQ-DiT post-training quantization of Diffusion Transformers, deployed as
explicit Q/DQ ONNX graphs and INT8 engines.

Pipeline: calibrate (`calibration/`) -> record -> export (`tqdit_export.onnx`) -> engine
(`tqdit_export.engines`) -> sample (`tqdit_export.diffusion`) -> evaluate (`tqdit_export.eval`).
"""
__version__ = "0.1.0"
