"""A tiny rig recording shared by the replay and driver tests (not collected as a test module)."""

import numpy as np

from spikereveal.kernels.packing import pack_frames
from spikereveal.kernels.timing import index_to_time
from spikereveal.recording import RecordingWriter, RgbMeta, SpikeMeta, open_recording

H, W = 8, 24
RATE_HZ = 1000.0
PERIOD_NS = 1_000_000
T0_NS = 7_000_000
FRAMES = 203  # not a multiple of the block size
EXPOSURE_STARTS = (5, 25, 60, 100, 150, 185)  # first and last have windows outside the data
EXPOSURE_FRAMES = 20


def tiny_rig_recording(path, seed: int):
    """Write random spikes (big-endian bits, rows flipped) and exposures at EXPOSURE_STARTS; open it leniently."""
    rng = np.random.default_rng(seed)
    spike = SpikeMeta(height=H, width=W, rate_hz=RATE_HZ, t0_ns=T0_NS, flip_rows=True, bit_order="big")
    with RecordingWriter(path, spike, RgbMeta(height=4 * H, width=4 * W)) as writer:
        writer.append_spikes(pack_frames(rng.random((FRAMES, H, W)) < 0.25))
        for first in EXPOSURE_STARTS:
            image = rng.integers(0, 256, (4 * H, 4 * W, 3), dtype=np.uint8)
            writer.add_exposure(int(index_to_time(first, T0_NS, RATE_HZ)), EXPOSURE_FRAMES * PERIOD_NS, image)
    return open_recording(path, strict=False)
