"""Quality against ground truth (``spikereveal eval``): blurry input, plain SDM, teacher and student.

For every exposure that has ground-truth frames (``gt.csv``) and a complete spike window, each method
produces a frame at every ground-truth timestamp (spike index = nearest frame); PSNR and SSIM are computed
against each ground-truth frame and averaged over all of them ("psnr", "ssim"), and separately over the
one frame per exposure nearest the exposure's centre ("psnr_center", "ssim_center", what the paper's code
reports). Re-blur consistency: the mean of the student's K output frames against the blurry input.
Colour fidelity: the mean error of each channel (% of full scale) and the saturation ratio to the ground truth.
Firing gain (``spikereveal.kernels.sensor``, no ground truth needed) per exposure and per recording, checked
against the range the student declares it was trained for.

Metrics are computed in numpy on float BGR images in [0, 1] (data range 1.0); SSIM uses an 11-tap gaussian
window, σ 1.5, population statistics and the mean over the three channels (Wang et al. 2004; exactly
``skimage.metrics.structural_similarity(..., gaussian_weights=True, sigma=1.5,
use_sample_covariance=False, data_range=1.0)``, which is used when installed). PSNR is capped at 100 dB so
that identical images stay JSON numbers.

The student runs through one function, :func:`run_student`, on one exposure window: either the PyTorch
model (:func:`torch_student`) or an inference runner (:func:`engine_student`: ONNX Runtime / TensorRT at
fp32, fp16 or int8, the export made and cached by ``spikereveal.engines.choice.prepare_runner``), so that
the exports' quality is measured by the same code as the PyTorch model's.

Rig calibration (``calibration.json``, see ``spikereveal.calibration``) is applied like ``deblur`` applies
it: the recording's own file when present, another with ``calibration_path``, none with
``use_calibration=False``. Applied, it moves the exposure and the ground-truth times onto the spike clock
(the window is cut by ``spikereveal.stream.offline.calibrated_exposure_window``, shared with deblur), warps
the blurry frame onto the canonical grid (so an RGB camera that is not 4x the spike sensor can be scored),
fills hot pixels in the student's spike frames and corrects the TFPs of SDM and teacher for dark current.
"""

from __future__ import annotations

import logging
import os
import re
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np

from spikereveal.errors import ConfigError, RecordingError
from spikereveal.kernels import reblur
from spikereveal.kernels.images import SPIKE_TO_IMAGE_SCALE
from spikereveal.kernels.metrics import DATA_RANGE, PSNR_CAP_DB, psnr
from spikereveal.kernels.sensor import (
    DEFAULT_GAIN_TOLERANCE,
    exposure_firing_gain,
    firing_gain_summary,
    parse_gain_range,
)
from spikereveal.kernels.timing import DEFAULT_K, time_to_index
from spikereveal.training import datasets as ds
from spikereveal.training.train_config import check_tfp_window

log = logging.getLogger(__name__)

METHODS = ("blurry", "sdm", "teacher", "student")
CHANNELS = ("b", "g", "r")  # planar BGR, as every image here
SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
PLOT_COLUMNS = ("blurry", "sdm", "teacher", "student", "gt")
PLOT_TILE_WIDTH = 320
PLOT_MAX_ROWS = 7

#: ``student(blurry (3,H,W), spikes (K,21,H/4,W/4) float32) -> (K,3,H,W) float32`` frames in [0, 1]
#: (the spike frames are 0/1, or fractions where a rig calibration filled hot pixels).
StudentFn = Callable[[np.ndarray, np.ndarray], np.ndarray]
#: ``progress(done, total)`` over exposures.
EvalProgress = Callable[[int, int], None]


# -- metrics -----------------------------------------------------------------------------------------------
def channel_mean_error(reference: np.ndarray, image: np.ndarray) -> np.ndarray:
    """(3,) float64: mean of ``image - reference`` per channel of two (3, H, W) BGR images in [0, 1]
    (positive: the image is brighter in that channel; a colour cast shows as channels that differ)."""
    difference = np.asarray(image, np.float64) - np.asarray(reference, np.float64)
    return difference.reshape(difference.shape[0], -1).mean(axis=1)


def mean_saturation(image: np.ndarray) -> float:
    """Mean HSV saturation ``(max - min) / max`` over the pixels of a (3, H, W) image (0 where max is 0)."""
    image = np.asarray(image, np.float64)
    high, low = image.max(axis=0), image.min(axis=0)
    return float(np.mean(np.divide(high - low, high, out=np.zeros_like(high), where=high > 0)))


def _gaussian_taps(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> np.ndarray:
    coords = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
    taps = np.exp(-(coords**2) / (2.0 * sigma * sigma))
    return taps / taps.sum()


def _valid_filter(image: np.ndarray, taps: np.ndarray) -> np.ndarray:
    """Separable filter of a 2-D image over the positions where the whole window fits."""
    size = taps.size
    rows = sum(taps[i] * image[i : image.shape[0] - size + 1 + i, :] for i in range(size))
    return sum(taps[i] * rows[:, i : rows.shape[1] - size + 1 + i] for i in range(size))


def ssim_numpy(reference: np.ndarray, image: np.ndarray) -> float:
    """SSIM of two (C, H, W) images (gaussian 11 / σ 1.5, data range 1), mean over channels and the
    positions where the window fits; the same numbers as scikit-image with the settings in the module doc."""
    reference = np.asarray(reference, np.float64)
    image = np.asarray(image, np.float64)
    if min(reference.shape[-2:]) < SSIM_WINDOW:
        raise ConfigError(f"SSIM needs images of at least {SSIM_WINDOW}x{SSIM_WINDOW} pixels, got {reference.shape}")
    taps = _gaussian_taps()
    c1, c2 = (0.01 * DATA_RANGE) ** 2, (0.03 * DATA_RANGE) ** 2
    values = []
    for x, y in zip(reference, image):
        mu_x, mu_y = _valid_filter(x, taps), _valid_filter(y, taps)
        var_x = _valid_filter(x * x, taps) - mu_x * mu_x
        var_y = _valid_filter(y * y, taps) - mu_y * mu_y
        cov = _valid_filter(x * y, taps) - mu_x * mu_y
        s = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
        values.append(s.mean())
    return float(np.mean(values))


def ssim(reference: np.ndarray, image: np.ndarray) -> float:
    """SSIM of two (3, H, W) float images in [0, 1]: scikit-image when installed, else :func:`ssim_numpy`."""
    try:
        from skimage.metrics import structural_similarity
    except ImportError:
        return ssim_numpy(reference, image)
    return float(
        structural_similarity(
            np.asarray(reference, np.float64), np.asarray(image, np.float64), channel_axis=0, data_range=DATA_RANGE,
            gaussian_weights=True, sigma=SSIM_SIGMA, use_sample_covariance=False,
        )
    )


def ssim_implementation() -> str:
    import importlib.util

    if importlib.util.find_spec("skimage") is None:
        return "spikereveal.training.evaluate.ssim_numpy"
    return "skimage.metrics.structural_similarity"


# -- the student ---------------------------------------------------------------------------------------------
def torch_student(model, device: str = "cpu") -> StudentFn:
    """A :data:`StudentFn` running an LDN ``torch.nn.Module`` (output clipped to [0, 1])."""
    import torch

    from spikereveal.training.train import resolve_device

    target = resolve_device(device)
    model = ds.cpu_channels_last(model.to(target)).eval()

    def student(blurry: np.ndarray, spikes: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            blur = torch.from_numpy(np.ascontiguousarray(blurry, np.float32)).to(target)
            windows = torch.from_numpy(np.ascontiguousarray(spikes, np.float32)).to(target)
            frames = model.forward_exposure(blur, windows).clamp(0.0, 1.0)
        return frames.cpu().numpy()

    return student


def runner_student(runner) -> StudentFn:
    """A :data:`StudentFn` over a loaded inference runner (``spikereveal.engines.runners.Runner``).

    The runner has a fixed batch K; windows are fed K at a time, the last group padded by repeating its
    final window (the padded outputs are dropped). The runner's uint8 I/O is bridged here: the frame is
    rounded to 8 bits (exact for frames read from 8-bit images), the spike frames become levels
    (``SPIKE_LEVEL`` per spike), and the 8-bit output frames come back as floats in [0, 1], as a user
    gets them from ``deblur`` and ``serve``.
    """
    from spikereveal.kernels.convert import planar_to_bgr8
    from spikereveal.kernels.extract import SPIKE_LEVEL

    batch = int(runner.shape.k)

    def student(blurry: np.ndarray, spikes: np.ndarray) -> np.ndarray:
        count = spikes.shape[0]
        image = planar_to_bgr8(blurry[None])  # (1, H, W, 3), rounded half up like the graph's own output
        levels = np.rint(np.clip(spikes, 0.0, 1.0) * SPIKE_LEVEL).astype(np.uint8)
        frames = np.empty((count,) + blurry.shape, dtype=np.float32)
        for first in range(0, count, batch):
            group = levels[first : first + batch]
            if group.shape[0] < batch:
                group = np.concatenate([group, np.repeat(group[-1:], batch - group.shape[0], axis=0)])
            sharp = runner.infer(image, np.ascontiguousarray(group))
            frames[first : first + batch] = sharp[: min(batch, count - first)].transpose(0, 3, 1, 2)
        return frames / np.float32(255.0)

    return student


def run_student(student: StudentFn, exposure: ds.ExposureData, centers: np.ndarray) -> np.ndarray:
    """The student's frames ``(K, 3, H, W)`` in [0, 1] at spike indices ``centers`` of one exposure window."""
    spikes = exposure.ldn_inputs(np.asarray(centers, dtype=np.int64))
    frames = np.asarray(student(exposure.blurry, spikes), dtype=np.float32)
    expected = (len(centers),) + exposure.blurry.shape
    if frames.shape != expected:
        raise ConfigError(f"the student returned frames of shape {frames.shape}, expected {expected}")
    return np.clip(frames, 0.0, 1.0)


# -- rig calibration ---------------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class CalibratedExposureData(ds.ExposureData):
    """An :class:`ExposureData` whose spike-derived inputs go through a rig calibration: TFPs (SDM, teacher)
    through ``correct_rate``, the student's spike frames through ``correct_spike_frames``. ``blurry`` is
    expected already warped onto the canonical grid and ``window`` cut on the spike clock."""

    calibration: Any = None  # spikereveal.calibration.RigCalibration

    def tfp_short(self, center: int, window: int = ds.DEFAULT_TFP_SHORT_WINDOW) -> np.ndarray:
        return self.calibration.correct_rate(super().tfp_short(center, window))

    def tfp_shorts(self, centers: np.ndarray, window: int = ds.DEFAULT_TFP_SHORT_WINDOW) -> np.ndarray:
        return self.calibration.correct_rate(super().tfp_shorts(centers, window))

    def tfp_long(self) -> np.ndarray:
        return self.calibration.correct_rate(super().tfp_long())

    def ldn_inputs(self, centers: np.ndarray, window: int = ds.LDN_SPIKE_WINDOW) -> np.ndarray:
        return self.calibration.correct_spike_frames(super().ldn_inputs(centers, window))


def calibration_sections(calibration) -> list[str]:
    """What a RigCalibration applies: a subset of ``["geometry", "time", "photometric"]``."""
    if calibration is None:
        return []
    present = {"geometry": calibration.geometry, "time": calibration.clock, "photometric": calibration.photometric}
    return [name for name, section in present.items() if section is not None]


def spike_clock_times(calibration, times_ns: Sequence[int]) -> np.ndarray:
    """RGB-clock times (``gt.csv``) as int64 ns on the spike clock (unchanged without a clock calibration)."""
    times = np.asarray(times_ns, dtype=np.int64)
    if calibration is None or calibration.clock is None:
        return times
    return np.asarray(calibration.clock.to_spike_clock(times), dtype=np.int64)


def _check_evaluable(recording, path, calibration) -> tuple[int, int]:
    """Spike (h, w) of a recording eval can score: RGB exactly 4x the spikes, or warped by a calibration."""
    if calibration is None:
        return ds.check_geometry(recording, path)
    if calibration.geometry is None and calibration.rgb_shape != calibration.canonical_shape:
        (height, width), (grid_h, grid_w) = calibration.rgb_shape, calibration.canonical_shape
        raise ConfigError(
            f"{path}: the RGB frames ({width}x{height}) are not the network grid ({grid_w}x{grid_h}) and the "
            f"calibration {calibration.path or ''} has no geometry to warp them; run 'spikereveal calibrate "
            f"geometry --recording {path}'")
    return int(recording.meta.spike.height), int(recording.meta.spike.width)


def network_grid(recordings: Sequence[str | os.PathLike], calibration_path: str | os.PathLike | None = None,
                 use_calibration: bool = True) -> tuple[int, int]:
    """The image ``(height, width)`` (4x the spike grid) shared by ``recordings``; ConfigError otherwise.

    A recording whose RGB frame is not 4x its spikes needs a rig calibration (warping it onto the grid)."""
    from spikereveal.calibration import load_rig_calibration
    from spikereveal.recording import open_recording

    grids = {}
    for path in recordings:
        with open_recording(path, strict=False) as recording:
            calibration = load_rig_calibration(recording, calibration_path, use_calibration)
            h, w = _check_evaluable(recording, path, calibration)
        grids.setdefault((SPIKE_TO_IMAGE_SCALE * h, SPIKE_TO_IMAGE_SCALE * w), os.fspath(path))
    if len(grids) != 1:
        raise ConfigError(
            "an ort/trt student runs one static geometry, but the recordings have image grids "
            + ", ".join(f"{h}x{w} ({path})" for (h, w), path in grids.items())
            + "; evaluate recordings of one geometry per run"
        )
    return next(iter(grids))


@contextmanager
def engine_student(choice, recordings: Sequence[str | os.PathLike], batch: int,
                   export_dir: str | os.PathLike, calibration_path: str | os.PathLike | None = None,
                   use_calibration: bool = True) -> Iterator[tuple[StudentFn, dict[str, Any]]]:
    """Load the runner of ``choice`` (a ``spikereveal.engines.choice.EngineChoice``) for a fixed batch of
    ``batch`` windows on the recordings' grid and yield ``(student, engine block for the report)``.

    ort/trt without ``choice.onnx_path``: the checkpoint is exported once into ``<export_dir>/onnx/`` and
    reused while checkpoint, precision and (int8) calibration data match; int8 calibrates on windows of
    ``recordings`` themselves, which the engine block states. The runner is closed on exit.
    ``calibration_path``/``use_calibration``: as for :func:`evaluate` (they decide the grid check).
    """
    from spikereveal.engines.choice import prepare_runner
    from spikereveal.engines.export import resolve_model_path
    from spikereveal.engines.onnx_metadata import read_onnx_metadata
    from spikereveal.engines.runners import InputShape

    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ConfigError(f"the runner batch (frames per inference) must be a positive integer, got {batch!r}")
    height, width = network_grid(recordings, calibration_path, use_calibration)
    shape = InputShape(batch, height, width)
    exported = choice.engine != "torch" and choice.onnx_path is None
    runner = prepare_runner(choice, shape, export_dir, [os.fspath(p) for p in recordings])
    block: dict[str, Any] = {
        "engine": choice.engine, "precision": choice.precision, "batch": batch,
        "checkpoint": None if choice.onnx_path is not None else os.fspath(resolve_model_path(choice.model)),
        "onnx": getattr(runner, "onnx_path", None) and os.fspath(runner.onnx_path),
        "exported_by_eval": exported, "calibration": None,
    }
    if choice.precision == "int8" and block["onnx"] is not None:
        meta = read_onnx_metadata(block["onnx"])
        block["calibration"] = {
            "windows": int(meta["calibration_windows"]) if "calibration_windows" in meta else None,
            "recordings": [os.fspath(p) for p in recordings] if exported else None,
            "note": ("int8 activation ranges calibrated on windows of the evaluated recordings themselves"
                     if exported else "calibrated when the given --onnx file was exported (data unknown here)"),
        }
    with runner:
        block["runner"] = runner.describe()
        gain_range = runner.firing_gain_range  # declared by the export's metadata, read at load
        block["firing_gain_range"] = None if gain_range is None else list(gain_range)
        yield runner_student(runner), block


# -- evaluation ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class EvalOptions:
    k: int = DEFAULT_K  # student frames per exposure for the re-blur consistency
    tfp_window: int = ds.DEFAULT_TFP_SHORT_WINDOW
    plot_dir: str | None = None
    plot_max_rows: int = PLOT_MAX_ROWS

    def __post_init__(self):
        if isinstance(self.k, bool) or not isinstance(self.k, int) or self.k < 1:
            raise ConfigError(f"--k (frames per exposure) must be a positive integer, got {self.k!r}")
        check_tfp_window(self.tfp_window)
        if self.plot_max_rows < 1:
            raise ConfigError(f"plot_max_rows must be >= 1, got {self.plot_max_rows}")


def _center_position(exposure, frames) -> int:
    middle = exposure.start_ns + exposure.duration_ns / 2.0
    return int(np.argmin([abs(f.t_ns - middle) for f in frames]))


def _mean(values: Sequence[float]) -> float | None:
    return float(np.mean(values)) if len(values) else None


def evaluate(
    recordings: Sequence[str | os.PathLike],
    student: StudentFn | None = None,
    teacher: ds.TeacherFn | None = None,
    options: EvalOptions = EvalOptions(),
    progress: EvalProgress | None = None,
    models: Mapping[str, str] | None = None,
    engine: Mapping[str, Any] | None = None,
    calibration_path: str | os.PathLike | None = None,
    use_calibration: bool = True,
    trained_gain_range: Sequence[float] | None = None,
    gain_tolerance: float = DEFAULT_GAIN_TOLERANCE,
) -> dict:
    """PSNR/SSIM of every method against ``gt.csv`` over every ground-truth frame; returns the JSON dict.

    ``student``/``teacher`` may be None (those methods are then left out). ``engine``: what runs the student
    (at least ``engine`` and ``precision``, e.g. the block :func:`engine_student` yields); it becomes the
    report's ``engine`` block and ``methods.student`` gets its ``engine`` and ``precision``. Raises RecordingError for a
    recording without ``gt.csv`` and ConfigError for RGB frames that are not 4x the spike grid (without a
    calibration to warp them). Rig calibration: each recording's ``calibration.json`` when present, or the
    file ``calibration_path`` for every recording, or none with ``use_calibration=False``; the report's
    ``calibration`` block says which file was applied to which recording, and what it held.

    Colour fidelity per method: the mean error of each channel against the ground truth (% of full scale)
    and the saturation ratio. Firing gain (``spikereveal.kernels.sensor``) per exposure and per recording,
    checked against ``trained_gain_range`` (the student's declared ``firing_gain_range``; None: no check)
    widened by ``gain_tolerance``: the ``firing_gain`` block's recordings carry a ``warning`` when outside.
    """
    from contextlib import ExitStack

    from spikereveal.calibration import load_rig_calibration
    from spikereveal.recording import open_recording

    if not recordings:
        raise ConfigError("no recording given: pass at least one recording directory with ground truth (--data REC)")
    trained_gain_range = parse_gain_range(trained_gain_range)  # a malformed range fails now, not after scoring
    if isinstance(gain_tolerance, bool) or not (isinstance(gain_tolerance, (int, float)) and gain_tolerance >= 1):
        raise ConfigError(f"the firing-gain tolerance must be a number >= 1, got {gain_tolerance!r}")
    with ExitStack() as stack:
        opened = []
        for path in recordings:
            recording = stack.enter_context(open_recording(path, strict=False))
            if not recording.has_ground_truth:
                raise RecordingError(
                    Path(path) / "gt.csv",
                    "is missing: eval needs ground-truth sharp frames, which only simulated recordings have "
                    "('spikereveal simulate' writes them); for a real rig use 'spikereveal deblur' instead",
                )
            calibration = load_rig_calibration(recording, calibration_path, use_calibration)
            _check_evaluable(recording, path, calibration)
            opened.append((os.fspath(path), recording, calibration))
        report = _evaluate_opened(opened, student, teacher, options, progress, models, engine, calibration_path,
                                  use_calibration)
    report["firing_gain"] = _firing_gain_block(report["exposures"], report["recordings"], trained_gain_range,
                                               gain_tolerance)
    return report


def _evaluate_opened(opened, student, teacher, options: EvalOptions, progress, models, engine,
                     calibration_path=None, use_calibration: bool = True) -> dict:
    from spikereveal.stream.offline import calibrated_exposure_image, calibrated_exposure_window

    methods = ["blurry", "sdm"] + (["teacher"] if teacher is not None else []) + (["student"] if student is not None else [])
    sdm = ds.sdm_teacher(options.tfp_window)
    plot_dir = Path(options.plot_dir) if options.plot_dir else None
    if plot_dir is not None:
        plot_dir.mkdir(parents=True, exist_ok=True)

    per_frame = {m: {"psnr": [], "ssim": []} for m in methods}
    per_center = {m: {"psnr": [], "ssim": []} for m in methods}
    per_position: dict[str, list[list[float]]] = {m: [] for m in methods}  # PSNR by gt frame position
    color_errors: dict[str, list[np.ndarray]] = {m: [] for m in methods}  # (3,) per gt frame
    saturations: dict[str, list[float]] = {m: [] for m in methods + ["gt"]}
    entries: list[dict] = []
    reblur_scores: list[float] = []
    truth_reblur_scores: list[float] = []
    skipped: list[dict] = []
    todo = [(path, rec, calibration, e) for path, rec, calibration in opened
            for e in rec.exposures if rec.ground_truth_for(e.index)]
    for done, (path, recording, calibration, exposure) in enumerate(todo, start=1):
        spike = recording.meta.spike
        window = calibrated_exposure_window(recording, exposure.index, options.k, calibration)
        if not window.inside(recording.spikes.frame_count):
            skipped.append({"recording": path, "exposure_index": exposure.index,
                            "reason": "spike window not inside the recorded spikes"})
            continue
        fields = dict(
            recording=path,
            exposure_index=exposure.index,
            blurry=calibrated_exposure_image(recording, exposure.index, calibration),
            packed=recording.spikes.read(int(window.window_first), int(window.window_stop)),
            window=window,
            spike_height=int(spike.height),
            spike_width=int(spike.width),
        )
        data = (ds.ExposureData(**fields) if calibration is None
                else CalibratedExposureData(**fields, calibration=calibration))
        gt_frames = recording.ground_truth_for(exposure.index)
        gt_images = np.stack([recording.read_ground_truth(f) for f in gt_frames])
        gt_times = spike_clock_times(calibration, [f.t_ns for f in gt_frames])
        centers = np.asarray(time_to_index(gt_times, spike.t0_ns, spike.rate_hz), dtype=np.int64)
        if gt_images.shape[1:] != data.blurry.shape:
            raise ConfigError(f"{path}: the ground-truth frames are {gt_images.shape[-1]}x{gt_images.shape[-2]} but "
                              f"the network grid is {data.blurry.shape[-1]}x{data.blurry.shape[-2]}")
        outputs = {"blurry": np.broadcast_to(data.blurry, gt_images.shape), "sdm": sdm(data, centers)}
        if teacher is not None:
            outputs["teacher"] = teacher(data, centers)
        if student is not None:
            outputs["student"] = run_student(student, data, centers)
        center = _center_position(exposure, gt_frames)
        gain = exposure_firing_gain(fields["packed"], int(spike.height), int(spike.width), window, data.blurry)
        entry = {"recording": path, "exposure_index": int(exposure.index), "frames": len(gt_frames),
                 "center_t_ns": int(gt_frames[center].t_ns), "firing_gain": gain if np.isfinite(gain) else None,
                 "methods": {}}
        saturations["gt"].extend(mean_saturation(g) for g in gt_images)
        for method in methods:
            frames = np.clip(outputs[method], 0.0, 1.0)
            scores = {"psnr": [psnr(g, f) for g, f in zip(gt_images, frames)],
                      "ssim": [ssim(g, f) for g, f in zip(gt_images, frames)]}
            per_position[method].append(scores["psnr"])
            color_errors[method].extend(channel_mean_error(g, f) for g, f in zip(gt_images, frames))
            saturations[method].extend(mean_saturation(f) for f in frames)
            for metric in ("psnr", "ssim"):
                per_frame[method][metric].extend(scores[metric])
                per_center[method][metric].append(scores[metric][center])
            entry["methods"][method] = {
                "psnr": _mean(scores["psnr"]), "ssim": _mean(scores["ssim"]),
                "psnr_center": scores["psnr"][center], "ssim_center": scores["ssim"][center],
                "psnr_per_frame": scores["psnr"],
            }
        if student is not None:
            sequence = run_student(student, data, window.centers)
            entry["reblur_psnr"] = psnr(data.blurry, reblur(sequence))
            reblur_scores.append(entry["reblur_psnr"])
        # the same figure for the sharp truth: K samples of a moving scene do not average to its blur exactly
        entry["reblur_psnr_ground_truth"] = psnr(data.blurry, reblur(gt_images))
        truth_reblur_scores.append(entry["reblur_psnr_ground_truth"])
        if plot_dir is not None:
            entry["plot"] = os.fspath(_plot_exposure(plot_dir, path, exposure.index, outputs, gt_images, options))
        entries.append(entry)
        if progress is not None:
            progress(done, len(todo))
    if not entries:
        raise ConfigError(
            "no exposure could be evaluated: none has ground truth and a complete spike window "
            f"({len(skipped)} skipped)"
        )
    summary = {
        method: {
            "psnr": _mean(per_frame[method]["psnr"]),
            "ssim": _mean(per_frame[method]["ssim"]),
            "psnr_center": _mean(per_center[method]["psnr"]),
            "ssim_center": _mean(per_center[method]["ssim"]),
            **_color_summary(color_errors[method], saturations[method], saturations["gt"]),
        }
        for method in methods
    }
    if student is not None and engine is not None:
        summary["student"].update(engine=engine["engine"], precision=engine["precision"])
    return {
        "format": "spikereveal-eval",
        "version": 1,
        "recordings": [path for path, _, _ in opened],
        "metrics": {
            "image": "float BGR in [0, 1], 3 channels, on the network grid",
            "psnr": {"data_range": DATA_RANGE, "cap_db": PSNR_CAP_DB, "mean": "over frames of per-frame PSNR"},
            "ssim": {"window": SSIM_WINDOW, "gaussian_sigma": SSIM_SIGMA, "data_range": DATA_RANGE,
                     "use_sample_covariance": False, "channels": "mean", "implementation": ssim_implementation()},
            "center": "the ground-truth frame nearest each exposure's centre",
            "color_mean_error_pct": "per channel, mean over ground-truth frames of mean(method - gt), in % of "
                                    "full scale; color_max_abs_error_pct: the largest of the three in absolute value",
            "saturation_ratio": "mean HSV saturation (max - min) / max of the method's frames over that of the "
                                "ground-truth frames (1 = as colourful; null when the ground truth is grey)",
        },
        "frames": len(per_frame["blurry"]["psnr"]),
        "k": options.k,
        "tfp_short_window": options.tfp_window,
        "models": dict(models or {}),
        "engine": None if engine is None else dict(engine),
        "calibration": _calibration_block(opened, calibration_path, use_calibration),
        "methods": summary,
        "reblur_psnr": _mean(reblur_scores),
        "reblur_psnr_ground_truth": _mean(truth_reblur_scores),
        "psnr_by_position": _by_position(per_position),
        "exposures": entries,
        "skipped": skipped,
    }


def _color_summary(errors: Sequence[np.ndarray], saturation: Sequence[float],
                   truth_saturation: Sequence[float]) -> dict:
    """A method's colour fidelity over all its ground-truth frames (see the report's ``metrics``)."""
    mean_error = np.mean(np.asarray(errors, np.float64), axis=0) * 100.0
    truth = float(np.mean(truth_saturation))
    return {
        "color_mean_error_pct": {name: float(v) for name, v in zip(CHANNELS, mean_error)},
        "color_max_abs_error_pct": float(np.max(np.abs(mean_error))),
        "saturation_ratio": float(np.mean(saturation)) / truth if truth > 1e-6 else None,
    }


def _firing_gain_block(entries: Sequence[Mapping], recordings: Sequence[str], trained_range, tolerance) -> dict:
    """Per recording: the firing-gain summary of its exposures (``kernels.sensor.firing_gain_summary``,
    whose ``warning`` eval prints) and the student's mean re-blur PSNR. ``trained_range``: parsed."""
    items = []
    for path in recordings:
        mine = [e for e in entries if e["recording"] == path]
        gains = [np.nan if e["firing_gain"] is None else e["firing_gain"] for e in mine]
        summary = firing_gain_summary(gains, trained_range, path, tolerance)
        del summary["trained_range"], summary["tolerance"]  # stated once, in the block
        items.append({"recording": path, **summary,
                      "reblur_psnr": _mean([e["reblur_psnr"] for e in mine if e.get("reblur_psnr") is not None])})
    return {
        "definition": "mean spikes per pixel per spike frame over the exposure's frames / mean gray "
                      "(0.3 R + 0.59 G + 0.11 B, in [0, 1]) of its blurry frame",
        "trained_range": None if trained_range is None else list(trained_range),
        "tolerance": float(tolerance),
        "recordings": items,
    }


def _calibration_block(opened, calibration_path, use_calibration: bool) -> dict:
    """The report's ``calibration`` block: what was asked for, and per recording the file and its sections."""
    if not use_calibration:
        requested = "none (--no-calibration)"
    elif calibration_path is not None:
        requested = os.fspath(calibration_path)
    else:
        requested = "each recording's calibration.json, when present"
    recordings = []
    for path, _, calibration in opened:
        applied = calibration is not None
        recordings.append({
            "recording": path,
            "path": os.fspath(calibration.path) if applied else None,
            "applied": calibration_sections(calibration),
            "summary": calibration.summary() if applied else None,
        })
    paths = {item["path"] for item in recordings}
    return {
        "requested": requested,
        "path": paths.pop() if len(paths) == 1 else None,  # the one file applied to every recording, else null
        "applied": any(item["path"] is not None for item in recordings),
        "recordings": recordings,
    }


def _by_position(per_position: Mapping[str, list[list[float]]]) -> dict[str, list[float]] | None:
    """Mean PSNR at each ground-truth position (first … last frame of an exposure), when every exposure
    has the same number of ground-truth frames; shows whether the edge timestamps lag the centre."""
    counts = {len(scores) for rows in per_position.values() for scores in rows}
    if len(counts) != 1:
        return None
    return {method: [float(v) for v in np.mean(np.asarray(rows), axis=0)] for method, rows in per_position.items()}


# -- plots -------------------------------------------------------------------------------------------------------
def _plot_exposure(plot_dir: Path, recording: str, index: int, outputs: Mapping[str, np.ndarray],
                   gt_images: np.ndarray, options: EvalOptions) -> Path:
    """One PNG per exposure: a row per ground-truth timestamp, a column per method, then the ground truth."""
    import cv2

    columns = [(name, outputs[name] if name != "gt" else gt_images) for name in PLOT_COLUMNS
               if name == "gt" or name in outputs]
    count = gt_images.shape[0]
    rows = np.unique(np.rint(np.linspace(0, count - 1, min(count, options.plot_max_rows))).astype(int))
    height, width = gt_images.shape[-2:]
    scale = min(1.0, PLOT_TILE_WIDTH / width)
    tile_w, tile_h = max(1, int(round(width * scale))), max(1, int(round(height * scale)))
    label_h = 22
    canvas = np.full((label_h + len(rows) * tile_h, len(columns) * tile_w, 3), 255, np.uint8)
    for c, (name, images) in enumerate(columns):
        cv2.putText(canvas, name, (c * tile_w + 4, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
        for r, frame in enumerate(rows):
            pixels = (np.clip(images[frame], 0.0, 1.0).transpose(1, 2, 0) * 255.0 + 0.5).astype(np.uint8)
            if scale != 1.0:
                pixels = cv2.resize(pixels, (tile_w, tile_h), interpolation=cv2.INTER_AREA)
            top = label_h + r * tile_h
            canvas[top : top + tile_h, c * tile_w : (c + 1) * tile_w] = pixels
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(recording).resolve().name) or "recording"
    target = plot_dir / f"{name}_exposure{index:06d}.png"
    if not cv2.imwrite(str(target), canvas):
        raise ConfigError(f"could not write the plot {target}")
    return target


def format_table(report: Mapping) -> str:
    """The per-method summary as a fixed-width text table (for the CLI)."""
    lines = [f"{'method':<10}{'PSNR':>9}{'SSIM':>8}{'PSNR ctr':>10}{'SSIM ctr':>10}"
             f"{'B err%':>8}{'G err%':>8}{'R err%':>8}{'max|err|%':>10}{'sat ratio':>10}"]
    for method, values in report["methods"].items():
        errors = values.get("color_mean_error_pct") or {}
        colour = "".join(f"{errors[c]:>+8.2f}" if c in errors else f"{'n/a':>8}" for c in CHANNELS)
        worst, ratio = values.get("color_max_abs_error_pct"), values.get("saturation_ratio")
        lines.append(
            f"{method:<10}{values['psnr']:>9.2f}{values['ssim']:>8.4f}{values['psnr_center']:>10.2f}"
            f"{values['ssim_center']:>10.4f}{colour}" + (f"{worst:>10.2f}" if worst is not None else f"{'n/a':>10}")
            + (f"{ratio:>10.3f}" if ratio is not None else f"{'n/a':>10}")
        )
    if report.get("engine"):
        engine = report["engine"]
        lines.append(f"student engine: {engine['engine']} {engine['precision']}"
                     + (f", batch {engine['batch']}" if engine.get("batch") else ""))
    if report.get("reblur_psnr") is not None:
        truth = report.get("reblur_psnr_ground_truth")
        lines.append(f"re-blur consistency (mean of the student's {report['k']} frames vs blurry): "
                     f"{report['reblur_psnr']:.2f} dB"
                     + ("" if truth is None else f"; the ground-truth frames: {truth:.2f} dB"))
    if report.get("psnr_by_position"):
        for method, values in report["psnr_by_position"].items():
            lines.append(f"{method:<10}PSNR by frame position: " + " ".join(f"{v:.2f}" for v in values))
    block = report.get("firing_gain")
    if block:
        trained = block.get("trained_range")
        lines.append("firing gain (spikes per frame at full intensity)" + (
            f", the student's trained range {trained[0]:g}-{trained[1]:g} (tolerance x{block['tolerance']:g}):"
            if trained else ", the student declares no trained range:"))
        for item in block["recordings"]:
            gains = ("n/a" if item["mean"] is None
                     else f"{item['mean']:.3f} (min {item['min']:.3f}, max {item['max']:.3f})")
            reblur = "" if item["reblur_psnr"] is None else f", student re-blur {item['reblur_psnr']:.2f} dB"
            lines.append(f"  {item['recording']}: {gains}{reblur}"
                         + (" OUT OF DOMAIN" if item["out_of_domain"] else ""))
    lines.append(f"{report['frames']} ground-truth frames in {len(report['exposures'])} exposure(s); SSIM gaussian "
                 f"window {SSIM_WINDOW} (σ {SSIM_SIGMA}), data range {DATA_RANGE:g}")
    return "\n".join(lines)
