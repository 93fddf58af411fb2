"""The training schedule and resumption of the bundled DiT's training script (no real training)."""
import argparse

import pytest
import torch

from tqdit_export.models import read_dit_metadata
from tqdit_export.training.train_dit import learning_rate, main


def test_schedule_warms_up_holds_and_decays_to_ten_percent():
    args = argparse.Namespace(lr=1.0, warmup=10, steps=100, decay_steps=20)
    assert learning_rate(0, args) == pytest.approx(0.1)
    assert learning_rate(9, args) == 1.0 and learning_rate(79, args) == 1.0
    assert learning_rate(80, args) == 1.0 and learning_rate(90, args) == pytest.approx(0.55)
    assert learning_rate(100, args) == pytest.approx(0.1)


def test_a_resumed_run_equals_an_uninterrupted_one(tmp_path):
    common = ["--config", "DiT-tiny", "--batch", "8", "--warmup", "2", "--decay-steps", "2", "--save-every", "2"]
    main(common + ["--steps", "4", "--state", str(tmp_path / "a.pt"), "--out", str(tmp_path / "a.safetensors")])
    main(common + ["--steps", "4", "--state", str(tmp_path / "b.pt"), "--out", str(tmp_path / "b.safetensors"),
                   "--max-minutes", "0"])  # stops after its first step
    assert torch.load(tmp_path / "b.pt", weights_only=False)["step"] == 1
    main(common + ["--steps", "4", "--state", str(tmp_path / "b.pt"), "--out", str(tmp_path / "b.safetensors")])
    a, b = torch.load(tmp_path / "a.pt", weights_only=False), torch.load(tmp_path / "b.pt", weights_only=False)
    for key in a["ema"]:
        torch.testing.assert_close(a["ema"][key], b["ema"][key], rtol=1e-6, atol=1e-7)
    _, info = read_dit_metadata(tmp_path / "b.safetensors")
    assert info["steps"] == 4 and info["hardware"]


def test_max_minutes_counts_from_the_start_of_the_run_not_from_the_last_save(tmp_path, monkeypatch):
    # A clock that advances 1 s per reading; a save every step must not restart the --max-minutes budget.
    clock = iter(range(1_000_000))
    monkeypatch.setattr("tqdit_export.training.train_dit.time.time", lambda: float(next(clock)))
    main(["--config", "DiT-tiny", "--batch", "2", "--steps", "50", "--save-every", "1", "--max-minutes", "0.1",
          "--state", str(tmp_path / "s.pt"), "--out", str(tmp_path / "s.safetensors")])
    step = torch.load(tmp_path / "s.pt", weights_only=False)["step"]
    assert 1 <= step < 10  # 6 s of fake clock: a few steps, never the whole run
