"""Scene images: the images that ship with scikit-image, image files, a checkerboard, a uniform field.

Scene images are returned as ``(name, uint8 HWC BGR)`` pairs (OpenCV layout: this is file I/O territory);
:func:`scene_light` turns one into the float32 HWC light the renderer warps.
"""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np

from spikereveal.errors import ConfigError, require

log = logging.getLogger(__name__)

# scikit-image data images stored inside the package (no download), colour first; mostly-black ones
# (hubble_deep_field, retina, moon) are left out: they fire too few spikes to be useful scenes
DEFAULT_SCENE_NAMES = (
    "astronaut",
    "coffee",
    "chelsea",
    "rocket",
    "immunohistochemistry",
    "camera",
    "brick",
    "gravel",
    "grass",
    "coins",
)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
MIN_SCENE_SIDE = 16


def _as_bgr8(image: np.ndarray, name: str) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype != np.uint8:
        if image.dtype.kind == "f":
            image = np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)
        else:
            raise ConfigError(f"scene {name}: expected uint8 or float image, got {image.dtype}")
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] not in (3, 4):
        raise ConfigError(f"scene {name}: expected an HxW or HxWx3 image, got shape {image.shape}")
    image = np.ascontiguousarray(image[:, :, :3])
    if min(image.shape[:2]) < MIN_SCENE_SIDE:
        raise ConfigError(
            f"scene {name} is {image.shape[1]}x{image.shape[0]}; need at least {MIN_SCENE_SIDE} px a side"
        )
    return image


# Every usable picture bundled with scikit-image 0.2x that loads without a download (the others need pooch and
# the network: brain, cells3d, eagle, kidney, lily, skin, ...), minus the mostly-black or nearly empty ones
# (hubble_deep_field, moon, retina, shepp_logan_phantom), tiny ones (microaneurysms, lfw_subset), the binary
# horse, ``cat`` (the same picture as chelsea) and ``checkerboard`` (a 200 px binary board: magnified onto a
# 1280x720 frame it is one flat-edged pattern, not a scene to report on). Split by hand into three disjoint lists with varied content
# in each (a colour photo, a gray photo or object, a texture, a graphic or text page, microscopy).
SKIMAGE_SPLITS: dict[str, tuple[str, ...]] = {
    "skimage-train": (
        "astronaut", "rocket", "camera", "brick", "coins", "clock", "page", "colorwheel", "cell",
    ),
    "skimage-val": ("chelsea", "gravel", "text", "logo"),
    "skimage-test": ("coffee", "stereo_motorcycle", "immunohistochemistry", "grass"),
}
GENERATED_FAMILIES = ("deadleaves", "synthetic")
MIXED_FAMILIES = {"mixed-train": ("deadleaves", "synthetic", "skimage-train")}
SCENE_FAMILIES = ("default", *GENERATED_FAMILIES, *SKIMAGE_SPLITS, *MIXED_FAMILIES)
GENERATED_SCENE_SCALE = 1.5  # generated scenes are this many times the canonical frame, so the camera can move


def check_scene_family(name: str) -> str:
    if name not in SCENE_FAMILIES:
        raise ConfigError(f"unknown scene family {name!r}; choose one of {', '.join(SCENE_FAMILIES)}")
    return name


def _skimage_picture(data, name: str) -> np.ndarray:
    image = getattr(data, name)()
    if isinstance(image, tuple):  # stereo_motorcycle: (left, right, disparity)
        image = image[0]
    image = np.asarray(image)
    if image.dtype == bool:
        image = image.astype(np.uint8) * 255
    if image.ndim == 3:
        image = image[:, :, 2::-1]  # RGB(A) -> BGR
    return image


def default_scene_images(names: tuple[str, ...] = DEFAULT_SCENE_NAMES) -> list[tuple[str, np.ndarray]]:
    """scikit-image sample images (shipped with the package, no download), as BGR uint8."""
    data = require("skimage.data", "the simulator's default scenes", "sim")
    return [(name, _as_bgr8(_skimage_picture(data, name), name)) for name in names]


def family_scene_images(family: str) -> list[tuple[str, np.ndarray]] | None:
    """The fixed image list of a scene family (``default`` or an ``skimage-*`` split); None for generated and
    mixed families (see :mod:`spikereveal.sim.procedural`)."""
    check_scene_family(family)
    if family == "default":
        return default_scene_images()
    if family in SKIMAGE_SPLITS:
        return default_scene_images(SKIMAGE_SPLITS[family])
    return None


def load_scene_images(path: str | Path) -> list[tuple[str, np.ndarray]]:
    """One image file, or every image in a folder (sorted by name, not recursive), as BGR uint8."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise ConfigError(f"{path}: no images ({', '.join(IMAGE_SUFFIXES)}) in this folder")
    elif path.is_file():
        files = [path]
    else:
        raise ConfigError(f"{path}: no such image file or folder")
    scenes = []
    for file in files:
        image = cv2.imread(str(file), cv2.IMREAD_COLOR)
        if image is None:
            raise ConfigError(f"{file}: OpenCV cannot read this image")
        scenes.append((file.name, _as_bgr8(image, file.name)))
    return scenes


def as_scene_images(images) -> list[tuple[str, np.ndarray]]:
    """Normalise user-given scenes: arrays or (name, array) pairs -> [(name, uint8 BGR)]."""
    scenes = []
    for i, item in enumerate(images):
        name, image = item if isinstance(item, tuple) else (f"scene{i}", item)
        scenes.append((str(name), _as_bgr8(image, str(name))))
    if not scenes:
        raise ConfigError("no scene images given")
    return scenes


def checkerboard_image(columns: int, rows: int, square_px: int = 48, pad_ratio: float = 1.5) -> np.ndarray:
    """A ``columns x rows``-square board (black top-left square) with a one-square white border, centred
    on a white canvas ``pad_ratio`` times wider and taller, so that a moving view keeps the whole board."""
    if columns < 2 or rows < 2 or square_px < 2:
        raise ConfigError("a checkerboard needs at least 2x2 squares of at least 2 px")
    board = (np.indices((rows, columns)).sum(axis=0) % 2).astype(np.uint8) * 255
    board = np.kron(board, np.ones((square_px, square_px), dtype=np.uint8))
    board = np.pad(board, square_px, constant_values=255)
    height, width = board.shape
    canvas_h, canvas_w = int(round(height * pad_ratio)), int(round(width * pad_ratio))
    canvas = np.full((canvas_h, canvas_w), 255, dtype=np.uint8)
    top, left = (canvas_h - height) // 2, (canvas_w - width) // 2
    canvas[top : top + height, left : left + width] = board
    return np.repeat(canvas[:, :, None], 3, axis=2)


def srgb_to_linear(values: np.ndarray) -> np.ndarray:
    values = np.asarray(values, dtype=np.float32)
    return np.where(values <= 0.04045, values / 12.92, ((values + 0.055) / 1.055) ** 2.4).astype(np.float32)


def linear_to_srgb(values: np.ndarray) -> np.ndarray:
    values = np.clip(np.asarray(values, dtype=np.float32), 0.0, 1.0)
    return np.where(values <= 0.0031308, values * 12.92, 1.055 * values ** (1 / 2.4) - 0.055).astype(np.float32)


def scene_light(image_bgr8: np.ndarray, linear_light: bool) -> np.ndarray:
    """uint8 BGR -> float32 HWC BGR in [0, 1]; sRGB-decoded to linear light if ``linear_light``."""
    light = image_bgr8.astype(np.float32) * np.float32(1.0 / 255.0)
    return srgb_to_linear(light) if linear_light else light
