"""Streamed, block-by-block, resumable calibration: the same record as the all-at-once one, bounded
memory, interruptions (paused, SIGINT, SIGKILL) that keep finished blocks, refused foreign checkpoints."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from calibration.calibrate import CalibrationConfig, CalibrationCost, CalibrationPaused, _capture, calibrate, site_blocks
from calibration.search import SearchSpace
from calibration.time_groups import TimeGroups
from tqdit_export.models import save_dit
from tqdit_export.quant import collect_calibration_data, denoising_loss, dit_sites

from reference_calibrate import reference_calibrate

# Small searches (fewer candidates and rows than the defaults) keep each run to seconds.
SMALL = dict(max_rows=64, weight_rows=128, search=SearchSpace(n=12, softmax_exponents=8))
CONFIGS = {
    "tqdit": dict(num_groups=2, rounds=1, **SMALL),
    "no-tgq": dict(num_groups=2, rounds=1, tgq=False, **SMALL),
    "percentile": dict(num_groups=2, method="percentile", percentile=99.0, **SMALL),
    "mse-cheap-forms-w4": dict(weight_bits=4, num_groups=2, rounds=2, method="mse", softmax_mrq="saturate",
                               gelu_mrq="shift", **SMALL),
}


@pytest.fixture(scope="module")
def model(make_tiny_dit):
    return make_tiny_dit()


@pytest.fixture(scope="module")
def data(model):
    return collect_calibration_data(model, TimeGroups.uniform(2), 3, steps=10, progress=False)


def _run(model, data, cfg, **kw):
    return calibrate(model, dit_sites(model), data, denoising_loss, cfg, TimeGroups.uniform(cfg.num_groups),
                     {"name": "tiny"}, False, **kw)


@pytest.mark.parametrize("name", CONFIGS)
def test_streamed_record_is_bit_identical_to_the_all_at_once_calibration(tmp_path, model, data, name):
    cfg = CalibrationConfig(**CONFIGS[name])
    ref = reference_calibrate(model, dit_sites(model), data, denoising_loss, cfg, TimeGroups.uniform(2),
                              {"name": "tiny"})
    streamed = _run(model, data, cfg)
    spilled = _run(model, data, cfg, work_dir=tmp_path / "work", recompute_blocks=False)
    assert list(streamed.tensors) == list(ref.tensors)
    assert streamed.fingerprint() == ref.fingerprint() == spilled.fingerprint()


def test_recomputed_blocks_keep_a_fraction_of_the_activations(model, data):
    """The pass keeps what the backward needs outside the recomputed blocks only."""
    sites = dit_sites(model)
    saved = {}
    for recompute in (False, True):
        total = [0]

        def pack(t, total=total):
            total[0] += t.numel() * t.element_size()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            _capture(model, sites, data[0], denoising_loss, CalibrationConfig(num_groups=2), torch.Generator(),
                     recompute=["blocks.0", "blocks.1"] if recompute else None)
        saved[recompute] = total[0]
    assert saved[True] < saved[False] / 2


def test_blocks_follow_the_module_tree(model):
    blocks = site_blocks(dit_sites(model))
    assert [b for b, _ in blocks] == ["blocks.0", "blocks.1", "final_layer"]
    assert len(blocks[0][1]) == 6


def test_a_paused_run_continues_to_the_same_record(tmp_path, model, data):
    cfg = CalibrationConfig(**CONFIGS["tqdit"])
    whole = _run(model, data, cfg)
    work = tmp_path / "work"
    with pytest.raises(CalibrationPaused) as paused:
        _run(model, data, cfg, work_dir=work, max_blocks=1)
    assert len(paused.value.cost.block_seconds) == 1
    assert sorted(p.name for p in (work / "blocks").iterdir()) == ["block-0000.safetensors"]
    # A half-written file of a killed run: never taken for a finished block, removed on the next start.
    (work / "blocks" / ".block-0001.safetensors.123.tmp").write_bytes(b"half")
    cost = CalibrationCost()
    resumed = _run(model, data, cfg, work_dir=work, cost=cost)
    assert resumed.fingerprint() == whole.fingerprint()
    assert cost.resumed_blocks == ["blocks.0"] and cost.resumed_groups == [0, 1]
    assert not list((work / "blocks").glob(".*"))
    report = cost.to_json()
    assert report["blocks_done"] == report["blocks_total"] == 3 and report["peak_rss_mib"] > 0


def test_a_checkpoint_of_another_run_is_refused(tmp_path, model, data):
    work = tmp_path / "work"
    with pytest.raises(CalibrationPaused):
        _run(model, data, CalibrationConfig(**CONFIGS["tqdit"]), work_dir=work, max_blocks=1)
    with pytest.raises(ValueError, match=r"another calibration \(it differs in config\.seed\)"):
        _run(model, data, CalibrationConfig(**CONFIGS["tqdit"], seed=1), work_dir=work)
    other_data = collect_calibration_data(model, TimeGroups.uniform(2), 3, seed=5, steps=10, progress=False)
    with pytest.raises(ValueError, match="data_sha256"):
        _run(model, other_data, CalibrationConfig(**CONFIGS["tqdit"]), work_dir=work)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not a calibration checkpoint.*notes.txt"):
        _run(model, data, CalibrationConfig(**CONFIGS["tqdit"]), work_dir=mine)


# The CLI, killed for real: a child process that sends itself a signal once block 1 is written.
_KILLER = """
import os, signal, sys
import calibration.calibrate as c
sig = getattr(signal, sys.argv[1])
# A process started in the background by a non-interactive shell inherits SIGINT ignored, and
# Python then keeps it ignored: restore Ctrl-C's handler, as an interactive terminal has it.
signal.signal(signal.SIGINT, signal.default_int_handler)
real = c.save_tensors_atomic
def save(path, *a, **k):
    real(path, *a, **k)
    if path.name == "block-0001.safetensors":
        os.kill(os.getpid(), sig)
c.save_tensors_atomic = save
from tqdit_export.cli import main
sys.exit(main(sys.argv[2:]))
"""


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, model):
    path = tmp_path_factory.mktemp("model") / "tiny.safetensors"
    save_dit(model, path)
    return path


def _cli(args, signal_name=None):
    cmd = [sys.executable, "-c", _KILLER, signal_name] if signal_name else [sys.executable, "-m", "tqdit_export.cli"]
    return subprocess.run(cmd + args, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})


@pytest.mark.parametrize("signal_name", ["SIGKILL", "SIGINT"])
def test_a_killed_cli_run_resumes_to_the_uninterrupted_record(tmp_path, checkpoint, signal_name):
    from calibration.record import CalibrationRecord

    base = ["calibrate", "--model", str(checkpoint), "--groups", "2", "--samples-per-group", "2",
            "--trajectory-steps", "10", "--rounds", "1", "--quiet"]
    whole = _cli(base + ["--out", str(tmp_path / "whole")])
    assert whole.returncode == 0, whole.stderr
    out = tmp_path / "rec"
    killed = _cli(base + ["--out", str(out)], signal_name)
    if signal_name == "SIGKILL":
        assert killed.returncode == -9
    else:
        assert killed.returncode == 130, killed.stderr
        assert "2 of 3 blocks are kept in" in killed.stderr and "--resume" in killed.stderr
    assert not out.exists()
    partial = out.with_name("rec.partial")
    assert sorted(p.name for p in (partial / "blocks").glob("block-*")) == ["block-0000.safetensors",
                                                                           "block-0001.safetensors"]
    resumed = _cli(base + ["--out", str(out), "--resume", "--cost-json", str(tmp_path / "cost.json")])
    assert resumed.returncode == 0, resumed.stderr
    assert not partial.exists()
    a, b = CalibrationRecord.load(out), CalibrationRecord.load(tmp_path / "whole")
    for r in (a, b):  # the one field that differs: how long each run took
        r.method.pop("wall_seconds")
    assert a.fingerprint() == b.fingerprint()
    cost = json.loads((tmp_path / "cost.json").read_text())
    assert cost["resumed_blocks"] == ["blocks.0", "blocks.1"] and cost["blocks_done"] == 3
    assert cost["trajectory_resumed"] is True and cost["groups"] == 2


def test_cli_refuses_resume_without_checkpoint_and_a_foreign_one(tmp_path, checkpoint):
    base = ["calibrate", "--model", str(checkpoint), "--groups", "2", "--samples-per-group", "2",
            "--trajectory-steps", "10", "--rounds", "1", "--quiet"]
    r = _cli(base + ["--out", str(tmp_path / "rec"), "--resume"])
    assert r.returncode == 2 and "no checkpoint to continue" in r.stderr
    killed = _cli(base + ["--out", str(tmp_path / "rec")], "SIGKILL")
    assert killed.returncode == -9
    other = _cli(base[:-1] + ["--seed", "3", "--quiet", "--out", str(tmp_path / "rec")])
    assert other.returncode == 2 and "another calibration" in other.stderr and "seed" in other.stderr
    assert (tmp_path / "rec.partial" / "run.json").is_file()  # the refused run changed nothing


# Made by the all-at-once calibration (commit ab0e9c7) on this project's AVX2 build machine:
# `calibrate_dit(dit-digits, CalibrationConfig(), samples_per_group=32)`, seed 0.
DIGITS_DEFAULT_FINGERPRINT = "c6855d3ea28b44c93d51792b1b5f42745c2afe8b3aadd9b615b3427b6cee4ad7"


@pytest.mark.slow
def test_bundled_model_default_record_is_the_one_before_streaming(tmp_path):
    """The bundled model at the defaults (W8A8, G=10, 32 samples/group, 3 rounds), spilled to a
    work folder, gives the record the old code gave (minutes on 2 cores; float kernels of another
    CPU kind may round differently: the fast tests compare with the reference implementation instead)."""
    from tqdit_export.models import resolve_model
    from tqdit_export.quant import calibrate_dit

    model = resolve_model("dit-digits").model
    record = calibrate_dit(model, CalibrationConfig(), samples_per_group=32, progress=False,
                           work_dir=tmp_path / "work")
    assert record.fingerprint() == DIGITS_DEFAULT_FINGERPRINT
