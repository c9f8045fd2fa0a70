"""``calibration.json``: one versioned file for a rig's calibration, beside (or inside) a recording.

    {"format": "spikereveal-calibration", "version": 1,
     "spike": {"height": h, "width": w}, "rgb": {"height": H_rgb, "width": W_rgb},
     "geometry": {"homography": [[..3..] x3], "direction": "canonical_to_rgb", "method": ..,
                  "residual_px": .., "inliers": .., "points": .., "exposures": [..], "details": {..}},
     "time": {"offset_ns": .., "offset_uncertainty_ns": .. or null, "drift_ppm": .., "drift_estimated": bool,
              "drift_uncertainty_ppm": .. or null, "drift_note": ".." or null, "residual_ns": .., "exposures": ..,
              "exposures_tried": .., "reference_ns": .., "frame_period_ns": .., "model": ".."},
     "photometric": {"file": "calibration_dark.npz", "sha256": .., "frames": .., "median_rate": ..,
                     "hot_threshold_rate": .., "hot_pixel_count": .., "details": {..}}}

Every section is optional; ``spike``/``rgb`` record the geometry the calibration was made for and are
checked against the recording it is applied to. The per-pixel maps live in an npz beside the JSON
(``dark_rate`` (h, w) float32, ``hot_pixels`` (N, 2) int64 row/column), tied to it by a SHA-256.
Unknown keys are ignored. Every violation is a FormatError naming the file and line.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from spikereveal.calibration.clock import ClockCalibration
from spikereveal.calibration.geometry import GeometryCalibration, warp_bgr8_to_canonical, warp_to_canonical
from spikereveal.calibration.photometric import PhotometricCalibration
from spikereveal.errors import ConfigError, FormatError
from spikereveal.recording import CALIBRATION_FILE, _json_key_lines
from spikereveal.kernels.images import SPIKE_TO_IMAGE_SCALE

CALIBRATION_FORMAT = "spikereveal-calibration"
CALIBRATION_VERSION = 1
DARK_MAPS_FILE = "calibration_dark.npz"


@dataclass(frozen=True, eq=False)
class RigCalibration:
    """A rig's calibration: any of geometry, clock, photometric maps, for one spike/RGB geometry.

    The pipeline calls, per exposure: ``exposure_on_spike_clock`` (before cutting the spike window),
    ``warp_exposure`` (RGB frame onto the canonical grid), and on spike data ``correct_counts`` /
    ``correct_rate`` (counts, TFPs) or ``correct_spike_frames`` (the LDN's unpacked frames).
    Each is the identity for a section that is absent.
    """

    spike_shape: tuple[int, int]
    rgb_shape: tuple[int, int]
    geometry: GeometryCalibration | None = None
    clock: ClockCalibration | None = None
    photometric: PhotometricCalibration | None = None
    path: Path | None = None

    def __post_init__(self):
        for name in ("spike_shape", "rgb_shape"):
            shape = tuple(int(v) for v in getattr(self, name))
            if len(shape) != 2 or min(shape) <= 0:
                raise ConfigError(f"{name} must be (height, width) > 0, got {getattr(self, name)!r}")
            object.__setattr__(self, name, shape)
        if self.photometric is not None and self.photometric.shape != self.spike_shape:
            raise ConfigError(
                f"the photometric maps are {self.photometric.shape} but the spike sensor is {self.spike_shape}"
            )

    @property
    def canonical_shape(self) -> tuple[int, int]:
        return self.spike_shape[0] * SPIKE_TO_IMAGE_SCALE, self.spike_shape[1] * SPIKE_TO_IMAGE_SCALE

    def check_recording(self, recording) -> None:
        """ConfigError unless this calibration was made for ``recording``'s spike and RGB geometry."""
        spike, rgb = recording.meta.spike, recording.meta.rgb
        where = f" ({self.path})" if self.path else ""
        if (spike.height, spike.width) != self.spike_shape or (rgb.height, rgb.width) != self.rgb_shape:
            raise ConfigError(
                f"the calibration{where} is for spikes {self.spike_shape[1]}x{self.spike_shape[0]} and RGB "
                f"{self.rgb_shape[1]}x{self.rgb_shape[0]}, but {recording.path} has spikes "
                f"{spike.width}x{spike.height} and RGB {rgb.width}x{rgb.height}; calibrate this rig"
            )

    def homography(self) -> np.ndarray | None:
        return None if self.geometry is None else self.geometry.homography

    def warp_exposure(self, image: np.ndarray) -> np.ndarray:
        """An RGB frame (3, h_rgb, w_rgb) on the canonical grid (3, 4h, 4w). Without geometry the RGB frame
        must already be the canonical size (it is returned as is)."""
        image = np.asarray(image, dtype=np.float32)
        if image.shape[-2:] != self.rgb_shape:
            raise ConfigError(f"the image is {image.shape[-2:]} but the calibration's RGB camera is {self.rgb_shape}")
        if self.geometry is None:
            self._check_grid_without_geometry()
            return image
        return warp_to_canonical(image, self.geometry.homography, self.canonical_shape)

    def _check_grid_without_geometry(self) -> None:
        if self.rgb_shape != self.canonical_shape:
            raise ConfigError(
                f"the RGB frames ({self.rgb_shape[1]}x{self.rgb_shape[0]}) are not the canonical grid "
                f"({self.canonical_shape[1]}x{self.canonical_shape[0]}) and the calibration has no geometry; "
                "run 'spikereveal calibrate geometry'"
            )

    def warp_image_bgr8(self, image: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """A camera frame (h_rgb, w_rgb, 3) uint8 BGR on the canonical grid (4h, 4w, 3) uint8, into ``out``
        when given (what the deployed graph takes; ``warp_exposure`` is the float twin)."""
        image = np.asarray(image)
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ConfigError(f"expected a uint8 (h, w, 3) BGR frame, got {image.dtype} {image.shape}")
        if image.shape[:2] != self.rgb_shape:
            raise ConfigError(f"the image is {image.shape[:2]} but the calibration's RGB camera is {self.rgb_shape}")
        if self.geometry is not None:
            return warp_bgr8_to_canonical(image, self.geometry.homography, self.canonical_shape, out=out)
        self._check_grid_without_geometry()
        if out is None:
            return image.copy()
        np.copyto(out, image)
        return out

    def exposure_on_spike_clock(self, start_ns: int, duration_ns: int) -> tuple[int, int]:
        """(start_ns, duration_ns) of an exposure, moved from the RGB clock to the spike clock."""
        if self.clock is None:
            return int(start_ns), int(duration_ns)
        return self.clock.exposure_on_spike_clock(start_ns, duration_ns)

    def correct_counts(self, counts: np.ndarray, frames: int) -> np.ndarray:
        if self.photometric is None:
            return np.asarray(counts, dtype=np.float32)
        return self.photometric.correct_counts(counts, frames)

    def correct_rate(self, rate: np.ndarray) -> np.ndarray:
        if self.photometric is None:
            return np.asarray(rate, dtype=np.float32)
        return self.photometric.correct_rate(rate)

    def correct_spike_frames(self, frames: np.ndarray) -> np.ndarray:
        if self.photometric is None:
            return np.asarray(frames, dtype=np.float32)
        return self.photometric.correct_spike_frames(frames)

    def with_section(self, **sections) -> "RigCalibration":
        return replace(self, **sections)

    def summary(self) -> dict:
        """The residuals people look at, as a JSON-able dict."""
        out: dict = {}
        if self.geometry is not None:
            out["geometry"] = {"method": self.geometry.method, "residual_px": self.geometry.residual_px,
                               "inliers": self.geometry.inliers, "points": self.geometry.points}
        if self.clock is not None:
            uncertainty = self.clock.offset_uncertainty_ns
            out["time"] = {"offset_ns": round(self.clock.offset_ns, 1),
                           "offset_uncertainty_ns": None if uncertainty is None else round(uncertainty, 1),
                           "drift_ppm": round(self.clock.drift_ppm, 3), "drift_estimated": self.clock.drift_estimated,
                           "residual_ns": round(self.clock.residual_ns, 1), "exposures": self.clock.exposures}
        if self.photometric is not None:
            out["photometric"] = {"hot_pixels": int(self.photometric.hot_mask.sum()),
                                  "median_dark_rate": self.photometric.median_rate,
                                  "frames": self.photometric.frames}
        return out


# -- writing ----------------------------------------------------------------------------------------------
def _dark_npz_bytes(photometric: PhotometricCalibration) -> bytes:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, dark_rate=photometric.dark_rate, hot_pixels=photometric.hot_pixels)
    return buffer.getvalue()


def write_calibration(calibration: RigCalibration, path: str | os.PathLike) -> Path:
    """Write ``calibration`` to ``path`` (a .json file, or a directory: ``<dir>/calibration.json``); the
    photometric maps go to ``calibration_dark.npz`` beside it. Written via temporary files + rename, so a
    crash never leaves a half-written calibration."""
    path = Path(path)
    if path.is_dir():
        path = path / CALIBRATION_FILE
    data: dict = {
        "format": CALIBRATION_FORMAT,
        "version": CALIBRATION_VERSION,
        "spike": {"height": calibration.spike_shape[0], "width": calibration.spike_shape[1]},
        "rgb": {"height": calibration.rgb_shape[0], "width": calibration.rgb_shape[1]},
    }
    if calibration.geometry is not None:
        data["geometry"] = calibration.geometry.to_json()
    if calibration.clock is not None:
        data["time"] = calibration.clock.to_json()
    if calibration.photometric is not None:
        blob = _dark_npz_bytes(calibration.photometric)
        npz_path = path.with_name(DARK_MAPS_FILE if path.name == CALIBRATION_FILE else path.stem + "_dark.npz")
        _atomic_write(npz_path, blob)
        data["photometric"] = {"file": npz_path.name, "sha256": hashlib.sha256(blob).hexdigest(),
                               **calibration.photometric.to_json()}
    _atomic_write(path, (json.dumps(data, indent=2, default=_json_default) + "\n").encode("utf-8"))
    return path


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _atomic_write(path: Path, payload: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_bytes(payload)
    os.replace(temporary, path)


# -- reading ----------------------------------------------------------------------------------------------
class _Reader:
    def __init__(self, path: Path):
        self.path = path
        try:
            text = path.read_text(encoding="utf-8-sig")
        except FileNotFoundError:
            raise FormatError(path, "is missing; run 'spikereveal calibrate' to create it") from None
        except UnicodeDecodeError as exc:
            raise FormatError(path, f"is not UTF-8 text ({exc.reason})") from None
        try:
            self.data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise FormatError(path, f"is not valid JSON: {exc.msg} (column {exc.colno})", exc.lineno) from None
        self.lines = _json_key_lines(text)

    def fail(self, message: str, *keys) -> FormatError:
        while keys and keys not in self.lines:
            keys = keys[:-1]
        return FormatError(self.path, message, self.lines.get(keys, 1))

    def value(self, keys: tuple, kinds: tuple, kind_name: str, required: bool = True, default=None):
        parent = self.data
        for depth, key in enumerate(keys[:-1]):
            parent = parent.get(key) if isinstance(parent, dict) else None
            if not isinstance(parent, dict):
                raise self.fail(f"{'.'.join(keys[:depth + 1])!r} must be a JSON object", *keys[:depth + 1])
        name = ".".join(keys)
        if keys[-1] not in parent:
            if required:
                raise self.fail(f"required key {name!r} is missing", *keys[:-1])
            return default
        value = parent[keys[-1]]
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            raise self.fail(f"{name!r} must be {kind_name}, got {json.dumps(value)}", *keys)
        return value

    def number(self, keys: tuple, required: bool = True, default=None, allow_null: bool = False):
        kinds = (int, float, type(None)) if allow_null else (int, float)
        return self.value(keys, kinds, "a number" + (" or null" if allow_null else ""), required, default)

    def build(self, factory, keys: tuple):
        try:
            return factory()
        except ConfigError as exc:
            raise self.fail(str(exc), *keys) from None

    def calibration(self) -> RigCalibration:
        if not isinstance(self.data, dict):
            raise self.fail("must hold a JSON object")
        fmt = self.value(("format",), (str,), "a string")
        if fmt != CALIBRATION_FORMAT:
            raise self.fail(f"'format' is {fmt!r}, expected {CALIBRATION_FORMAT!r}: not a spikereveal calibration",
                            "format")
        version = self.value(("version",), (int,), "an integer")
        if version != CALIBRATION_VERSION:
            raise self.fail(
                f"calibration format version {version} is not supported (this spikereveal reads version "
                f"{CALIBRATION_VERSION}); upgrade spikereveal or re-run 'spikereveal calibrate'", "version")
        spike = tuple(self.value(("spike", k), (int,), "an integer") for k in ("height", "width"))
        rgb = tuple(self.value(("rgb", k), (int,), "an integer") for k in ("height", "width"))
        geometry = self._geometry() if "geometry" in self.data else None
        clock = self._clock() if "time" in self.data else None
        photometric = self._photometric() if "photometric" in self.data else None
        return self.build(lambda: RigCalibration(spike, rgb, geometry, clock, photometric, self.path), ("spike",))

    def _geometry(self) -> GeometryCalibration:
        matrix = self.value(("geometry", "homography"), (list,), "a 3x3 array of numbers")
        if len(matrix) != 3 or not all(
            isinstance(row, list) and len(row) == 3
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in row)
            for row in matrix
        ):
            raise self.fail("'geometry.homography' must be a 3x3 array of numbers", "geometry", "homography")
        direction = self.value(("geometry", "direction"), (str,), "a string", required=False,
                               default="canonical_to_rgb")
        if direction != "canonical_to_rgb":
            raise self.fail(f"'geometry.direction' is {direction!r}; only 'canonical_to_rgb' is defined",
                            "geometry", "direction")
        fields = {
            "homography": np.asarray(matrix, dtype=np.float64),
            "method": self.value(("geometry", "method"), (str,), "a string"),
            "residual_px": self.number(("geometry", "residual_px"), allow_null=True),
            "inliers": self.value(("geometry", "inliers"), (int,), "an integer", required=False, default=0),
            "points": self.value(("geometry", "points"), (int,), "an integer", required=False, default=0),
            "exposures": self.value(("geometry", "exposures"), (list,), "a list", required=False, default=[]),
            "details": self.value(("geometry", "details"), (dict,), "an object", required=False, default={}),
        }
        return self.build(lambda: GeometryCalibration(**fields), ("geometry",))

    def _clock(self) -> ClockCalibration:
        fields = {
            "offset_ns": self.number(("time", "offset_ns")),
            "drift_ppm": self.number(("time", "drift_ppm"), required=False, default=0.0),
            "residual_ns": self.number(("time", "residual_ns"), required=False, default=0.0),
            "exposures": self.value(("time", "exposures"), (int,), "an integer", required=False, default=0),
            "reference_ns": self.value(("time", "reference_ns"), (int,), "an integer number of ns"),
            "frame_period_ns": self.number(("time", "frame_period_ns"), required=False, allow_null=True),
            "offset_uncertainty_ns": self.number(("time", "offset_uncertainty_ns"), required=False, allow_null=True),
            "drift_estimated": self.value(("time", "drift_estimated"), (bool,), "true or false", required=False,
                                          default=True),
            "drift_uncertainty_ppm": self.number(("time", "drift_uncertainty_ppm"), required=False, allow_null=True),
            "drift_note": self.value(("time", "drift_note"), (str, type(None)), "a string or null", required=False),
            "exposures_tried": self.value(("time", "exposures_tried"), (int, type(None)), "an integer or null",
                                          required=False),
        }
        return self.build(lambda: ClockCalibration(**fields), ("time",))

    def _photometric(self) -> PhotometricCalibration:
        name = self.value(("photometric", "file"), (str,), "a file name")
        if Path(name).name != name:
            raise self.fail(f"'photometric.file' must be a file name beside {self.path.name}, got {name!r}",
                            "photometric", "file")
        npz_path = self.path.parent / name
        try:
            blob = npz_path.read_bytes()
        except FileNotFoundError:
            raise self.fail(f"'photometric.file' names {npz_path}, which is missing; copy it along with "
                            f"{self.path.name} or re-run 'spikereveal calibrate dark'", "photometric", "file") from None
        digest = self.value(("photometric", "sha256"), (str,), "a hex digest", required=False)
        if digest is not None and hashlib.sha256(blob).hexdigest() != digest:
            raise self.fail(f"{npz_path.name} does not match its sha256 in {self.path.name} (a file from another "
                            "calibration?); re-run 'spikereveal calibrate dark'", "photometric", "sha256")
        try:
            with np.load(io.BytesIO(blob), allow_pickle=False) as maps:
                dark_rate = np.asarray(maps["dark_rate"])
                hot_pixels = np.asarray(maps["hot_pixels"])
        except (KeyError, ValueError, OSError) as exc:
            raise FormatError(npz_path, f"is not a dark-map file with 'dark_rate' and 'hot_pixels' ({exc})") from None
        if dark_rate.ndim != 2 or hot_pixels.ndim != 2 or hot_pixels.shape[1:] != (2,) or (
            hot_pixels.size and (hot_pixels.min() < 0 or np.any(hot_pixels.max(axis=0) >= dark_rate.shape))
        ):
            raise FormatError(npz_path, f"holds maps of inconsistent shape: dark_rate {dark_rate.shape}, hot_pixels "
                                        f"{hot_pixels.shape}")
        hot = np.zeros(dark_rate.shape, dtype=bool)
        hot[hot_pixels[:, 0], hot_pixels[:, 1]] = True
        fields = {
            "dark_rate": dark_rate,
            "hot_mask": hot,
            "frames": self.value(("photometric", "frames"), (int,), "an integer"),
            "median_rate": self.number(("photometric", "median_rate")),
            "hot_threshold_rate": self.number(("photometric", "hot_threshold_rate")),
            "details": self.value(("photometric", "details"), (dict,), "an object", required=False, default={}),
        }
        return self.build(lambda: PhotometricCalibration(**fields), ("photometric",))


def read_calibration(path: str | os.PathLike) -> RigCalibration:
    """Read and validate a calibration file (or ``<dir>/calibration.json``)."""
    path = Path(path)
    if path.is_dir():
        path = path / CALIBRATION_FILE
    return _Reader(path).calibration()


def update_calibration(path: str | os.PathLike, spike_shape, rgb_shape, **sections) -> RigCalibration:
    """Replace some sections (``geometry=``, ``clock=``, ``photometric=``) of the calibration at ``path``
    (created if missing), keeping the others; refuses a file made for another geometry."""
    path = Path(path)
    if path.is_dir():
        path = path / CALIBRATION_FILE
    if path.exists():
        current = read_calibration(path)
        if current.spike_shape != tuple(spike_shape) or current.rgb_shape != tuple(rgb_shape):
            raise FormatError(path, f"was made for spikes {current.spike_shape} / RGB {current.rgb_shape}, not "
                                    f"{tuple(spike_shape)} / {tuple(rgb_shape)}; write to another --out")
        calibration = current.with_section(**sections)
    else:
        calibration = RigCalibration(tuple(spike_shape), tuple(rgb_shape), **sections)
    write_calibration(calibration, path)
    return replace(calibration, path=path)


def load_rig_calibration(recording_or_path, calibration_path: str | os.PathLike | None = None,
                         use_calibration: bool = True) -> RigCalibration | None:
    """The calibration the pipeline should apply, or None.

    ``recording_or_path``: an open Recording or a recording directory; its ``calibration.json`` is used
    when present. ``calibration_path`` (``--calibration PATH``) names another file instead;
    ``use_calibration=False`` (``--no-calibration``) returns None. A calibration made for another
    geometry is a ConfigError.
    """
    if not use_calibration:
        return None
    if not hasattr(recording_or_path, "meta"):
        from spikereveal.recording import open_recording

        with open_recording(recording_or_path, strict=False) as recording:
            return load_rig_calibration(recording, calibration_path, use_calibration)
    recording = recording_or_path
    path = Path(calibration_path) if calibration_path is not None else recording.calibration_path
    if path is None:
        return None
    calibration = read_calibration(path)
    calibration.check_recording(recording)
    return calibration
