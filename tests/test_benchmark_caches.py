"""The quality benchmark's cache folder is tied to the weights it was filled with."""
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from quality import claim_workdir  # noqa: E402


def test_a_cache_folder_of_other_weights_is_refused_and_left_as_it_was(tmp_path, make_tiny_dit):
    workdir = tmp_path / "quality"
    first = claim_workdir(workdir, make_tiny_dit(seed=0), "tiny")
    assert claim_workdir(workdir, make_tiny_dit(seed=0), "tiny") == first  # same weights: reused
    (workdir / "fp_ddpm100_seed0_n500.npz").write_bytes(b"cached samples")
    with pytest.raises(SystemExit, match=f"{workdir}.*other tiny weights.*another --workdir"):
        claim_workdir(workdir, make_tiny_dit(seed=1), "tiny")
    assert (workdir / "weights_sha256.txt").read_text().strip() == first
    assert (workdir / "fp_ddpm100_seed0_n500.npz").read_bytes() == b"cached samples"
