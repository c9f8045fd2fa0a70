"""RGB camera: the blurry exposure is the mean light over the exposure, plus sensor noise, in 8 bits.

Gamma: by default (the paper's protocol) scene images are treated as the light itself, so the blurry frame
is the plain mean of the sharp frames' pixel values. With ``linear_light`` the renderer works on
sRGB-decoded light and :func:`encode` re-encodes to sRGB, so blur is averaged in linear light.
"""

from __future__ import annotations

import cv2
import numpy as np

from spikereveal.sim.scenes import linear_to_srgb


def encode(light: np.ndarray, linear_light: bool) -> np.ndarray:
    """Light (float32 HWC) -> display values in [0, 1] (sRGB-encoded if the light is linear)."""
    return linear_to_srgb(light) if linear_light else np.clip(light, 0.0, 1.0)


def quantise(values: np.ndarray) -> np.ndarray:
    """[0, 1] float32 -> uint8 (round to nearest, clipped)."""
    values = np.asarray(values, dtype=np.float32)
    flat = np.maximum(values.reshape(1, -1), 0.0)  # any shape as one 2-D matrix for OpenCV
    return cv2.convertScaleAbs(flat, alpha=255.0).reshape(values.shape)


def blurry_frame(
    light_sum: np.ndarray, frame_count: int, linear_light: bool, noise_std: float, rng: np.random.Generator
) -> np.ndarray:
    """Sum of ``frame_count`` rendered frames -> the 8-bit blurry exposure (HWC BGR uint8)."""
    values = encode(light_sum / np.float32(frame_count), linear_light)
    if noise_std > 0:
        values = values + rng.normal(0.0, noise_std, size=values.shape).astype(np.float32)
    return quantise(values)


def sharp_frame(light: np.ndarray, linear_light: bool) -> np.ndarray:
    """A ground-truth render -> 8-bit image (no sensor noise)."""
    return quantise(encode(light, linear_light))
