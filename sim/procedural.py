"""Procedural scene images: dead leaves and synthetic test patterns, seeded, as uint8 HWC BGR.

Every generator is a pure function ``(rng, size) -> uint8 (height, width, 3) BGR`` with ``size = (width,
height)``; the same generator state gives the same bytes.

- :func:`dead_leaves`: occluding shapes (discs, ellipses, rotated rectangles, polygons) whose radius follows
  the dead-leaves power law ``p(r) ~ r^-3`` on ``[r_min, r_max]``, painted back to front; each leaf has a
  natural-ish colour (random hue, saturation biased low) and a texture (flat, linear gradient, sinusoidal
  stripes or smoothed noise); a slight blur anti-aliases the edges.
- :func:`synthetic`: gradients, thin lines at many angles, text and checker/grid fragments over a
  dead-leaves or gradient background.
"""

from __future__ import annotations

import math
import string

import cv2
import numpy as np

from spikereveal.errors import ConfigError

LEAF_SHAPES = ("disc", "ellipse", "rectangle", "polygon")
TEXTURES = ("flat", "gradient", "stripes", "noise")
MIN_TEXTURED_RADIUS_PX = 6.0  # smaller leaves are flat (a texture would not be visible)
FONTS = (
    cv2.FONT_HERSHEY_SIMPLEX, cv2.FONT_HERSHEY_PLAIN, cv2.FONT_HERSHEY_DUPLEX, cv2.FONT_HERSHEY_COMPLEX,
    cv2.FONT_HERSHEY_TRIPLEX, cv2.FONT_HERSHEY_COMPLEX_SMALL, cv2.FONT_HERSHEY_SCRIPT_SIMPLEX,
    cv2.FONT_HERSHEY_SCRIPT_COMPLEX,
)
TEXT_ALPHABET = string.ascii_letters + string.digits + "  .,:-+/#%&"


def _check_size(size) -> tuple[int, int]:
    width, height = (int(v) for v in size)
    if width < 16 or height < 16:
        raise ConfigError(f"a generated scene needs at least 16x16 px, got size (width, height) = {tuple(size)}")
    return width, height


def sample_leaf_radii(rng: np.random.Generator, count: int, r_min: float, r_max: float) -> np.ndarray:
    """``count`` radii with density ``~ r^-3`` on ``[r_min, r_max]`` (inverse CDF of the dead-leaves law)."""
    if not 0 < r_min < r_max:
        raise ConfigError(f"leaf radii need 0 < r_min < r_max, got r_min={r_min}, r_max={r_max}")
    u = rng.random(count)
    return (r_min**-2 - u * (r_min**-2 - r_max**-2)) ** -0.5


def natural_colours(rng: np.random.Generator, count: int) -> np.ndarray:
    """``count`` BGR colours (float32 in [0, 1]): uniform hue, saturation biased low, mid-range value."""
    hsv = np.empty((count, 1, 3), dtype=np.float32)
    hsv[:, 0, 0] = rng.uniform(0.0, 360.0, count)
    hsv[:, 0, 1] = 0.85 * rng.random(count) ** 2
    hsv[:, 0, 2] = rng.beta(2.0, 1.6, count) * 0.92 + 0.05
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[:, 0, :]


def _texture(rng: np.random.Generator, kind: str, height: int, width: int, colour: np.ndarray, radius: float,
             other: np.ndarray | None = None):
    """A (height, width, 3) float32 texture patch mixing ``colour`` and ``other`` (default: a nearby colour)."""
    if kind == "flat":
        return np.broadcast_to(colour, (height, width, 3))
    if other is None:
        other = np.clip(colour * rng.uniform(0.35, 1.4) + rng.normal(0.0, 0.08, 3), 0.0, 1.0).astype(np.float32)
    if kind == "noise":
        cells = (max(2, int(width / rng.uniform(3.0, 12.0))), max(2, int(height / rng.uniform(3.0, 12.0))))
        weight = cv2.resize(rng.random((cells[1], cells[0])).astype(np.float32), (width, height),
                            interpolation=cv2.INTER_CUBIC)
    else:
        yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
        angle = rng.uniform(0.0, math.pi)
        along = xx * math.cos(angle) + yy * math.sin(angle)
        if kind == "gradient":
            weight = (along - along.min()) / max(float(np.ptp(along)), 1.0)
        else:  # stripes, period 3 px .. the leaf's radius
            period = rng.uniform(3.0, max(4.0, radius))
            weight = 0.5 + 0.5 * np.sin(along * np.float32(2 * math.pi / period) + np.float32(rng.uniform(0, 6.3)))
    weight = np.clip(weight, 0.0, 1.0)[:, :, None]
    return colour * (1.0 - weight) + other * weight


def _leaf_polygon(rng: np.random.Generator, shape: str, cx: float, cy: float, radius: float) -> np.ndarray:
    """Vertices (N, 2) of a leaf outline (discs and ellipses as dense polygons), in pixels."""
    angle = rng.uniform(0.0, math.pi)
    if shape in ("disc", "ellipse"):
        ratio = 1.0 if shape == "disc" else rng.uniform(0.3, 0.9)
        t = np.linspace(0.0, 2 * math.pi, max(12, int(radius * 1.5)), endpoint=False)
        local = np.stack([radius * np.cos(t), ratio * radius * np.sin(t)], axis=1)
    elif shape == "rectangle":
        ratio = rng.uniform(0.2, 1.0)
        local = np.array([[-1, -ratio], [1, -ratio], [1, ratio], [-1, ratio]]) * radius / math.hypot(1, ratio) * 1.4
    else:  # star-convex polygon, 3-8 vertices
        n = int(rng.integers(3, 9))
        t = (np.arange(n) + rng.uniform(-0.35, 0.35, n)) * (2 * math.pi / n)  # no slivers
        r = radius * rng.uniform(0.55, 1.0, n)
        local = np.stack([r * np.cos(t), r * np.sin(t)], axis=1)
    c, s = math.cos(angle), math.sin(angle)
    return local @ np.array([[c, s], [-s, c]]) + (cx, cy)


def dead_leaves(
    rng: np.random.Generator,
    size: tuple[int, int],
    r_min_fraction: float = 0.01,
    r_max_fraction: float = 0.4,
    coverage: float = 3.0,
    return_labels: bool = False,
):
    """A dead-leaves image of ``size = (width, height)``: uint8 BGR (and, with ``return_labels``, the int32
    index of the leaf visible at each pixel, -1 where the background shows, plus the leaf radii).

    Radii follow ``r^-3`` between ``r_min_fraction`` and ``r_max_fraction`` of the short side; leaves are
    drawn until their summed area is ``coverage`` times the image (so nearly every pixel is occluded)."""
    width, height = _check_size(size)
    side = min(width, height)
    r_min, r_max = max(1.5, r_min_fraction * side), max(3.0, r_max_fraction * side)
    mean_area = math.pi * 2.0 * math.log(r_max / r_min) / (r_min**-2 - r_max**-2)  # pi * E[r^2] (rect ~ disc)
    count = int(coverage * width * height / mean_area) + 1
    radii = sample_leaf_radii(rng, count, r_min, r_max)
    centres = rng.random((count, 2)) * (width, height)
    colours = natural_colours(rng, count + 2)
    canvas = _texture(rng, "gradient", height, width, colours[-1], side).astype(np.float32).copy()
    canvas = (canvas * 255.0 + 0.5).astype(np.uint8)
    labels = np.full((height, width), -1, dtype=np.int32) if return_labels else None
    shapes = rng.integers(0, len(LEAF_SHAPES), count)
    textures = rng.choice(len(TEXTURES), count, p=(0.4, 0.2, 0.2, 0.2))
    for i in range(count):
        radius = float(radii[i])
        points = _leaf_polygon(rng, LEAF_SHAPES[shapes[i]], centres[i, 0], centres[i, 1], radius)
        kind = TEXTURES[textures[i]] if radius >= MIN_TEXTURED_RADIUS_PX else "flat"
        if kind == "flat":  # straight onto the canvas
            outline = [np.rint(points).astype(np.int32)]
            cv2.fillPoly(canvas, outline, tuple(float(v) for v in colours[i] * 255.0))
            if labels is not None:
                cv2.fillPoly(labels, outline, i)
            continue
        x0, y0 = np.maximum(np.floor(points.min(axis=0)).astype(int), 0)
        x1, y1 = np.minimum(np.ceil(points.max(axis=0)).astype(int) + 1, (width, height))
        if x1 <= x0 or y1 <= y0:
            continue
        mask = np.zeros((y1 - y0, x1 - x0), dtype=np.uint8)
        cv2.fillPoly(mask, [np.rint(points - (x0, y0)).astype(np.int32)], 1)
        inside = mask.astype(bool)
        texture = _texture(rng, kind, y1 - y0, x1 - x0, colours[i], radius)
        canvas[y0:y1, x0:x1][inside] = (texture[inside] * 255.0 + 0.5).astype(np.uint8)
        if labels is not None:
            labels[y0:y1, x0:x1][inside] = i
    image = cv2.GaussianBlur(canvas, (0, 0), 0.6)  # anti-alias the hard polygon edges
    return (image, labels, radii) if return_labels else image


def gradient_background(rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray:
    """A smooth two-colour linear gradient with a faint smoothed-noise texture, uint8 BGR."""
    width, height = _check_size(size)
    first, second, third = natural_colours(rng, 3)
    base = _texture(rng, "gradient", height, width, first, min(width, height), other=second)
    noise = _texture(rng, "noise", height, width, first, min(width, height) / 8, other=third)
    return (np.clip(0.75 * base + 0.25 * noise, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def _random_bgr(rng: np.random.Generator) -> tuple[int, int, int]:
    colour = natural_colours(rng, 1)[0] if rng.random() < 0.6 else rng.random(3)
    return tuple(int(v) for v in np.rint(np.asarray(colour) * 255.0))


def _paste_checker(rng: np.random.Generator, canvas: np.ndarray) -> None:
    """A rotated checkerboard or grid fragment warped into ``canvas`` in place."""
    height, width = canvas.shape[:2]
    square = int(rng.integers(4, max(6, min(width, height) // 12)))
    columns, rows = (int(v) for v in rng.integers(2, 9, 2))
    if rng.random() < 0.5:
        patch = (np.indices((rows, columns)).sum(axis=0) % 2).astype(np.float32)
        patch = cv2.resize(patch, (columns * square, rows * square), interpolation=cv2.INTER_NEAREST)
    else:  # grid lines
        patch = np.zeros((rows * square + 1, columns * square + 1), dtype=np.float32)
        thick = int(rng.integers(1, 3))
        for k in range(0, patch.shape[0], square):
            patch[k : k + thick] = 1.0
        for k in range(0, patch.shape[1], square):
            patch[:, k : k + thick] = 1.0
    dark, light = np.array(_random_bgr(rng), np.float32), np.array(_random_bgr(rng), np.float32)
    colour = dark * (1.0 - patch[:, :, None]) + light * patch[:, :, None]
    centre = (float(rng.uniform(0, width)), float(rng.uniform(0, height)))
    matrix = cv2.getRotationMatrix2D((patch.shape[1] / 2, patch.shape[0] / 2), float(rng.uniform(0, 360)), 1.0)
    matrix[:, 2] += np.array(centre) - (patch.shape[1] / 2, patch.shape[0] / 2)
    warped = cv2.warpAffine(colour, matrix, (width, height), flags=cv2.INTER_LINEAR)
    alpha = cv2.warpAffine(np.ones(patch.shape, np.float32), matrix, (width, height), flags=cv2.INTER_LINEAR)
    blended = canvas * (1.0 - alpha[:, :, None]) + warped * alpha[:, :, None]
    canvas[:] = np.clip(blended + 0.5, 0, 255).astype(np.uint8)


def synthetic(rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray:
    """Test-pattern scene of ``size = (width, height)``: gradients, thin lines at many angles, text and
    checker/grid fragments over a dead-leaves (or gradient) background; uint8 BGR."""
    width, height = _check_size(size)
    if rng.random() < 0.5:
        canvas = dead_leaves(rng, size, r_min_fraction=0.02, coverage=2.0)
    else:
        canvas = gradient_background(rng, size)
    side = min(width, height)
    for _ in range(int(rng.integers(1, 4))):  # gradient patches
        w, h = (int(v) for v in rng.integers(side // 8, side // 2, 2))
        x, y = int(rng.integers(0, width - w)), int(rng.integers(0, height - h))
        first, second = natural_colours(rng, 2)
        patch = _texture(rng, "gradient", h, w, first, side, other=second)
        canvas[y : y + h, x : x + w] = (patch * 255.0 + 0.5).astype(np.uint8)
    for _ in range(int(rng.integers(1, 4))):
        _paste_checker(rng, canvas)
    diagonal = math.hypot(width, height)
    for _ in range(int(rng.integers(10, 40))):  # thin lines at any angle
        angle, length = rng.uniform(0, math.pi), rng.uniform(0.05, 0.6) * diagonal
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        dx, dy = 0.5 * length * math.cos(angle), 0.5 * length * math.sin(angle)
        cv2.line(canvas, (int(cx - dx), int(cy - dy)), (int(cx + dx), int(cy + dy)), _random_bgr(rng),
                 int(rng.integers(1, 4)), cv2.LINE_AA)
    for _ in range(int(rng.integers(3, 12))):  # text
        length = int(rng.integers(3, 16))
        text = "".join(TEXT_ALPHABET[i] for i in rng.integers(0, len(TEXT_ALPHABET), length))
        scale = rng.uniform(0.3, 3.0) * side / 500.0 + 0.3
        origin = (int(rng.uniform(-0.1, 0.9) * width), int(rng.uniform(0.05, 1.0) * height))
        cv2.putText(canvas, text, origin, FONTS[int(rng.integers(len(FONTS)))], scale, _random_bgr(rng),
                    int(rng.integers(1, 4)), cv2.LINE_AA)
    return cv2.GaussianBlur(canvas, (0, 0), 0.5)


GENERATORS = {"deadleaves": dead_leaves, "synthetic": synthetic}
