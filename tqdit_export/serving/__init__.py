"""Serving with NVIDIA Triton Inference Server.

- `repository`: writes a Triton model repository from an export folder (ONNX Runtime on the
  CPU, through Python-backend denoiser models) or a `tqdit build` folder (TensorRT plans):
  one denoiser model per time group (or one for the single / plugin layouts) and the
  `tqdit_sampler` model (Python backend, business-logic scripting) that runs the sampling
  loop and calls the denoiser of each step's time group; `lint_repository` checks every
  config.pbtxt against Triton's ModelConfig schema.
- `server`: finds `tritonserver` (the system one, else the one in the nvidia-pytriton
  wheel), starts it on localhost ports, waits until it is ready, stops it.
- `triton_sampler`, `triton_ort_denoiser`: the Python-backend models themselves (each
  repository model's model.py imports one of them).
"""
