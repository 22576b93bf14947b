"""The loss noise of one run behind the speedup's intervals, and where it came from.

    rule = NoiseRule(floor=3e-3, stated=None, measured={"adamw": measured_relative_noise(sensitivity)})
    noise, source = rule.of("adamw", loss)

`analysis.speedup_noise` (`stated`), when set, is every run's noise. Otherwise an optimizer's noise is the
relative std its own sensitivity analysis measured (from seeds, grid differences, or `analysis.noise` stated
there) times the loss, at least `floor` (default 3e-3, the original study's near-best tolerance). The source
says which of these won, so a reader can tell a measured interval from one resting on the floor.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

from ..results.documents import SensitivityResult

NOISE_FLOOR = 3e-3
STATED = "stated (analysis.speedup_noise)"
FLOOR = "floor"


@dataclass(frozen=True)
class RelativeNoise:
    """The relative std of one config's loss an optimizer's sensitivity analysis measured, and how."""

    relative_std: float
    source: str  # the analysis's own `noise.source`: seeds, differences, stated


def measured_relative_noise(sensitivity: SensitivityResult) -> RelativeNoise | None:
    """The relative noise a sensitivity analysis measured (None: not measured)."""
    noise = sensitivity.noise
    if noise is None or noise.relative_std is None:
        return None
    return RelativeNoise(noise.relative_std, noise.source or "unnamed")


Measured = RelativeNoise | float | None  # a bare number: a relative std whose source was not given


@dataclass(frozen=True)
class NoiseRule:
    """Which noise one run of an optimizer has at a loss: stated, measured, or the floor."""

    floor: float = NOISE_FLOOR
    stated: float | None = None
    measured: Mapping[str, Measured] = field(default_factory=dict)

    def of(self, optimizer: str, loss: float) -> tuple[float, str]:
        """(noise, source) of one run of `optimizer` whose loss is `loss`."""
        if self.stated is not None:
            return self.stated, STATED
        measured = self.measured.get(optimizer)
        if isinstance(measured, (int, float)):
            measured = RelativeNoise(float(measured), "unnamed")
        if measured is None:
            return self.floor, f"{FLOOR} (no noise measured for {optimizer})"
        value = measured.relative_std * loss
        if value <= self.floor:
            return self.floor, f"{FLOOR} (above the measured {value:.3g}, from {measured.source})"
        return value, f"measured from {measured.source} (relative std {measured.relative_std:.3g} x loss)"

    def value(self, optimizer: str, loss: float) -> float:
        return self.of(optimizer, loss)[0]
