"""int8 calibration data for the inference engines: real LDN input windows cut from recordings.

Each item is ``{"image": (1, H, W, 3) uint8, "spikes": (K, 21, h, w) uint8}``: the exposure's RGB frame
on the canonical grid and the 21 raw spike frames (as levels, see ``kernels.extract.SPIKE_LEVEL``) around
each output time, exactly what the pipeline feeds the deployed graph (``engines.inputs.fill_exposure_inputs``),
with the recording's calibration applied (clock, geometry, hot pixels) unless told otherwise.

Cutting is cached: the cache (npz) keeps the compact sources (the 8-bit RGB frames and the packed spike
frames of each window), keyed by the recordings' files and the settings, so a repeated export re-expands
them without reading the recordings again. A stale or foreign cache is rebuilt, never trusted.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from spikereveal.calibration.store import RigCalibration, load_rig_calibration
from spikereveal.errors import ConfigError
from spikereveal.kernels.images import SPIKE_TO_IMAGE_SCALE
from spikereveal.kernels.timing import DEFAULT_K, DEFAULT_MARGIN_FRAMES, LDN_SPIKE_WINDOW, exposure_window

logger = logging.getLogger(__name__)

CACHE_FORMAT = "spikereveal-int8-calibration-cache-v1"
_KEY_FILES = ("meta.json", "spikes.dat", "exposures.csv", "calibration.json", "calibration_dark.npz")


def _file_stamp(path: Path) -> list:
    try:
        stat = path.stat()
    except FileNotFoundError:
        return [path.name, None]
    return [path.name, stat.st_size, stat.st_mtime_ns]


def cache_key(recordings: Sequence[Path], k: int, max_windows: int, spike_window: int, use_calibration: bool) -> str:
    """SHA-256 of everything the cut windows depend on (files by size and mtime, and the settings)."""
    description = {
        "format": CACHE_FORMAT,
        "recordings": [[str(Path(p).resolve())] + [_file_stamp(Path(p) / name) for name in _KEY_FILES]
                       for p in recordings],
        "k": k, "max_windows": max_windows, "spike_window": spike_window, "use_calibration": use_calibration,
    }
    return hashlib.sha256(json.dumps(description, sort_keys=True).encode()).hexdigest()


class LdnCalibrationData:
    """Iterable of LDN input windows (dicts ``image``/``spikes``); ``pairs()`` gives ``(image, spikes)``
    tuples (the engines' WindowCalibrationReader takes those)."""

    def __init__(self, rgb8: list[np.ndarray], packed: list[np.ndarray], centers: list[np.ndarray],
                 calibrations: list[RigCalibration | None], spike_shape: tuple[int, int], spike_window: int,
                 sources: list[tuple[str, int]]):
        self._rgb8, self._packed, self._centers = rgb8, packed, centers
        self._calibrations = calibrations
        self.spike_shape = spike_shape
        self.spike_window = spike_window
        self.sources = sources  # (recording path, exposure index) of each window

    def __len__(self) -> int:
        return len(self._rgb8)

    def window(self, i: int) -> dict[str, np.ndarray]:
        from spikereveal.engines.inputs import fill_exposure_inputs

        height, width = self.spike_shape
        calibration = self._calibrations[i]
        grid = (SPIKE_TO_IMAGE_SCALE * height, SPIKE_TO_IMAGE_SCALE * width)
        if calibration is None and self._rgb8[i].shape[:2] != grid:
            raise ConfigError(
                f"{self.sources[i][0]}: the RGB frames are not on the canonical grid and no calibration is "
                "applied; run 'spikereveal calibrate geometry' or allow the calibration"
            )
        centers = self._centers[i]
        image = np.empty((1, *grid, 3), np.uint8)
        spikes = np.empty((len(centers), self.spike_window, height, width), np.uint8)
        fill_exposure_inputs(image, spikes, self._rgb8[i], self._packed[i], (height, width), centers, 0, calibration)
        return {"image": image, "spikes": spikes}

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        for i in range(len(self)):
            yield self.window(i)

    def pairs(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for item in self:
            yield item["image"], item["spikes"]


def _choose(per_recording: list[list[int]], max_windows: int) -> list[tuple[int, int]]:
    """Up to ``max_windows`` (recording, exposure) pairs, evenly spread, round-robin over recordings."""
    chosen: list[tuple[int, int]] = []
    share = max(1, -(-max_windows // max(1, len(per_recording))))
    for r, exposures in enumerate(per_recording):
        if len(exposures) > share:
            picks = np.unique(np.round(np.linspace(0, len(exposures) - 1, share)).astype(int))
            exposures = [exposures[i] for i in picks]
        chosen += [(r, e) for e in exposures]
    return chosen[:max_windows]


def ldn_calibration_windows(
    recordings: Sequence[str | os.PathLike],
    k: int = DEFAULT_K,
    max_windows: int = 16,
    cache_path: str | os.PathLike | None = None,
    use_calibration: bool = True,
    spike_window: int = LDN_SPIKE_WINDOW,
) -> LdnCalibrationData:
    """Cut up to ``max_windows`` LDN input windows from ``recordings`` (evenly over them), or load them
    from ``cache_path`` when it holds the same cut. Exposures whose window is not recorded are skipped."""
    from spikereveal.recording import open_recording

    if not recordings:
        raise ConfigError("int8 calibration needs at least one recording")
    if isinstance(max_windows, bool) or not isinstance(max_windows, int) or max_windows < 1:
        raise ConfigError(f"max_windows must be a positive integer, got {max_windows!r}")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ConfigError(f"k must be a positive integer, got {k!r}")
    paths = [Path(p) for p in recordings]
    key = cache_key(paths, k, max_windows, spike_window, use_calibration)
    margin = max(DEFAULT_MARGIN_FRAMES, spike_window // 2)
    opened = [open_recording(p, strict=False, margin_frames=margin) for p in paths]
    try:
        shapes = {(r.meta.spike.height, r.meta.spike.width) for r in opened}
        if len(shapes) != 1:
            raise ConfigError(f"int8 calibration recordings must share one spike geometry, got {sorted(shapes)}")
        spike_shape = shapes.pop()
        calibrations = [load_rig_calibration(r, use_calibration=use_calibration) for r in opened]
        cached = _load_cache(Path(cache_path), key) if cache_path is not None else None
        if cached is not None:
            rgb8, packed, centers, sources = cached
            indices = [paths.index(Path(s[0])) for s in sources]
            return LdnCalibrationData(rgb8, packed, centers, [calibrations[i] for i in indices], spike_shape,
                                      spike_window, sources)
        per_recording = []
        for recording, calibration in zip(opened, calibrations):
            complete = []
            for exposure in recording.exposures:
                window = _window(recording, exposure, calibration, k, margin)
                if window.inside(recording.spikes.frame_count):
                    complete.append(exposure.index)
            per_recording.append(complete)
        rgb8, packed, centers, sources, window_calibrations = [], [], [], [], []
        for r, index in _choose(per_recording, max_windows):
            recording, calibration = opened[r], calibrations[r]
            window = _window(recording, recording.exposure(index), calibration, k, margin)
            rgb8.append(recording.read_exposure_bgr8(index))
            packed.append(recording.spikes.read(window.window_first, window.window_stop))
            centers.append((window.centers - window.window_first).astype(np.int64))
            sources.append((str(paths[r]), int(index)))
            window_calibrations.append(calibration)
        if not rgb8:
            raise ConfigError("int8 calibration found no exposure whose spike window is recorded in "
                              + ", ".join(str(p) for p in paths))
        if cache_path is not None:
            _save_cache(Path(cache_path), key, rgb8, packed, centers, sources)
        return LdnCalibrationData(rgb8, packed, centers, window_calibrations, spike_shape, spike_window, sources)
    finally:
        for recording in opened:
            recording.close()


def _window(recording, exposure, calibration: RigCalibration | None, k: int, margin: int):
    start, duration = exposure.start_ns, exposure.duration_ns
    if calibration is not None:
        start, duration = calibration.exposure_on_spike_clock(start, duration)
    spike = recording.meta.spike
    return exposure_window(start, duration, spike.t0_ns, spike.rate_hz, k, margin)


def _save_cache(path: Path, key: str, rgb8, packed, centers, sources) -> None:
    arrays = {"key": np.array(key), "sources": np.array(json.dumps(sources))}
    for i, (image, frames, centre) in enumerate(zip(rgb8, packed, centers)):
        arrays[f"rgb8_{i}"], arrays[f"packed_{i}"], arrays[f"centers_{i}"] = image, frames, centre
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp.npz")
    np.savez_compressed(temporary, **arrays)
    os.replace(temporary, path)


def _load_cache(path: Path, key: str):
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            if str(data["key"]) != key:
                logger.info("%s: the recordings or settings changed; cutting the windows again", path)
                return None
            sources = [tuple(s) for s in json.loads(str(data["sources"]))]
            count = len(sources)
            rgb8 = [data[f"rgb8_{i}"] for i in range(count)]
            packed = [data[f"packed_{i}"] for i in range(count)]
            centers = [data[f"centers_{i}"] for i in range(count)]
    except (KeyError, ValueError, OSError, json.JSONDecodeError) as exc:
        logger.warning("%s is not a usable calibration cache (%s); cutting the windows again", path, exc)
        return None
    return rgb8, packed, centers, [(str(s[0]), int(s[1])) for s in sources]
