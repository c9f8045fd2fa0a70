"""Hybrid-rig simulator: spike streams, blurry RGB exposures and ground truth from images.

    from spikereveal.sim import preset, simulate_recording
    simulate_recording(preset("tiny"), "out/tiny", seed=0, exposures=4)
"""

from spikereveal.sim.config import (
    MOTION_FAMILIES,
    PRESETS,
    MotionConfig,
    SensorConfig,
    SimConfig,
    motion_family,
    preset,
    scaled_motion,
    scaled_sensor,
)
from spikereveal.sim.scenes import SCENE_FAMILIES, SKIMAGE_SPLITS
from spikereveal.sim.simulate import TRUTH_FILE, plan_layout, plan_shots, simulate_recording

__all__ = [
    "MOTION_FAMILIES",
    "PRESETS",
    "SCENE_FAMILIES",
    "SKIMAGE_SPLITS",
    "MotionConfig",
    "SensorConfig",
    "SimConfig",
    "motion_family",
    "preset",
    "scaled_motion",
    "scaled_sensor",
    "TRUTH_FILE",
    "plan_layout",
    "plan_shots",
    "simulate_recording",
]
