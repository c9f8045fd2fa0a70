"""Shared builders for the engines tests: a seeded random LDN checkpoint and tiny recordings."""

from __future__ import annotations

from pathlib import Path

import numpy as np

SPIKE_H, SPIKE_W = 16, 24  # network grid 64 x 96
IMAGE_H, IMAGE_W = 4 * SPIKE_H, 4 * SPIKE_W
RATE_HZ = 1000.0
PERIOD_NS = 1_000_000
EXPOSURE_FRAMES = 21
MARGIN = 10
GAP = 30  # spike frames from one exposure start to the next


def random_ldn(seed: int = 0):
    import torch

    from spikereveal.engines.ldn import LDN

    torch.manual_seed(seed)
    model = LDN().eval()
    with torch.no_grad():  # larger output bias: sharp values spread over [0, 1] rather than hugging 0
        model.pred.bias.add_(0.4)
    return model


def save_random_checkpoint(path: Path, seed: int = 0) -> Path:
    from spikereveal.engines.checkpoint import save_checkpoint

    model = random_ldn(seed)
    return save_checkpoint(path, "ldn", model, model.config, source=f"random seed {seed} (tests)")


def frames_needed(exposures: int) -> int:
    return MARGIN + (exposures - 1) * GAP + EXPOSURE_FRAMES + MARGIN


def make_recording(path: Path, exposures: int = 3, frames: int | None = None, seed: int = 0,
                   trailing_bytes: int = 0, rgb_scale: int = 1) -> Path:
    """A random recording; ``frames`` fewer than needed leaves the last exposures' windows incomplete.

    ``rgb_scale`` > 1: the RGB camera has that many times the network grid's pixels (needs a calibration).
    """
    from spikereveal.kernels.packing import pack_frames
    from spikereveal.recording import RecordingWriter, RgbMeta, SpikeMeta

    rng = np.random.default_rng(seed)
    frames = frames_needed(exposures) if frames is None else frames
    spike = SpikeMeta(height=SPIKE_H, width=SPIKE_W, rate_hz=RATE_HZ, t0_ns=0, flip_rows=False, bit_order="little")
    with RecordingWriter(path, spike, RgbMeta(IMAGE_H * rgb_scale, IMAGE_W * rgb_scale)) as writer:
        writer.append_spikes(pack_frames(rng.random((frames, SPIKE_H, SPIKE_W)) < 0.25))
        for i in range(exposures):
            start = (MARGIN + i * GAP) * PERIOD_NS
            image = rng.random((3, IMAGE_H * rgb_scale, IMAGE_W * rgb_scale)).astype(np.float32)
            writer.add_exposure(start, (EXPOSURE_FRAMES - 1) * PERIOD_NS, image)
    if trailing_bytes:
        with open(path / "spikes.dat", "ab") as stream:
            stream.write(b"\x01" * trailing_bytes)
    return path


def reference_spike_windows(packed: np.ndarray, centers, first_index: int, window: int = 21) -> np.ndarray:
    """The LDN input of packed SPIKE_H x SPIKE_W frames, cut by the slow twin (``twins.reference_ldn_input``):
    the ``window`` frames centred at each centre, as float32."""
    from spikereveal.kernels.packing import unpack_frames
    from twins import reference_ldn_input

    return reference_ldn_input(unpack_frames(packed, SPIKE_H, SPIKE_W), centers, window, first_index)


def psnr(a: np.ndarray, b: np.ndarray, peak: float = 1.0) -> float:
    mse = float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(peak * peak / mse)


# -- the deployed graph's uint8 interface (engines.runners) ----------------------------------------------
def exposure_inputs(shape, seed: int = 0, spike_rate: float = 0.25):
    """Random inputs of the deployed graph for ``shape`` (an InputShape): ``image`` (1,H,W,3) uint8 BGR and
    ``spikes`` (K,S,h,w) uint8 levels (0 or SPIKE_LEVEL)."""
    from spikereveal.kernels.extract import SPIKE_LEVEL

    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, shape.image, dtype=np.uint8)
    spikes = np.where(rng.random(shape.spikes) < spike_rate, SPIKE_LEVEL, 0).astype(np.uint8)
    return image, spikes


def assert_within_lsb(actual: np.ndarray, expected: np.ndarray, max_lsb: int, max_fraction: float = 1.0) -> None:
    """uint8 images agree: no value differs by more than ``max_lsb`` and at most ``max_fraction`` of them
    differ at all."""
    assert actual.dtype == expected.dtype == np.uint8, (actual.dtype, expected.dtype)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    diff = np.abs(actual.astype(np.int16) - expected.astype(np.int16))
    fraction = float(np.mean(diff > 0))
    assert int(diff.max()) <= max_lsb and fraction <= max_fraction, (
        f"max |diff| {int(diff.max())} LSB (allowed {max_lsb}), {fraction:.2e} of the values differ "
        f"(allowed {max_fraction:.2e})")


def assert_not_flat(sharp: np.ndarray, min_levels: int = 32, max_clipped: float = 0.5) -> None:
    """A comparison means something only if the output is not clipped flat: ask for many distinct values and
    at most ``max_clipped`` of them at 0 or 255."""
    levels = np.unique(sharp).size
    clipped = float(np.mean((sharp == 0) | (sharp == 255)))
    assert levels >= min_levels and clipped <= max_clipped, (
        f"the output holds {levels} distinct values, {clipped:.0%} clipped: too flat to compare")
