"""The heap settings per calibration phase (calibration.heap): the capture phase gives freed
blocks back to the OS at once, the compute phase keeps them for reuse and trims at the switch."""
import platform

import pytest

from calibration import heap

pytestmark = pytest.mark.skipif(platform.system() != "Linux" or not platform.libc_ver()[0] == "glibc",
                                reason="glibc's mallopt is Linux-only")


def _rss_mib() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmRSS:"))


def _churn(blocks: int = 24, size: int = 8 * 2**20) -> float:
    """RSS growth (MiB) left after allocating, touching and freeing `blocks` blocks of `size` bytes."""
    before = _rss_mib()
    held = [bytearray(size) for _ in range(blocks)]  # zero-filled: every page touched
    del held
    return _rss_mib() - before


def test_nothing_changes_unless_managed(monkeypatch):
    monkeypatch.setattr(heap, "_managed", False)
    assert heap.phase("capture") is False


def test_capture_returns_freed_blocks_and_compute_trims_what_it_kept(monkeypatch):
    monkeypatch.setattr(heap, "_managed", False)
    assert heap.manage() is True
    try:
        heap.phase("capture")
        assert _churn() < 32  # 192 MiB allocated and freed: back to the OS block by block
        heap.phase("compute")
        before = _rss_mib()
        held = [bytearray(8 * 2**20) for _ in range(6)]
        del held
        kept = _rss_mib() - before
        assert kept > 40  # 8 MiB blocks stay in the heap below the 32 MiB threshold, for reuse...
        heap.phase("compute")  # ...until the switch at the end of a capture phase trims the heap
        assert _rss_mib() - before < 16
    finally:
        heap.phase("compute")
