"""glibc's heap per calibration phase: memory back to the OS while capturing, speed elsewhere.

glibc raises its mmap threshold each time a large block is freed (up to 32 MiB), so the
activations of a capture pass, once freed, stay in the heap: one DiT-S/2 pass (n = 8) peaks at
2252 MiB resident with the default and at 762 MiB with a fixed 128 KiB threshold
(`benchmarks/calibration_memory.py`). But a small threshold maps and faults in every block above
it afresh. Measured on DiT-S/2 (10 groups, n = 8, 2 threads), with 128 KiB for the whole run:
- the first block's search took 43.7 s a round instead of 13.8 s;
- the denoiser call took 2.6 s instead of 1.9 s;
- a capture pass took 12-13 s instead of 9-10 s.

So the threshold is small only for the capture passes, whose activations set the peak. The rest
runs at glibc's own ceiling (32 MiB, fixed), with the heap trimmed at the switch. The rest is the
trajectories and the search, which hold little beyond the model.

A process-wide setting: nothing changes unless `manage()` was called (the `tqdit calibrate`
command does). Only on Linux with glibc; elsewhere every call is a no-op.
"""
from __future__ import annotations

import ctypes
import ctypes.util
from typing import Literal

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
THRESHOLDS = {"capture": (128 * 1024, 128 * 1024), "compute": (32 * 2**20, 64 * 2**20)}  # (mmap, trim) bytes

_libc = None
_managed = False


def _glibc():
    global _libc
    if _libc is None:
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            _libc = libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else False
        except OSError:
            _libc = False
    return _libc


def manage() -> bool:
    """Let the calibration set the heap per phase from now on, starting with "compute".
    True if glibc took the settings."""
    global _managed
    _managed = bool(_glibc())
    return phase("compute") if _managed else False


def phase(name: Literal["capture", "compute"]) -> bool:
    """The heap settings of phase `name` (a no-op unless `manage()` was called); True if set.
    "compute" also gives the freed heap back (malloc_trim), which is what a capture pass left."""
    if not _managed:
        return False
    libc = _glibc()
    mmap_threshold, trim_threshold = THRESHOLDS[name]
    ok = bool(libc.mallopt(M_MMAP_THRESHOLD, mmap_threshold)) and bool(libc.mallopt(M_TRIM_THRESHOLD, trim_threshold))
    if name == "compute":
        libc.malloc_trim(0)
    return ok
