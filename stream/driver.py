"""Connect a real rig: the driver interface a rig integrator implements, and the publisher that streams it.

A rig is a spike camera plus an RGB camera. To put one on the wire, subclass :class:`RigDriver`:

* :meth:`RigDriver.spike_format` -- geometry, rate, ``t0_ns`` and storage layout of the spike camera
  (a :class:`SpikeFormat`); it must answer by the time the first spike block is delivered and must not
  change while running (a new format is a new stream: stop and start a new :class:`RigPublisher`).
* :meth:`RigDriver.start` -- start acquisition and deliver data to the :class:`RigSink` it is given:
  ``sink.spike_block(first_index, packed)`` for spike frames, ``sink.exposure(start_ns, duration_ns,
  image)`` for each finished RGB exposure, ``sink.finish()`` when a finite source ends, ``sink.fail(exc)``
  when acquisition breaks. Must return promptly (start the SDK, or a thread of your own).
* :meth:`RigDriver.stop` -- stop acquisition; after it returns the driver calls the sink no more.

Push, not pull, because camera SDKs deliver frames in callbacks on their own threads. Threading contract:

* ``start`` and ``stop`` are called once each, from the publisher's thread.
* The sink's methods may be called from any thread, also concurrently (spike and RGB SDK threads); they
  never block: they validate, copy (unless ``copy=False``) and enqueue in O(size of the data). A full
  hand-over queue drops the item and counts it (``handover_dropped_*``): acquisition never stalls.
* By default the sink copies the arrays, because SDKs recycle their buffers once a callback returns;
  pass ``copy=False`` only for a fresh array that nobody writes to afterwards.
* Deliver each camera's data in capture order from one thread at a time. ``first_index`` is the spike
  camera's frame counter (frame ``n`` at ``t0_ns + n * 1e9 / rate_hz``); a skipped index is a loss and
  the receiver treats it as one. Blocks may hold any number of frames: one frame per callback is fine
  (the publisher batches contiguous frames, up to ``block_frames`` per message), and so is a whole DMA
  buffer (split into ``block_frames`` messages).
* Malformed data (wrong shape or dtype) raises :class:`~spikereveal.errors.ConfigError` in the delivering
  thread: it is a driver bug, found where it is made.
* Exposure times are int64 ns on the RGB camera's clock (the spike clock with a hardware trigger);
  ``serve`` maps them with the calibration's offset. Images are uint8 (H, W, 3) BGR (OpenCV's layout).

The sockets and the messages are the replay's: :class:`~spikereveal.stream.transport.RigSockets` (XPUB,
linger 0, non-blocking sends, drops counted) and :class:`~spikereveal.stream.transport.RigStreams`
(stream ids, sequence numbers, heartbeats). :class:`RecordingDriver` plays a recording through this
interface (tests, and a template for a real driver).
"""

from __future__ import annotations

import abc
import logging
import math
import threading
from collections import deque
from dataclasses import dataclass
from typing import Callable

import numpy as np

from spikereveal.errors import ConfigError, SpikeRevealError
from spikereveal.kernels.packing import from_canonical, packed_frame_bytes
from spikereveal.stream.clock import Clock, MonotonicClock
from spikereveal.stream.protocol import MAX_BLOCK_FRAMES, MAX_RATE_HZ, MAX_SPIKE_SIDE, Kind
from spikereveal.stream.transport import PublishStats, RigStreams, random_stream_id

__all__ = ["SpikeFormat", "RigSink", "RigDriver", "RigPublisherConfig", "RigStats", "RigPump", "RigPublisher",
           "RecordingDriver"]

logger = logging.getLogger(__name__)

NS_PER_S = 1_000_000_000
BIT_ORDERS = ("little", "big")


@dataclass(frozen=True)
class SpikeFormat:
    """The spike camera's stream: geometry, time base and how it stores packed frames (SPEC §2, §4)."""

    height: int
    width: int
    rate_hz: float
    t0_ns: int = 0  # time of frame index 0 on the spike clock
    bit_order: str = "little"  # bit order within a byte of the camera's packed frames
    flip_rows: bool = False  # True when the camera stores the bottom row first

    def __post_init__(self):
        for name in ("height", "width"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 1 <= value <= MAX_SPIKE_SIDE:
                raise ConfigError(f"SpikeFormat.{name} must be an integer in [1, {MAX_SPIKE_SIDE}], got {value!r}")
        if (self.height * self.width) % 8:
            raise ConfigError(f"a {self.height}x{self.width} spike sensor does not pack into whole bytes "
                              "(height * width must be a multiple of 8)")
        rate = self.rate_hz
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not (0 < rate <= MAX_RATE_HZ):
            raise ConfigError(f"SpikeFormat.rate_hz must be in (0, {MAX_RATE_HZ:g}] Hz, got {rate!r}")
        if isinstance(self.t0_ns, bool) or not isinstance(self.t0_ns, (int, np.integer)):
            raise ConfigError(f"SpikeFormat.t0_ns must be an integer number of ns, got {self.t0_ns!r}")
        if self.bit_order not in BIT_ORDERS:
            raise ConfigError(f"SpikeFormat.bit_order must be one of {BIT_ORDERS}, got {self.bit_order!r}")

    @property
    def frame_bytes(self) -> int:
        return packed_frame_bytes(self.height, self.width)


@dataclass(frozen=True, eq=False)
class _SpikeItem:
    first_index: int
    packed: np.ndarray


@dataclass(frozen=True, eq=False)
class _ExposureItem:
    frame_id: int | None
    start_ns: int
    duration_ns: int
    image: np.ndarray


class RigSink:
    """Where a driver delivers its data: a bounded, thread-safe hand-over queue that never blocks.

    Made by the publisher and given to :meth:`RigDriver.start`. ``spike_block`` and ``exposure`` return
    False when the item was not taken (queue full: counted as dropped; or the sink is closed).
    """

    def __init__(self, format_of: Callable[[], SpikeFormat], max_spike_blocks: int, max_exposures: int):
        self._format_of = format_of
        self._format: SpikeFormat | None = None
        self._limits = {Kind.SPIKE_BLOCK: max_spike_blocks, Kind.RGB_EXPOSURE: max_exposures}
        self._queued = {Kind.SPIKE_BLOCK: 0, Kind.RGB_EXPOSURE: 0}
        self._items: deque = deque()
        self._ready = threading.Condition()
        self._closed = False
        self.finished = False
        self.error: BaseException | None = None
        self.dropped_blocks = 0
        self.dropped_frames = 0
        self.dropped_exposures = 0
        self.refused_after_close = 0
        self.max_queued = 0

    # -- driver side (any thread) ----------------------------------------------------------------------
    @property
    def spike_format(self) -> SpikeFormat:
        """The driver's :class:`SpikeFormat`, asked once (at the first spike block) and validated."""
        if self._format is None:
            spike_format = self._format_of()
            if not isinstance(spike_format, SpikeFormat):
                raise ConfigError(f"RigDriver.spike_format() must return a SpikeFormat, got {spike_format!r}")
            self._format = spike_format
        return self._format

    def spike_block(self, first_index: int, packed, copy: bool = True) -> bool:
        """Frames ``first_index, first_index + 1, ..``: uint8 (n, H*W/8) (or one frame, (H*W/8,)) packed
        in the camera's layout (:class:`SpikeFormat` ``bit_order``, ``flip_rows``)."""
        frame_bytes = self.spike_format.frame_bytes
        packed = np.asarray(packed)
        if packed.ndim == 1:
            packed = packed.reshape(1, -1)
        if packed.dtype != np.uint8 or packed.ndim != 2 or packed.shape[1] != frame_bytes or packed.shape[0] == 0:
            raise ConfigError(f"a spike block must be uint8 (frames, {frame_bytes}) for the "
                              f"{self.spike_format.height}x{self.spike_format.width} sensor, got "
                              f"{packed.dtype} {packed.shape}; fix the driver")
        if isinstance(first_index, bool) or not isinstance(first_index, (int, np.integer)) or first_index < 0:
            raise ConfigError(f"first_index must be the camera's frame counter (an integer >= 0), got {first_index!r}")
        packed = np.array(packed, copy=True) if copy else np.ascontiguousarray(packed)
        return self._put(Kind.SPIKE_BLOCK, _SpikeItem(int(first_index), packed))

    def exposure(self, start_ns: int, duration_ns: int, image, frame_id: int | None = None,
                 copy: bool = True) -> bool:
        """A finished exposure: uint8 (H, W, 3) BGR; ``frame_id`` None numbers exposures 0, 1, 2, ..."""
        image = np.asarray(image)
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ConfigError(f"an exposure image must be uint8 (height, width, 3) BGR, got {image.dtype} "
                              f"{image.shape}; convert it in the driver (cv2.cvtColor for RGB or Bayer)")
        for name, value in (("start_ns", start_ns), ("duration_ns", duration_ns)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise ConfigError(f"{name} must be an integer number of ns, got {value!r}")
        if duration_ns < 0:
            raise ConfigError(f"duration_ns must be >= 0, got {duration_ns}")
        if frame_id is not None and (isinstance(frame_id, bool) or not isinstance(frame_id, (int, np.integer))
                                     or frame_id < 0):
            raise ConfigError(f"frame_id must be None or the RGB camera's frame counter (>= 0), got {frame_id!r}")
        image = np.array(image, copy=True) if copy else np.ascontiguousarray(image)
        item = _ExposureItem(None if frame_id is None else int(frame_id), int(start_ns), int(duration_ns), image)
        return self._put(Kind.RGB_EXPOSURE, item)

    def finish(self) -> None:
        """No more data will come (end of a recording, camera closed): the publisher drains and ends."""
        with self._ready:
            self.finished = True
            self._ready.notify_all()

    def fail(self, error: BaseException) -> None:
        """Acquisition broke; the publisher stops and ``RigPublisher.run`` raises ``error``."""
        with self._ready:
            if self.error is None:
                self.error = error
            self.finished = True
            self._ready.notify_all()

    def _put(self, kind: Kind, item) -> bool:
        with self._ready:
            if self._closed:
                self.refused_after_close += 1
                return False
            if self._queued[kind] >= self._limits[kind]:
                if kind == Kind.SPIKE_BLOCK:
                    self.dropped_blocks += 1
                    self.dropped_frames += item.packed.shape[0]
                else:
                    self.dropped_exposures += 1
                return False
            self._queued[kind] += 1
            self._items.append((kind, item))
            self.max_queued = max(self.max_queued, len(self._items))
            self._ready.notify()
        return True

    # -- publisher side (one thread) -------------------------------------------------------------------
    def take(self, timeout_s: float) -> list:
        """Everything queued, in delivery order; waits up to ``timeout_s`` when the queue is empty."""
        with self._ready:
            if not self._items and not self.finished and timeout_s > 0:
                self._ready.wait(timeout_s)
            items = list(self._items)
            self._items.clear()
            self._queued = {Kind.SPIKE_BLOCK: 0, Kind.RGB_EXPOSURE: 0}
        return items

    def wake(self) -> None:
        with self._ready:
            self._ready.notify_all()

    def close(self) -> None:
        """Refuse further deliveries (after ``RigDriver.stop``); what is queued can still be taken."""
        with self._ready:
            self._closed = True


class RigDriver(abc.ABC):
    """What a rig integrator implements (see the module doc for the threading contract).

    Minimal example with a callback SDK::

        class MyRig(RigDriver):
            def __init__(self, serial):
                self.camera = vendor_sdk.open(serial)
                self.rgb = other_sdk.open_first()

            def spike_format(self):
                return SpikeFormat(height=250, width=400, rate_hz=20_000.0, t0_ns=self.camera.t0_ns(),
                                   bit_order="big", flip_rows=True)

            def start(self, sink):
                self.camera.on_buffer(lambda buf: sink.spike_block(buf.frame_counter, buf.as_numpy()))
                self.rgb.on_frame(lambda f: sink.exposure(f.start_ns, f.exposure_ns, f.bgr()))
                self.camera.start(); self.rgb.start()

            def stop(self):
                self.camera.stop(); self.rgb.stop()
    """

    @abc.abstractmethod
    def spike_format(self) -> SpikeFormat:
        """The spike stream's format; asked once, at the first spike block (from the delivering thread)."""

    @abc.abstractmethod
    def start(self, sink: RigSink) -> None:
        """Start acquisition and deliver to ``sink``; return promptly."""

    @abc.abstractmethod
    def stop(self) -> None:
        """Stop acquisition; no sink calls after this returns. Called once, also after a failure."""


@dataclass(frozen=True)
class RigPublisherConfig:
    block_frames: int = 32  # most spike frames per message (8-64 recommended, SPEC §7)
    max_queued_spike_blocks: int = 4096  # hand-over queue bounds (driver deliveries); full -> drop and count
    max_queued_exposures: int = 16
    heartbeat_interval_s: float = 0.1
    drain_s: float = 0.5  # final heartbeats this long so queued messages leave before linger-0 close
    wait_for_subscribers: bool = False  # start the driver once both sockets have a subscriber
    subscriber_timeout_s: float = 30.0
    send_hwm: int = 1000
    count_drops: bool = True  # XPUB_NODROP: refused sends are counted (see transport.open_publisher)
    # CURVE (spikereveal keys generate): this publisher's .key_secret and the folder of the subscribers'
    # (serve's) public *.key files; both or neither. Without them anyone who reaches the ports reads the rig.
    secret_key_file: str | None = None
    allow_keys_dir: str | None = None
    spike_stream_id: int | None = None  # None: random, so that a restart is seen as one
    rgb_stream_id: int | None = None

    @property
    def keys(self):
        """The publishers' ServerKeys (None: plain)."""
        if self.secret_key_file is None:
            return None
        from spikereveal.stream.security import ServerKeys

        return ServerKeys(self.secret_key_file, self.allow_keys_dir)

    def __post_init__(self):
        if (self.secret_key_file is None) != (self.allow_keys_dir is None):
            raise ConfigError("RigPublisherConfig.secret_key_file and allow_keys_dir go together: the publishers' "
                              "key pair and the folder of the public keys of the subscribers they admit")

        def integer(name, low, high=None):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low or (high and value > high):
                bound = f"[{low}, {high}]" if high else f">= {low}"
                raise ConfigError(f"RigPublisherConfig.{name} must be an integer {bound}, got {value!r}")

        integer("block_frames", 1, MAX_BLOCK_FRAMES)
        integer("max_queued_spike_blocks", 1)
        integer("max_queued_exposures", 1)
        integer("send_hwm", 1)
        for name, low_ok in (("heartbeat_interval_s", False), ("subscriber_timeout_s", False), ("drain_s", True)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or \
                    value < 0 or (value == 0 and not low_ok):
                raise ConfigError(f"RigPublisherConfig.{name} must be a finite number of seconds "
                                  f"{'>= 0' if low_ok else '> 0'}, got {value!r}")
        for name in ("spike_stream_id", "rgb_stream_id"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, int) and 0 <= value < 2**32):
                raise ConfigError(f"RigPublisherConfig.{name} must be a 32-bit unsigned integer or None, got {value!r}")


@dataclass
class RigStats(PublishStats):
    """Publishing counters plus the hand-over queue's (deliveries the driver made that were dropped)."""

    handover_dropped_blocks: int = 0
    handover_dropped_frames: int = 0
    handover_dropped_exposures: int = 0
    refused_after_stop: int = 0
    max_queued: int = 0
    duration_ns: int = 0
    stopped: bool = False  # ended by a stop request rather than the driver finishing


class RigPump:
    """Moves a driver's deliveries to ``send_spike`` / ``send_rgb`` (no sockets: tests run it on a manual
    clock with a driver that delivers inside ``start``). Batches contiguous spike frames up to
    ``block_frames`` per message, in delivery order with the exposures, and sends heartbeats on time."""

    def __init__(self, driver: RigDriver, config: RigPublisherConfig, send_spike: Callable[[list], bool],
                 send_rgb: Callable[[list], bool], clock: Clock | None = None, stop: threading.Event | None = None,
                 poll_sockets: Callable[[], None] | None = None):
        if not isinstance(driver, RigDriver):
            raise ConfigError(f"the driver must subclass spikereveal.stream.driver.RigDriver, got {type(driver)}")
        self.driver = driver
        self.config = config
        self.clock = clock or MonotonicClock()
        self.stop = stop or threading.Event()
        self._poll_sockets = poll_sockets or (lambda: None)
        self.stats = RigStats(
            spike_stream_id=config.spike_stream_id if config.spike_stream_id is not None else random_stream_id(),
            rgb_stream_id=config.rgb_stream_id if config.rgb_stream_id is not None else random_stream_id(),
        )
        self.streams = RigStreams(send_spike, send_rgb, self.clock, self.stats)
        self.sink = RigSink(driver.spike_format, config.max_queued_spike_blocks, config.max_queued_exposures)
        self._next_frame_id = 0

    def request_stop(self) -> None:
        """Stop soon (from any thread): what was delivered so far is still published."""
        self.stop.set()
        self.sink.wake()

    def run(self) -> RigStats:
        """Start the driver and publish until it finishes, fails or a stop is requested; then drain."""
        cfg, clock, sink = self.config, self.clock, self.sink
        heartbeat_ns = int(cfg.heartbeat_interval_s * NS_PER_S)
        start = clock.now_ns()
        next_heartbeat = start
        try:
            self.driver.start(sink)
            while not self.stop.is_set() and not sink.finished:
                now = clock.now_ns()
                if next_heartbeat <= now:
                    self._poll_sockets()
                    self.streams.heartbeats()
                    next_heartbeat = now + heartbeat_ns
                self._publish(sink.take(timeout_s=(next_heartbeat - clock.now_ns()) / NS_PER_S))
        finally:
            self.driver.stop()
            sink.close()
        self._publish(sink.take(timeout_s=0))  # delivered before the stop: still published
        self._finish()
        s = self.stats
        s.handover_dropped_blocks, s.handover_dropped_frames = sink.dropped_blocks, sink.dropped_frames
        s.handover_dropped_exposures, s.refused_after_stop = sink.dropped_exposures, sink.refused_after_close
        s.max_queued, s.stopped = sink.max_queued, self.stop.is_set() and sink.error is None
        s.duration_ns = clock.now_ns() - start
        if sink.error is not None:
            raise SpikeRevealError(f"the rig driver failed: {sink.error}") from sink.error
        return s

    def _publish(self, items: list) -> None:
        run_first, run_stop, run = 0, 0, []  # contiguous spike frames, sent as blocks of block_frames
        for kind, item in items:
            if kind == Kind.SPIKE_BLOCK:
                if not (run and item.first_index == run_stop):
                    self._send_spikes(run_first, run)
                    run_first = item.first_index
                run.append(item.packed)
                run_stop = item.first_index + item.packed.shape[0]
            else:
                self._send_spikes(run_first, run)
                frame_id = self._next_frame_id if item.frame_id is None else item.frame_id
                self._next_frame_id = frame_id + 1
                self.streams.exposure(frame_id, item.start_ns, item.duration_ns, item.image)
        self._send_spikes(run_first, run)

    def _send_spikes(self, first_index: int, run: list) -> None:
        if not run:
            return
        spike = self.sink.spike_format
        packed = run[0] if len(run) == 1 else np.concatenate(run)
        step = self.config.block_frames
        for offset in range(0, packed.shape[0], step):
            self.streams.spike_block(
                first_index + offset, packed[offset:offset + step], t0_ns=spike.t0_ns, rate_hz=spike.rate_hz,
                height=spike.height, width=spike.width, bit_order=spike.bit_order, flip_rows=spike.flip_rows,
            )
        run.clear()

    def _finish(self) -> None:
        """Final heartbeats, repeated for ``drain_s`` so queued messages leave before the sockets close."""
        clock = self.clock
        self.streams.heartbeats()
        end = clock.now_ns() + int(self.config.drain_s * NS_PER_S)
        step = max(int(self.config.heartbeat_interval_s * NS_PER_S), 1)
        while clock.now_ns() < end:
            clock.sleep_until_ns(min(end, clock.now_ns() + step))
            self._poll_sockets()
            self.streams.heartbeats()


class RigPublisher:
    """Binds the rig's two publishers and streams a :class:`RigDriver` on them; a context manager.

    ``spike_endpoint`` / ``rgb_endpoint`` are the endpoints really bound. ``run()`` blocks until the driver
    finishes or ``stop`` is set (e.g. from a signal handler), and returns the :class:`RigStats`.
    """

    def __init__(self, driver: RigDriver, spike_endpoint: str, rgb_endpoint: str,
                 config: RigPublisherConfig | None = None, context=None):
        from spikereveal.stream.transport import RigSockets

        self.driver = driver
        self.config = config or RigPublisherConfig()
        self.sockets = RigSockets(spike_endpoint, rgb_endpoint, self.config.send_hwm, self.config.count_drops,
                                  context=context, keys=self.config.keys)
        self.spike_endpoint = self.sockets.spike_endpoint
        self.rgb_endpoint = self.sockets.rgb_endpoint

    def run(self, stop: threading.Event | None = None, clock: Clock | None = None) -> RigStats:
        stop = stop or threading.Event()
        cfg, sockets = self.config, self.sockets
        if cfg.wait_for_subscribers:
            logger.info("waiting for subscribers on %s and %s", self.spike_endpoint, self.rgb_endpoint)
            if not sockets.wait_for_subscribers(cfg.subscriber_timeout_s, stop):
                if stop.is_set():
                    return RigStats(stopped=True)
                raise SpikeRevealError(
                    f"no subscriber reached both {self.spike_endpoint} and {self.rgb_endpoint} within "
                    f"{cfg.subscriber_timeout_s} s; start the consumer (serve) first or raise subscriber_timeout_s"
                )
        pump = RigPump(self.driver, cfg, sockets.send_spike, sockets.send_rgb, clock=clock, stop=stop,
                       poll_sockets=sockets.poll)
        return pump.run()

    def close(self) -> None:
        self.sockets.close()

    def __enter__(self) -> RigPublisher:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


class RecordingDriver(RigDriver):
    """A recording played through the driver interface, as a real camera would deliver it (a template).

    Delivers ``frames_per_delivery`` spike frames per call, in the recording's own storage layout, and
    each exposure when it ends, paced at ``speed`` x real time on ``clock`` (``inf``: as fast as the
    sink takes them), from a thread of its own; then calls ``sink.finish()``.
    """

    def __init__(self, recording, frames_per_delivery: int = 1, speed: float = math.inf,
                 clock: Clock | None = None):
        if isinstance(frames_per_delivery, bool) or not isinstance(frames_per_delivery, int) or \
                frames_per_delivery < 1:
            raise ConfigError(f"frames_per_delivery must be a positive integer, got {frames_per_delivery!r}")
        if isinstance(speed, bool) or not isinstance(speed, (int, float)) or not speed > 0:
            raise ConfigError(f"speed must be a positive factor of real time (inf: unpaced), got {speed!r}")
        self.recording = recording
        self.frames_per_delivery = frames_per_delivery
        self.speed = speed
        self.clock = clock or MonotonicClock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def spike_format(self) -> SpikeFormat:
        spike = self.recording.meta.spike
        return SpikeFormat(height=int(spike.height), width=int(spike.width), rate_hz=float(spike.rate_hz),
                           t0_ns=int(spike.t0_ns), bit_order=spike.bit_order, flip_rows=bool(spike.flip_rows))

    def start(self, sink: RigSink) -> None:
        self._thread = threading.Thread(target=self._deliver, args=(sink,), name="recording-driver", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _deliver(self, sink: RigSink) -> None:
        from spikereveal.stream.replay import replay_schedule

        try:
            spike, fmt = self.recording.meta.spike, self.spike_format()
            events = replay_schedule(self.recording.spikes.frame_count, fmt.t0_ns, fmt.rate_hz,
                                     self.recording.exposures, self.frames_per_delivery)
            start = self.clock.now_ns()
            for event in events:
                if not math.isinf(self.speed):
                    if not self.clock.sleep_until_ns(start + int(event.due_ns / self.speed), self._stop):
                        return
                if self._stop.is_set():
                    return
                if event.kind == Kind.SPIKE_BLOCK:
                    packed = self.recording.spikes.read(event.first_index, event.first_index + event.frame_count)
                    packed = from_canonical(packed, spike.height, spike.width, fmt.bit_order, fmt.flip_rows)
                    sink.spike_block(event.stream_index, packed, copy=False)
                else:
                    exposure = self.recording.exposure(event.exposure_index)
                    image = self.recording.read_exposure_bgr8(event.exposure_index)
                    sink.exposure(int(exposure.start_ns), int(exposure.duration_ns), image,
                                  frame_id=event.frame_id, copy=False)
            sink.finish()
        except BaseException as exc:  # noqa: BLE001 -- handed to the publisher, which raises it
            sink.fail(exc)
