"""Offline deblurring of a recording (``spikereveal deblur``): recording -> per-exposure stage -> frame sink.

The same chain as ``serve``: every complete exposure of the recording becomes a
:class:`~spikereveal.stream.sync.ReadyJob` (its blurry frame, its spike window cut on the spike clock, see
:func:`calibrated_exposure_window`), goes through the stage (:class:`~spikereveal.stream.stage.ExposureProcessor`:
input fill, the runner once with K as the batch, uint8 out) and into the sink
(:class:`~spikereveal.stream.sinks.FrameSaver`): ``frames/<exposure>_<k>.png`` (exposure zero-padded to 6
digits, k to 2), ``frames.csv`` (header ``exposure_index,t_ns,image``, the shape of ``gt.csv``), a side-by-side
MP4 (blurry | sharp) and ``summary.json`` (engine, precision, per-stage times, skipped exposures, firing gain).
Exposures whose spike window is incomplete (truncated spike file, exposure at the very start) are skipped and
listed, never guessed. Offline, a frame that cannot be written ends the run (FormatError), unlike serve.

Firing gain (``spikereveal.kernels.sensor``): measured on every exposure and checked against the range the
model declares (``Runner.firing_gain_range``); the summary's ``firing_gain`` block has min/mean/max and a
``warning``, also logged, when the recording's mean gain is outside it.

ONNX for ``ort``/``trt``: :func:`spikereveal.engines.choice.prepare_runner` uses ``onnx_path`` when given;
otherwise it exports the checkpoint once into ``<out>/onnx/`` (next to the results, so a run is
self-describing). An int8 export calibrates on the recording itself.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from spikereveal import __version__
from spikereveal.engines.choice import EngineChoice, prepare_runner
from spikereveal.engines.inputs import input_shape_for
from spikereveal.engines.runners import Runner
from spikereveal.errors import ConfigError
from spikereveal.kernels.sensor import firing_gain_summary
from spikereveal.kernels.timing import DEFAULT_K, ExposureWindow, exposure_window
from spikereveal.stream.sinks import FRAMES_CSV, FRAMES_DIR, VIDEO_FILE, FrameSaver
from spikereveal.stream.stage import ExposureProcessor
from spikereveal.stream.sync import ReadyJob

__all__ = ["DeblurConfig", "deblur", "deblur_recording", "calibrated_exposure_window", "calibrated_exposure_image",
           "SUMMARY_FILE", "STAGES"]

logger = logging.getLogger(__name__)

SUMMARY_FILE = "summary.json"
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


def complete_exposures(recording, k: int = DEFAULT_K, calibration=None) -> tuple[list, list[dict]]:
    """``(exposures whose spike window was recorded in full, skipped: [{"index", "reason"}])``."""
    frames = recording.spikes.frame_count
    complete, skipped = [], []
    for exposure in recording.exposures:
        window = calibrated_exposure_window(recording, exposure.index, k, calibration)
        if window.inside(frames):
            complete.append(exposure)
        else:
            skipped.append({"index": int(exposure.index), "reason": (
                f"spike window [{window.window_first}, {window.window_stop}) is not inside the "
                f"{frames} recorded spike frames")})
    return complete, skipped


def read_job(recording, index: int, k: int = DEFAULT_K, calibration=None, times_s: dict | None = None) -> ReadyJob:
    """Exposure ``index`` of an open recording as the stage's job: its uint8 BGR frame as recorded (the stage
    warps it when calibrated) and its packed spike window, cut on the spike clock. ``times_s`` accumulates the
    ``read_image`` and ``read_spikes`` seconds."""
    window = calibrated_exposure_window(recording, index, k, calibration)
    exposure = recording.exposure(index)
    started = time.perf_counter()
    image = recording.read_exposure_bgr8(index)
    read_image = time.perf_counter()
    packed = recording.spikes.read(window.window_first, window.window_stop)
    read_spikes = time.perf_counter()
    if times_s is not None:
        times_s["read_image"] = times_s.get("read_image", 0.0) + read_image - started
        times_s["read_spikes"] = times_s.get("read_spikes", 0.0) + read_spikes - read_image
    spike = recording.meta.spike
    return ReadyJob(exposure_id=int(index), start_ns=int(exposure.start_ns), duration_ns=int(exposure.duration_ns),
                    image=image, packed=packed, window=window, spike_height=int(spike.height),
                    spike_width=int(spike.width), received_ns=0, ready_ns=0)


def _check_grid(recording, calibration) -> None:
    spike, rgb = recording.meta.spike, recording.meta.rgb
    height, width = spike.canonical_shape
    if calibration is None and (rgb.height, rgb.width) != (height, width):
        raise ConfigError(
            f"{recording.path}: the RGB frames are {rgb.width}x{rgb.height} but the network grid is "
            f"{width}x{height} (4x the {spike.width}x{spike.height} spike sensor); calibrate the rig "
            "('spikereveal calibrate geometry') so the RGB frame can be warped onto the grid")


def _prepare_output(out_dir: Path, overwrite: bool) -> None:
    existing = [name for name in (FRAMES_CSV, SUMMARY_FILE, VIDEO_FILE) if (out_dir / name).exists()]
    if existing and not overwrite:
        raise ConfigError(f"{out_dir} already holds deblur results ({', '.join(existing)}); choose another --out "
                          "or pass --overwrite")
    (out_dir / FRAMES_DIR).mkdir(parents=True, exist_ok=True)


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
    from spikereveal.kernels.sensor import exposure_firing_gain  # numba, loaded on first use

    config = config or DeblurConfig()
    out_dir = Path(out_dir)
    _check_grid(recording, calibration)
    spike = recording.meta.spike
    shape = input_shape_for(config.k, spike.height, spike.width, runner.shape.spike_frames)
    if runner.shape != shape:
        raise ConfigError(f"the {runner.name} runner is loaded for {runner.shape} but the recording needs {shape}")
    _prepare_output(out_dir, config.overwrite)
    exposures, skipped = complete_exposures(recording, config.k, calibration)
    for item in skipped:
        logger.warning("exposure %d skipped: %s", item["index"], item["reason"])
    stage = ExposureProcessor(runner, calibration, check_domain=False)  # the summary checks the recording
    saver = FrameSaver(out_dir, config.png_compression, video_fps=config.video_fps if config.write_video else None,
                       raise_on_failure=True)
    stage_s: dict[str, list[float]] = {name: [] for name in STAGES}
    gains = []
    video_open = False
    started = time.perf_counter()
    try:
        for done, exposure in enumerate(exposures, start=1):
            read_s: dict[str, float] = {}
            job = read_job(recording, exposure.index, config.k, calibration, read_s)
            result = stage.process(job)
            gains.append(exposure_firing_gain(job.packed, spike.height, spike.width, job.window, stage.image))
            t0 = time.perf_counter()
            saver.save(result.exposure_id, result.timestamps_ns, result.sharp, stage.image[0])
            t1 = time.perf_counter()
            video_open = video_open or saver.video_open
            stage_s["read_image"].append(read_s["read_image"])
            stage_s["read_spikes"].append(read_s["read_spikes"])
            stage_s["kernels"].append(result.prepare_ns * 1e-9)
            stage_s["inference"].append(result.inference_ns * 1e-9)
            stage_s["postprocess"].append(result.postprocess_ns * 1e-9)
            stage_s["write"].append(t1 - t0)
            if progress is not None:
                progress(done, len(exposures))
    finally:
        saver.close()
    wall_s = time.perf_counter() - started
    summary = {
        "spikereveal_version": __version__,
        "recording": str(recording.path),
        "engine": runner.name,
        "precision": runner.precision,
        "runner": runner.describe(),
        "k": config.k,
        "exposures_total": len(recording.exposures),
        "exposures_processed": len(exposures),
        "frames_written": saver.frames_written,
        "skipped_exposures": skipped,
        "calibration": None if calibration is None else str(getattr(calibration, "path", None) or "given"),
        "video": VIDEO_FILE if video_open else None,
        "wall_s": wall_s,
        "stages": {name: _stage_stats(values) for name, values in stage_s.items()},
        "firing_gain": firing_gain_summary(gains, runner.firing_gain_range, str(recording.path)),
    }
    if summary["firing_gain"]["warning"] is not None:
        logger.warning("%s", summary["firing_gain"]["warning"])
    (out_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=2, default=str) + "\n", encoding="utf-8")
    return summary


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
        shape = input_shape_for(config.k, spike.height, spike.width)
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
