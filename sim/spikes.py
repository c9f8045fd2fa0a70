"""Integrate-and-fire spike sensor with a physical noise model (SPEC §2).

Per pixel and tick: ``acc += gain * I`` (plus photon shot noise if enabled); if ``acc > threshold`` (strict)
a spike fires and ``threshold`` is subtracted, the remainder kept. A pixel fires at most once per tick; if
its accumulator still exceeds the threshold after firing (gain * I > threshold: saturation) it is capped at
the threshold. Spontaneous spikes (dark current, hot pixels) are independent Bernoulli events per
pixel-frame at a per-pixel rate; they are emitted without touching the accumulator (a read-out event, so a
dark sensor fires at exactly the configured rate). Output frames are packed in the canonical layout.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from spikereveal.errors import ConfigError
from spikereveal.kernels._numba import njit
from spikereveal.kernels.packing import packed_frame_bytes
from spikereveal.sim.config import SensorConfig

MIN_THRESHOLD_RATIO = 0.05  # mismatched thresholds are clipped to at least 5 % of nominal


@njit
def _integrate_and_fire_kernel(
    intensity, gain, thresholds, spontaneous_rate, uniforms, inverse_electrons, normals, accumulator, out
):
    """intensity (T, P) f32; thresholds/spontaneous_rate/accumulator (P,); uniforms/normals (T, P) or (0, P);
    out (T, P // 8) uint8. Updates ``accumulator`` in place."""
    frames, pixels = intensity.shape
    use_spontaneous = uniforms.shape[0] > 0
    use_shot_noise = normals.shape[0] > 0
    for t in range(frames):
        for byte_index in range(pixels // 8):
            byte = 0
            for bit in range(8):
                k = byte_index * 8 + bit
                threshold = thresholds[k]
                charge = gain * np.float64(intensity[t, k])
                if charge < 0.0:
                    charge = 0.0
                if use_shot_noise and charge > 0.0:
                    charge += math.sqrt(charge * threshold * inverse_electrons) * np.float64(normals[t, k])
                    if charge < 0.0:
                        charge = 0.0
                level = accumulator[k] + charge
                spike = False
                if level > threshold:
                    spike = True
                    level -= threshold
                    if level > threshold:
                        level = threshold
                accumulator[k] = level
                if use_spontaneous and uniforms[t, k] < spontaneous_rate[k]:
                    spike = True
                if spike:
                    byte |= 1 << bit
            out[t, byte_index] = byte


def integrate_and_fire(
    intensity: np.ndarray,
    accumulator: np.ndarray,
    thresholds: np.ndarray,
    gain: float,
    spontaneous_rate: np.ndarray | None = None,
    uniforms: np.ndarray | None = None,
    shot_noise_electrons: float = 0.0,
    normals: np.ndarray | None = None,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Fire ``T`` spike frames from intensities ``(T, H, W)`` in [0, 1]; returns packed ``(T, H*W/8)`` uint8.

    ``accumulator`` (H, W) float64 is the sensor state, updated in place (so consecutive calls continue one
    stream). ``thresholds`` (H, W) per pixel. Spontaneous spikes fire where ``uniforms[t] < spontaneous_rate``
    (both needed, or neither). Shot noise needs ``normals`` (T, H, W) standard normal draws and
    ``shot_noise_electrons`` > 0 (electrons per threshold charge).
    """
    intensity = np.asarray(intensity, dtype=np.float32)
    if intensity.ndim != 3:
        raise ConfigError(f"intensity must have shape (T, H, W), got {intensity.shape}")
    frames, height, width = intensity.shape
    pixels = height * width
    nbytes = packed_frame_bytes(height, width)
    for name, array in (("accumulator", accumulator), ("thresholds", thresholds)):
        if array.shape != (height, width) or array.dtype != np.float64 or not array.flags.c_contiguous:
            raise ConfigError(f"{name} must be a C-contiguous float64 array of shape {(height, width)}")
    if (spontaneous_rate is None) != (uniforms is None):
        raise ConfigError("spontaneous spikes need both spontaneous_rate and uniforms (or neither)")
    if spontaneous_rate is None:
        rate = np.zeros(pixels, dtype=np.float32)
        draws = np.zeros((0, pixels), dtype=np.float32)
    else:
        rate = np.ascontiguousarray(spontaneous_rate, dtype=np.float32).reshape(-1)
        draws = np.ascontiguousarray(uniforms, dtype=np.float32)
        if rate.size != pixels or draws.shape != (frames, height, width):
            raise ConfigError("spontaneous_rate must be (H, W) and uniforms (T, H, W) like the intensity")
        draws = draws.reshape(frames, pixels)
    if shot_noise_electrons > 0:
        if normals is None or np.shape(normals) != (frames, height, width):
            raise ConfigError("shot noise needs normals of shape (T, H, W)")
        noise = np.ascontiguousarray(normals, dtype=np.float32).reshape(frames, pixels)
        inverse_electrons = 1.0 / float(shot_noise_electrons)
    else:
        noise = np.zeros((0, pixels), dtype=np.float32)
        inverse_electrons = 0.0
    if out is None:
        out = np.empty((frames, nbytes), dtype=np.uint8)
    elif out.shape != (frames, nbytes) or out.dtype != np.uint8 or not out.flags.c_contiguous:
        raise ConfigError(f"out must be a C-contiguous uint8 array of shape {(frames, nbytes)}")
    _integrate_and_fire_kernel(
        np.ascontiguousarray(intensity).reshape(frames, pixels),
        float(gain),
        thresholds.reshape(-1),
        rate,
        draws,
        inverse_electrons,
        noise,
        accumulator.reshape(-1),
        out,
    )
    return out


@dataclass(eq=False)
class SensorState:
    """Everything a sensor carries from one frame to the next (and its fixed pattern)."""

    config: SensorConfig
    accumulator: np.ndarray  # (H, W) float64
    thresholds: np.ndarray  # (H, W) float64: nominal threshold with per-pixel mismatch
    spontaneous_rate: np.ndarray  # (H, W) float32: dark-current rate, hot_pixel_rate at hot pixels
    hot_pixels: np.ndarray  # (N, 2) int64 (row, column) of the hot pixels

    @property
    def has_spontaneous_spikes(self) -> bool:
        return bool(np.any(self.spontaneous_rate > 0))


def new_sensor_state(config: SensorConfig, height: int, width: int, rng: np.random.Generator) -> SensorState:
    """A sensor with its fixed pattern (threshold mismatch, hot pixels) and initial accumulator drawn from rng."""
    thresholds = np.full((height, width), config.threshold, dtype=np.float64)
    if config.threshold_mismatch > 0:
        thresholds *= 1.0 + config.threshold_mismatch * rng.standard_normal((height, width))
        np.maximum(thresholds, MIN_THRESHOLD_RATIO * config.threshold, out=thresholds)
    if config.random_initial_accumulator:
        accumulator = rng.random((height, width)) * thresholds
    else:
        accumulator = np.zeros((height, width), dtype=np.float64)
    rate = np.full((height, width), config.dark_spike_rate, dtype=np.float32)
    hot_count = int(round(config.hot_pixel_fraction * height * width))
    hot_flat = np.sort(rng.choice(height * width, size=hot_count, replace=False)) if hot_count else np.zeros(0, int)
    rate.reshape(-1)[hot_flat] = max(config.hot_pixel_rate, config.dark_spike_rate)
    hot = np.stack(np.unravel_index(hot_flat, (height, width)), axis=1).astype(np.int64)
    return SensorState(config, accumulator, thresholds, rate, hot)


def fire_spikes(intensity: np.ndarray, state: SensorState, rng: np.random.Generator) -> np.ndarray:
    """Continue the sensor's stream by ``T`` frames of intensity ``(T, H, W)``; returns packed frames."""
    frames, height, width = np.shape(intensity)
    uniforms = rate = normals = None
    if state.has_spontaneous_spikes:
        rate = state.spontaneous_rate
        uniforms = rng.random((frames, height, width), dtype=np.float32)
    if state.config.shot_noise_electrons > 0:
        normals = rng.standard_normal((frames, height, width), dtype=np.float32)
    return integrate_and_fire(
        intensity,
        state.accumulator,
        state.thresholds,
        state.config.gain,
        spontaneous_rate=rate,
        uniforms=uniforms,
        shot_noise_electrons=state.config.shot_noise_electrons,
        normals=normals,
    )
