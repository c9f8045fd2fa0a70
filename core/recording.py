"""The recording directory (SPEC §5): read, validate and write it.

    meta.json        format, version, spike geometry/rate/t0/orientation/bit order, rgb size, preset, notes
    spikes.dat       packed spike frames (SPEC §2); frame n at t0_ns + n*1e9/rate_hz
    exposures.csv    "index,start_ns,duration_ns,image" (image: PNG path relative to the recording)
    gt.csv           optional, "exposure_index,t_ns,image": sharp ground truth (simulation only)
    calibration.json optional, written by ``spikereveal calibrate``

Every contract violation is a :class:`RecordingError` naming the file and, for CSV and JSON files, the line.
Unknown keys and columns are ignored. Ground-truth images have the RGB size or the canonical size
(4x the spike grid, where the network's outputs live); all of them the same. ``gt.csv`` is read and validated
on first use of the ground truth (``Recording.ground_truth`` & co), not at open: only scoring (``eval``) uses
it, so a recording whose ground truth another command does not need never fails there.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import re
import shutil
import struct
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from spikereveal.errors import ConfigError, FormatError, RecordingError
from spikereveal.kernels.images import SPIKE_TO_IMAGE_SCALE
from spikereveal.kernels.packing import BIT_ORDERS, as_packed, packed_frame_bytes
from spikereveal.kernels.timing import (
    DEFAULT_K,
    DEFAULT_MARGIN_FRAMES,
    ExposureWindow,
    exposure_window,
)
from spikereveal.spikefile import SpikeFile, SpikeFileWriter

__all__ = [
    "CALIBRATION_FILE",
    "EXPOSURES_FILE",
    "EXPOSURES_HEADER",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "GT_FILE",
    "GT_HEADER",
    "META_FILE",
    "SPIKES_FILE",
    "Exposure",
    "GroundTruthFrame",
    "Recording",
    "RecordingMeta",
    "RecordingWriter",
    "RgbMeta",
    "SpikeMeta",
    "open_recording",
]

logger = logging.getLogger(__name__)

FORMAT_NAME = "spikereveal-recording"
FORMAT_VERSION = 1
META_FILE = "meta.json"
SPIKES_FILE = "spikes.dat"
EXPOSURES_FILE = "exposures.csv"
GT_FILE = "gt.csv"
CALIBRATION_FILE = "calibration.json"
EXPOSURES_DIR = "exposures"
GT_DIR = "gt"
EXPOSURES_HEADER = ("index", "start_ns", "duration_ns", "image")
GT_HEADER = ("exposure_index", "t_ns", "image")
PIXEL_FORMATS = ("bgr8",)

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_COLOR_TYPES = {0: "gray", 2: "RGB", 3: "palette", 4: "gray+alpha", 6: "RGBA"}


# -- metadata ----------------------------------------------------------------------------------------
def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _check_positive_int(name: str, value) -> None:
    if not _is_int(value) or value <= 0:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")


def _check_int64(name: str, value) -> None:
    if not _is_int(value) or not _INT64_MIN <= int(value) <= _INT64_MAX:
        raise ConfigError(f"{name} must be an integer number of nanoseconds (int64), got {value!r}")


def _normalise(instance) -> None:
    """Replace numpy scalars in a frozen dataclass by Python ones (JSON and equality stay simple)."""
    for name, value in vars(instance).items():
        if isinstance(value, np.generic):
            object.__setattr__(instance, name, value.item())


@dataclass(frozen=True)
class SpikeMeta:
    """The spike stream: geometry, clock and how ``spikes.dat`` stores its frames."""

    height: int
    width: int
    rate_hz: float
    t0_ns: int
    flip_rows: bool
    bit_order: str

    def __post_init__(self):
        _check_positive_int("spike height", self.height)
        _check_positive_int("spike width", self.width)
        packed_frame_bytes(self.height, self.width)  # H*W must be a multiple of 8
        rate = self.rate_hz
        if isinstance(rate, (bool, np.bool_)) or not isinstance(rate, (int, float, np.integer, np.floating)):
            raise ConfigError(f"spike rate_hz must be a number, got {rate!r}")
        if not math.isfinite(rate) or rate <= 0:
            raise ConfigError(f"spike rate_hz must be positive and finite, got {rate!r}")
        _check_int64("spike t0_ns", self.t0_ns)
        if not isinstance(self.flip_rows, (bool, np.bool_)):
            raise ConfigError(f"spike flip_rows must be true or false, got {self.flip_rows!r}")
        if self.bit_order not in BIT_ORDERS:
            raise ConfigError(f"spike bit_order must be one of {BIT_ORDERS}, got {self.bit_order!r}")
        _normalise(self)

    @property
    def frame_bytes(self) -> int:
        return packed_frame_bytes(self.height, self.width)

    @property
    def canonical_shape(self) -> tuple[int, int]:
        """(height, width) of the network's grid, 4x the spike grid."""
        return self.height * SPIKE_TO_IMAGE_SCALE, self.width * SPIKE_TO_IMAGE_SCALE


@dataclass(frozen=True)
class RgbMeta:
    """The RGB camera's frames as stored: any size; 8-bit BGR is the only pixel format so far."""

    height: int
    width: int
    pixel_format: str = "bgr8"

    def __post_init__(self):
        _check_positive_int("rgb height", self.height)
        _check_positive_int("rgb width", self.width)
        if self.pixel_format not in PIXEL_FORMATS:
            raise ConfigError(f"rgb pixel_format must be one of {PIXEL_FORMATS}, got {self.pixel_format!r}")
        _normalise(self)


@dataclass(frozen=True)
class RecordingMeta:
    spike: SpikeMeta
    rgb: RgbMeta
    preset: str | None = None
    notes: str = ""

    def __post_init__(self):
        if not isinstance(self.spike, SpikeMeta) or not isinstance(self.rgb, RgbMeta):
            raise ConfigError("RecordingMeta needs a SpikeMeta and an RgbMeta")
        if self.preset is not None and not isinstance(self.preset, str):
            raise ConfigError(f"preset must be a name or None, got {self.preset!r}")
        if not isinstance(self.notes, str):
            raise ConfigError(f"notes must be text, got {self.notes!r}")

    def to_json(self) -> dict:
        spike = asdict(self.spike)
        spike["flip_rows"] = bool(spike["flip_rows"])
        return {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "spike": spike,
            "rgb": asdict(self.rgb),
            "preset": self.preset,
            "notes": self.notes,
        }


@dataclass(frozen=True)
class Exposure:
    """One RGB exposure; ``image`` is a PNG path relative to the recording."""

    index: int
    start_ns: int
    duration_ns: int
    image: str

    def __post_init__(self):
        if not _is_int(self.index) or self.index < 0:
            raise ConfigError(f"exposure index must be a non-negative integer, got {self.index!r}")
        _check_int64("exposure start_ns", self.start_ns)
        _check_int64("exposure duration_ns", self.duration_ns)
        if self.duration_ns <= 0:
            raise ConfigError(f"exposure duration_ns must be positive, got {self.duration_ns}")
        _check_image_path(self.image)
        _normalise(self)

    @property
    def end_ns(self) -> int:
        return self.start_ns + self.duration_ns


@dataclass(frozen=True)
class GroundTruthFrame:
    """A sharp frame at time ``t_ns`` inside exposure ``exposure_index`` (simulation only)."""

    exposure_index: int
    t_ns: int
    image: str

    def __post_init__(self):
        if not _is_int(self.exposure_index) or self.exposure_index < 0:
            raise ConfigError(f"exposure_index must be a non-negative integer, got {self.exposure_index!r}")
        _check_int64("ground-truth t_ns", self.t_ns)
        _check_image_path(self.image)
        _normalise(self)


def _check_image_path(image) -> None:
    if not isinstance(image, str) or not image:
        raise ConfigError(f"image must be a non-empty relative path, got {image!r}")
    if os.path.isabs(image) or image.startswith(("/", "\\")):
        raise ConfigError(f"image must be a path relative to the recording, got absolute {image!r}")


# -- JSON with line numbers ----------------------------------------------------------------------------
_JSON_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|[{}\[\]:,]|\n')


def _json_key_lines(text: str) -> dict[tuple, int]:
    """Line of every object key in (valid) JSON text, keyed by its path; ``()`` -> line of the root."""
    lines: dict[tuple, int] = {}
    line = 1
    stack: list[list] = []  # per open container: [path, is_object, expecting_key, last_key]
    for match in _JSON_TOKEN.finditer(text):
        token = match.group()
        if token == "\n":  # JSON strings cannot hold raw newlines, so this counts lines exactly
            line += 1
        elif token in ("{", "["):
            if not stack:
                path = ()
            else:
                parent = stack[-1]
                path = parent[0] + ((parent[3],) if parent[1] else ("[]",))
            lines.setdefault(path, line)
            stack.append([path, token == "{", True, None])
        elif token in ("}", "]"):
            stack.pop()
        elif token == ",":
            stack[-1][2] = True
        elif token == ":":
            stack[-1][2] = False
        elif stack and stack[-1][1] and stack[-1][2]:  # a string where a key belongs
            key = json.loads(token)
            stack[-1][3] = key
            lines[stack[-1][0] + (key,)] = line
    return lines


class _MetaParser:
    def __init__(self, path: Path):
        self.path = path
        try:
            self.text = path.read_text(encoding="utf-8-sig")  # tolerate a BOM from Windows editors
        except FileNotFoundError:
            raise RecordingError(path, "is missing; every recording needs meta.json (SPEC §5)") from None
        except UnicodeDecodeError as exc:
            raise RecordingError(path, f"is not UTF-8 text ({exc.reason})") from None
        try:
            self.data = json.loads(self.text)
        except json.JSONDecodeError as exc:
            message = f"is not valid JSON: {exc.msg} (column {exc.colno})"
            raise RecordingError(path, message, exc.lineno) from None
        self.lines = _json_key_lines(self.text)

    def line(self, *keys) -> int:
        while keys and keys not in self.lines:
            keys = keys[:-1]
        return self.lines.get(keys, 1)

    def fail(self, message: str, *keys) -> RecordingError:
        return RecordingError(self.path, message, self.line(*keys))

    def section(self, *keys) -> dict:
        value = self.data
        for depth, key in enumerate(keys):
            if key not in value:
                where = f"the {'.'.join(keys[:depth])!r} object" if depth else "the top level"
                raise self.fail(f"required key {key!r} is missing from {where}", *keys[:depth])
            value = value[key]
            if not isinstance(value, dict):
                raise self.fail(f"{'.'.join(keys[: depth + 1])!r} must be a JSON object", *keys[: depth + 1])
        return value

    def get(self, keys: tuple, kinds: tuple, kind_name: str, required: bool = True, default=None):
        parent = self.section(*keys[:-1])
        name = ".".join(keys)
        if keys[-1] not in parent:
            if required:
                where = f"the {'.'.join(keys[:-1])!r} object" if len(keys) > 1 else "the top level"
                raise self.fail(f"required key {keys[-1]!r} is missing from {where}", *keys[:-1])
            return default
        value = parent[keys[-1]]
        bool_ok = bool in kinds
        if not isinstance(value, kinds) or (isinstance(value, bool) and not bool_ok):
            raise self.fail(f"{name!r} must be {kind_name}, got {json.dumps(value)}", *keys)
        return value

    def meta(self) -> RecordingMeta:
        if not isinstance(self.data, dict):
            raise self.fail("must hold a JSON object")
        fmt = self.get(("format",), (str,), "a string")
        if fmt != FORMAT_NAME:
            message = f"'format' is {fmt!r}, expected {FORMAT_NAME!r}: not a spikereveal recording"
            raise self.fail(message, "format")
        version = self.get(("version",), (int,), "an integer")
        if version != FORMAT_VERSION:
            raise self.fail(
                f"recording format version {version} is not supported (this spikereveal reads version "
                f"{FORMAT_VERSION}); upgrade spikereveal or rewrite the recording",
                "version",
            )
        spike_fields = {
            "height": self.get(("spike", "height"), (int,), "an integer"),
            "width": self.get(("spike", "width"), (int,), "an integer"),
            "rate_hz": self.get(("spike", "rate_hz"), (int, float), "a number"),
            "t0_ns": self.get(("spike", "t0_ns"), (int,), "an integer number of nanoseconds"),
            "flip_rows": self.get(("spike", "flip_rows"), (bool,), "true or false"),
            "bit_order": self.get(("spike", "bit_order"), (str,), "a string"),
        }
        rgb_fields = {
            "height": self.get(("rgb", "height"), (int,), "an integer"),
            "width": self.get(("rgb", "width"), (int,), "an integer"),
            "pixel_format": self.get(("rgb", "pixel_format"), (str,), "a string"),
        }
        preset = self.get(("preset",), (str, type(None)), "a name or null", required=False)
        notes = self.get(("notes",), (str,), "text", required=False, default="")
        spike = self._build(SpikeMeta, spike_fields, "spike")
        rgb = self._build(RgbMeta, rgb_fields, "rgb")
        return RecordingMeta(spike=spike, rgb=rgb, preset=preset, notes=notes)

    def _build(self, cls, fields: dict, section: str):
        try:
            return cls(**fields)
        except ConfigError as exc:
            # point at the offending key where the message names one
            key = next((k for k in fields if re.search(rf"\b{k}\b", str(exc))), None)
            raise self.fail(str(exc), section, *((key,) if key else ())) from None


# -- CSV ------------------------------------------------------------------------------------------------
_INT_TEXT = re.compile(r"[+-]?[0-9]+")


def _csv_rows(path: Path, header: tuple[str, ...]):
    """Yield ``(line, {column: text})`` for the data rows; checks the header's required columns."""
    try:
        handle = open(path, newline="", encoding="utf-8")
    except FileNotFoundError:
        message = f"is missing; expected a CSV file with header {','.join(header)!r}"
        raise RecordingError(path, message) from None
    with handle:
        reader = csv.reader(handle)
        try:
            columns = next(reader, None)
            if columns is None:
                raise RecordingError(path, f"is empty; expected the header {','.join(header)!r}", 1)
            columns = [c.strip() for c in columns]
            missing = [c for c in header if c not in columns]
            if missing:
                raise RecordingError(
                    path,
                    f"header {','.join(columns)!r} lacks column(s) {missing}; expected {','.join(header)!r}",
                    reader.line_num,
                )
            positions = {name: columns.index(name) for name in header}
            for row in reader:
                if not row or all(not cell.strip() for cell in row):
                    continue
                if len(row) != len(columns):
                    raise RecordingError(
                        path, f"has {len(row)} fields, the header has {len(columns)}", reader.line_num
                    )
                yield reader.line_num, {name: row[i].strip() for name, i in positions.items()}
        except csv.Error as exc:
            raise RecordingError(path, f"is not valid CSV: {exc}", reader.line_num) from None
        except UnicodeDecodeError as exc:
            raise RecordingError(path, f"is not UTF-8 text ({exc.reason})", reader.line_num + 1) from None


def _csv_int(path: Path, line: int, column: str, text: str) -> int:
    if not _INT_TEXT.fullmatch(text):
        unit = " number of nanoseconds" if column.endswith("_ns") else ""
        raise RecordingError(path, f"{column} must be an integer{unit}, got {text!r}", line)
    value = int(text)
    if not _INT64_MIN <= value <= _INT64_MAX:
        raise RecordingError(path, f"{column} {value} does not fit in int64", line)
    return value


# -- images ---------------------------------------------------------------------------------------------
def _png_header(path: Path) -> tuple[int, int, int, int]:
    """(height, width, bit depth, colour type) from a PNG's IHDR chunk, without decoding the image."""
    with open(path, "rb") as handle:
        head = handle.read(26)
    if len(head) < 26 or head[:8] != _PNG_SIGNATURE or head[12:16] != b"IHDR":
        raise ValueError("is not a PNG file")
    width, height = struct.unpack(">II", head[16:24])
    return height, width, head[24], head[25]


def _image_problem(path: Path, allowed_shapes: list[tuple[int, int]]) -> str | None:
    """Why the PNG at ``path`` is not an 8-bit colour image of an allowed size; None if it is."""
    try:
        height, width, depth, color = _png_header(path)
    except FileNotFoundError:
        return "does not exist"
    except (OSError, ValueError) as exc:
        return str(exc) if isinstance(exc, ValueError) else f"cannot be read ({exc})"
    if depth != 8 or color != 2:
        kind = _PNG_COLOR_TYPES.get(color, f"colour type {color}")
        return f"is a {depth}-bit {kind} PNG; expected an 8-bit RGB PNG (pixel_format bgr8)"
    if (height, width) not in allowed_shapes:
        expected = " or ".join(f"{w}x{h}" for h, w in allowed_shapes)
        return f"is {width}x{height} (width x height), expected {expected}"
    return None


def _load_image(path: Path) -> np.ndarray:
    import cv2  # imported here: only image I/O needs OpenCV

    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError("could not be decoded")
    return image


def _planar_float(image_bgr8: np.ndarray) -> np.ndarray:
    """uint8 (H, W, 3) -> float32 (3, H, W) in [0, 1] (float32 division by 255)."""
    return np.ascontiguousarray(image_bgr8.transpose(2, 0, 1), dtype=np.float32) / np.float32(255.0)


def _to_bgr8(image: np.ndarray, height: int, width: int, what: str) -> np.ndarray:
    """uint8 (H, W, 3) BGR, or float (3, H, W) BGR in [0, 1] (rounded) -> uint8 (H, W, 3)."""
    image = np.asarray(image)
    if image.dtype == np.uint8 and image.shape == (height, width, 3):
        return np.ascontiguousarray(image)
    if image.dtype in (np.float32, np.float64) and image.shape == (3, height, width):
        if not np.all(np.isfinite(image)):
            raise ConfigError(f"{what} has NaN or infinite values")
        scaled = np.rint(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)
        return np.ascontiguousarray(scaled.transpose(1, 2, 0))
    raise ConfigError(
        f"{what} must be uint8 ({height}, {width}, 3) BGR or float32 (3, {height}, {width}) BGR in [0, 1], "
        f"got {image.dtype} {image.shape}"
    )


# -- reading ----------------------------------------------------------------------------------------------
class Recording:
    """An opened, validated recording. Exposures are addressed by their ``index`` column."""

    def __init__(self, path: Path, strict: bool, margin_frames: int):
        self.path = path
        self.strict = strict
        self.margin_frames = margin_frames
        if not path.is_dir():
            raise RecordingError(path, "is not a recording directory (it does not exist or is a file)")
        self.meta = _MetaParser(path / META_FILE).meta()
        self.spikes = self._open_spikes()
        try:
            self._line: dict[tuple, int] = {}
            self.exposures = self._read_exposures()
            self._by_index = {exposure.index: exposure for exposure in self.exposures}
            self._ground_truth: tuple[GroundTruthFrame, ...] | None = None  # gt.csv: read on first use
            self._ground_truth_shape: tuple[int, int] | None = None
            self._check_windows()
        except BaseException:
            self.spikes.close()
            raise

    # -- validation at open -------------------------------------------------------------------------
    def _open_spikes(self) -> SpikeFile:
        spike = self.meta.spike
        path = self.path / SPIKES_FILE
        if not path.is_file():
            raise RecordingError(path, "is missing; every recording needs its spike frames (SPEC §5)")
        spikes = SpikeFile(path, spike.height, spike.width, spike.flip_rows, spike.bit_order)
        if spikes.truncated_bytes:
            message = (
                f"is truncated: {spikes.truncated_bytes} trailing bytes after {spikes.frame_count} whole "
                f"frames of {spikes.stored_frame_bytes} bytes ({spike.height}x{spike.width})"
            )
            if self.strict:
                raise RecordingError(
                    path, message + "; open with strict=False to use the whole frames and skip exposures "
                    "whose spike window is incomplete"
                )
            logger.warning("%s: %s; the partial frame is ignored", path, message)
        return spikes

    def _read_exposures(self) -> tuple[Exposure, ...]:
        csv_path = self.path / EXPOSURES_FILE
        rgb_shape = [(self.meta.rgb.height, self.meta.rgb.width)]
        exposures: list[Exposure] = []
        for line, row in _csv_rows(csv_path, EXPOSURES_HEADER):
            index = _csv_int(csv_path, line, "index", row["index"])
            start = _csv_int(csv_path, line, "start_ns", row["start_ns"])
            duration = _csv_int(csv_path, line, "duration_ns", row["duration_ns"])
            try:
                exposure = Exposure(index, start, duration, row["image"])
            except ConfigError as exc:
                raise RecordingError(csv_path, str(exc), line) from None
            if ("exposure", index) in self._line:
                message = f"duplicate exposure index {index} (first on line {self._line[('exposure', index)]})"
                raise RecordingError(csv_path, message, line)
            if exposures:
                previous = exposures[-1]
                if index < previous.index:
                    raise RecordingError(
                        csv_path, f"exposure indices must increase: {index} follows {previous.index}", line
                    )
                if start <= previous.start_ns:
                    raise RecordingError(
                        csv_path,
                        f"exposures are not in time order: start_ns {start} is not after the previous "
                        f"exposure's {previous.start_ns}; sort the rows by start_ns",
                        line,
                    )
                if start < previous.end_ns:
                    raise RecordingError(
                        csv_path,
                        f"exposure {index} starts at {start} ns, before exposure {previous.index} ends at "
                        f"{previous.end_ns} ns; an RGB camera cannot expose twice at once",
                        line,
                    )
            problem = _image_problem(self.path / exposure.image, rgb_shape)
            if problem:
                raise RecordingError(csv_path, f"exposure image {exposure.image!r} {problem}", line)
            self._line[("exposure", index)] = line
            exposures.append(exposure)
        return tuple(exposures)

    @property
    def ground_truth(self) -> tuple[GroundTruthFrame, ...]:
        """The frames of ``gt.csv`` (empty without one), read and validated on first use: RecordingError then
        names the line of any violation."""
        if self._ground_truth is None:
            self._ground_truth = self._read_ground_truth()
        return self._ground_truth

    @property
    def ground_truth_shape(self) -> tuple[int, int] | None:
        """(height, width) of the ground-truth images; None without ground truth."""
        self.ground_truth  # noqa: B018 (reads gt.csv on first use)
        return self._ground_truth_shape

    def _read_ground_truth(self) -> tuple[GroundTruthFrame, ...]:
        csv_path = self.path / GT_FILE
        if not csv_path.exists():
            return ()
        allowed = [(self.meta.rgb.height, self.meta.rgb.width), self.meta.spike.canonical_shape]
        frames: list[GroundTruthFrame] = []
        seen: dict[tuple[int, int], int] = {}
        shape = None
        for line, row in _csv_rows(csv_path, GT_HEADER):
            exposure_index = _csv_int(csv_path, line, "exposure_index", row["exposure_index"])
            t_ns = _csv_int(csv_path, line, "t_ns", row["t_ns"])
            try:
                frame = GroundTruthFrame(exposure_index, t_ns, row["image"])
            except ConfigError as exc:
                raise RecordingError(csv_path, str(exc), line) from None
            exposure = self._by_index.get(exposure_index)
            if exposure is None:
                raise RecordingError(
                    csv_path, f"exposure_index {exposure_index} is not an exposure in {EXPOSURES_FILE}", line
                )
            if not exposure.start_ns <= t_ns <= exposure.end_ns:
                raise RecordingError(
                    csv_path,
                    f"t_ns {t_ns} is outside exposure {exposure_index} "
                    f"[{exposure.start_ns}, {exposure.end_ns}] ns",
                    line,
                )
            key = (exposure_index, t_ns)
            if key in seen:
                raise RecordingError(
                    csv_path, f"duplicate ground truth for exposure {exposure_index} at {t_ns} ns "
                    f"(first on line {seen[key]})", line
                )
            problem = _image_problem(self.path / frame.image, [shape] if shape else allowed)
            if problem:
                raise RecordingError(
                    csv_path,
                    f"ground-truth image {frame.image!r} {problem}"
                    + (" (all ground-truth images must have one size)" if shape else ""),
                    line,
                )
            if shape is None:
                shape = _png_header(self.path / frame.image)[:2]
            seen[key] = line
            self._line[("gt",) + key] = line
            frames.append(frame)
        self._ground_truth_shape = shape
        return tuple(frames)

    def _check_windows(self) -> None:
        incomplete = self.incomplete_exposures()
        if not incomplete:
            return
        frames = self.spikes.frame_count
        first = self._by_index[incomplete[0]]
        window = self.exposure_window(first.index)
        detail = (
            f"{len(incomplete)} exposure(s) need spike frames outside the data [0, {frames}) with a margin "
            f"of {self.margin_frames} frames; the first, exposure {first.index}, needs "
            f"[{window.window_first}, {window.window_stop})"
        )
        if self.strict:
            raise RecordingError(
                self.path / EXPOSURES_FILE,
                detail + "; open with strict=False to skip such exposures",
                self._line[("exposure", first.index)],
            )
        logger.warning("%s: %s; they are skipped and listed (spikereveal deblur: on its last line and under "
                       "skipped_exposures in summary.json; eval: in its report)", self.path, detail)

    # -- access ----------------------------------------------------------------------------------------
    @property
    def has_ground_truth(self) -> bool:
        return bool(self.ground_truth)

    @property
    def calibration_path(self) -> Path | None:
        path = self.path / CALIBRATION_FILE
        return path if path.is_file() else None

    def exposure(self, index: int) -> Exposure:
        try:
            return self._by_index[index]
        except (KeyError, TypeError):
            raise ConfigError(f"{self.path}: no exposure with index {index!r}") from None

    def image_path(self, item: Exposure | GroundTruthFrame) -> Path:
        return self.path / item.image

    def _read_image(self, item, csv_name: str, line: int, allowed: list[tuple[int, int]]) -> np.ndarray:
        csv_path = self.path / csv_name
        problem = _image_problem(self.image_path(item), allowed)
        if problem is None:
            try:
                image = _load_image(self.image_path(item))
            except ValueError as exc:
                problem = str(exc)
            else:
                if image.shape[:2] not in allowed:
                    problem = f"decodes to {image.shape[1]}x{image.shape[0]}"
        if problem:
            raise RecordingError(csv_path, f"image {item.image!r} {problem}", line)
        return image

    def read_exposure_bgr8(self, index: int) -> np.ndarray:
        """The blurry RGB frame of exposure ``index`` as decoded: uint8 (h, w, 3), BGR."""
        exposure = self.exposure(index)
        rgb = self.meta.rgb
        return self._read_image(
            exposure, EXPOSURES_FILE, self._line[("exposure", index)], [(rgb.height, rgb.width)]
        )

    def read_exposure(self, index: int) -> np.ndarray:
        """The blurry RGB frame of exposure ``index``: float32 (3, h, w), BGR, values in [0, 1]."""
        return _planar_float(self.read_exposure_bgr8(index))

    def ground_truth_for(self, index: int) -> tuple[GroundTruthFrame, ...]:
        """The ground-truth frames of exposure ``index`` in time order (empty if it has none)."""
        self.exposure(index)
        frames = [frame for frame in self.ground_truth if frame.exposure_index == index]
        return tuple(sorted(frames, key=lambda frame: frame.t_ns))

    def read_ground_truth(self, frame: GroundTruthFrame | int) -> np.ndarray:
        """A ground-truth frame (or its position in ``ground_truth``) as float32 (3, H, W) BGR in [0, 1]."""
        if _is_int(frame):
            if not -len(self.ground_truth) <= frame < len(self.ground_truth):
                raise ConfigError(f"{self.path}: no ground-truth frame at position {frame}")
            frame = self.ground_truth[frame]
        key = ("gt", frame.exposure_index, frame.t_ns)
        if key not in self._line:
            raise ConfigError(f"{self.path}: {frame!r} is not a ground-truth frame of this recording")
        return _planar_float(self._read_image(frame, GT_FILE, self._line[key], [self.ground_truth_shape]))

    def exposure_window(
        self, index: int, k: int = DEFAULT_K, margin_frames: int | None = None
    ) -> ExposureWindow:
        """Spike frames exposure ``index`` needs, and the spike index of each of its ``k`` output times."""
        exposure = self.exposure(index)
        spike = self.meta.spike
        margin = self.margin_frames if margin_frames is None else margin_frames
        return exposure_window(exposure.start_ns, exposure.duration_ns, spike.t0_ns, spike.rate_hz, k, margin)

    def window_complete(self, index: int, k: int = DEFAULT_K, margin_frames: int | None = None) -> bool:
        return self.exposure_window(index, k, margin_frames).inside(self.spikes.frame_count)

    def incomplete_exposures(self, margin_frames: int | None = None) -> list[int]:
        """Indices of the exposures whose window (exposure +- margin) is not wholly inside the spike data."""
        return [
            exposure.index
            for exposure in self.exposures
            if not self.window_complete(exposure.index, DEFAULT_K, margin_frames)
        ]

    def window_spikes(self, index: int, margin_frames: int | None = None) -> np.ndarray:
        """Canonical packed frames of exposure ``index``'s whole window; ConfigError if it is incomplete."""
        window = self.exposure_window(index, DEFAULT_K, margin_frames)
        if not window.inside(self.spikes.frame_count):
            raise ConfigError(
                f"{self.path}: exposure {index} needs spike frames [{window.window_first}, "
                f"{window.window_stop}) but the data holds [0, {self.spikes.frame_count})"
            )
        return self.spikes.read(window.window_first, window.window_stop)

    def close(self) -> None:
        self.spikes.close()

    def __enter__(self) -> Recording:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"Recording({str(self.path)!r}, exposures={len(self.exposures)}, "
            f"spike_frames={self.spikes.frame_count}, ground_truth="
            f"{'unread' if self._ground_truth is None else len(self._ground_truth)})"
        )


def open_recording(
    path: str | os.PathLike, *, strict: bool = True, margin_frames: int = DEFAULT_MARGIN_FRAMES
) -> Recording:
    """Open and validate a recording directory.

    ``strict=False`` tolerates only a truncated trailing spike frame and exposures whose window
    (exposure +- ``margin_frames``) lies outside the spike data (logged; see ``incomplete_exposures()``),
    so that offline processing can skip them. Every other violation raises RecordingError.
    """
    if margin_frames < DEFAULT_MARGIN_FRAMES:
        raise ConfigError(
            f"margin_frames must be at least half the LDN spike window ({DEFAULT_MARGIN_FRAMES}), "
            f"got {margin_frames}"
        )
    return Recording(Path(path), strict=bool(strict), margin_frames=int(margin_frames))


# -- writing ------------------------------------------------------------------------------------------
_RECORDING_ENTRIES = (
    META_FILE, SPIKES_FILE, EXPOSURES_FILE, GT_FILE, CALIBRATION_FILE, EXPOSURES_DIR, GT_DIR
)


class RecordingWriter:
    """Writes a recording directory. ``meta.json`` is written last, by ``close()``: a recording whose
    writer did not finish (an exception inside the ``with`` block) has none and fails to open.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        spike: SpikeMeta,
        rgb: RgbMeta,
        preset: str | None = None,
        notes: str = "",
        overwrite: bool = False,
    ):
        self.path = Path(path)
        self.meta = RecordingMeta(spike=spike, rgb=rgb, preset=preset, notes=notes)
        self._prepare_directory(overwrite)
        (self.path / EXPOSURES_DIR).mkdir()
        self.exposures: list[Exposure] = []
        self.ground_truth: list[GroundTruthFrame] = []
        self._gt_shape: tuple[int, int] | None = None
        self._spikes = SpikeFileWriter(
            self.path / SPIKES_FILE, spike.height, spike.width, bool(spike.flip_rows), spike.bit_order
        )
        self._finished = False

    def _prepare_directory(self, overwrite: bool) -> None:
        if self.path.exists() and not self.path.is_dir():
            raise ConfigError(f"{self.path} exists and is not a directory; choose another output path")
        if self.path.is_dir() and any(self.path.iterdir()):
            if not overwrite:
                raise ConfigError(
                    f"{self.path} exists and is not empty; choose another output path or allow overwriting"
                )
            # remove only what a recording consists of, never unrelated files
            for name in _RECORDING_ENTRIES:
                entry = self.path / name
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry)
                elif entry.exists() or entry.is_symlink():
                    entry.unlink()
        self.path.mkdir(parents=True, exist_ok=True)

    @property
    def frames_written(self) -> int:
        return self._spikes.frames_written

    def _check_open(self) -> None:
        if self._finished:
            raise ConfigError(f"{self.path}: the recording writer is closed")

    def append_spikes(self, packed_block: np.ndarray) -> None:
        """Append canonical packed spike frames ``(N, H*W/8)``; frame numbers continue from the last block."""
        self._check_open()
        spike = self.meta.spike
        self._spikes.append(as_packed(packed_block, spike.height, spike.width))

    def add_exposure(self, start_ns: int, duration_ns: int, image: np.ndarray) -> int:
        """Add an exposure (after the previous one ends) and its blurry image; returns its index.

        ``image``: uint8 (h, w, 3) BGR as OpenCV reads it, or float (3, h, w) BGR in [0, 1].
        """
        self._check_open()
        index = len(self.exposures)
        exposure = Exposure(index, start_ns, duration_ns, f"{EXPOSURES_DIR}/{index:06d}.png")
        if self.exposures and exposure.start_ns < self.exposures[-1].end_ns:
            previous = self.exposures[-1]
            raise ConfigError(
                f"exposure {index} starts at {exposure.start_ns} ns, before exposure {previous.index} ends "
                f"at {previous.end_ns} ns; add exposures in time order without overlap"
            )
        rgb = self.meta.rgb
        pixels = _to_bgr8(image, rgb.height, rgb.width, f"the image of exposure {index}")
        self._write_png(exposure.image, pixels)
        self.exposures.append(exposure)
        return index

    def add_ground_truth(self, exposure_index: int, t_ns: int, image: np.ndarray) -> GroundTruthFrame:
        """Add a sharp frame at ``t_ns`` inside exposure ``exposure_index``.

        The image has the RGB size or the canonical size (4x spikes), the same for every frame.
        """
        self._check_open()
        if not _is_int(exposure_index) or not 0 <= exposure_index < len(self.exposures):
            raise ConfigError(f"ground truth refers to exposure {exposure_index!r}, which has not been added")
        exposure = self.exposures[exposure_index]
        _check_int64("ground-truth t_ns", t_ns)
        t_ns = int(t_ns)
        if not exposure.start_ns <= t_ns <= exposure.end_ns:
            raise ConfigError(
                f"ground-truth time {t_ns} ns is outside exposure {exposure_index} "
                f"[{exposure.start_ns}, {exposure.end_ns}] ns"
            )
        taken = [f for f in self.ground_truth if f.exposure_index == exposure_index]
        if any(f.t_ns == t_ns for f in taken):
            raise ConfigError(f"exposure {exposure_index} already has ground truth at {t_ns} ns")
        shapes = [self._gt_shape] if self._gt_shape else [(self.meta.rgb.height, self.meta.rgb.width),
                                                           self.meta.spike.canonical_shape]
        pixels = None
        for height, width in shapes:
            try:
                pixels = _to_bgr8(image, height, width, "a ground-truth image")
                break
            except ConfigError:
                continue
        if pixels is None:
            sizes = " or ".join(f"{h}x{w}" for h, w in shapes)
            raise ConfigError(
                f"ground-truth images must be uint8 (H, W, 3) or float (3, H, W) with H x W = {sizes}, "
                f"got {np.asarray(image).dtype} {np.shape(image)}"
            )
        if self._gt_shape is None:
            self._gt_shape = pixels.shape[:2]
            (self.path / GT_DIR).mkdir(exist_ok=True)
        frame = GroundTruthFrame(exposure_index, t_ns, f"{GT_DIR}/{exposure_index:06d}_{len(taken):02d}.png")
        self._write_png(frame.image, pixels)
        self.ground_truth.append(frame)
        return frame

    def _write_png(self, relative: str, pixels: np.ndarray) -> None:
        import cv2

        target = self.path / relative
        if not cv2.imwrite(str(target), pixels):
            raise FormatError(target, "OpenCV could not write the PNG image")

    def close(self) -> None:
        """Flush the spikes and write ``exposures.csv``, ``gt.csv`` (if any) and ``meta.json``."""
        if self._finished:
            return
        self._finished = True
        self._spikes.close()
        with open(self.path / EXPOSURES_FILE, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle, lineterminator="\n")
            writer.writerow(EXPOSURES_HEADER)
            for e in self.exposures:
                writer.writerow((e.index, e.start_ns, e.duration_ns, e.image))
        if self.ground_truth:
            with open(self.path / GT_FILE, "w", newline="", encoding="utf-8") as handle:
                writer = csv.writer(handle, lineterminator="\n")
                writer.writerow(GT_HEADER)
                for f in self.ground_truth:
                    writer.writerow((f.exposure_index, f.t_ns, f.image))
        spike = self.meta.spike
        for e in self.exposures:
            window = exposure_window(e.start_ns, e.duration_ns, spike.t0_ns, spike.rate_hz)
            if not window.inside(self.frames_written):
                logger.warning(
                    "%s: exposure %d needs spike frames [%d, %d) but %d were written; strict readers will "
                    "refuse the recording",
                    self.path, e.index, window.window_first, window.window_stop, self.frames_written,
                )
                break
        (self.path / META_FILE).write_text(json.dumps(self.meta.to_json(), indent=2) + "\n", encoding="utf-8")

    def abort(self) -> None:
        """Stop without writing ``meta.json``: the partial recording will not open."""
        self._finished = True
        self._spikes.close()

    def __enter__(self) -> RecordingWriter:
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
