"""Play a recording as a live rig: spike blocks and RGB exposures on two ZeroMQ publishers, paced in time.

Time model (SPEC §4): a spike block is published once its last frame has been captured (frame ``n`` at
``t0_ns + n * 1e9 / rate_hz``), an RGB exposure once it has ended (``start_ns + duration_ns``, plus
``rgb_to_spike_offset_ns`` when the recording's exposure times are on another clock; the timestamps are
published unchanged), both relative to the first spike frame and divided by ``speed`` (``inf``: as fast
as the sockets take them). Ties go to the spike block, so the frame at an exposure's end is out before
the exposure.

``--loop`` continues the same stream: frame indices, sequence numbers and time go on across passes (pass
``p`` shifts frames by ``p * frame_count`` and exposure ids by ``p * (last index + 1)``); only exposures
whose whole window lies inside the recording are published then, so a window never straddles two passes.

Slow joiners: a subscriber misses whatever was published before its subscription reached the publisher.
The publishers are XPUB sockets, so ``wait_for_subscribers`` waits until a subscription has arrived on
both before streaming (exact, what ``demo`` and the tests use); otherwise ``start_delay_s`` (default
0.5 s) gives subscribers that time to connect. Heartbeats (every ``heartbeat_interval_s`` of wall time,
on each socket, describing that socket's stream) carry the last sequence number and stream position so
that a subscriber sees loss at the tail. At the end the final heartbeats repeat for ``drain_s`` so that
queued messages leave before the sockets close with linger 0. A send refused by the high-water mark is
dropped and counted (``dropped_messages``), never waited for: the sequence number is used up, so the
receiver sees a gap.

:func:`replay_schedule` (pure) and :class:`Replayer` (takes send callables and a clock) hold all the
logic and run without sockets or sleeps in tests; :class:`LiveReplay` binds the sockets.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np

from spikereveal.errors import ConfigError, SpikeRevealError
from spikereveal.kernels.packing import from_canonical
from spikereveal.kernels.timing import DEFAULT_MARGIN_FRAMES, exposure_window, index_to_time
from spikereveal.stream.clock import Clock, MonotonicClock
from spikereveal.stream.protocol import MAX_BLOCK_FRAMES, Kind
from spikereveal.stream.transport import PublishStats, RigStreams, random_stream_id

__all__ = ["ReplayConfig", "ReplayEvent", "ReplayStats", "Replayer", "LiveReplay", "replay_schedule"]

logger = logging.getLogger(__name__)

WIRE_LAYOUTS = ("canonical", "recorded")
NS_PER_S = 1_000_000_000


@dataclass(frozen=True)
class ReplayConfig:
    speed: float = 1.0  # x real time; math.inf: no pacing
    block_frames: int = 32  # spike frames per message (8-64 recommended, SPEC §7)
    loops: int | None = 1  # passes over the recording; None: until stopped
    start_delay_s: float = 0.5
    wait_for_subscribers: bool = False
    subscriber_timeout_s: float = 30.0
    heartbeat_interval_s: float = 0.1
    drain_s: float = 0.5
    wire_layout: str = "canonical"  # "recorded": bit order and row flip as the recording stores them
    margin_frames: int = DEFAULT_MARGIN_FRAMES  # only to keep looped windows inside one pass
    rgb_to_spike_offset_ns: int = 0  # spike time = recorded exposure time + this; schedules exposures only
    send_hwm: int = 1000
    count_drops: bool = True  # XPUB_NODROP: the publisher counts refused sends (see transport.open_publisher)
    # CURVE (spikereveal keys generate): this publisher's .key_secret and the folder of the subscribers'
    # (serve's) public *.key files; both or neither. Without them anyone who reaches the ports reads the rig.
    secret_key_file: str | None = None
    allow_keys_dir: str | None = None
    preload_mb: float = 1024.0  # decode every exposure image before streaming when they fit in this budget
    prefetch_events: int = 256  # otherwise decode images this many publications ahead, off the pacing thread
    prefetch_threads: int = 2
    spike_stream_id: int | None = None  # None: random, so that a restarted replay is seen as a restart
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
            raise ConfigError("secret_key_file and allow_keys_dir go together: the publishers' key "
                              "pair and the folder of the public keys of the subscribers they admit")
        if isinstance(self.speed, bool) or not (isinstance(self.speed, (int, float)) and self.speed > 0):
            raise ConfigError(f"speed must be a positive factor of real time (inf: unpaced), got {self.speed!r}")
        if isinstance(self.block_frames, bool) or not isinstance(self.block_frames, int) or not (
            1 <= self.block_frames <= MAX_BLOCK_FRAMES
        ):
            raise ConfigError(f"block_frames must be an integer in [1, {MAX_BLOCK_FRAMES}] (8-64 recommended), "
                              f"got {self.block_frames!r}")
        if self.loops is not None and (not isinstance(self.loops, int) or self.loops < 1):
            raise ConfigError(f"loops must be a positive integer or None (forever), got {self.loops!r}")
        for name in ("start_delay_s", "drain_s"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not 0 <= value < math.inf:
                raise ConfigError(f"{name} must be a finite number of seconds >= 0, got {value!r}")
        for name in ("subscriber_timeout_s", "heartbeat_interval_s"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not 0 < value < math.inf:
                raise ConfigError(f"{name} must be a positive number of seconds, got {value!r}")
        if self.wire_layout not in WIRE_LAYOUTS:
            raise ConfigError(f"wire_layout must be one of {WIRE_LAYOUTS}, got {self.wire_layout!r}")
        if self.margin_frames < DEFAULT_MARGIN_FRAMES:
            raise ConfigError(f"margin_frames must be >= {DEFAULT_MARGIN_FRAMES}, got {self.margin_frames}")
        if isinstance(self.rgb_to_spike_offset_ns, bool) or not isinstance(self.rgb_to_spike_offset_ns, int):
            raise ConfigError(f"rgb_to_spike_offset_ns must be an integer, got {self.rgb_to_spike_offset_ns!r}")
        if not isinstance(self.preload_mb, (int, float)) or not 0 <= self.preload_mb < math.inf:
            raise ConfigError(f"preload_mb must be a finite number of megabytes >= 0, got {self.preload_mb!r}")
        if isinstance(self.prefetch_threads, bool) or not isinstance(self.prefetch_threads, int) or \
                self.prefetch_threads < 1:
            raise ConfigError(f"prefetch_threads must be a positive integer, got {self.prefetch_threads!r}")
        if isinstance(self.prefetch_events, bool) or not isinstance(self.prefetch_events, int) or \
                self.prefetch_events < 0:
            raise ConfigError(f"prefetch_events must be an integer >= 0, got {self.prefetch_events!r}")
        if not isinstance(self.send_hwm, int) or self.send_hwm < 1:
            raise ConfigError(f"send_hwm must be a positive number of messages, got {self.send_hwm!r}")
        for name in ("spike_stream_id", "rgb_stream_id"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, int) and 0 <= value < 2**32):
                raise ConfigError(f"{name} must be a 32-bit unsigned integer or None, got {value!r}")


@dataclass(frozen=True)
class ReplayEvent:
    """One publication. ``due_ns``: stream time after the first spike frame (before dividing by speed)."""

    due_ns: int
    kind: Kind  # SPIKE_BLOCK or RGB_EXPOSURE
    loop: int
    first_index: int = 0  # spike block: first frame in the recording
    frame_count: int = 0  # spike block: frames in the block
    exposure_index: int = -1  # rgb: the recording's exposure index
    shift_ns: int = 0  # added to recording times in this pass
    stream_index: int = 0  # spike block: first frame index on the wire (continues across loops)
    frame_id: int = -1  # rgb: exposure id on the wire


def replay_schedule(
    frame_count: int,
    t0_ns: int,
    rate_hz: float,
    exposures,
    block_frames: int,
    loops: int | None = 1,
    margin_frames: int = DEFAULT_MARGIN_FRAMES,
    rgb_to_spike_offset_ns: int = 0,
) -> Iterator[ReplayEvent]:
    """Publications of a recording in the order a live rig makes them (pure; infinite if ``loops`` is None).

    ``exposures``: objects with ``index``, ``start_ns`` and ``duration_ns`` (recording ``Exposure`` s), on
    the RGB clock; ``rgb_to_spike_offset_ns`` puts them on the spike clock (0: recorded on the spike clock).
    """
    offset = int(rgb_to_spike_offset_ns)
    if frame_count <= 0:
        raise ConfigError("the recording has no spike frames to replay")
    exposures = sorted(exposures, key=lambda e: e.start_ns + e.duration_ns)
    id_stride = max((e.index for e in exposures), default=-1) + 1  # pass p's ids: p * stride + index
    if loops != 1:  # a looped window must not straddle two passes
        exposures = [
            e for e in exposures
            if exposure_window(e.start_ns + offset, e.duration_ns, t0_ns, rate_hz, 1, margin_frames).inside(
                frame_count
            )
        ]
    passes = itertools.count() if loops is None else range(loops)

    def shift(p: int) -> int:
        return int(index_to_time(p * frame_count, 0, rate_hz))

    def spikes() -> Iterator[ReplayEvent]:
        for p in passes_spikes:
            for first in range(0, frame_count, block_frames):
                count = min(block_frames, frame_count - first)
                stream_index = p * frame_count + first
                due = int(index_to_time(stream_index + count - 1, 0, rate_hz))
                yield ReplayEvent(due, Kind.SPIKE_BLOCK, p, first_index=first, frame_count=count,
                                  shift_ns=shift(p), stream_index=stream_index)

    def rgb() -> Iterator[ReplayEvent]:
        for p in passes_rgb:
            for e in exposures:
                due = e.start_ns + offset + e.duration_ns - t0_ns + shift(p)
                yield ReplayEvent(due, Kind.RGB_EXPOSURE, p, exposure_index=e.index, shift_ns=shift(p),
                                  frame_id=p * id_stride + e.index)

    passes_spikes, passes_rgb = itertools.tee(passes)
    order = {Kind.SPIKE_BLOCK: 0, Kind.RGB_EXPOSURE: 1}
    yield from heapq.merge(spikes(), rgb(), key=lambda ev: (ev.due_ns, order[ev.kind]))


@dataclass
class ReplayStats(PublishStats):
    """The publishing counters (messages, frames, exposures, heartbeats, drops) plus the pacing ones."""

    loops_completed: int = 0
    max_lag_ns: int = 0  # worst delay of a publication (its send_time_ns) behind its schedule
    duration_ns: int = 0
    stopped: bool = False  # ended by the stop event rather than the end of the recording


class Replayer:
    """Paces :func:`replay_schedule` on ``clock`` and hands encoded messages to ``send_spike`` / ``send_rgb``
    (each returns False when the message was dropped). No sockets, so tests run it on a manual clock."""

    def __init__(
        self,
        recording,
        config: ReplayConfig,
        send_spike: Callable[[list], bool],
        send_rgb: Callable[[list], bool],
        clock: Clock | None = None,
        stop: threading.Event | None = None,
        poll_sockets: Callable[[], None] | None = None,
        image_cache: dict[int, np.ndarray] | None = None,
    ):
        self.recording = recording
        self.config = config
        self.clock = clock or MonotonicClock()
        self.stop = stop or threading.Event()
        self._poll_sockets = poll_sockets or (lambda: None)
        spike = recording.meta.spike
        self._spike_meta = spike
        self.stats = ReplayStats(
            spike_stream_id=config.spike_stream_id if config.spike_stream_id is not None else random_stream_id(),
            rgb_stream_id=config.rgb_stream_id if config.rgb_stream_id is not None else random_stream_id(),
        )
        self._streams = RigStreams(send_spike, send_rgb, self.clock, self.stats, stream_clock_ns=int(spike.t0_ns))
        rgb = recording.meta.rgb
        total_mb = len(recording.exposures) * rgb.height * rgb.width * 3 / 2**20
        self._preload = total_mb <= config.preload_mb
        # ``image_cache``: images an earlier prepare() decoded (LiveReplay.prepare), filled in place
        self._image_cache: dict[int, np.ndarray] | None = (
            (image_cache if image_cache is not None else {}) if self._preload else None)
        self._prefetched: dict[int, Future] = {}

    # -- messages ----------------------------------------------------------------------------------------
    def _spike_block(self, event: ReplayEvent) -> int:
        spike = self._spike_meta
        packed = self.recording.spikes.read(event.first_index, event.first_index + event.frame_count)
        bit_order, flip_rows = "little", False
        if self.config.wire_layout == "recorded":
            bit_order, flip_rows = spike.bit_order, bool(spike.flip_rows)
            packed = from_canonical(packed, spike.height, spike.width, bit_order, flip_rows)
        return self._streams.spike_block(
            event.stream_index, packed, t0_ns=int(spike.t0_ns), rate_hz=float(spike.rate_hz), height=spike.height,
            width=spike.width, bit_order=bit_order, flip_rows=flip_rows,
        )

    def _image(self, index: int) -> np.ndarray:
        if self._image_cache is not None and index in self._image_cache:
            return self._image_cache[index]
        image = self._decode(index)
        if self._image_cache is not None:
            self._image_cache[index] = image
        return image

    def _decode(self, index: int) -> np.ndarray:
        """uint8 (h, w, 3) BGR, the wire layout: straight from the PNG when possible (no float round trip)."""
        recording, rgb = self.recording, self.recording.meta.rgb
        image = None
        if hasattr(recording, "image_path"):
            try:
                import cv2

                image = cv2.imread(str(recording.image_path(recording.exposure(index))), cv2.IMREAD_COLOR)
            except ImportError:
                image = None
        if image is None or image.shape != (rgb.height, rgb.width, 3):
            # the recording's reader validates and names the file and line of whatever is wrong
            image = recording.read_exposure_bgr8(index)
        return image

    def prepare(self) -> None:
        """Decode the exposure images up front when they fit in ``preload_mb`` (``run`` does it if needed)."""
        if not self._preload:
            return
        indices = [e.index for e in self.recording.exposures if e.index not in self._image_cache]
        if not indices:
            return
        with ThreadPoolExecutor(self.config.prefetch_threads, thread_name_prefix="replay-preload") as pool:
            for index, image in zip(indices, pool.map(self._decode, indices)):
                self._image_cache[index] = image

    def _lookahead(self, events: Iterator[ReplayEvent]) -> Iterator[ReplayEvent]:
        """Pass events through, decoding exposure images ``prefetch_events`` publications ahead."""
        depth = self.config.prefetch_events
        if depth == 0 or self._preload:
            yield from events
            return
        executor = ThreadPoolExecutor(self.config.prefetch_threads, thread_name_prefix="replay-prefetch")
        window: deque[ReplayEvent] = deque()
        try:
            for event in events:
                if event.kind == Kind.RGB_EXPOSURE:
                    self._prefetched[event.frame_id] = executor.submit(self._image, event.exposure_index)
                window.append(event)
                if len(window) > depth:
                    yield window.popleft()
            while window:
                yield window.popleft()
        finally:
            executor.shutdown(wait=False, cancel_futures=True)
            self._prefetched.clear()

    def _exposure(self, event: ReplayEvent) -> int:
        exposure = self.recording.exposure(event.exposure_index)
        future = self._prefetched.pop(event.frame_id, None)
        image = future.result() if future is not None else self._image(event.exposure_index)
        return self._streams.exposure(
            event.frame_id, int(exposure.start_ns) + event.shift_ns, int(exposure.duration_ns), image
        )

    def heartbeats(self) -> None:
        """Publish one heartbeat per stream (on its own socket) with its last sequence number."""
        self._streams.heartbeats()

    # -- pacing ----------------------------------------------------------------------------------------
    def run(self, events: Iterator[ReplayEvent] | None = None) -> ReplayStats:
        """Publish ``events`` (default: the recording's schedule) until they end or ``stop`` is set."""
        cfg, spike = self.config, self._spike_meta
        if events is None:
            events = replay_schedule(
                self.recording.spikes.frame_count, int(spike.t0_ns), float(spike.rate_hz),
                self.recording.exposures, cfg.block_frames, cfg.loops, cfg.margin_frames,
                cfg.rgb_to_spike_offset_ns,
            )
        self.prepare()  # before the clock starts: decoding never delays a publication
        lookahead = self._lookahead(iter(events))
        try:
            return self._run(lookahead)
        finally:
            lookahead.close()  # stops the image prefetching
            self._prefetched.clear()

    def _run(self, lookahead: Iterator[ReplayEvent]) -> ReplayStats:
        cfg, clock, stats = self.config, self.clock, self.stats
        first = next(lookahead, None)  # fills the lookahead: image decoding starts before the clock does
        if self._prefetched:
            next(iter(self._prefetched.values())).result()  # the first image is ready when streaming starts
        events = itertools.chain([] if first is None else [first], lookahead)
        heartbeat_ns = int(cfg.heartbeat_interval_s * NS_PER_S)
        start = clock.now_ns()
        next_heartbeat = start
        last_loop = 0
        for event in events:
            target = start if math.isinf(cfg.speed) else start + int(event.due_ns / cfg.speed)
            while not self.stop.is_set():  # wait for the event, sending heartbeats on time meanwhile
                now = clock.now_ns()
                if next_heartbeat <= now:
                    self._poll_sockets()
                    self.heartbeats()
                    next_heartbeat = now + heartbeat_ns
                    continue
                if now >= target:
                    break
                clock.sleep_until_ns(min(target, next_heartbeat), self.stop)
            if self.stop.is_set():
                stats.stopped = True
                break
            stats.loops_completed += event.loop - last_loop
            last_loop = event.loop
            if event.kind == Kind.SPIKE_BLOCK:
                sent_ns = self._spike_block(event)
            else:
                sent_ns = self._exposure(event)
            stats.max_lag_ns = max(stats.max_lag_ns, sent_ns - target)
        else:
            stats.loops_completed = last_loop + 1
        self._finish()
        stats.duration_ns = clock.now_ns() - start
        return stats

    def _finish(self) -> None:
        """Final heartbeats, repeated for ``drain_s`` so queued messages leave before the sockets close.

        Runs after a stop request too (bounded by ``drain_s``): what was published still gets out.
        """
        clock = self.clock
        self.heartbeats()
        end = clock.now_ns() + int(self.config.drain_s * NS_PER_S)
        step = max(int(self.config.heartbeat_interval_s * NS_PER_S), 1)
        while clock.now_ns() < end:
            clock.sleep_until_ns(min(end, clock.now_ns() + step))
            self._poll_sockets()
            self.heartbeats()


class LiveReplay:
    """Binds the two XPUB publishers; ``run()`` waits for subscribers (or the start delay) and replays.

    Use as a context manager; sockets close with linger 0. ``spike_endpoint``/``rgb_endpoint`` are the
    endpoints really bound (a ``tcp://127.0.0.1:*`` request resolves to its port).
    """

    def __init__(self, recording, spike_endpoint: str, rgb_endpoint: str, config: ReplayConfig | None = None,
                 context=None):
        from spikereveal.stream.transport import RigSockets

        self.recording = recording
        self.config = config or ReplayConfig()
        self.sockets = RigSockets(spike_endpoint, rgb_endpoint, self.config.send_hwm, self.config.count_drops,
                                  context=context, keys=self.config.keys)
        self.spike_endpoint = self.sockets.spike_endpoint
        self.rgb_endpoint = self.sockets.rgb_endpoint
        self._images: dict[int, np.ndarray] = {}  # decoded exposure images, kept across run() calls

    def _replayer(self, stop: threading.Event | None = None, clock: Clock | None = None) -> Replayer:
        sockets = self.sockets
        return Replayer(self.recording, self.config, send_spike=sockets.send_spike, send_rgb=sockets.send_rgb,
                        clock=clock, stop=stop, poll_sockets=sockets.poll, image_cache=self._images)

    def prepare(self) -> None:
        """Decode the exposure images now (when they fit in ``preload_mb``), before a consumer's clock starts:
        decoding 40 rsb frames takes seconds on a small machine, longer than a consumer's idle timeout."""
        self._replayer().prepare()

    def run(self, stop: threading.Event | None = None, clock: Clock | None = None) -> ReplayStats:
        stop = stop or threading.Event()
        clock = clock or MonotonicClock()
        cfg, sockets = self.config, self.sockets
        replayer = self._replayer(stop, clock)
        replayer.prepare()  # decode images while subscribers connect (nothing left to do after prepare())
        if cfg.wait_for_subscribers:
            logger.info("waiting for subscribers on %s and %s", self.spike_endpoint, self.rgb_endpoint)
            if not sockets.wait_for_subscribers(cfg.subscriber_timeout_s, stop):
                if stop.is_set():
                    return ReplayStats(stopped=True)
                raise SpikeRevealError(
                    f"no subscriber reached both {self.spike_endpoint} and {self.rgb_endpoint} within "
                    f"{cfg.subscriber_timeout_s} s; start the consumer (serve) or raise --subscriber-timeout-s"
                )
        if cfg.start_delay_s > 0:
            clock.sleep_until_ns(clock.now_ns() + int(cfg.start_delay_s * NS_PER_S), stop)
        return replayer.run()

    def close(self) -> None:
        self.sockets.close()

    def __enter__(self) -> LiveReplay:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
