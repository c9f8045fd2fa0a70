"""Seeded smooth motion: a camera trajectory over a scene, and sprites crossing the frame.

Time is normalised per exposure: ``u = (t - t_centre) / duration`` (u = -0.5 .. 0.5 over the exposure), so
motion is specified as displacement per exposure and is independent of the spike rate. Poses are 3x3
matrices mapping canonical-grid pixels to source-image pixels (what ``cv2.warp* | WARP_INVERSE_MAP`` wants).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from spikereveal.sim.config import MotionConfig

OBJECT_SHAPES = ("ellipse", "rectangle", "polygon")
ALPHA_SUPERSAMPLING = 4


def _rotation(angle_rad: float) -> np.ndarray:
    c, s = math.cos(angle_rad), math.sin(angle_rad)
    return np.array([[c, -s], [s, c]])


def _affine(linear: np.ndarray, offset: np.ndarray) -> np.ndarray:
    matrix = np.eye(3)
    matrix[:2, :2] = linear
    matrix[:2, 2] = offset
    return matrix


@dataclass(frozen=True, eq=False)
class CameraTrajectory:
    """Camera pose as a function of time: translation with constant acceleration, rotation, zoom."""

    frame_size: tuple[int, int]  # canonical (width, height)
    magnification: float  # canonical px per source px at zoom 1
    centre_xy: tuple[float, float]  # source px seen at the frame centre when u = 0
    velocity_xy: tuple[float, float]  # canonical px per exposure (the blur vector)
    acceleration_xy: tuple[float, float]  # canonical px per exposure^2
    angle_rad: float  # roll at u = 0
    angular_velocity_rad: float  # per exposure
    log_zoom_rate: float  # per exposure; zoom = exp(rate * u)
    t_centre_ns: float
    duration_ns: float

    def normalised_time(self, t_ns: float) -> float:
        return (float(t_ns) - self.t_centre_ns) / self.duration_ns

    def canonical_to_source(self, t_ns: float) -> np.ndarray:
        u = self.normalised_time(t_ns)
        velocity, acceleration = np.asarray(self.velocity_xy), np.asarray(self.acceleration_xy)
        scale = self.magnification * math.exp(self.log_zoom_rate * u)
        centre = np.asarray(self.centre_xy) + (velocity * u + 0.5 * acceleration * u * u) / self.magnification
        linear = _rotation(self.angle_rad + self.angular_velocity_rad * u) / scale
        width, height = self.frame_size
        frame_centre = np.array([(width - 1) / 2.0, (height - 1) / 2.0])
        return _affine(linear, centre - linear @ frame_centre)


@dataclass(frozen=True, eq=False)
class Sprite:
    """An object moving independently of the camera, in canonical-grid coordinates."""

    patch: np.ndarray  # (h, w, 4) float32: premultiplied BGR light and alpha
    position_xy: tuple[float, float]  # canonical px of the patch centre at u = 0
    velocity_xy: tuple[float, float]  # canonical px per exposure
    scale: float  # canonical px per patch px
    angle_rad: float
    angular_velocity_rad: float
    t_centre_ns: float
    duration_ns: float

    def canonical_to_patch(self, t_ns: float) -> np.ndarray:
        u = (float(t_ns) - self.t_centre_ns) / self.duration_ns
        position = np.asarray(self.position_xy) + np.asarray(self.velocity_xy) * u
        linear = _rotation(-(self.angle_rad + self.angular_velocity_rad * u)) / self.scale
        height, width = self.patch.shape[:2]
        patch_centre = np.array([(width - 1) / 2.0, (height - 1) / 2.0])
        return _affine(linear, patch_centre - linear @ position)


def _random_direction(rng: np.random.Generator) -> np.ndarray:
    angle = rng.uniform(0.0, 2.0 * math.pi)
    return np.array([math.cos(angle), math.sin(angle)])


def sample_camera(
    rng: np.random.Generator,
    motion: MotionConfig,
    source_size: tuple[int, int],
    frame_size: tuple[int, int],
    t_centre_ns: float,
    duration_ns: float,
    reach: float,
) -> CameraTrajectory:
    """A random trajectory whose view stays inside the source image for ``|u| <= reach``.

    The magnification is the smallest that fits the rotated, zoomed view plus the motion into the source,
    times a random factor in [1, 1.3] (so views differ in scale).
    """
    source_w, source_h = source_size
    width, height = frame_size
    speed = rng.uniform(*motion.blur_fraction) * width
    velocity = speed * _random_direction(rng)
    acceleration = rng.uniform(0.0, motion.acceleration_ratio) * speed * _random_direction(rng)
    angle = math.radians(rng.uniform(-motion.base_rotation_deg, motion.base_rotation_deg))
    angular_velocity = math.radians(rng.uniform(-motion.rotation_deg, motion.rotation_deg))
    log_zoom_rate = math.log1p(rng.uniform(-motion.zoom_ratio, motion.zoom_ratio))

    # canonical-px extent needed: rotated view at the widest zoom plus the travel in either direction
    max_angle = abs(angle) + abs(angular_velocity) * reach
    cos_a, sin_a = abs(math.cos(min(max_angle, math.pi / 2))), abs(math.sin(min(max_angle, math.pi / 2)))
    zoom_out = math.exp(abs(log_zoom_rate) * reach)
    travel = np.abs(velocity) * reach + 0.5 * np.abs(acceleration) * reach * reach
    extent_x = (cos_a * width + sin_a * height) * zoom_out + 2 * travel[0] + 4
    extent_y = (sin_a * width + cos_a * height) * zoom_out + 2 * travel[1] + 4
    magnification = max(extent_x / source_w, extent_y / source_h) * rng.uniform(1.0, 1.3)
    slack_x = max(source_w - extent_x / magnification, 0.0) / 2
    slack_y = max(source_h - extent_y / magnification, 0.0) / 2
    centre = (
        source_w / 2 - 0.5 + rng.uniform(-slack_x, slack_x),
        source_h / 2 - 0.5 + rng.uniform(-slack_y, slack_y),
    )
    return CameraTrajectory(
        frame_size=(width, height),
        magnification=float(magnification),
        centre_xy=(float(centre[0]), float(centre[1])),
        velocity_xy=(float(velocity[0]), float(velocity[1])),
        acceleration_xy=(float(acceleration[0]), float(acceleration[1])),
        angle_rad=angle,
        angular_velocity_rad=angular_velocity,
        log_zoom_rate=log_zoom_rate,
        t_centre_ns=float(t_centre_ns),
        duration_ns=float(duration_ns),
    )


def sprite_patch(rng: np.random.Generator, light: np.ndarray, max_side: int = 256) -> np.ndarray:
    """Cut an elliptical, soft-edged patch out of a source light image; premultiplied BGRA float32."""
    patch = _square_cut(rng, light, max_side, 0.5)
    side = patch.shape[0]
    aspect = rng.uniform(0.55, 1.0)
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float32)
    centre = (side - 1) / 2.0
    radius = side / 2.0 - 1.0
    distance = np.sqrt(((xx - centre) / radius) ** 2 + ((yy - centre) / (radius * aspect)) ** 2)
    alpha = np.clip((1.0 - distance) * radius, 0.0, 1.0).astype(np.float32)  # ~1 px anti-aliased edge
    return _premultiplied(patch, alpha)


def _square_cut(rng: np.random.Generator, light: np.ndarray, max_side: int, smallest: float) -> np.ndarray:
    """A random square of ``light``, its side a random ``smallest``-1 fraction of the image's short side
    (at most ``max_side``, at least 8 px), at a random place (a view)."""
    source_h, source_w = light.shape[:2]
    side = max(int(min(source_h, source_w, max_side) * rng.uniform(smallest, 1.0)), 8)
    top = int(rng.integers(0, source_h - side + 1))
    left = int(rng.integers(0, source_w - side + 1))
    return light[top : top + side, left : left + side]


def _premultiplied(patch: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """(h, w, 4) float32 premultiplied BGRA from a (h, w, 3) patch and its (h, w) alpha."""
    return np.ascontiguousarray(np.concatenate([patch * alpha[:, :, None], alpha[:, :, None]], axis=2))


def sample_sprite(
    rng: np.random.Generator,
    motion: MotionConfig,
    light: np.ndarray,
    frame_size: tuple[int, int],
    t_centre_ns: float,
    duration_ns: float,
) -> Sprite:
    """A sprite near the frame centre at mid-exposure, moving in a random direction across the frame."""
    width, height = frame_size
    patch = sprite_patch(rng, light)
    diameter = rng.uniform(*motion.sprite_size_fraction) * height
    speed = rng.uniform(*motion.sprite_blur_fraction) * width
    return _moving_patch(rng, patch, diameter, speed, frame_size, 0.3, 20.0, t_centre_ns, duration_ns)


def _moving_patch(rng: np.random.Generator, patch: np.ndarray, size_px: float, speed_px: float,
                  frame_size: tuple[int, int], spread: float, spin_deg: float, t_centre_ns: float,
                  duration_ns: float) -> Sprite:
    """``patch`` scaled to ``size_px``, moving ``speed_px`` per exposure in a random direction, placed within
    ``spread`` of the frame (a fraction of each side) around its centre at mid-exposure, at a random angle
    turning by up to ``spin_deg`` per exposure."""
    width, height = frame_size
    velocity = speed_px * _random_direction(rng)
    position = (
        (width - 1) / 2 + rng.uniform(-spread, spread) * width,
        (height - 1) / 2 + rng.uniform(-spread, spread) * height,
    )
    return Sprite(
        patch=patch,
        position_xy=(float(position[0]), float(position[1])),
        velocity_xy=(float(velocity[0]), float(velocity[1])),
        scale=float(size_px / patch.shape[1]),
        angle_rad=rng.uniform(-math.pi, math.pi),
        angular_velocity_rad=math.radians(rng.uniform(-spin_deg, spin_deg)),
        t_centre_ns=float(t_centre_ns),
        duration_ns=float(duration_ns),
    )


def shape_alpha(rng: np.random.Generator, side: int, shape: str) -> np.ndarray:
    """A (side, side) float32 alpha mask in [0, 1] of a random ``shape`` (ellipse, rectangle, polygon) filling
    most of the square, drawn 4x supersampled and area-averaged down, so its edge is anti-aliased."""
    big = side * ALPHA_SUPERSAMPLING
    centre = (big - 1) / 2.0
    radius = big / 2.0 - 2 * ALPHA_SUPERSAMPLING
    angle = rng.uniform(0.0, math.pi)
    if shape == "ellipse":
        t = np.linspace(0.0, 2 * math.pi, 256, endpoint=False)
        local = np.stack([np.cos(t), rng.uniform(0.45, 1.0) * np.sin(t)], axis=1) * radius
    elif shape == "rectangle":
        ratio = rng.uniform(0.35, 1.0)
        local = np.array([[-1, -ratio], [1, -ratio], [1, ratio], [-1, ratio]]) * radius / math.hypot(1.0, ratio)
    else:  # star-convex polygon, 3-8 vertices
        n = int(rng.integers(3, 9))
        t = (np.arange(n) + rng.uniform(-0.35, 0.35, n)) * (2 * math.pi / n)  # no slivers
        local = np.stack([np.cos(t), np.sin(t)], axis=1) * (radius * rng.uniform(0.6, 1.0, n))[:, None]
    c, si = math.cos(angle), math.sin(angle)
    points = local @ np.array([[c, si], [-si, c]]) + centre
    mask = np.zeros((big, big), dtype=np.float32)
    cv2.fillPoly(mask, [np.rint(points).astype(np.int32)], 1.0)
    return cv2.resize(mask, (side, side), interpolation=cv2.INTER_AREA)


def object_patch(rng: np.random.Generator, light: np.ndarray, max_side: int = 256) -> np.ndarray:
    """Cut a random shape (ellipse, rotated rectangle or polygon) with an anti-aliased edge out of a source
    light image (a random place and size); premultiplied BGRA float32."""
    patch = _square_cut(rng, light, max_side, 0.4)
    alpha = shape_alpha(rng, patch.shape[0], OBJECT_SHAPES[int(rng.integers(len(OBJECT_SHAPES)))])
    return _premultiplied(patch, alpha)


def sample_object(
    rng: np.random.Generator,
    motion: MotionConfig,
    light: np.ndarray,
    frame_size: tuple[int, int],
    t_centre_ns: float,
    duration_ns: float,
) -> Sprite:
    """A fast object (``motion.object_*``): a shape cut from ``light``, in view at mid-exposure, crossing
    ``object_blur_fraction`` of the frame width per exposure in a random direction, spinning a little."""
    width, height = frame_size
    patch = object_patch(rng, light)
    size = rng.uniform(*motion.object_size_fraction) * height
    speed = rng.uniform(*motion.object_blur_fraction) * width
    return _moving_patch(rng, patch, size, speed, frame_size, 0.35, 30.0, t_centre_ns, duration_ns)
