"""Inference on ready exposure windows: bounded job queue, window cutting, the runner, saving, and jobs on the wire.

* :class:`JobQueue` -- the bounded FIFO between the synchroniser and inference. When inference is slower
  than the exposure rate it fills; the policy is explicit (``drop_oldest`` by default, or ``drop_newest``)
  and every dropped exposure is counted. Memory: ``capacity`` windows waiting + the ones being inferred.
* :class:`ExposureProcessor` -- one ReadyJob in, K sharp frames out: copies (or, calibrated, warps) the
  uint8 frame and cuts the spike levels with :func:`spikereveal.engines.deblur.fill_exposure_inputs` into
  preallocated buffers, runs the runner once (K as the batch) straight into a reused uint8 output: the
  float conversions, clipping and rounding are inside the graph (``engines.ldn.ExposureLDN``). When the
  model declares a trained firing-gain range (``Runner.firing_gain_range``), each exposure's gain is
  estimated on a subsample (every ``GAIN_STEP``-th frame, row and column: well under a millisecond) and an
  exposure outside it is flagged ``out_of_domain`` (serve counts them); the first one is logged.
* :class:`FrameSaver` -- ``frames/<exposure>_<k>.png`` + ``frames.csv`` exactly as ``spikereveal deblur``
  writes them (same names, header and timestamps: the output times on the spike clock), and optionally the
  side-by-side video.
* :class:`InferenceThread` -- consumes the queue in a thread, so the receive loop never waits for inference.
* ``encode_job``/``decode_job`` and ``encode_result``/``decode_result`` -- self-contained jobs for worker
  processes (PUSH/PULL), validated like the wire protocol and never unpickled; :func:`run_worker` is the
  worker process's loop (``spikereveal worker``).
"""

from __future__ import annotations

import csv
import errno
import logging
import os
import struct
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from spikereveal.errors import ConfigError, SpikeRevealError
from spikereveal.kernels.timing import ExposureWindow
from spikereveal.stream.protocol import MAX_IMAGE_SIDE, MAX_SPIKE_SIDE, MAX_OUTPUT_COUNT, ProtocolError, Reason
from spikereveal.stream.sync import ReadyJob

__all__ = [
    "JobQueue",
    "job_nbytes",
    "EngineLoadError",
    "ExposureResult",
    "ExposureProcessor",
    "ReusableOutputs",
    "FrameSaver",
    "InferenceThread",
    "encode_job",
    "decode_job",
    "encode_result",
    "decode_result",
    "run_worker",
    "runner_shape_for",
]

logger = logging.getLogger(__name__)

NS_PER_S = 1_000_000_000
#: the live firing-gain estimate uses every GAIN_STEP-th spike frame, image row and column
GAIN_STEP = 4


class EngineLoadError(SpikeRevealError):
    """The inference engine could not be loaded: final for the run (never retried per exposure)."""


# -- the bounded queue -------------------------------------------------------------------------------------
def job_nbytes(job) -> int:
    """The bytes a queued job holds alive: its spike window and its RGB image."""
    return int(job.packed.nbytes) + int(job.image.nbytes)


class JobQueue:
    """Bounded, thread-safe FIFO of ReadyJobs with a stated policy when full (see the module doc).

    Bounded in jobs (``capacity_jobs``) and in bytes (``max_bytes``: spike windows + images, see
    :func:`job_nbytes`); whichever is hit first applies the policy, and every drop is counted in ``dropped``.
    While the engine warms up (``begin_warmup`` .. ``end_warmup``) up to ``warmup_capacity_jobs`` jobs wait
    (still within ``max_bytes``) instead of being dropped for capacity; a drop then counts in
    ``warmup_dropped``, never in ``dropped``. That backlog is then processed, not trimmed: the bound returns
    to ``capacity_jobs`` once inference has caught up with it.
    """

    def __init__(self, capacity_jobs: int = 2, when_full: str = "drop_oldest", max_bytes: int | None = None,
                 warmup_capacity_jobs: int = 16):
        if isinstance(capacity_jobs, bool) or not isinstance(capacity_jobs, int) or capacity_jobs < 1:
            raise ConfigError(f"the job queue needs a capacity >= 1, got {capacity_jobs!r}")
        if when_full not in ("drop_oldest", "drop_newest"):
            raise ConfigError(f"when_full must be drop_oldest or drop_newest, got {when_full!r}")
        self.capacity = capacity_jobs
        self.when_full = when_full
        self.max_bytes = max_bytes
        self.warmup_capacity = max(capacity_jobs, warmup_capacity_jobs)
        self.warming_up = False
        self._limit = capacity_jobs  # above capacity_jobs only while a warm-up backlog drains
        self._items: deque = deque()
        self._cond = threading.Condition()
        self._closed = False
        self.dropped = 0
        self.warmup_dropped = 0
        self.dropped_ids: deque[int] = deque(maxlen=64)  # the latest dropped exposure ids, for logs and tests
        self.max_depth = 0
        self.nbytes = 0
        self.peak_bytes = 0

    def __len__(self) -> int:
        with self._cond:
            return len(self._items)

    def begin_warmup(self) -> None:
        with self._cond:
            self.warming_up = True

    def end_warmup(self) -> None:
        """The engine is ready. What waits is processed, not trimmed: the bound stays at the backlog's length
        until inference has brought the queue back to ``capacity_jobs``."""
        with self._cond:
            if self.warming_up:
                self.warming_up = False
                self._limit = max(self.capacity, len(self._items))

    def _full(self, extra_jobs: int = 0, extra_bytes: int = 0) -> bool:
        capacity = self.warmup_capacity if self.warming_up else self._limit
        over_bytes = self.max_bytes is not None and self.nbytes + extra_bytes > self.max_bytes
        return len(self._items) + extra_jobs > capacity or over_bytes

    def put(self, job) -> object | None:
        """Enqueue ``job``; returns the (first) job dropped to make room (or ``job`` itself under drop_newest),
        else None."""
        with self._cond:
            if self._closed:
                raise ConfigError("the job queue is closed")
            size = job_nbytes(job)
            dropped = []
            if self.when_full == "drop_newest":
                if self._full(1, size):
                    dropped.append(job)
                else:
                    self._items.append(job)
                    self.nbytes += size
            else:
                self._items.append(job)
                self.nbytes += size
                while self._items and self._full():
                    oldest = self._items.popleft()
                    self.nbytes -= job_nbytes(oldest)
                    dropped.append(oldest)
            for item in dropped:
                if self.warming_up:
                    self.warmup_dropped += 1
                else:
                    self.dropped += 1
                self.dropped_ids.append(int(item.exposure_id))
                logger.debug("job queue full: dropped exposure %d", item.exposure_id)
            self.max_depth = max(self.max_depth, len(self._items))
            self.peak_bytes = max(self.peak_bytes, self.nbytes)
            self._cond.notify()
            return dropped[0] if dropped else None

    def _pop(self):
        job = self._items.popleft()
        self.nbytes -= job_nbytes(job)
        if len(self._items) <= self.capacity:
            self._limit = self.capacity  # the warm-up backlog is gone
        return job

    def get(self, timeout_s: float | None = None):
        """The oldest job; waits up to ``timeout_s`` (None: until one comes or the queue closes). None if none."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._items or self._closed, timeout_s):
                return None
            return self._pop() if self._items else None

    def get_nowait(self):
        with self._cond:
            return self._pop() if self._items else None

    def clear(self) -> list:
        """Remove and return every waiting job."""
        with self._cond:
            items = list(self._items)
            self._items.clear()
            self.nbytes = 0
            self._limit = self.capacity
            return items

    def close(self) -> None:
        """No more puts; ``get`` returns what is left, then None."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()


# -- one exposure through the network ----------------------------------------------------------------------
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


def runner_shape_for(k: int, spike_height: int, spike_width: int):
    """The runner's InputShape for K frames of a spike sensor (the network grid is 4x the sensor)."""
    from spikereveal.engines.runners import SPIKE_SCALE, InputShape

    return InputShape(k, SPIKE_SCALE * spike_height, SPIKE_SCALE * spike_width)


class ExposureProcessor:
    """Runs ReadyJobs through a loaded runner on preallocated buffers (one processor per runner/thread).

    ``calibration`` (a RigCalibration or None) warps the RGB frame onto the network grid and corrects the
    spike frames, as ``deblur`` does; without one the RGB frame must already be on the grid.
    """

    def __init__(self, runner, calibration=None, output_pixel_format: str = "bgr8",
                 clock_ns: Callable[[], int] = time.monotonic_ns):
        from spikereveal.engines.deblur import fill_exposure_inputs

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
        self.gain_range = getattr(runner, "firing_gain_range", None)  # None: the model declares none, no check
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
        grid = (4 * job.spike_height, 4 * job.spike_width)
        if k != shape.batch or grid != (shape.height, shape.width):
            raise ConfigError(
                f"exposure {job.exposure_id} needs K={k} frames on a {grid[1]}x{grid[0]} grid but the "
                f"{self.runner.name} runner is loaded for K={shape.batch} at {shape.width}x{shape.height}; "
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


# -- saving like deblur --------------------------------------------------------------------------------------
class FrameSaver:
    """Writes results as ``spikereveal deblur`` does: ``frames/<exposure:06d>_<k:02d>.png`` and ``frames.csv``
    (rows written as results arrive), plus an optional side-by-side (blurry | sharp) MP4. Exposures of a
    restarted RGB stream (``epoch`` > 0, whose frame ids start again) go to ``frames/e<epoch>_<exposure>_<k>.png``,
    so no file is ever overwritten.

    A write the OS refuses (a full disk, a folder that became read-only or vanished) never stops serving:
    the frame is counted in ``frames_failed`` and each kind of failure (errno name, or ``imwrite`` when
    OpenCV only says it could not write) is logged once. A frame counts as saved once its PNG and its
    ``frames.csv`` row are written. ``write_image(path, image, params) -> bool`` replaces ``cv2.imwrite``
    (tests inject failures)."""

    def __init__(self, out_dir: str | os.PathLike, png_compression: int = 1, video_fps: float | None = None,
                 video_name: str | None = None, write_image: Callable | None = None):
        import cv2

        from spikereveal.engines.deblur import FRAMES_CSV, FRAMES_DIR, FRAMES_HEADER, VIDEO_FILE

        self._cv2 = cv2
        self._write_image = write_image or cv2.imwrite
        self.out_dir = Path(out_dir)
        self.frames_dir = FRAMES_DIR
        (self.out_dir / FRAMES_DIR).mkdir(parents=True, exist_ok=True)
        self._png_params = [cv2.IMWRITE_PNG_COMPRESSION, int(png_compression)]
        self._csv_handle = open(self.out_dir / FRAMES_CSV, "w", newline="", encoding="utf-8")
        self._csv = csv.writer(self._csv_handle, lineterminator="\n")
        self._csv.writerow(FRAMES_HEADER)
        self._video_fps = video_fps
        self.video_path = self.out_dir / (video_name or VIDEO_FILE) if video_fps else None
        self._video = None
        self._side_by_side = None
        self.frames_written = 0
        self.frames_failed = 0
        self.failure_kinds: dict[str, int] = {}  # errno name (or "imwrite") -> failed frames

    def _failed(self, kind: str, frames: int, what, exc: BaseException | None = None) -> None:
        self.frames_failed += frames
        first = kind not in self.failure_kinds
        self.failure_kinds[kind] = self.failure_kinds.get(kind, 0) + frames
        if first:  # once per kind: a full disk would otherwise log every frame
            detail = f": {exc}" if exc is not None else ""
            logger.error("cannot save %s (%s%s); serving goes on, unsaved frames are counted in "
                         "frames_save_failed (this kind of failure is logged once); free disk space or fix the "
                         "--save folder", what, kind, detail)

    @staticmethod
    def _kind(exc: BaseException) -> str:
        number = getattr(exc, "errno", None)
        return errno.errorcode.get(number, f"errno {number}") if number is not None else type(exc).__name__

    def save(self, exposure_id: int, timestamps_ns: np.ndarray, sharp8: np.ndarray,
             blur8: np.ndarray | None = None, epoch: int = 0) -> None:
        """``sharp8``: uint8 (K, H, W, 3); ``blur8``: uint8 (H, W, 3) for the video (skipped when None).
        Never raises for a write the OS refuses (see the class doc)."""
        written = 0
        prefix = f"e{int(epoch)}_" if epoch else ""
        for k in range(sharp8.shape[0]):
            name = f"{self.frames_dir}/{prefix}{exposure_id:06d}_{k:02d}.png"
            try:
                ok = self._write_image(str(self.out_dir / name), sharp8[k], self._png_params)
            except (OSError, self._cv2.error) as exc:
                self._failed(self._kind(exc), 1, self.out_dir / name, exc)
                continue
            if not ok:
                self._failed("imwrite", 1, self.out_dir / name)
                continue
            try:
                self._csv.writerow((exposure_id, int(timestamps_ns[k]), name))
            except OSError as exc:
                self._failed(self._kind(exc), 1, self.out_dir / "frames.csv", exc)
                continue
            written += 1
        try:
            self._csv_handle.flush()
        except OSError as exc:  # the rows stay buffered; counted as not saved
            self._failed(self._kind(exc), written, self.out_dir / "frames.csv", exc)
            written = 0
        self.frames_written += written
        if self.video_path is not None and blur8 is not None:
            try:
                self._write_video(blur8, sharp8)
            except (OSError, self._cv2.error) as exc:
                self._failed(self._kind(exc), 0, self.video_path, exc)

    def _write_video(self, blur8: np.ndarray, sharp8: np.ndarray) -> None:
        from spikereveal.engines.deblur import _open_video  # deblur's writer (mp4v), reused as is

        height, width = sharp8.shape[1:3]
        if self._video is None and self._side_by_side is None:
            self._video = _open_video(self.video_path, self._video_fps, 2 * width, height)
            self._side_by_side = np.empty((height, 2 * width, 3), np.uint8)
        if self._video is None:
            return
        if blur8.shape[:2] != (height, width):  # the raw RGB frame of a calibrated rig: show it at grid size
            blur8 = self._cv2.resize(blur8, (width, height), interpolation=self._cv2.INTER_AREA)
        self._side_by_side[:, :width] = blur8
        for k in range(sharp8.shape[0]):
            self._side_by_side[:, width:] = sharp8[k]
            self._video.write(self._side_by_side)

    def close(self) -> None:
        if self._video is not None:
            self._video.release()
            self._video = None
        if not self._csv_handle.closed:
            try:
                self._csv_handle.close()
            except OSError as exc:  # rows that a full disk refused: already counted
                self._failed(self._kind(exc), 0, self.out_dir / "frames.csv", exc)


# -- the inference thread -----------------------------------------------------------------------------------
class InferenceThread:
    """Takes jobs from a JobQueue, runs them through ``process`` and hands ``(job, result)`` to ``deliver``
    (in this thread).

    A job that fails with a SpikeRevealError (e.g. a geometry the runner was not loaded for) is counted in
    ``failed`` and logged; the thread goes on, except after an EngineLoadError (kept in ``error``: it stops). ``busy`` is true while a job is being processed.
    """

    def __init__(self, queue: JobQueue, process: Callable[[ReadyJob], ExposureResult],
                 deliver: Callable[[ReadyJob, ExposureResult], None], name: str = "inference"):
        self.queue = queue
        self._process = process
        self._deliver = deliver
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._idle = threading.Condition()
        self.busy = False
        self.processed = 0
        self.failed = 0
        self.error: BaseException | None = None  # an unexpected exception that ended the thread

    def start(self) -> "InferenceThread":
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                job = self.queue.get(timeout_s=0.1)
                if job is None:
                    if self.queue._closed and not len(self.queue):
                        return
                    continue
                with self._idle:
                    self.busy = True
                try:
                    result = self._process(job)
                except EngineLoadError as exc:  # final: serve stops with the reason, no retry per exposure
                    self.failed += 1
                    self.error = exc
                    logger.error("exposure %d failed: %s", job.exposure_id, exc)
                    return
                except SpikeRevealError as exc:
                    self.failed += 1
                    logger.error("exposure %d failed: %s", job.exposure_id, exc)
                else:
                    self._deliver(job, result)
                    self.processed += 1
                finally:
                    with self._idle:
                        self.busy = False
                        self._idle.notify_all()
        except BaseException as exc:  # surfaced by serve, which stops and reports it
            self.error = exc
            logger.exception("inference thread stopped")
        finally:
            with self._idle:
                self.busy = False
                self._idle.notify_all()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def wait_idle(self, timeout_s: float | None = None) -> bool:
        """Wait until the queue is empty and no job is in progress (True), or the timeout passed (False)."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        with self._idle:
            while self.alive and (self.busy or len(self.queue)):
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._idle.wait(0.05 if remaining is None else min(remaining, 0.05))
        return not (self.busy or len(self.queue))

    def stop(self, timeout_s: float = 10.0) -> None:
        """Finish the job in progress and stop (waiting jobs stay in the queue, for the caller to count)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)


# -- jobs and results on the wire (worker processes) ----------------------------------------------------------
JOB_MAGIC = b"SRJB"
RESULT_MAGIC = b"SRRS"
READY_MAGIC = b"SRWK"
JOB_VERSION = 2  # 2: the job's epoch in the job header's last field and at the end of the result header
JOB_TOPIC, RESULT_TOPIC, READY_TOPIC = b"job", b"res", b"ready"
# magic, version, k, exposure_id, start_ns, duration_ns, first_index, exposure_first, exposure_stop,
# received_ns, ready_ns, spike_h, spike_w, frame_count, image_h, image_w, epoch
_JOB = struct.Struct("<4sHHqqqqqqqqIIIIII")
# magic, version, k, exposure_id, status, pixel_format, flags (RESULT_OUT_OF_DOMAIN), height, width, worker_id,
# started_ns, prepare_ns, inference_ns, postprocess_ns, finished_ns, epoch
_RESULT = struct.Struct("<4sHHqBBHIIIqqqqqI")
_READY = struct.Struct("<4sHHII")  # magic, version, reserved, worker_id, pid
# magic, version, reserved, worker_id, pid, exposure_id (the job just taken; -1: a periodic liveness beat), epoch
_BEAT = struct.Struct("<4sHHIIqI")
BEAT_MAGIC, BEAT_TOPIC = b"SRHB", b"beat"
#: how often a worker says it is alive (serve declares it lost after scale_out.heartbeat_timeout_s)
HEARTBEAT_INTERVAL_S = 1.0
RESULT_OK, RESULT_FAILED = 0, 1
RESULT_OUT_OF_DOMAIN = 1  # flag: the exposure's firing gain is outside the model's trained range
_PIXEL_CODES = {"bgr8": 1, "bgr_f32": 2}
_PIXEL_NAMES = {code: name for name, code in _PIXEL_CODES.items()}


def _view(part) -> memoryview:
    view = memoryview(getattr(part, "buffer", part))
    return view if view.ndim == 1 and view.format == "B" else view.cast("B")


def encode_job(job: ReadyJob) -> list:
    """``[b"job", header, packed, image, times]`` -- everything a worker needs, no references to serve."""
    k = int(job.centers.shape[0])
    packed = np.ascontiguousarray(job.packed)
    image = np.ascontiguousarray(job.image)
    window = job.window
    header = _JOB.pack(JOB_MAGIC, JOB_VERSION, k, int(job.exposure_id), int(job.start_ns), int(job.duration_ns),
                       int(job.first_index), int(window.exposure_first), int(window.exposure_stop),
                       int(job.received_ns), int(job.ready_ns), int(job.spike_height), int(job.spike_width),
                       int(packed.shape[0]), int(image.shape[0]), int(image.shape[1]), int(job.epoch))
    times = np.stack([np.asarray(job.centers, "<i8"), np.asarray(job.timestamps_ns, "<i8")])
    return [JOB_TOPIC, header, memoryview(packed.reshape(-1)), memoryview(image.reshape(-1)), times.tobytes()]


def _bad(message: str) -> ProtocolError:
    return ProtocolError(Reason.FIELD, message, None)


def decode_job(parts) -> ReadyJob:
    """Validate and decode a job (headers before payloads; ProtocolError when malformed)."""
    if not isinstance(parts, (list, tuple)) or len(parts) != 5:
        raise ProtocolError(Reason.PARTS, f"a job has 5 parts, got {len(parts) if isinstance(parts, list) else '?'}")
    topic, header, packed, image, times = (_view(p) for p in parts)
    if bytes(topic) != JOB_TOPIC or len(header) != _JOB.size:
        raise ProtocolError(Reason.HEADER_SIZE, "not a spikereveal job (topic or header size)")
    (magic, version, k, exposure_id, start_ns, duration_ns, first_index, exposure_first, exposure_stop, received_ns,
     ready_ns, spike_h, spike_w, frame_count, image_h, image_w, epoch) = _JOB.unpack(header)
    if magic != JOB_MAGIC:
        raise ProtocolError(Reason.MAGIC, "not a spikereveal job")
    if version != JOB_VERSION:
        raise ProtocolError(Reason.VERSION, f"job version {version} is not {JOB_VERSION}; run the same spikereveal "
                                            "version on serve and workers")
    if not (1 <= k <= MAX_OUTPUT_COUNT and 1 <= spike_h <= MAX_SPIKE_SIDE and 1 <= spike_w <= MAX_SPIKE_SIDE
            and (spike_h * spike_w) % 8 == 0 and 1 <= image_h <= MAX_IMAGE_SIDE and 1 <= image_w <= MAX_IMAGE_SIDE
            and 1 <= frame_count <= 1 << 20 and exposure_id >= 0 and duration_ns >= 0):
        raise ProtocolError(Reason.GEOMETRY, "job geometry out of range")
    frame_bytes = spike_h * spike_w // 8
    if len(packed) != frame_count * frame_bytes or len(image) != image_h * image_w * 3 or len(times) != 16 * k:
        raise ProtocolError(Reason.PAYLOAD_SIZE, "job payload sizes disagree with its header")
    centers_times = np.frombuffer(times, "<i8").reshape(2, k).astype(np.int64)
    centers, timestamps = centers_times[0], centers_times[1]
    if centers.min() - 10 < first_index or centers.max() + 10 >= first_index + frame_count:
        raise _bad("job centres outside its spike frames")
    window = ExposureWindow(exposure_first=exposure_first, exposure_stop=exposure_stop, window_first=first_index,
                            window_stop=first_index + frame_count, centers=centers, timestamps_ns=timestamps)
    return ReadyJob(
        exposure_id=exposure_id, start_ns=start_ns, duration_ns=duration_ns,
        image=np.frombuffer(image, np.uint8).reshape(image_h, image_w, 3),
        packed=np.frombuffer(packed, np.uint8).reshape(frame_count, frame_bytes), first_index=first_index,
        centers=centers, timestamps_ns=timestamps, window=window, spike_height=spike_h, spike_width=spike_w,
        received_ns=received_ns, ready_ns=ready_ns, epoch=epoch,
    )


def encode_result(result: ExposureResult | None, worker_id: int, exposure_id: int | None = None,
                  k: int = 0, epoch: int = 0) -> list:
    """``[b"res", header, sharp, timestamps]``; ``result`` None: the exposure failed on the worker."""
    if result is None:
        header = _RESULT.pack(RESULT_MAGIC, JOB_VERSION, k, int(exposure_id), RESULT_FAILED, 1, 0, 1, 1, worker_id,
                              0, 0, 0, 0, 0, int(epoch))
        return [RESULT_TOPIC, header, b"", b""]
    sharp = np.ascontiguousarray(result.sharp)
    pixel = "bgr8" if sharp.dtype == np.uint8 else "bgr_f32"
    height, width = (sharp.shape[1], sharp.shape[2]) if pixel == "bgr8" else (sharp.shape[2], sharp.shape[3])
    flags = RESULT_OUT_OF_DOMAIN if result.out_of_domain else 0
    header = _RESULT.pack(RESULT_MAGIC, JOB_VERSION, result.k, result.exposure_id, RESULT_OK, _PIXEL_CODES[pixel],
                          flags, height, width, worker_id, result.started_ns, result.prepare_ns, result.inference_ns,
                          result.postprocess_ns, result.finished_ns, int(result.epoch))
    return [RESULT_TOPIC, header, memoryview(sharp.reshape(-1).view(np.uint8)),
            np.asarray(result.timestamps_ns, "<i8").tobytes()]


@dataclass(frozen=True, eq=False)
class WireResult:
    """A decoded result: the worker's ExposureResult fields except the serve-side times (filled by the collector)."""

    exposure_id: int
    ok: bool
    worker_id: int
    k: int
    sharp: np.ndarray | None
    timestamps_ns: np.ndarray | None
    started_ns: int = 0
    prepare_ns: int = 0
    inference_ns: int = 0
    postprocess_ns: int = 0
    finished_ns: int = 0
    out_of_domain: bool = False
    epoch: int = 0

    @property
    def key(self) -> tuple[int, int]:
        return (int(self.epoch), int(self.exposure_id))


def decode_result(parts) -> WireResult:
    if not isinstance(parts, (list, tuple)) or len(parts) != 4:
        raise ProtocolError(Reason.PARTS, "a result has 4 parts")
    topic, header, sharp, times = (_view(p) for p in parts)
    if bytes(topic) != RESULT_TOPIC or len(header) != _RESULT.size:
        raise ProtocolError(Reason.HEADER_SIZE, "not a spikereveal result (topic or header size)")
    (magic, version, k, exposure_id, status, pixel, flags, height, width, worker_id, started, prepare, inference, post,
     finished, epoch) = _RESULT.unpack(header)
    if magic != RESULT_MAGIC or version != JOB_VERSION:
        raise ProtocolError(Reason.VERSION, "result from another spikereveal version")
    if status == RESULT_FAILED:
        return WireResult(exposure_id, False, worker_id, k, None, None, epoch=epoch)
    if status != RESULT_OK or pixel not in _PIXEL_NAMES or not (1 <= k <= MAX_OUTPUT_COUNT) or not (
            1 <= height <= MAX_IMAGE_SIDE and 1 <= width <= MAX_IMAGE_SIDE):
        raise _bad("result fields out of range")
    item = 1 if pixel == 1 else 4
    if len(sharp) != k * height * width * 3 * item or len(times) != 8 * k:
        raise ProtocolError(Reason.PAYLOAD_SIZE, "result payload sizes disagree with its header")
    if pixel == 1:
        images = np.frombuffer(sharp, np.uint8).reshape(k, height, width, 3)
    else:
        images = np.frombuffer(sharp, "<f4").reshape(k, 3, height, width)
    return WireResult(exposure_id, True, worker_id, k, images, np.frombuffer(times, "<i8").astype(np.int64),
                      started, prepare, inference, post, finished, bool(flags & RESULT_OUT_OF_DOMAIN), epoch)


def encode_ready(worker_id: int) -> list:
    return [READY_TOPIC, _READY.pack(READY_MAGIC, JOB_VERSION, 0, worker_id, os.getpid())]


def decode_ready(parts) -> int | None:
    """The worker id of a ready announcement, or None when ``parts`` is not one."""
    if len(parts) != 2 or bytes(_view(parts[0])) != READY_TOPIC or len(_view(parts[1])) != _READY.size:
        return None
    magic, version, _, worker_id, _ = _READY.unpack(_view(parts[1]))
    return worker_id if magic == READY_MAGIC and version == JOB_VERSION else None


def encode_heartbeat(worker_id: int, key: tuple[int, int] | None = None) -> list:
    """A worker's liveness beat (``key`` None), or its acknowledgement that it took the job ``key`` =
    (epoch, exposure id): serve then knows which worker holds which job, and releases exactly a lost
    worker's jobs."""
    epoch, exposure_id = (0, -1) if key is None else (int(key[0]), int(key[1]))
    return [BEAT_TOPIC, _BEAT.pack(BEAT_MAGIC, JOB_VERSION, 0, worker_id, os.getpid(), exposure_id, epoch)]


def decode_heartbeat(parts) -> tuple[int, tuple[int, int] | None] | None:
    """``(worker_id, (epoch, exposure id) or None)`` of a heartbeat/acknowledgement, or None when ``parts`` is
    not one."""
    if len(parts) != 2 or bytes(_view(parts[0])) != BEAT_TOPIC or len(_view(parts[1])) != _BEAT.size:
        return None
    magic, version, _, worker_id, _, exposure_id, epoch = _BEAT.unpack(_view(parts[1]))
    if magic != BEAT_MAGIC or version != JOB_VERSION:
        return None
    return worker_id, (None if exposure_id < 0 else (epoch, exposure_id))


class _Heartbeat:
    """Sends ``encode_heartbeat(worker_id)`` every ``interval_s`` from its own thread and socket (inference
    may hold the worker's loop for seconds; a ZeroMQ socket belongs to one thread)."""

    def __init__(self, context, endpoint: str, worker_id: int, interval_s: float, keys=None):
        import zmq

        self._socket = context.socket(zmq.PUSH)
        self._socket.setsockopt(zmq.LINGER, 0)
        self._socket.setsockopt(zmq.SNDHWM, 4)
        self._socket.setsockopt(zmq.IMMEDIATE, 1)  # beats only to a completed (authenticated) connection
        if keys is not None:
            from spikereveal.stream.security import apply_client

            apply_client(self._socket, keys)
        self._socket.connect(endpoint)
        self._worker_id, self._interval_s = worker_id, interval_s
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat{worker_id}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import zmq

        while not self._done.wait(self._interval_s):
            try:
                self._socket.send_multipart(encode_heartbeat(self._worker_id), flags=zmq.NOBLOCK)
            except zmq.Again:  # serve is gone or slow: the next beat tries again
                pass

    def close(self) -> None:
        self._done.set()
        self._thread.join(5.0)
        self._socket.close(linger=0)


# -- the worker process ----------------------------------------------------------------------------------------
@dataclass
class WorkerStats:
    jobs: int = 0
    failed: int = 0
    malformed: int = 0


def run_worker(job_endpoint: str, result_endpoint: str, runner_factory: Callable, worker_id: int = 0,
               spike_shape: tuple[int, int] | None = None, k: int | None = None, calibration=None,
               output_pixel_format: str = "bgr8", stop: threading.Event | None = None,
               max_jobs: int | None = None, heartbeat_interval_s: float = HEARTBEAT_INTERVAL_S,
               keys=None) -> WorkerStats:
    """Pull jobs from ``job_endpoint``, push results to ``result_endpoint`` until ``stop`` (or ``max_jobs``).

    ``keys``: a ``security.ClientKeys`` (the worker's key pair and serve's public key) for a serve whose
    job/result ports are CURVE servers; without them such a serve never hands this worker a job.

    ``runner_factory(shape) -> unloaded Runner``. With ``spike_shape`` and ``k`` the runner loads before the
    first job and the worker announces itself ready; otherwise it loads on the first job's geometry (and
    again if the geometry changes). Receive HWM 1: a worker holds at most one job beyond the one it runs,
    so slow workers do not hoard work. Every job taken is acknowledged at once on the result socket, and a
    heartbeat goes out every ``heartbeat_interval_s`` (its own thread), so serve can tell a dead or silent
    worker and release exactly its jobs.
    """
    import zmq

    stop = stop or threading.Event()
    context = zmq.Context()
    pull = context.socket(zmq.PULL)
    push = context.socket(zmq.PUSH)
    stats = WorkerStats()
    runner = processor = None
    heartbeat = None
    for socket in (pull, push):
        socket.setsockopt(zmq.LINGER, 0)
    pull.setsockopt(zmq.RCVHWM, 1)
    push.setsockopt(zmq.IMMEDIATE, 1)  # results only to a completed (authenticated) connection
    try:
        if keys is not None:
            from spikereveal.stream.security import apply_client

            apply_client(pull, keys)
            apply_client(push, keys)
        pull.connect(job_endpoint)
        push.connect(result_endpoint)
        heartbeat = _Heartbeat(context, result_endpoint, worker_id, heartbeat_interval_s, keys)

        def send(parts) -> None:
            """Send once serve's result port takes it (a PUSH without a peer would block: stop must still work)."""
            waited = 0
            while not stop.is_set():
                if push.poll(100, zmq.POLLOUT):
                    try:
                        push.send_multipart(parts, flags=zmq.NOBLOCK, copy=False)
                        return
                    except zmq.Again:  # the connection went away (or was refused) between poll and send
                        continue
                waited += 1
                if waited == 50:
                    logger.warning("worker %d: serve's result port %s has not accepted this worker for 5 s: is serve "
                                   "running, and (with keys) is this worker's public key in serve's --allow-keys "
                                   "folder and --server-key serve's public key?", worker_id, result_endpoint)

        def load(shape):
            nonlocal runner, processor
            if runner is not None:
                runner.close()
            runner = runner_factory(shape).load()
            processor = ExposureProcessor(runner, calibration, output_pixel_format)
            send(encode_ready(worker_id))
            logger.info("worker %d ready: %s", worker_id, runner.describe())

        if spike_shape is not None and k is not None:
            load(runner_shape_for(k, *spike_shape))
        else:
            send(encode_ready(worker_id))
        poller = zmq.Poller()
        poller.register(pull, zmq.POLLIN)
        while not stop.is_set() and (max_jobs is None or stats.jobs + stats.failed < max_jobs):
            if not poller.poll(100):
                continue
            parts = pull.recv_multipart(copy=False)
            try:
                job = decode_job(parts)
            except ProtocolError as exc:
                stats.malformed += 1
                logger.warning("malformed job dropped: %s", exc)
                continue
            send(encode_heartbeat(worker_id, job.key))  # "I hold this job"
            shape = runner_shape_for(int(job.centers.shape[0]), job.spike_height, job.spike_width)
            if processor is None or processor.shape != shape:
                try:
                    load(shape)
                except Exception as exc:  # noqa: BLE001 final: report this job failed and stop, do not retry
                    stats.failed += 1
                    send(encode_result(None, worker_id, job.exposure_id, int(job.centers.shape[0]), job.epoch))
                    raise EngineLoadError(f"worker {worker_id}: the inference engine could not be loaded for "
                                          f"{shape.width}x{shape.height}, K={shape.batch}: {exc}") from exc
            try:
                result = processor.process(job)
            except SpikeRevealError as exc:
                stats.failed += 1
                logger.error("exposure %d failed: %s", job.exposure_id, exc)
                send(encode_result(None, worker_id, job.exposure_id, int(job.centers.shape[0]), job.epoch))
                continue
            send(encode_result(result, worker_id))
            stats.jobs += 1
    finally:
        if heartbeat is not None:
            heartbeat.close()
        if runner is not None:
            runner.close()
        pull.close(linger=0)
        push.close(linger=0)
        context.term()
    return stats
