"""Where sharp frames go, for live and offline alike.

* :class:`FrameSaver` -- ``frames/<exposure:06d>_<k:02d>.png`` + ``frames.csv`` (header
  ``exposure_index,t_ns,image``, the shape of ``gt.csv``; the output times on the spike clock) + an optional
  side-by-side (blurry | sharp) MP4: what ``spikereveal deblur`` writes and what ``serve --save`` writes.
* :class:`ResultSink` -- serve's last stage: publishes K SharpFrame messages per exposure on the output
  socket, hands them to a FrameSaver and logs latencies.
"""

from __future__ import annotations

import csv
import errno
import logging
import os
import threading
import time
from collections import deque
from pathlib import Path
from typing import Callable

import numpy as np

from spikereveal.errors import FormatError
from spikereveal.stream.protocol import SharpFrame, encode
from spikereveal.stream.stage import ExposureResult
from spikereveal.stream.stats import LatencyLog
from spikereveal.stream.sync import ReadyJob

__all__ = ["FRAMES_DIR", "FRAMES_CSV", "FRAMES_HEADER", "VIDEO_FILE", "open_video", "FrameSaver", "ResultSink"]

logger = logging.getLogger(__name__)

FRAMES_DIR = "frames"
FRAMES_CSV = "frames.csv"
FRAMES_HEADER = ("exposure_index", "t_ns", "image")
VIDEO_FILE = "deblur.mp4"


def open_video(path: Path, fps: float, width: int, height: int):
    import cv2

    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), float(fps), (width, height))
    if not writer.isOpened():
        logger.warning("OpenCV cannot write %s (no mp4v encoder in this build); no video is written", path)
        return None
    return writer


class FrameSaver:
    """Writes results as ``spikereveal deblur`` does: ``frames/<exposure:06d>_<k:02d>.png`` and ``frames.csv``
    (rows written as results arrive), plus an optional side-by-side (blurry | sharp) MP4. Exposures of a
    restarted RGB stream (``epoch`` > 0, whose frame ids start again) go to ``frames/e<epoch>_<exposure>_<k>.png``,
    so no file is ever overwritten.

    A write the OS refuses (a full disk, a folder that became read-only or vanished) never stops serving:
    the frame is counted in ``frames_failed`` and each kind of failure (errno name, or ``imwrite`` when
    OpenCV only says it could not write) is logged once. A frame counts as saved once its PNG and its
    ``frames.csv`` row are written. ``write_image(path, image, params) -> bool`` replaces ``cv2.imwrite``
    (tests inject failures). With ``raise_on_failure`` (offline ``deblur``) a refused write raises FormatError
    naming the file instead: a batch run must not finish with frames missing."""

    def __init__(self, out_dir: str | os.PathLike, png_compression: int = 1, video_fps: float | None = None,
                 video_name: str | None = None, write_image: Callable | None = None, raise_on_failure: bool = False):
        import cv2

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
        self.raise_on_failure = raise_on_failure
        self.frames_written = 0
        self.frames_failed = 0
        self.failure_kinds: dict[str, int] = {}  # errno name (or "imwrite") -> failed frames

    @property
    def video_open(self) -> bool:
        """A video writer is open (OpenCV has an mp4v encoder and the first frame has gone in)."""
        return self._video is not None

    def _failed(self, kind: str, frames: int, what, exc: BaseException | None = None) -> None:
        if self.raise_on_failure:
            if kind == "imwrite":
                raise FormatError(what, "OpenCV could not write the PNG image")
            raise FormatError(what, f"could not be written ({kind}: {exc}); free disk space or choose another --out")
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
                self._failed(self._kind(exc), 1, self.out_dir / FRAMES_CSV, exc)
                continue
            written += 1
        try:
            self._csv_handle.flush()
        except OSError as exc:  # the rows stay buffered; counted as not saved
            self._failed(self._kind(exc), written, self.out_dir / FRAMES_CSV, exc)
            written = 0
        self.frames_written += written
        if self.video_path is not None and blur8 is not None:
            try:
                self._write_video(blur8, sharp8)
            except (OSError, self._cv2.error) as exc:
                self._failed(self._kind(exc), 0, self.video_path, exc)

    def _write_video(self, blur8: np.ndarray, sharp8: np.ndarray) -> None:
        height, width = sharp8.shape[1:3]
        if self._video is None and self._side_by_side is None:
            self._video = open_video(self.video_path, self._video_fps, 2 * width, height)
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
                self._failed(self._kind(exc), 0, self.out_dir / FRAMES_CSV, exc)


class ResultSink:
    """The last stage: publishes K SharpFrame messages per exposure, saves like ``deblur``, logs latencies.

    ``publish(parts) -> bool`` (False: the PUB high-water mark refused it) may be None (no output socket).
    Called from one thread at a time (the inference thread, or the serve loop with worker processes).
    """

    def __init__(self, publish: Callable[[list], bool] | None, saver: FrameSaver | None = None,
                 stream_id: int = 0, clock_ns: Callable[[], int] = time.monotonic_ns,
                 latency: LatencyLog | None = None, keep_blur_for_video: bool = False, recorder=None):
        from spikereveal.stream.trace import NULL_RECORDER

        self.recorder = NULL_RECORDER if recorder is None else recorder  # stream.trace stamps (serve --trace)
        self._publish = publish
        self.saver = saver
        self.stream_id = stream_id
        self._clock_ns = clock_ns
        self.latency = latency or LatencyLog()
        self._seq = 0
        self.exposures_done = 0
        self.output_messages = 0
        self.output_dropped = 0
        self.out_of_domain_exposures = 0  # firing gain outside the model's trained range (see stream.worker)
        self.keep_blur_for_video = keep_blur_for_video
        self._lock = threading.Lock()
        self.done_event = threading.Event()  # set at every delivery (serve's exit-after check wakes on it)
        self.delivered_ids: deque[int] = deque(maxlen=4096)

    def deliver(self, result: ExposureResult, job: ReadyJob | None = None, ingest_ns: int | None = None,
                sent_ns: int | None = None, slot: int | None = None) -> None:
        clock = self._clock_ns
        start = clock()
        first_published = None
        if self._publish is not None:
            for k in range(result.k):
                image = result.sharp[k]
                frame = SharpFrame(stream_id=self.stream_id, seq=self._seq, exposure_id=result.exposure_id,
                                   t_ns=int(result.timestamps_ns[k]), k=k, count=result.k, image=image,
                                   send_time_ns=clock())
                self._seq += 1
                if self._publish(encode(frame)):
                    self.output_messages += 1
                else:
                    self.output_dropped += 1
                if first_published is None:
                    first_published = clock()
        published = clock()
        if slot is not None and self.recorder.enabled:
            from spikereveal.stream import trace

            inference_start = result.started_ns + result.prepare_ns
            self.recorder.mark(slot, trace.INFERENCE_START, inference_start)
            self.recorder.mark(slot, trace.INFERENCE_END, inference_start + result.inference_ns)
            self.recorder.mark(slot, trace.FIRST_OUTPUT_PUBLISHED, first_published or published)
            self.recorder.mark(slot, trace.LAST_OUTPUT_PUBLISHED, published)
            self.recorder.set_outputs(slot, result.k)
        if self.saver is not None:
            from spikereveal.kernels.convert import planar_to_bgr8  # numba, loaded on first use

            sharp8 = result.sharp if result.sharp.dtype == np.uint8 else planar_to_bgr8(result.sharp)
            blur8 = job.image if (job is not None and self.keep_blur_for_video) else None
            self.saver.save(result.exposure_id, result.timestamps_ns, sharp8, blur8, epoch=result.epoch)
        saved = clock()
        ms = 1e-6
        publish_ns = published - start
        work = result.prepare_ns + result.postprocess_ns + publish_ns + (ingest_ns or 0)
        self.latency.add({
            "exposure_id": result.exposure_id,
            "end_to_end_ms": None if sent_ns is None else (published - sent_ns) * ms,
            "from_receive_ms": (published - result.received_ns) * ms,
            "from_ready_ms": (published - result.ready_ns) * ms,
            "queue_wait_ms": (result.started_ns - result.ready_ns) * ms,
            "ingest_ms": None if ingest_ns is None else ingest_ns * ms,
            "prepare_ms": result.prepare_ns * ms,
            "inference_ms": result.inference_ns * ms,
            "postprocess_ms": result.postprocess_ns * ms,
            "publish_ms": publish_ns * ms,
            "save_ms": (saved - published) * ms if self.saver is not None else None,
            "non_inference_work_ms": work * ms,
        })
        with self._lock:
            self.exposures_done += 1
            self.out_of_domain_exposures += bool(result.out_of_domain)
            self.delivered_ids.append(result.exposure_id)
        self.done_event.set()

    def close(self) -> None:
        if self.saver is not None:
            self.saver.close()
