"""Jobs and results on the wire between serve and its worker processes.

Two sockets per worker. Jobs: serve's ROUTER <-> the worker's DEALER. A worker announces itself and its
credits there (``encode_ready``: how many jobs it may hold at once); serve answers ``encode_welcome`` (its
wire version, so a worker of another version stops with a clear error) and sends a job only to a worker with
a free credit; a result hands the credit back. Results: the worker's PUSH -> serve's PULL, with the
acknowledgements and heartbeats (``encode_heartbeat``).

``encode_job``/``decode_job`` and ``encode_result``/``decode_result`` carry self-contained jobs (a ReadyJob:
image, spike window, geometry, times) and their results (an ExposureResult), validated like the camera
protocol and never unpickled. Every message's header starts with a 4-byte magic and the 2-byte wire version
(:func:`wire_version`), so either side can tell a peer of another spikereveal version from garbage.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass

import numpy as np

from spikereveal.kernels.timing import ExposureWindow
from spikereveal.stream.protocol import MAX_IMAGE_SIDE, MAX_OUTPUT_COUNT, MAX_SPIKE_SIDE, ProtocolError, Reason
from spikereveal.stream.stage import ExposureResult
from spikereveal.stream.sync import ReadyJob

JOB_MAGIC = b"SRJB"
RESULT_MAGIC = b"SRRS"
READY_MAGIC = b"SRWK"
# 2: the job's epoch in the job header's last field and at the end of the result header
# 3: credit-based dispatch: ready (with the worker's credits) goes to serve's job ROUTER, serve answers welcome
JOB_VERSION = 3
JOB_TOPIC, RESULT_TOPIC, READY_TOPIC, WELCOME_TOPIC = b"job", b"res", b"ready", b"welcome"
# magic, version, k, exposure_id, start_ns, duration_ns, first_index, exposure_first, exposure_stop,
# received_ns, ready_ns, spike_h, spike_w, frame_count, image_h, image_w, epoch
_JOB = struct.Struct("<4sHHqqqqqqqqIIIIII")
# magic, version, k, exposure_id, status, pixel_format, flags (RESULT_OUT_OF_DOMAIN), height, width, worker_id,
# started_ns, prepare_ns, inference_ns, postprocess_ns, finished_ns, epoch
_RESULT = struct.Struct("<4sHHqBBHIIIqqqqqI")
_READY = struct.Struct("<4sHHII")  # magic, version, credits (jobs it may hold at once), worker_id, pid
WELCOME_MAGIC = b"SRWL"
_WELCOME = struct.Struct("<4sHHI")  # magic, version, credits serve grants (its cap applied), worker_id
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
        packed=np.frombuffer(packed, np.uint8).reshape(frame_count, frame_bytes), window=window,
        spike_height=spike_h, spike_width=spike_w,
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


#: the most credits a worker may announce (the field's range; serve applies its own, lower, cap)
MAX_CREDITS = 0xFFFF


@dataclass(frozen=True)
class Ready:
    """A worker's announcement on the job socket: who it is and how many jobs it may hold at once."""

    worker_id: int
    credits: int
    pid: int


def encode_ready(worker_id: int, credits: int = 1) -> list:
    """``[b"ready", header]``: sent by a worker to serve's job ROUTER when it is ready and again every heartbeat
    interval while it is idle (so a restarted serve learns about it); idempotent."""
    if not (1 <= int(credits) <= MAX_CREDITS):
        from spikereveal.errors import ConfigError

        raise ConfigError(f"a worker's credits (--credits) must be 1..{MAX_CREDITS}, got {credits!r}")
    return [READY_TOPIC, _READY.pack(READY_MAGIC, JOB_VERSION, int(credits), worker_id, os.getpid())]


def decode_ready(parts) -> Ready | None:
    """The ready announcement in ``parts``, or None when it is not one of this wire version (see
    :func:`wire_version` for the version of a peer's message)."""
    if len(parts) != 2 or bytes(_view(parts[0])) != READY_TOPIC or len(_view(parts[1])) != _READY.size:
        return None
    magic, version, credits, worker_id, pid = _READY.unpack(_view(parts[1]))
    if magic != READY_MAGIC or version != JOB_VERSION or credits < 1:
        return None
    return Ready(worker_id, credits, pid)


def encode_welcome(worker_id: int, credits: int) -> list:
    """serve's answer to a ready announcement: its wire version and the credits it grants (its cap applied)."""
    return [WELCOME_TOPIC, _WELCOME.pack(WELCOME_MAGIC, JOB_VERSION, int(credits), int(worker_id))]


def decode_welcome(parts) -> tuple[int, int] | None:
    """``(wire version, credits granted)`` of serve's welcome, or None when ``parts`` is not a welcome. The
    version is returned whatever it is: the worker compares it with its own."""
    if len(parts) < 2 or bytes(_view(parts[0])) != WELCOME_TOPIC or len(_view(parts[1])) < 6:
        return None
    header = _view(parts[1])
    if bytes(header[:4]) != WELCOME_MAGIC:
        return None
    version = struct.unpack_from("<H", header, 4)[0]
    if version != JOB_VERSION or len(header) != _WELCOME.size:
        return version, 0
    _, _, credits, _ = _WELCOME.unpack(header)
    return version, credits


_MAGICS = {JOB_MAGIC: "job", RESULT_MAGIC: "result", READY_MAGIC: "ready", BEAT_MAGIC: "heartbeat",
           WELCOME_MAGIC: "welcome"}


def wire_version(parts) -> tuple[str, int] | None:
    """``(what, version)`` of a serve/worker message of any wire version (its header's magic and version
    field), or None when ``parts`` is not one at all. Lets serve tell an old worker from garbage."""
    try:
        if not isinstance(parts, (list, tuple)) or len(parts) < 2:
            return None
        header = _view(parts[1])
        if len(header) < 6 or bytes(header[:4]) not in _MAGICS:
            return None
        return _MAGICS[bytes(header[:4])], struct.unpack_from("<H", header, 4)[0]
    except (TypeError, ValueError):
        return None


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
