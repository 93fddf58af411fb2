"""Torch-free inference: numpy sampler + TensorRT engines (pycuda) or ONNX Runtime, as a Jetson runs it.

Imports numpy, onnx/onnxruntime or tensorrt/pycuda only; `tests/edge` checks that importing
and sampling never loads torch. JetPack 6 ships TensorRT 10.3: engines for it are built
weakly typed with the INT8 flag (`tqdit build --target orin`), DLA is not assumed.

    python -m tqdit_export.edge --engines out/build --num 20 --out samples.npz
"""
from ..diffusion.schedule import SamplerConfig
from .ort_runtime import OrtDenoiser, make_session
from ..diffusion.loop import sample_numpy

__all__ = ["OrtDenoiser", "make_session", "SamplerConfig", "sample_numpy"]
