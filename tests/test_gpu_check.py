"""benchmarks/gpu_check.sh and its sampling benchmark run as written (on the CPU here, tiny model):
a session that gets a GPU must not spend its minutes on a broken script."""
import json
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def test_gpu_check_script_parses_and_refuses_without_a_gpu():
    subprocess.run(["bash", "-n", str(REPO / "benchmarks" / "gpu_check.sh")], check=True)
    if torch.cuda.is_available():
        return
    proc = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_check.sh")], capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "PYTHON": sys.executable})
    assert proc.returncode != 0 and "sees no CUDA GPU" in proc.stderr


def test_gpu_sampling_benchmark_writes_its_table(tmp_path):
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import gpu_sampling
    finally:
        sys.path.pop(0)
    gpu_sampling.main(["--device", "cpu", "--models", "DiT-tiny", "--repeats", "1", "--batch", "1", "--steps", "2",
                       "--out", str(tmp_path / "gpu_sampling")])
    rows = json.loads((tmp_path / "gpu_sampling.json").read_text())["rows"]
    assert [r["precision"] for r in rows] == ["fp32", "bf16"]
    assert all(r["ms_per_call"] > 0 and r["rows_per_call"] == 2 for r in rows)
    assert "| DiT-tiny (random weights) | fp32 | cpu |" in (tmp_path / "gpu_sampling.md").read_text()
