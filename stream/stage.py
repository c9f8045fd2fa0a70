"""The per-exposure stage, one room for live and offline: window cut -> input fill -> runner -> uint8 frames.

* :class:`ExposureProcessor` -- one ReadyJob in, K sharp frames out: copies (or, calibrated, warps) the
  uint8 frame and cuts the spike levels with :func:`spikereveal.engines.inputs.fill_exposure_inputs` into
  preallocated buffers, runs the runner once (K as the batch) straight into a reused uint8 output: the
  float conversions, clipping and rounding are inside the graph (``engines.ldn.ExposureLDN``). When the
  model declares a trained firing-gain range (``Runner.firing_gain_range``), each exposure's gain is
  estimated on a subsample (every ``GAIN_STEP``-th frame, row and column: well under a millisecond) and an
  exposure outside it is flagged ``out_of_domain`` (serve counts them); the first one is logged.
  ``spikereveal deblur`` (:mod:`spikereveal.stream.offline`), serve's inference thread and every worker
  process run exposures through it.
* :func:`load_processor` -- a runner loaded (and warmed up) for a geometry with its processor: the one
  place a stage is assembled; :class:`LazyProcessor` does it lazily for serve.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from spikereveal.engines.inputs import fill_exposure_inputs, input_shape_for
from spikereveal.errors import ConfigError, SpikeRevealError
from spikereveal.kernels.images import SPIKE_TO_IMAGE_SCALE
from spikereveal.stream.sync import ReadyJob

__all__ = ["EngineLoadError", "ExposureResult", "ReusableOutputs", "ExposureProcessor", "load_processor",
           "LazyProcessor", "GAIN_STEP"]

logger = logging.getLogger(__name__)

#: the live firing-gain estimate uses every GAIN_STEP-th spike frame, image row and column
GAIN_STEP = 4


class EngineLoadError(SpikeRevealError):
    """The inference engine could not be loaded: final for the run (never retried per exposure)."""


@dataclass(frozen=True, eq=False)
class ExposureResult:
    """K sharp frames of one exposure with the times it went through the pipeline (monotonic ns)."""

    exposure_id: int
    timestamps_ns: np.ndarray  # (K,) output times on the spike clock (the job's window; as deblur's frames.csv)
    sharp: np.ndarray  # uint8 (K, H, W, 3) BGR, or float32 (K, 3, H, W) BGR in [0, 1] for bgr_f32
    received_ns: int  # the exposure message arrived
    ready_ns: int  # its spike window was complete
    started_ns: int  # inference work started (after waiting in the queue)
    prepare_ns: int  # window cut + input conversion
    inference_ns: int
    postprocess_ns: int
    finished_ns: int
    firing_gain: float | None = None  # estimated when the model declares a trained range (nan: too dark)
    out_of_domain: bool = False  # the gain is outside the model's trained range
    epoch: int = 0  # the job's ReadyJob.epoch: (epoch, exposure_id) names the exposure across restarts

    @property
    def k(self) -> int:
        return int(self.timestamps_ns.shape[0])

    @property
    def prepare_plus_postprocess_ns(self) -> int:
        return self.prepare_ns + self.postprocess_ns


class ReusableOutputs:
    """Output arrays of one shape, handed out with results and reused once nothing references them.

    A result's ``sharp`` outlives ``process`` (queued, published, saved), so it cannot be one fixed buffer;
    a fresh array per exposure costs page faults on every exposure (~4 ms for 34 MB). ``take`` returns a
    pooled array that no other Python object refers to -- a result, a view, a memoryview or a zmq frame
    over it all hold a reference -- or, when all ``capacity`` arrays are in use, a new unpooled one.
    A reference count never rises from "unreferenced", so the check is safe from other threads.
    """

    def __init__(self, shape: tuple[int, ...], dtype, capacity: int = 3):
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
            raise ConfigError(f"capacity must be a positive integer, got {capacity!r}")
        self.shape, self.dtype, self.capacity = tuple(shape), np.dtype(dtype), capacity
        self._arrays: list[np.ndarray] = [self._new()]
        self._unreferenced = self._references(0)  # measured, not assumed: it depends on the interpreter
        self.allocated = 0  # arrays made beyond the pool (every one in use when asked)

    def _new(self) -> np.ndarray:
        array = np.empty(self.shape, self.dtype)
        array.fill(0)  # first-touch page faults now, not on a live exposure
        return array

    def _references(self, index: int) -> int:
        return sys.getrefcount(self._arrays[index])

    def take(self) -> np.ndarray:
        for index in range(len(self._arrays)):
            if self._references(index) <= self._unreferenced:
                return self._arrays[index]
        array = np.empty(self.shape, self.dtype)
        if len(self._arrays) < self.capacity:
            self._arrays.append(array)
        else:
            self.allocated += 1
        return array


class ExposureProcessor:
    """Runs ReadyJobs through a loaded runner on preallocated buffers (one processor per runner/thread).

    ``calibration`` (a RigCalibration or None) warps the RGB frame onto the network grid and corrects the
    spike frames, as ``deblur`` does; without one the RGB frame must already be on the grid.
    ``check_domain=False`` skips the per-exposure firing-gain check (``deblur`` reports the recording's).
    """

    def __init__(self, runner, calibration=None, output_pixel_format: str = "bgr8",
                 clock_ns: Callable[[], int] = time.monotonic_ns, check_domain: bool = True):
        self._fill_inputs = fill_exposure_inputs
        self.runner = runner
        self.calibration = calibration
        self.output_pixel_format = output_pixel_format
        self._clock_ns = clock_ns
        shape = runner.shape
        self.shape = shape
        # every buffer written once now: first-touch page faults would otherwise land on the first exposures
        self.image = np.zeros(shape.image, np.uint8)
        self.spikes = np.zeros(shape.spikes, np.uint8)
        k, height, width, _ = shape.sharp
        # the runner writes each result straight into an output no earlier result still holds
        self.outputs = ReusableOutputs(shape.sharp, np.uint8)
        self.float_outputs = ReusableOutputs((k, 3, height, width), np.float32) if output_pixel_format != "bgr8" else None
        # None: the model declares no range, or the caller checks the whole recording instead (offline deblur)
        self.gain_range = getattr(runner, "firing_gain_range", None) if check_domain else None
        self.out_of_domain = 0
        self._warm_up()

    def _warm_up(self) -> None:
        """Compile the numba kernels now rather than on the first live exposure (their signatures are
        shape-free: tiny arrays of the live dtypes and layouts)."""
        from spikereveal.kernels import extract_ldn_input
        from spikereveal.kernels.sensor import gray_mean, mean_spike_rate

        window = self.shape.spike_frames
        packed = np.zeros((window, 1), np.uint8)
        for writeable in (True, False):  # decoded messages are read-only views: numba types them apart
            packed.flags.writeable = writeable
            extract_ldn_input(packed, 1, 8, np.array([window // 2]), window=window, first_index=0,
                              out=np.empty((1, window, 1, 8), np.uint8))
            if self.gain_range is not None:
                mean_spike_rate(packed, 1, 8, step=GAIN_STEP)
        if self.gain_range is not None:
            gray_mean(self.image, GAIN_STEP)

    def _check_domain(self, job: ReadyJob) -> tuple[float | None, bool]:
        """(firing gain, out of domain) of ``job`` after ``prepare``; (None, False) without a declared range."""
        if self.gain_range is None:
            return None, False
        from spikereveal.kernels.sensor import adapt_hint, domain_check, exposure_firing_gain

        gain = exposure_firing_gain(job.packed, job.spike_height, job.spike_width, job.window, self.image,
                                    first_index=job.first_index, step=GAIN_STEP)
        reason = domain_check(gain, self.gain_range)
        if reason is None:
            return gain, False
        self.out_of_domain += 1
        if self.out_of_domain == 1:
            logger.warning("exposure %d: %s; %s (counted in out_of_domain_exposures, logged once)",
                           job.exposure_id, reason, adapt_hint("RECORDING"))
        return gain, True

    def check(self, job: ReadyJob) -> None:
        shape = self.shape
        k = int(job.centers.shape[0])
        grid = (SPIKE_TO_IMAGE_SCALE * job.spike_height, SPIKE_TO_IMAGE_SCALE * job.spike_width)
        if k != shape.k or grid != (shape.height, shape.width):
            raise ConfigError(
                f"exposure {job.exposure_id} needs K={k} frames on a {grid[1]}x{grid[0]} grid but the "
                f"{self.runner.name} runner is loaded for K={shape.k} at {shape.width}x{shape.height}; "
                "restart serve with the rig's geometry")
        if self.calibration is None and job.image.shape[:2] != grid:
            raise ConfigError(
                f"exposure {job.exposure_id}: the RGB frame is {job.image.shape[1]}x{job.image.shape[0]} but the "
                f"network grid is {grid[1]}x{grid[0]}; give the rig's calibration (--config with 'calibration')")

    def prepare(self, job: ReadyJob) -> tuple[np.ndarray, np.ndarray]:
        """Fill the preallocated network inputs for ``job``; returns ``(image, spikes)`` (the buffers):
        the same function as ``deblur`` uses, so serve and deblur see identical inputs."""
        self.check(job)
        self._fill_inputs(self.image, self.spikes, job.image, job.packed, (job.spike_height, job.spike_width),
                          job.centers, job.first_index, self.calibration)
        return self.image, self.spikes

    def process(self, job: ReadyJob) -> ExposureResult:
        clock = self._clock_ns
        started = clock()
        image, spikes = self.prepare(job)
        gain, out_of_domain = self._check_domain(job)
        prepared = clock()
        out = self.runner.infer(image, spikes, out=self.outputs.take())
        inferred = clock()
        if self.float_outputs is not None:  # bgr_f32 on the wire: the graph's 8-bit result as floats
            planar = self.float_outputs.take()
            np.divide(out.transpose(0, 3, 1, 2), np.float32(255.0), out=planar, dtype=np.float32)  # as files are read
            out = planar
        finished = clock()
        return ExposureResult(
            exposure_id=int(job.exposure_id),
            timestamps_ns=np.array(job.timestamps_ns, dtype=np.int64),
            sharp=out, received_ns=int(job.received_ns), ready_ns=int(job.ready_ns), started_ns=started,
            prepare_ns=prepared - started, inference_ns=inferred - prepared, postprocess_ns=finished - inferred,
            finished_ns=finished, firing_gain=gain, out_of_domain=out_of_domain, epoch=int(job.epoch),
        )


def load_processor(runner_factory: Callable, shape, calibration=None,
                   output_pixel_format: str = "bgr8") -> ExposureProcessor:
    """Load ``runner_factory(shape)`` (warm-up included) and wrap it in an ExposureProcessor: how serve, its
    worker processes and ``deblur`` assemble a stage. The runner is closed again if the processor cannot
    be built."""
    runner = runner_factory(shape).load()
    try:
        return ExposureProcessor(runner, calibration, output_pixel_format)
    except BaseException:
        runner.close()
        raise


class LazyProcessor:
    """An ExposureProcessor whose runner loads (and warms up) for a geometry: ``ensure(shape)`` up front,
    ``preload(shape)`` in the background as soon as the geometry is known (the first spike block), else
    for the first job; it is rebuilt if the geometry changes (a different sensor was plugged in).

    A load failure is final (EngineLoadError, kept in ``load_error``): it is not retried per exposure."""

    def __init__(self, runner_factory: Callable, calibration=None, output_pixel_format: str = "bgr8"):
        self._factory = runner_factory
        self.calibration = calibration
        self.output_pixel_format = output_pixel_format
        self.processor: ExposureProcessor | None = None
        self.loads = 0
        self.load_error: EngineLoadError | None = None
        # the last runner's own counters (``Runner.stats`` where a backend keeps them, e.g. triton's retries)
        self.runner_stats: dict | None = None
        self._lock = threading.Lock()  # a job waits here while a preload runs

    def ensure(self, shape) -> ExposureProcessor:
        with self._lock:
            if self.load_error is not None:
                raise self.load_error
            if self.processor is None or self.processor.shape != shape:
                self.close()
                try:
                    processor = load_processor(self._factory, shape, self.calibration, self.output_pixel_format)
                except Exception as exc:  # noqa: BLE001 (any backend failure ends the run, once, with its reason)
                    self.load_error = EngineLoadError(
                        f"the inference engine could not be loaded for {shape.width}x{shape.height}, K="
                        f"{shape.k}: {exc}")
                    self.load_error.__cause__ = exc
                    raise self.load_error from exc
                self.loads += 1
                logger.info("runner ready: %s", processor.runner.describe())
                self.processor = processor
            return self.processor

    def preload(self, shape, on_done: Callable[[EngineLoadError | None], None]) -> threading.Thread:
        """Load and warm up for ``shape`` in a background thread; ``on_done(error or None)`` afterwards."""

        def load():
            try:
                self.ensure(shape)
            except EngineLoadError as exc:
                on_done(exc)
            else:
                on_done(None)

        thread = threading.Thread(target=load, name="engine-load", daemon=True)
        thread.start()
        return thread

    def __call__(self, job):
        shape = input_shape_for(int(job.centers.shape[0]), job.spike_height, job.spike_width)
        return self.ensure(shape).process(job)

    def close(self) -> None:
        if self.processor is not None:
            stats = getattr(self.processor.runner, "stats", None)
            self.runner_stats = dict(stats) if isinstance(stats, dict) else self.runner_stats
            self.processor.runner.close()
            self.processor = None
