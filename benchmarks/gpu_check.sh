#!/usr/bin/env bash
# What a session with a GPU measures, in under 10 minutes, with PyTorch only (no TensorRT there):
#   1. calibration of DiT-XL/2 (random weights), W8A8 TQ-DiT, G=10 x 32 samples/group, --device cuda:
#      wall time and peak GPU memory -> benchmarks/results/gpu_calibration.{json,md}
#      (8 samples/group instead when 32 does not finish in its time slot; the table says which)
#   2. torch sampling speed FP32 vs FP16, DiT-XL/2 and DiT-B/2 -> benchmarks/results/gpu_sampling.{json,md}
# plus the machine (nvidia-smi, torch) -> benchmarks/results/gpu_machine.txt.
#     bash benchmarks/gpu_check.sh            # from the repository root, in its .venv or any env with torch+CUDA
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
OUT=benchmarks/results
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

"$PY" - <<'PYEOF'
import torch, sys
if not torch.cuda.is_available():
    sys.exit(f"gpu_check: this torch ({torch.__version__}) sees no CUDA GPU; nothing to measure")
PYEOF

{ date -u; nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv 2>/dev/null || true
  "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))"
} > "$OUT/gpu_machine.txt"

if ! timeout 330 "$PY" benchmarks/calibration_cost.py --model DiT-XL/2 --device cuda --groups 10 \
        --samples-per-group 32 --out "$OUT/gpu_calibration"; then
    echo "gpu_check: 32 samples/group did not finish in 330 s; measuring 8 samples/group" >&2
    timeout 200 "$PY" benchmarks/calibration_cost.py --model DiT-XL/2 --device cuda --groups 10 \
        --samples-per-group 8 --out "$OUT/gpu_calibration" || echo "gpu_check: calibration at 8 samples/group failed too" >&2
fi
timeout 120 "$PY" benchmarks/gpu_sampling.py --models DiT-XL/2 DiT-B/2 --batch 16 --repeats 20 --steps 50 \
    --out "$OUT/gpu_sampling"
echo "gpu_check: results in $OUT/gpu_*.{json,md} and $OUT/gpu_machine.txt"
