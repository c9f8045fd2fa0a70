"""The one error calibration raises when a fit cannot be trusted (the message says why and what to do)."""

from __future__ import annotations

from spikereveal.errors import SpikeRevealError


class CalibrationError(SpikeRevealError, ValueError):
    """A calibration was refused: the data cannot support a trustworthy estimate."""
