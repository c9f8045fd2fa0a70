"""Render a shot (scene + camera trajectory + sprites) at any time onto the canonical or the RGB grid.

Renders are float32 HWC BGR light in [0, 1] (OpenCV layout, kept internal to the simulator). The spike
sensor sees the canonical render area-downsampled x4 to gray (0.3 R + 0.59 G + 0.11 B); the RGB camera sees
the canonical render itself, or, with a homography, the scene rendered straight through it.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from spikereveal.errors import ConfigError
from spikereveal.kernels._numba import njit
from spikereveal.kernels.images import SPIKE_TO_IMAGE_SCALE
from spikereveal.sim.motion import CameraTrajectory, Sprite

GRAY_WEIGHTS_BGR = np.array([[0.11, 0.59, 0.3]], dtype=np.float32)
_INTERPOLATION = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP


@dataclass(frozen=True, eq=False)
class Shot:
    """What one exposure (and the spike frames around it) sees. ``light`` None: lens cap (all dark)."""

    name: str
    light: np.ndarray | None  # (h, w, 3) float32 source light
    camera: CameraTrajectory | None
    sprites: tuple[Sprite, ...] = ()  # sprites, then the objects of the objects motion family
    family: str = "images"  # the scene family the image came from
    objects: int = 0  # how many of the last ``sprites`` are objects


@dataclass(frozen=True, eq=False)
class Grid:
    """An output grid: its size and the homography canonical px -> its px (None: the canonical grid)."""

    width: int
    height: int
    from_canonical: np.ndarray | None = None

    @property
    def to_canonical(self) -> np.ndarray:
        return np.eye(3) if self.from_canonical is None else np.linalg.inv(self.from_canonical)


def _warp(source: np.ndarray, grid_to_source: np.ndarray, size: tuple[int, int], border: int) -> np.ndarray:
    if np.allclose(grid_to_source[2], (0.0, 0.0, 1.0), rtol=0.0, atol=1e-15):
        return cv2.warpAffine(source, grid_to_source[:2], size, flags=_INTERPOLATION, borderMode=border)
    return cv2.warpPerspective(source, grid_to_source, size, flags=_INTERPOLATION, borderMode=border)


@njit
def _composite_kernel(frame, layer):
    """frame (h, w, 3) float32, in place: frame * (1 - alpha) + premultiplied layer colour."""
    height, width = frame.shape[0], frame.shape[1]
    for y in range(height):
        for x in range(width):
            alpha = layer[y, x, 3]
            if alpha > 0.0:
                keep = 1.0 - alpha
                for c in range(3):
                    frame[y, x, c] = frame[y, x, c] * keep + layer[y, x, c]


def composite_premultiplied(frame: np.ndarray, layer: np.ndarray) -> np.ndarray:
    """Alpha-composite a premultiplied BGRA ``layer`` (h, w, 4) over a BGR ``frame`` (h, w, 3) in place
    (``frame`` may be a view into a larger image); returns ``frame``."""
    if frame.dtype != np.float32 or layer.dtype != np.float32:
        raise ConfigError("composite_premultiplied needs float32 images")
    if frame.ndim != 3 or frame.shape[2] != 3 or layer.shape != frame.shape[:2] + (4,):
        raise ConfigError(f"need frame (h, w, 3) and layer (h, w, 4), got {frame.shape} and {layer.shape}")
    _composite_kernel(frame, layer)
    return frame


def _composite_sprite(frame: np.ndarray, sprite: Sprite, grid_to_patch: np.ndarray) -> None:
    """Alpha-composite a premultiplied sprite over ``frame`` in place, warping only its bounding box."""
    patch_h, patch_w = sprite.patch.shape[:2]
    corners = np.array([[0, 0, 1], [patch_w - 1, 0, 1], [0, patch_h - 1, 1], [patch_w - 1, patch_h - 1, 1]], float)
    mapped = corners @ np.linalg.inv(grid_to_patch).T
    mapped = mapped[:, :2] / mapped[:, 2:3]
    height, width = frame.shape[:2]
    x0, y0 = np.floor(mapped.min(axis=0)).astype(int) - 1
    x1, y1 = np.ceil(mapped.max(axis=0)).astype(int) + 2
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, width), min(y1, height)
    if x1 <= x0 or y1 <= y0:
        return
    shift = np.array([[1.0, 0.0, x0], [0.0, 1.0, y0], [0.0, 0.0, 1.0]])
    warped = _warp(sprite.patch, grid_to_patch @ shift, (x1 - x0, y1 - y0), cv2.BORDER_CONSTANT)
    composite_premultiplied(frame[y0:y1, x0:x1], warped)


def render(shot: Shot, t_ns: float, grid: Grid) -> np.ndarray:
    """The light (float32 HWC BGR) the grid's camera sees at time ``t_ns``."""
    size = (grid.width, grid.height)
    if shot.light is None:
        return np.zeros((grid.height, grid.width, 3), dtype=np.float32)
    to_canonical = grid.to_canonical
    frame = _warp(shot.light, shot.camera.canonical_to_source(t_ns) @ to_canonical, size, cv2.BORDER_REFLECT_101)
    for sprite in shot.sprites:
        _composite_sprite(frame, sprite, sprite.canonical_to_patch(t_ns) @ to_canonical)
    return frame  # stays in [0, 1]: interpolation and premultiplied compositing are convex combinations


def spike_intensity(canonical_light: np.ndarray) -> np.ndarray:
    """Canonical-grid light (H, W, 3) -> spike-grid gray intensity (H/4, W/4) float32: area x4 down, gray.

    (Both steps are linear, so their order does not matter; downsampling first is 3x cheaper.)"""
    height, width = canonical_light.shape[:2]
    size = (width // SPIKE_TO_IMAGE_SCALE, height // SPIKE_TO_IMAGE_SCALE)
    small = cv2.resize(canonical_light, size, interpolation=cv2.INTER_AREA)
    return cv2.transform(small, GRAY_WEIGHTS_BGR)
