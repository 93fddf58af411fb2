"""Time-Grouping Quantization (TGQ): contiguous groups on the training-timestep axis.

Groups are defined on [0, T) of the *training* schedule (T = 1000 for DiT), not on a
sampler's step index, so one calibration serves DDPM 250/100/50 and DDIM at any step
count: a respaced sampler maps each step to its training timestep, then to the group.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class TimeGroups:
    """G contiguous groups; group g covers training timesteps [edges[g], edges[g+1])."""

    edges: tuple[int, ...]

    def __post_init__(self) -> None:
        e = self.edges
        if len(e) < 2 or e[0] != 0 or any(b <= a for a, b in zip(e, e[1:])):
            raise ValueError(f"time-group edges {e} must start at 0 and increase strictly")

    @classmethod
    def uniform(cls, num_groups: int, num_timesteps: int = 1000) -> "TimeGroups":
        """G equal groups (the last may be one step longer when G does not divide T)."""
        if not 1 <= num_groups <= num_timesteps:
            raise ValueError(f"num_groups={num_groups} must be in 1..{num_timesteps}")
        return cls(tuple(round(g * num_timesteps / num_groups) for g in range(num_groups + 1)))

    @property
    def num_groups(self) -> int:
        return len(self.edges) - 1

    @property
    def num_timesteps(self) -> int:
        return self.edges[-1]

    def group_of(self, t: Any) -> int:
        """The group of training timestep `t`: an int, or a torch tensor / numpy array whose entries
        share one group. (No torch import: the torch-free edge runtime uses this too.)"""
        if hasattr(t, "min"):
            lo, hi = int(t.min()), int(t.max())
            g = self.group_of(lo)
            if self.group_of(hi) != g:
                raise ValueError(f"timesteps {lo}..{hi} span several time groups; call once per group")
            return g
        if not 0 <= t < self.num_timesteps:
            raise ValueError(f"timestep {t} is outside [0, {self.num_timesteps})")
        for g in range(self.num_groups):
            if t < self.edges[g + 1]:
                return g
        raise AssertionError("unreachable")

    def timestep_range(self, g: int) -> tuple[int, int]:
        """[start, end) training timesteps of group g."""
        return self.edges[g], self.edges[g + 1]
