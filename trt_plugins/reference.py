"""CPU reference of the TimeGroupQuantize plugin (numpy only: the edge runtime uses it too)."""
from __future__ import annotations

import numpy as np

PLUGIN_NAME = "TimeGroupQuantize"
PLUGIN_NAMESPACE = "tqdit"
PLUGIN_VERSION = "1"
MAX_TIME_GROUPS = 256  # csrc/timeGroupQuantize.h kMaxTimeGroups: the table is a kernel argument


def check_table(scales: np.ndarray, bits: int) -> np.ndarray:
    """The scale table as float32, or a ValueError that says what is wrong with it."""
    table = np.asarray(scales, dtype=np.float32).reshape(-1)
    if not 1 <= table.size <= MAX_TIME_GROUPS:
        raise ValueError(f"scales: {table.size} entries; the plugin holds 1..{MAX_TIME_GROUPS} (one per time group)")
    if not (np.isfinite(table).all() and (table > 0).all()):
        raise ValueError("scales: every scale must be finite and > 0")
    if not 2 <= int(bits) <= 8:
        raise ValueError(f"bits={bits}: the plugin emits int8 codes of 2..8 bits")
    return table


def code_range(bits: int) -> tuple[int, int]:
    """Signed range of a `bits`-wide code, as calibration.quantizers.qrange (numpy side, no torch)."""
    return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1


def time_group_quantize(x: np.ndarray, scales: np.ndarray, time_group: int, bits: int) -> np.ndarray:
    """int8 codes clamp(rint(x / scales[g]), -2^(b-1), 2^(b-1)-1), g clamped into the table as the kernel does."""
    table = check_table(scales, bits)
    g = min(max(int(time_group), 0), table.size - 1)
    lo, hi = code_range(bits)
    x = np.asarray(x, dtype=np.float32)
    return np.clip(np.rint(x / table[g]), lo, hi).astype(np.int8)
