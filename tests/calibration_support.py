"""Simulated rigs with known imperfections for the calibration tests (small geometries, seconds each)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from spikereveal.sim import TRUTH_FILE, MotionConfig, preset, simulate_recording

# canonical 384x512 (spikes 96x128) -> an RGB camera of 400x300, slightly rotated, shifted, in perspective
TRUE_HOMOGRAPHY = np.array([[0.78, 0.02, 5.0], [-0.015, 0.76, -3.0], [2e-5, -1e-5, 1.0]])
RIG = {"spike_height": 96, "spike_width": 128, "rgb_height": 300, "rgb_width": 400,
       "rgb_homography": tuple(TRUE_HOMOGRAPHY.ravel()), "exposure_frames": 65}


def truth(path: Path) -> dict:
    return json.loads((Path(path) / TRUTH_FILE).read_text())


def misaligned_recording(path: Path, exposures: int = 4, seed: int = 1, **changes) -> Path:
    """Ordinary textured footage from an RGB camera that is not 4x and aligned."""
    return simulate_recording(preset("tiny", **{**RIG, **changes}), path, seed=seed, exposures=exposures)


def checkerboard_recording(path: Path, exposures: int = 3, seed: int = 1) -> Path:
    """A still checkerboard (9x6 squares: 8x5 inner corners) seen by the misaligned rig."""
    config = preset("tiny", **RIG, scene="checkerboard", motion=MotionConfig.static())
    return simulate_recording(config, path, seed=seed, exposures=exposures)


def flat_recording(path: Path, exposures: int = 3) -> Path:
    """A uniform gray scene: no texture to align on and nothing that moves."""
    flat = np.full((200, 300, 3), 128, np.uint8)
    return simulate_recording(preset("tiny", **RIG), path, seed=2, exposures=exposures, scenes=[flat])


def clock_recording(path: Path, offset_ns: int, drift_ppm: float, exposures: int = 12, seed: int = 3) -> Path:
    """tiny preset (canonical RGB) with moving scenes, exposure timestamps on an offset, drifting clock."""
    config = preset("tiny", clock_offset_ns=offset_ns, clock_drift_ppm=drift_ppm)
    return simulate_recording(config, path, seed=seed, exposures=exposures)


def dark_recording(path: Path, hot_fraction: float = 0.005, hot_rate: float = 0.1, frames_per_exposure: int = 200,
                   exposures: int = 6, **sensor) -> Path:
    """Lens cap: dark current and hot pixels only."""
    config = preset("tiny", scene="dark", exposure_frames=frames_per_exposure, gap_frames=100,
                    sensor={"hot_pixel_fraction": hot_fraction, "hot_pixel_rate": hot_rate, **sensor})
    return simulate_recording(config, path, seed=4, exposures=exposures)
