"""Hybrid-rig simulator: spike streams, blurry RGB exposures and ground truth from images.

    from spikereveal.sim import preset, simulate_recording
    simulate_recording(preset("tiny"), "out/tiny", seed=0, exposures=4)
"""

from spikereveal.sim.config import PRESETS, MotionConfig, SensorConfig, SimConfig, preset
from spikereveal.sim.simulate import TRUTH_FILE, plan_layout, plan_shots, simulate_recording

__all__ = [
    "PRESETS",
    "MotionConfig",
    "SensorConfig",
    "SimConfig",
    "preset",
    "TRUTH_FILE",
    "plan_layout",
    "plan_shots",
    "simulate_recording",
]
