"""Offline deblurring of a recording (``spikereveal deblur``) as library functions.

For every exposure: read the blurry frame, cut its spike window with the kernels into K LDN inputs
(21 frames centred at each output time), run the runner once with K as the batch (uint8 in and out, see
``engines.runners``), and write
``frames/<exposure>_<k>.png`` (exposure zero-padded to 6 digits, k to 2), ``frames.csv`` (header
``exposure_index,t_ns,image``, the shape of ``gt.csv``), a side-by-side MP4 (blurry | sharp) and
``summary.json`` (engine, precision, per-stage times, skipped exposures, firing gain). Exposures whose spike
window is incomplete (truncated spike file, exposure at the very start) are skipped and listed, never guessed.

Firing gain (``spikereveal.kernels.sensor``): measured on every exposure and checked against the range the
model declares (``Runner.firing_gain_range``); the summary's ``firing_gain`` block has min/mean/max and a
``warning``, also logged, when the recording's mean gain is outside it.

ONNX for ``ort``/``trt``: ``prepare_runner`` uses ``onnx_path`` when given; otherwise it exports the
checkpoint once into ``<out>/onnx/`` (next to the results, so a run is self-describing) and reuses that
file while the checkpoint hash and precision match. An int8 export calibrates on the recording itself.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from spikereveal import __version__
from spikereveal.engines.cache import check_precision_name, file_sha256
from spikereveal.engines.runners import InputShape, Runner, RunnerOptions, create_runner
from spikereveal.errors import ConfigError, FormatError
from spikereveal.kernels.sensor import firing_gain_summary
from spikereveal.kernels.timing import DEFAULT_K, LDN_SPIKE_WINDOW, ExposureWindow, exposure_window

logger = logging.getLogger(__name__)

FRAMES_DIR = "frames"
FRAMES_CSV = "frames.csv"
FRAMES_HEADER = ("exposure_index", "t_ns", "image")
SUMMARY_FILE = "summary.json"
VIDEO_FILE = "deblur.mp4"
STAGES = ("read_image", "read_spikes", "kernels", "inference", "postprocess", "write")

ProgressCallback = Callable[[int, int], None]  # (exposures done, exposures total)


@dataclass(frozen=True)
class DeblurConfig:
    k: int = DEFAULT_K
    write_video: bool = True
    video_fps: float = 10.0
    png_compression: int = 1  # 0-9; 1 is ~3x faster than OpenCV's default 3 for a few % more bytes
    overwrite: bool = False

    def __post_init__(self):
        if isinstance(self.k, bool) or not isinstance(self.k, int) or self.k < 1:
            raise ConfigError(f"k (sharp frames per exposure) must be a positive integer, got {self.k!r}")
        if not self.video_fps > 0:
            raise ConfigError(f"video_fps must be positive, got {self.video_fps}")
        if not 0 <= self.png_compression <= 9:
            raise ConfigError(f"png_compression must be 0..9, got {self.png_compression}")


def calibrated_exposure_window(recording, index: int, k: int = DEFAULT_K, calibration=None) -> ExposureWindow:
    """The spike window of exposure ``index`` of an open recording, cut on the spike clock.

    ``calibration`` (RigCalibration or None) moves the exposure from the RGB clock onto the spike clock
    first; ``timestamps_ns`` of the result (the output frames' times) are on the spike clock, like the
    window itself (SPEC §4/§5: output frames are stamped on the spike clock; without a clock calibration
    the two clocks are taken to be one). The one place deblur and eval cut windows, so both see the same
    frames for the same calibration.
    """
    exposure = recording.exposure(index)
    spike = recording.meta.spike
    start, duration = exposure.start_ns, exposure.duration_ns
    if calibration is not None:
        start, duration = calibration.exposure_on_spike_clock(start, duration)
    return exposure_window(start, duration, spike.t0_ns, spike.rate_hz, k, recording.margin_frames)


def calibrated_exposure_image(recording, index: int, calibration=None) -> np.ndarray:
    """The blurry frame of exposure ``index`` (3, H, W) float32, warped onto the canonical grid when a
    ``calibration`` is given (as read, otherwise)."""
    image = recording.read_exposure(index)
    return image if calibration is None else calibration.warp_exposure(image)


def fill_exposure_inputs(image_out: np.ndarray, spikes_out: np.ndarray, image_bgr8: np.ndarray, packed: np.ndarray,
                         spike_shape: tuple[int, int], centers, first_index: int, calibration=None) -> None:
    """Fill the deployed graph's inputs for one exposure: the one place deblur, serve and int8 calibration
    turn a camera frame and its packed spikes into ``image (1,H,W,3)`` and ``spikes (K,S,h,w)`` uint8.

    ``image_bgr8`` is the RGB camera's frame (h_rgb, w_rgb, 3) uint8 BGR; with a ``calibration`` (a
    RigCalibration) it is warped onto the grid and hot pixels are filled in the spike levels, without one it
    must already be the grid's size. ``packed`` holds canonical frames from index ``first_index`` on.
    """
    from spikereveal.kernels import extract_ldn_input  # numba, loaded on first use

    if calibration is None:
        if image_bgr8.shape != image_out.shape[1:]:
            raise ConfigError(f"the RGB frame is {image_bgr8.shape[1]}x{image_bgr8.shape[0]} but the network grid is "
                              f"{image_out.shape[2]}x{image_out.shape[1]}; give the rig's calibration")
        np.copyto(image_out[0], image_bgr8)
    else:
        calibration.warp_image_bgr8(image_bgr8, out=image_out[0])
    extract_ldn_input(packed, spike_shape[0], spike_shape[1], centers, window=spikes_out.shape[1],
                      first_index=first_index, out=spikes_out)
    if calibration is not None and calibration.photometric is not None:
        calibration.photometric.fill_hot_pixel_levels(spikes_out)


class ExposureWindowReader:
    """Reads one exposure at a time into preallocated inputs ``image (1,H,W,3)``, ``spikes (K,S,H/4,W/4)``.

    The network grid is 4x the spike grid. ``calibration`` (a ``spikereveal.calibration`` RigCalibration or
    None) moves exposure times onto the spike clock, warps the RGB frame onto the grid and corrects spike
    frames; without one the RGB frame must already be on the grid (as in simulation). ``window.timestamps_ns``
    are on the spike clock.
    """

    def __init__(self, recording, k: int = DEFAULT_K, spike_frames: int = LDN_SPIKE_WINDOW, calibration=None):
        self.recording = recording
        self.calibration = calibration
        self.k = k
        spike, rgb = recording.meta.spike, recording.meta.rgb
        height, width = spike.canonical_shape
        if calibration is None and (rgb.height, rgb.width) != (height, width):
            raise ConfigError(
                f"{recording.path}: the RGB frames are {rgb.width}x{rgb.height} but the network grid is "
                f"{width}x{height} (4x the {spike.width}x{spike.height} spike sensor); calibrate the rig "
                "('spikereveal calibrate geometry') so the RGB frame can be warped onto the grid")
        self.shape = InputShape(k, height, width, spike_frames)
        self.image = np.zeros(self.shape.image, np.uint8)
        self.spikes = np.zeros(self.shape.spikes, np.uint8)
        self.packed: np.ndarray | None = None  # the packed spike window of the last exposure read
        self.times_s = {"read_image": 0.0, "read_spikes": 0.0, "kernels": 0.0}

    def window(self, index: int) -> ExposureWindow:
        """Spike frames of exposure ``index`` and its output times, both on the spike clock."""
        return calibrated_exposure_window(self.recording, index, self.k, self.calibration)

    def complete_exposures(self):
        frames = self.recording.spikes.frame_count
        return [e for e in self.recording.exposures if self.window(e.index).inside(frames)]

    def skipped_exposures(self) -> list[dict]:
        frames = self.recording.spikes.frame_count
        skipped = []
        for exposure in self.recording.exposures:
            window = self.window(exposure.index)
            if not window.inside(frames):
                skipped.append({"index": int(exposure.index), "reason": (
                    f"spike window [{window.window_first}, {window.window_stop}) is not inside the "
                    f"{frames} recorded spike frames")})
        return skipped

    def read(self, index: int):
        """Fill the buffers for exposure ``index``; returns ``(image, spikes, window)`` (the buffers themselves)."""
        recording = self.recording
        window = self.window(index)
        started = time.perf_counter()
        image_bgr8 = recording.read_exposure_bgr8(index)
        read_image = time.perf_counter()
        packed = recording.spikes.read(window.window_first, window.window_stop)
        read_spikes = time.perf_counter()
        spike = recording.meta.spike
        fill_exposure_inputs(self.image, self.spikes, image_bgr8, packed, (spike.height, spike.width),
                             window.centers, window.window_first, self.calibration)
        done = time.perf_counter()
        self.times_s["read_image"] += read_image - started
        self.times_s["read_spikes"] += read_spikes - read_image
        self.times_s["kernels"] += done - read_spikes
        self.packed = packed
        return self.image, self.spikes, window

    def firing_gain(self, window: ExposureWindow) -> float:
        """The firing gain of the exposure just read (its packed frames and its frame on the grid)."""
        from spikereveal.kernels.sensor import exposure_firing_gain  # numba, loaded on first use

        spike = self.recording.meta.spike
        return exposure_firing_gain(self.packed, spike.height, spike.width, window, self.image)


def to_bgr8(images: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """float (N,3,H,W) BGR (any range) -> uint8 (N,H,W,3), clipped to [0,1] (NaN -> 0) and rounded half up
    (``x * 255 + 0.5`` truncated), in one pass (:func:`spikereveal.kernels.convert.planar_to_bgr8`).
    ``out``: a C-contiguous uint8 (N,H,W,3) array to write into."""
    from spikereveal.kernels.convert import planar_to_bgr8  # numba, loaded on first use

    return planar_to_bgr8(images, out)


def _prepare_output(out_dir: Path, overwrite: bool) -> None:
    existing = [name for name in (FRAMES_CSV, SUMMARY_FILE, VIDEO_FILE) if (out_dir / name).exists()]
    if existing and not overwrite:
        raise ConfigError(f"{out_dir} already holds deblur results ({', '.join(existing)}); choose another --out "
                          "or pass --overwrite")
    (out_dir / FRAMES_DIR).mkdir(parents=True, exist_ok=True)


def _open_video(path: Path, fps: float, width: int, height: int):
    import cv2

    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), float(fps), (width, height))
    if not writer.isOpened():
        logger.warning("OpenCV cannot write %s (no mp4v encoder in this build); no video is written", path)
        return None
    return writer


def _stage_stats(per_exposure_s: list[float]) -> dict:
    if not per_exposure_s:
        return {"total_s": 0.0, "ms_p50": None, "ms_p99": None}
    values = np.asarray(per_exposure_s) * 1e3
    return {"total_s": float(values.sum() / 1e3), "ms_p50": float(np.percentile(values, 50)),
            "ms_p99": float(np.percentile(values, 99, method="inverted_cdf"))}


def deblur_recording(recording, runner: Runner, out_dir: str | os.PathLike, config: DeblurConfig | None = None,
                     progress: ProgressCallback | None = None, calibration=None) -> dict:
    """Deblur every complete exposure of an opened recording with a loaded runner; returns the summary.

    The runner's shape must be ``config.k`` frames on the recording's network grid; ``calibration``
    (RigCalibration or None) is applied to every exposure.
    """
    import cv2

    config = config or DeblurConfig()
    out_dir = Path(out_dir)
    reader = ExposureWindowReader(recording, k=config.k, spike_frames=runner.shape.spike_frames,
                                  calibration=calibration)
    if runner.shape != reader.shape:
        raise ConfigError(f"the {runner.name} runner is loaded for {runner.shape} but the recording needs "
                          f"{reader.shape}")
    _prepare_output(out_dir, config.overwrite)
    exposures = reader.complete_exposures()
    skipped = reader.skipped_exposures()
    for item in skipped:
        logger.warning("exposure %d skipped: %s", item["index"], item["reason"])
    height, width = reader.shape.height, reader.shape.width
    video = _open_video(out_dir / VIDEO_FILE, config.video_fps, 2 * width, height) if config.write_video else None
    sharp8 = np.empty(runner.shape.sharp, np.uint8)
    side_by_side = np.empty((height, 2 * width, 3), np.uint8)
    png_params = [cv2.IMWRITE_PNG_COMPRESSION, config.png_compression]
    stage_s: dict[str, list[float]] = {stage: [] for stage in STAGES}
    rows = []
    gains = []
    started = time.perf_counter()
    try:
        for done, exposure in enumerate(exposures, start=1):
            before = dict(reader.times_s)
            image, spikes, window = reader.read(exposure.index)
            for stage in ("read_image", "read_spikes", "kernels"):
                stage_s[stage].append(reader.times_s[stage] - before[stage])
            gains.append(reader.firing_gain(window))
            t0 = time.perf_counter()
            runner.infer(image, spikes, out=sharp8)
            t1 = time.perf_counter()
            blur8 = image[0]
            t2 = time.perf_counter()
            for k in range(config.k):
                name = f"{FRAMES_DIR}/{exposure.index:06d}_{k:02d}.png"
                if not cv2.imwrite(str(out_dir / name), sharp8[k], png_params):
                    raise FormatError(out_dir / name, "OpenCV could not write the PNG image")
                rows.append((exposure.index, int(window.timestamps_ns[k]), name))
                if video is not None:
                    side_by_side[:, :width] = blur8
                    side_by_side[:, width:] = sharp8[k]
                    video.write(side_by_side)
            t3 = time.perf_counter()
            stage_s["inference"].append(t1 - t0)
            stage_s["postprocess"].append(t2 - t1)
            stage_s["write"].append(t3 - t2)
            if progress is not None:
                progress(done, len(exposures))
    finally:
        if video is not None:
            video.release()
    wall_s = time.perf_counter() - started
    with open(out_dir / FRAMES_CSV, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(FRAMES_HEADER)
        writer.writerows(rows)
    summary = {
        "spikereveal_version": __version__,
        "recording": str(recording.path),
        "engine": runner.name,
        "precision": runner.precision,
        "runner": runner.describe(),
        "k": config.k,
        "exposures_total": len(recording.exposures),
        "exposures_processed": len(exposures),
        "frames_written": len(rows),
        "skipped_exposures": skipped,
        "calibration": None if calibration is None else str(getattr(calibration, "path", None) or "given"),
        "video": VIDEO_FILE if video is not None else None,
        "wall_s": wall_s,
        "stages": {stage: _stage_stats(values) for stage, values in stage_s.items()},
        "firing_gain": firing_gain_summary(gains, runner.firing_gain_range, str(recording.path)),
    }
    if summary["firing_gain"]["warning"] is not None:
        logger.warning("%s", summary["firing_gain"]["warning"])
    (out_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=2, default=str) + "\n", encoding="utf-8")
    return summary


@dataclass(frozen=True)
class EngineChoice:
    """Which engine runs the network and from what: checkpoint (torch, or exported for ort/trt) or ONNX."""

    engine: str = "ort"
    precision: str = "fp32"
    model: str | None = None  # LDN checkpoint; None: the shipped default
    onnx_path: str | None = None  # ort/trt: use this export instead of exporting the checkpoint
    options: RunnerOptions = field(default_factory=RunnerOptions)

    def __post_init__(self):
        check_precision_name(self.precision)
        if self.engine == "torch" and self.onnx_path is not None:
            raise ConfigError("--onnx is for the ort and trt engines; the torch engine runs the checkpoint")


def _cached_export(choice: EngineChoice, shape: InputShape, out_dir: Path, calib_recordings: Sequence) -> Path:
    from spikereveal.engines.export import ExportConfig, export_checkpoint, read_onnx_metadata, resolve_model_path

    checkpoint = resolve_model_path(choice.model)
    config = ExportConfig(precision=choice.precision, batch=shape.batch, height=shape.height, width=shape.width)
    calib = list(calib_recordings) if choice.precision == "int8" else []
    name = f"ldn_{choice.precision}_{shape.batch}x{shape.height}x{shape.width}"
    if calib:  # an int8 file is only reused for the same calibration data
        from spikereveal.calibration.int8_data import cache_key

        key = cache_key([Path(p) for p in calib], shape.batch, config.calibration_windows, shape.spike_frames, True)
        name += f"_calib{key[:12]}"
    target = out_dir / "onnx" / f"{name}.onnx"
    sha = file_sha256(checkpoint)
    if target.is_file():
        meta = read_onnx_metadata(target)
        if meta.get("source_sha256") == sha and meta.get("precision") == choice.precision:
            logger.info("reusing %s", target)
            return target
    logger.info("exporting %s to %s", checkpoint, target)
    return export_checkpoint(checkpoint, target, config, calib_recordings=calib)


def prepare_runner(choice: EngineChoice, shape: InputShape, out_dir: str | os.PathLike,
                   calib_recordings: str | os.PathLike | Sequence = ()) -> Runner:
    """An (unloaded) runner for ``shape``; exports the checkpoint to ``<out_dir>/onnx`` when ort/trt need it.

    ``calib_recordings`` (one path or several): what an int8 export calibrates on; the cached file is keyed
    by them, so a different calibration set gets its own export.
    """
    if choice.engine == "torch":
        from spikereveal.engines.export import resolve_model_path

        return create_runner("torch", shape, model=resolve_model_path(choice.model), precision=choice.precision,
                             options=choice.options)
    if isinstance(calib_recordings, (str, os.PathLike)):
        calib_recordings = [calib_recordings]
    onnx_path = choice.onnx_path
    if onnx_path is None and choice.model is None and choice.engine == "ort" and choice.precision == "fp32":
        from spikereveal.engines.export import default_onnx_path

        onnx_path = default_onnx_path()  # the shipped export: the default model runs without torch
    if onnx_path is None:
        onnx_path = _cached_export(choice, shape, Path(out_dir), calib_recordings)
    return create_runner(choice.engine, shape, onnx_path=onnx_path, precision=choice.precision,
                         options=choice.options)


def deblur(recording_path: str | os.PathLike, out_dir: str | os.PathLike, choice: EngineChoice | None = None,
           config: DeblurConfig | None = None, progress: ProgressCallback | None = None,
           calibration_path: str | os.PathLike | None = None, use_calibration: bool = True) -> dict:
    """Open the recording (tolerating a truncated spike file), prepare the engine and deblur it all.

    The rig calibration applied is the recording's ``calibration.json`` (or ``calibration_path``) unless
    ``use_calibration`` is False. A run that fails removes the folders it created while they are still empty
    (no empty ``frames/`` is left behind).
    """
    choice = choice or EngineChoice()
    config = config or DeblurConfig()
    out_dir = Path(out_dir)
    # folders this run may create, innermost first: removed again if the run fails while they are empty
    new_dirs = [d for d in (out_dir / FRAMES_DIR, out_dir / "onnx") if not d.exists()]
    folder = out_dir
    while not folder.exists() and folder != folder.parent:
        new_dirs.append(folder)
        folder = folder.parent
    try:
        return _deblur(recording_path, out_dir, choice, config, progress, calibration_path, use_calibration)
    except BaseException:
        for folder in new_dirs:
            try:
                folder.rmdir()  # only when empty: never removes a result
            except OSError:
                pass
        raise


def _deblur(recording_path, out_dir: Path, choice: EngineChoice, config: DeblurConfig, progress,
            calibration_path, use_calibration: bool) -> dict:
    from spikereveal.recording import open_recording

    with open_recording(recording_path, strict=False) as recording:
        calibration = None
        if use_calibration and (calibration_path is not None or recording.calibration_path is not None):
            from spikereveal.calibration.store import load_rig_calibration

            calibration = load_rig_calibration(recording, calibration_path, use_calibration)
        spike = recording.meta.spike
        height, width = spike.canonical_shape
        shape = InputShape(config.k, height, width)
        if choice.engine != "torch":
            _prepare_output(out_dir, config.overwrite)  # fail before a costly export, not after
        started = time.perf_counter()
        runner = prepare_runner(choice, shape, out_dir, [recording_path])
        with runner:
            prepare_s = time.perf_counter() - started
            summary = deblur_recording(recording, runner, out_dir, config, progress, calibration)
    summary["prepare_s"] = prepare_s
    (out_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=2, default=str) + "\n", encoding="utf-8")
    return summary
