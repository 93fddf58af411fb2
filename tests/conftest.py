"""Shared fixtures: tiny DiTs with every weight non-zero.

DiT zero-initialises adaLN and the output layer, so a fresh model outputs zeros; tests
that compare outputs need weights that make every path matter.
"""
import pytest
import torch

from tqdit_export.models import DiT, dit_config


def pytest_terminal_summary(terminalreporter) -> None:
    """Which CPU kind ran the tests (AVX2 only, or AVX-512 VNNI, whose integer kernels differ), so a
    log of a failure says which kind it came from (printed under -q too, unlike a report header)."""
    from tqdit_export.hardware import cpu_description

    cpu = cpu_description()
    vnni = bool(cpu["flags"].get("avx512_vnni") or cpu["flags"].get("avx_vnni"))
    terminalreporter.write_line(f"CPU: {cpu['name']} ({cpu['kind']}; VNNI {'yes' if vnni else 'no'})")


def _random_tiny_dit(seed: int = 0, config: str = "DiT-tiny") -> DiT:
    torch.manual_seed(seed)
    model = DiT(dit_config(config))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name != "pos_embed":
                p.add_(torch.randn_like(p) * 0.05)
    return model.eval()


@pytest.fixture(scope="session")
def make_tiny_dit():
    """Factory: make_tiny_dit(seed=0, config="DiT-tiny") -> a DiT with perturbed weights."""
    return _random_tiny_dit
