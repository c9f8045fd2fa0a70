"""Tiny recordings for the training and evaluation tests (not a test module)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from spikereveal.kernels.packing import pack_frames

TINY_SPIKE = (16, 24)  # spike grid (h, w); the images are 4x
TINY_EXPOSURE_FRAMES = 13
TINY_GT_PER_EXPOSURE = 3
TINY_BSN = {"encoder_channels": 6, "decoder_channels": 8}  # BSN/SR configs small enough for quick tests
TINY_SR = {"residual_blocks": 2, "features": 8}


def simulate_tiny(out_dir: Path, seed: int = 1, exposures: int = 2) -> Path:
    """A simulated recording (spikes 16x24, images 64x96, 13-frame exposures, 3 gt frames each)."""
    from spikereveal.sim.config import preset
    from spikereveal.sim.simulate import simulate_recording

    height, width = TINY_SPIKE
    config = preset(
        "tiny", rgb_height=4 * height, rgb_width=4 * width, spike_height=height, spike_width=width,
        exposure_frames=TINY_EXPOSURE_FRAMES, k=TINY_GT_PER_EXPOSURE,
    )
    return simulate_recording(config, out_dir, seed=seed, exposures=exposures)


def write_recording(out_dir: Path, spike_shape=TINY_SPIKE, rgb_shape=None, exposures: int = 1,
                    exposure_frames: int = 13, margin: int = 12, ground_truth: bool = True, seed: int = 0) -> Path:
    """A random recording written with RecordingWriter (any RGB size, optional ground truth)."""
    from spikereveal.recording import RecordingWriter, RgbMeta, SpikeMeta

    rng = np.random.default_rng(seed)
    height, width = spike_shape
    rgb_height, rgb_width = rgb_shape or (4 * height, 4 * width)
    rate_hz = 1000.0
    period_ns = 1_000_000
    spike = SpikeMeta(height, width, rate_hz, 0, False, "little")
    with RecordingWriter(out_dir, spike, RgbMeta(rgb_height, rgb_width)) as writer:
        total = exposures * (exposure_frames + 2 * margin)
        writer.append_spikes(pack_frames(rng.random((total, height, width)) < 0.3))
        for e in range(exposures):
            first = e * (exposure_frames + 2 * margin) + margin
            start_ns, duration_ns = first * period_ns, (exposure_frames - 1) * period_ns
            writer.add_exposure(start_ns, duration_ns, rng.random((3, rgb_height, rgb_width)).astype(np.float32))
            if ground_truth:
                for t_ns in (start_ns, start_ns + duration_ns // 2, start_ns + duration_ns):
                    writer.add_ground_truth(e, t_ns, rng.random((3, rgb_height, rgb_width)).astype(np.float32))
    return out_dir
