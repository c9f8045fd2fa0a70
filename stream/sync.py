"""The exposure-window synchroniser: a pure, clock-injected state machine (no sockets, threads or sleeps).

Feed it decoded messages with the time they arrived (``now_ns`` from any :mod:`~spikereveal.stream.clock`);
it returns the exposures whose spike window is complete, as self-contained :class:`ReadyJob` s.

Policies (SPEC §4, §7):

* **Windows.** An exposure needs spike frames ``[window_first, window_stop)``: the exposure plus
  ``margin_frames`` on each side (:func:`spikereveal.kernels.timing.exposure_window`), computed on the
  spike clock after adding ``rgb_to_spike_offset_ns`` to the exposure's RGB timestamps (or through a
  calibration's clock mapping). Windows may overlap; frames stay in the ring until newer frames push
  them out, so every window that needs them can use them.
* **Ready** as soon as every frame of the window is in the ring, never earlier; frames are never guessed.
* **Skip and count** (``exposures_skipped``, reason in ``skipped_by_reason``) when the window can no
  longer be completed: a frame of it is known missing (``gap``: a sequence gap, a jump in frame index,
  or a heartbeat announcing frames that never came), it starts before the first frame received from the
  current stream (``stream_start``: joined late or the publisher restarted), its frames were pushed out of
  the ring (``evicted``; ``late`` when that had already happened when the exposure arrived), it is longer
  than the ring (``window_too_long``), its times overflow int64 against the stream's t0 (``bad_time``),
  or it waited ``exposure_timeout_ns`` (``timeout``).
* **Bounded.** At most ``max_pending_exposures`` wait, holding at most ``max_pending_bytes`` of RGB images;
  when one more arrives the oldest are dropped until both hold (``exposures_dropped``). The ring holds the newest ``capacity`` frames (``max_ring_frames``, and no
  more than ``max_ring_bytes`` worth); it references the received blocks instead of copying them (a
  complete window is copied out once), keeping at most about twice the capacity alive. The newest data
  wins: frames pushed out while a pending exposure still needed them count in ``spike_frames_dropped``
  (as do frames of late blocks). Blocks handed to the synchroniser must not be modified afterwards.
* **Sequence numbers** per stream id: a jump forward counts the missing numbers in ``gaps``; a number seen
  recently is a ``duplicate`` (dropped); an older unseen number is ``out_of_order`` (its frames are still
  stored if the ring covers them, and ``late`` + dropped otherwise). A new stream id, changed spike
  geometry/t0/rate, ``seq`` 0 after a higher one, or a jump back by more than ``reorder_window_messages``
  is a publisher ``restart``: the ring is cleared. Heartbeats (same socket as the stream they describe, so
  ordered after its data) reveal tail loss.
* **Hostile or broken numbering.** A restart, or a jump of more than ``max_jump_messages`` sequence numbers or
  ``max_jump_frames`` frame indices, is only believed when the next message of that stream continues it
  (or a heartbeat of it confirms it); until then the message is held, and a message of the running stream
  discards it as malformed (reason ``jump``). One forged number can neither inflate ``gaps`` nor clear the
  ring. Messages of a stream replaced less than ``restart_settle_ns`` ago are its last ones still in flight:
  dropped as malformed (``stale_stream``), never taken for yet another restart.
* **Stream epochs: an exposure is only ever combined with spikes of its own stream.** An exposure is bound to
  the spike stream that is current when it arrives (or, before the first spike block, the first one) and its
  window is computed once, against that stream. When the spike stream restarts, exposures bound to the old
  one are skipped (``stream_restart``), never recomputed against the new stream. The two publishers restart
  on separate sockets, so which RGB stream goes with which spike stream is settled by time: exposures of the
  old RGB stream arriving within ``restart_settle_ns`` after a spike restart are skipped (``stream_restart``;
  after that the RGB camera is taken to have kept running); exposures of a restarted RGB stream wait until
  the spike stream restarts too or ``restart_settle_ns`` passes. ``ReadyJob.epoch`` is the RGB stream's
  generation (0, 1, ... per restart): frame ids repeat after a restart, ``(epoch, exposure_id)`` does not.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass, field, fields
from typing import Callable

import numpy as np

from spikereveal.errors import ConfigError
from spikereveal.kernels.packing import packed_frame_bytes, to_canonical
from spikereveal.kernels.timing import DEFAULT_K, DEFAULT_MARGIN_FRAMES, ExposureWindow, exposure_window
from spikereveal.stream.protocol import (
    MAX_SPIKE_SIDE,
    Heartbeat,
    Kind,
    Message,
    ProtocolError,
    Reason,
    RgbExposure,
    SpikeBlock,
    decode,
)

__all__ = ["SyncConfig", "SyncCounters", "ReadyJob", "Synchroniser", "SKIP_REASONS"]

logger = logging.getLogger(__name__)

_MAX_FRAME_BYTES = MAX_SPIKE_SIDE * MAX_SPIKE_SIDE // 8
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
SKIP_REASONS = ("gap", "stream_start", "evicted", "late", "window_too_long", "bad_time", "timeout", "stream_restart")


@dataclass(frozen=True)
class SyncConfig:
    """Synchroniser settings (see the module doc for the policies they parameterise)."""

    k: int = DEFAULT_K
    margin_frames: int = DEFAULT_MARGIN_FRAMES
    # spike-clock time = RGB time + this (from calibration; the simulator's --clock-offset-ns, "RGB clock
    # minus spike clock", is its negative). 0 with a hardware trigger.
    rgb_to_spike_offset_ns: int = 0
    exposure_timeout_ns: int = 1_000_000_000
    max_pending_exposures: int = 16
    max_pending_bytes: int = 128 * 1024 * 1024  # RGB images of the waiting exposures
    max_ring_frames: int = 4096
    max_ring_bytes: int = 256 * 1024 * 1024
    reorder_window_messages: int = 64
    recent_exposure_ids: int = 1024  # how many decided exposure ids are remembered to catch duplicates
    # larger jumps are malformed unless the next message confirms them: 2**20 messages is minutes of loss at
    # 40 kHz in single-frame blocks, 2**24 frames 7 minutes at 40 kHz
    max_jump_messages: int = 1 << 20
    max_jump_frames: int = 1 << 24
    # how long after one publisher restarts the other one's restart counts as the same event (the two SUB
    # sockets reconnect independently, 100 ms apart by ZeroMQ's default), and the replaced stream's last
    # messages are dropped as stale
    restart_settle_ns: int = 500_000_000

    def __post_init__(self):
        def positive(name, value, low=1):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
                raise ConfigError(f"SyncConfig.{name} must be an integer >= {low}, got {value!r}")

        positive("k", self.k)
        positive("margin_frames", self.margin_frames, DEFAULT_MARGIN_FRAMES)
        offset = self.rgb_to_spike_offset_ns
        if isinstance(offset, bool) or not isinstance(offset, (int, np.integer)):
            raise ConfigError(f"SyncConfig.rgb_to_spike_offset_ns must be an integer number of ns, got {offset!r}")
        positive("exposure_timeout_ns", self.exposure_timeout_ns)
        positive("max_pending_exposures", self.max_pending_exposures)
        positive("max_pending_bytes", self.max_pending_bytes)
        positive("max_ring_frames", self.max_ring_frames, 2 * self.margin_frames + 2)
        # enough for the minimal ring of the largest frame the protocol admits, so no message can break it
        positive("max_ring_bytes", self.max_ring_bytes, (2 * self.margin_frames + 2) * _MAX_FRAME_BYTES)
        positive("reorder_window_messages", self.reorder_window_messages)
        positive("recent_exposure_ids", self.recent_exposure_ids)
        positive("max_jump_messages", self.max_jump_messages, self.reorder_window_messages)
        positive("max_jump_frames", self.max_jump_frames, self.max_ring_frames)
        positive("restart_settle_ns", self.restart_settle_ns)


@dataclass
class SyncCounters:
    """Integer counters (``as_dict`` for reports); reasons in ``malformed_by_reason``/``skipped_by_reason``."""

    messages: int = 0
    malformed: int = 0
    gaps: int = 0
    late: int = 0
    duplicates: int = 0
    out_of_order: int = 0
    restarts: int = 0
    exposures_received: int = 0
    exposures_done: int = 0
    exposures_skipped: int = 0
    exposures_dropped: int = 0
    spike_frames_received: int = 0
    spike_frames_dropped: int = 0
    malformed_by_reason: dict = field(default_factory=dict)  # "kind/reason" -> count
    skipped_by_reason: dict = field(default_factory=dict)

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.type in ("int", int)}


@dataclass(frozen=True, eq=False)
class ReadyJob:
    """One exposure with everything needed to deblur it; owns its spike frames (a copy out of the ring).

    ``packed`` holds canonical frames ``first_index .. first_index + len(packed)``; ``centers`` are
    absolute spike indices (``local_centers`` index into ``packed``); ``timestamps_ns`` are on the spike
    clock. ``image`` is the received uint8 (h, w, 3) BGR exposure (a view of the message buffer).
    """

    exposure_id: int
    start_ns: int  # as received (RGB clock)
    duration_ns: int
    image: np.ndarray
    packed: np.ndarray
    window: ExposureWindow  # the spike window and the K output times, computed once (on the spike clock)
    spike_height: int
    spike_width: int
    received_ns: int  # now_ns when the exposure message arrived
    ready_ns: int  # now_ns when the window became complete
    epoch: int = 0  # generation of the RGB stream (restarts so far): (epoch, exposure_id) is unique

    @property
    def key(self) -> tuple[int, int]:
        """``(epoch, exposure_id)``: what identifies the exposure across publisher restarts."""
        return (int(self.epoch), int(self.exposure_id))

    @property
    def first_index(self) -> int:
        """The spike index of ``packed[0]`` (the window's first frame)."""
        return int(self.window.window_first)

    @property
    def centers(self) -> np.ndarray:
        return self.window.centers

    @property
    def timestamps_ns(self) -> np.ndarray:
        return self.window.timestamps_ns

    @property
    def local_centers(self) -> np.ndarray:
        return self.centers - self.first_index

    def image_float(self, out: np.ndarray | None = None) -> np.ndarray:
        """The exposure in the library's layout: float32 (3, h, w) BGR in [0, 1] (into ``out`` if given)."""
        h, w = self.image.shape[:2]
        if out is None:
            out = np.empty((3, h, w), dtype=np.float32)
        elif out.shape != (3, h, w) or out.dtype != np.float32:
            raise ConfigError(f"out must be float32 of shape (3, {h}, {w}), got {out.dtype} {out.shape}")
        np.multiply(self.image.transpose(2, 0, 1), np.float32(1.0 / 255.0), out=out, dtype=np.float32)
        return out


class _Sequence:
    """Sequence-number bookkeeping of one stream id."""

    FIRST, IN_ORDER, GAP, DUPLICATE, OUT_OF_ORDER, RESTART, JUMP = range(7)

    def __init__(self, reorder_window: int, max_jump: int):
        self.reorder_window = reorder_window
        self.max_jump = max_jump
        self.stream_id: int | None = None
        self.last = -1
        self._recent: deque[int] = deque()
        self._recent_set: set[int] = set()
        self.held: Message | None = None  # a restart or jump waiting for the next message to confirm it
        self.retired: tuple[int, int] | None = None  # (stream id, until_ns) of the stream a restart replaced

    def stale(self, stream_id: int, now_ns: int) -> bool:
        """A message of the stream the last restart replaced, within the settle time."""
        return (self.retired is not None and stream_id == self.retired[0] and stream_id != self.stream_id
                and now_ns < self.retired[1])

    def retire(self, new_stream_id: int, until_ns: int) -> None:
        if self.stream_id is not None and self.stream_id != new_stream_id:
            self.retired = (self.stream_id, until_ns)

    def reset(self, stream_id: int | None) -> None:
        self.stream_id = stream_id
        self.last = -1
        self._recent.clear()
        self._recent_set.clear()

    def classify(self, stream_id: int, seq: int) -> int:
        if self.stream_id is None:
            return self.FIRST
        if stream_id != self.stream_id:
            return self.RESTART
        if seq == self.last + 1:
            return self.IN_ORDER
        if seq > self.last + 1 + self.max_jump:
            return self.JUMP
        if seq > self.last + 1:
            return self.GAP
        if (seq == 0 and self.last > 0) or seq < self.last - self.reorder_window:
            return self.RESTART
        return self.DUPLICATE if seq in self._recent_set else self.OUT_OF_ORDER

    def accept(self, seq: int) -> None:
        self._recent.append(seq)
        self._recent_set.add(seq)
        while len(self._recent) > self.reorder_window + 1:
            self._recent_set.discard(self._recent.popleft())
        self.last = max(self.last, seq)


class _SpikeRing:
    """Canonical packed frames of one spike stream; frame ``n`` lives in slot ``n % capacity``.

    Slots hold references to the received blocks (no copy on ingest): ``slot_block``/``slot_row`` say
    which block and row hold a frame; a block is released when the last of its slots is overwritten.
    Windows are copied out once, when they are complete.
    """

    def __init__(self, block: SpikeBlock, capacity: int):
        self.stream_id = block.stream_id
        self.t0_ns = block.t0_ns
        self.rate_hz = block.rate_hz
        self.height = block.height
        self.width = block.width
        self.frame_bytes = packed_frame_bytes(block.height, block.width)
        self.capacity = capacity
        self.slot_index = np.full(capacity, -1, dtype=np.int64)  # absolute frame index held by each slot
        self.slot_block = np.full(capacity, -1, dtype=np.int64)  # id of the block holding it
        self.slot_row = np.zeros(capacity, dtype=np.int64)  # its row in that block
        self.blocks: dict[int, np.ndarray] = {}
        self._live: dict[int, int] = {}  # block id -> slots still referring to it
        self._next_block_id = 0
        self.frames_held = 0  # frames in the referenced blocks (>= slots in use: a block is kept whole)
        self.first_index = block.first_index  # first frame received from this stream
        self.next_index = block.first_index  # one past the newest frame received or announced
        self.holes: list[list[int]] = []  # sorted [lo, hi) ranges below next_index known to be missing

    def same_stream(self, block: SpikeBlock) -> bool:
        return (block.t0_ns, block.rate_hz, block.height, block.width) == (
            self.t0_ns, self.rate_hz, self.height, self.width,
        )

    @property
    def floor(self) -> int:
        """Oldest frame index the ring can still hold."""
        return max(self.first_index, self.next_index - self.capacity)


    def add_hole(self, lo: int, hi: int) -> None:
        if hi > lo:
            self.holes.append([lo, hi])

    def fill_hole(self, lo: int, hi: int) -> None:
        """Frames ``[lo, hi)`` arrived late: remove them from the holes."""
        updated = []
        for a, b in self.holes:
            if b <= lo or a >= hi:
                updated.append([a, b])
                continue
            if a < lo:
                updated.append([a, lo])
            if b > hi:
                updated.append([hi, b])
        self.holes = updated

    def prune_holes(self) -> None:
        floor = self.floor
        self.holes = [[max(a, floor), b] for a, b in self.holes if b > floor]

    def has_hole(self, lo: int, hi: int) -> bool:
        return any(a < hi and b > lo for a, b in self.holes)

    def present(self, lo: int, hi: int) -> np.ndarray:
        """Which of frames ``[lo, hi)`` are in the ring (bool array)."""
        index = np.arange(lo, hi)
        return self.slot_index[index % self.capacity] == index

    def write(self, first: int, frames: np.ndarray) -> None:
        """Keep ``frames`` (n <= capacity) as frames ``first ..``; the array is referenced, not copied."""
        n = frames.shape[0]
        rows = np.arange(n)
        slots = (first + rows) % self.capacity
        previous = self.slot_block[slots]
        previous = previous[previous >= 0]
        if previous.size:  # release blocks whose last slot this overwrites (ids come in runs: no sort)
            bounds = np.flatnonzero(previous[1:] != previous[:-1]) + 1
            starts = [0, *bounds.tolist()]
            ends = [*bounds.tolist(), previous.size]
            for lo, hi in zip(starts, ends):
                block_id = int(previous[lo])
                self._live[block_id] -= hi - lo
                if self._live[block_id] == 0:
                    self.frames_held -= self.blocks[block_id].shape[0]
                    del self._live[block_id], self.blocks[block_id]
        block_id = self._new_block(frames, n)
        self.slot_index[slots] = first + rows
        self.slot_block[slots] = block_id
        self.slot_row[slots] = rows
        if self.frames_held > 2 * self.capacity:  # many blocks kept alive by a few frames each: compact
            self._compact()

    def _new_block(self, frames: np.ndarray, live: int) -> int:
        block_id = self._next_block_id
        self._next_block_id += 1
        self.blocks[block_id] = frames
        self._live[block_id] = live
        self.frames_held += frames.shape[0]
        return block_id

    def _compact(self) -> None:
        """Copy every frame in use into one array (row = slot) and release all other blocks."""
        used = self.slot_index >= 0
        data = np.empty((self.capacity, self.frame_bytes), dtype=np.uint8)
        for block_id in np.unique(self.slot_block[used]):
            mask = self.slot_block == block_id
            data[mask] = self.blocks[int(block_id)][self.slot_row[mask]]
        self.blocks.clear()
        self._live.clear()
        self.frames_held = 0
        block_id = self._new_block(data, int(np.count_nonzero(used)))
        self.slot_block[used] = block_id
        self.slot_row[used] = np.flatnonzero(used)

    def read(self, first: int, stop: int) -> np.ndarray | None:
        """A copy of frames ``[first, stop)``, or None if any of them is not in the ring."""
        n = stop - first
        index = np.arange(first, stop)
        slots = index % self.capacity
        if not np.array_equal(self.slot_index[slots], index):
            return None
        ids, rows = self.slot_block[slots], self.slot_row[slots]
        # runs of consecutive rows of one block are copied with one slice each
        breaks = np.flatnonzero((ids[1:] != ids[:-1]) | (rows[1:] != rows[:-1] + 1)) + 1
        out = np.empty((n, self.frame_bytes), dtype=np.uint8)
        for lo, hi in zip(np.r_[0, breaks], np.r_[breaks, n]):
            row = int(rows[lo])
            out[lo:hi] = self.blocks[int(ids[lo])][row : row + hi - lo]
        return out


@dataclass(eq=False)
class _Pending:
    message: RgbExposure
    received_ns: int
    rgb_gen: int  # generation of the RGB stream it came from
    spike_gen: int | None = None  # the spike stream it is bound to (None: not yet)
    window: ExposureWindow | None = None  # computed once, when bound

    @property
    def key(self) -> tuple[int, int]:
        return (self.rgb_gen, int(self.message.frame_id))


class Synchroniser:
    """Turns spike blocks, RGB exposures and heartbeats into :class:`ReadyJob` s (see the module doc)."""

    def __init__(
        self,
        config: SyncConfig | None = None,
        exposure_to_spike_clock: Callable[[int, int], tuple[int, int]] | None = None,
    ):
        """``exposure_to_spike_clock(start_ns, duration_ns) -> (start_ns, duration_ns)`` replaces the plain
        ``rgb_to_spike_offset_ns`` when the clocks also drift (e.g. ``RigCalibration.exposure_on_spike_clock``).
        """
        self.config = config or SyncConfig()
        if exposure_to_spike_clock is not None and self.config.rgb_to_spike_offset_ns:
            raise ConfigError(
                "give either SyncConfig.rgb_to_spike_offset_ns or exposure_to_spike_clock, not both "
                "(the calibration's mapping already includes the offset)"
            )
        self._to_spike_clock = exposure_to_spike_clock
        self.counters = SyncCounters()
        self._spike_seq = _Sequence(self.config.reorder_window_messages, self.config.max_jump_messages)
        self._rgb_seq = _Sequence(self.config.reorder_window_messages, self.config.max_jump_messages)
        self._ring: _SpikeRing | None = None
        self._pending: list[_Pending] = []
        self._recent_ids: deque[tuple[int, int]] = deque()
        self._recent_id_set: set[tuple[int, int]] = set()
        # stream generations and which RGB generation goes with the current spike stream (module doc)
        self._spike_gen = -1
        self._rgb_gen = -1
        self._paired_rgb_gen = -1
        self._stale_rgb_until_ns: int | None = None  # after a spike restart: the old RGB stream's exposures skip
        self._hold_rgb_until_ns: int | None = None  # after an RGB restart: its exposures wait for the spike one

    # -- introspection ---------------------------------------------------------------------------------
    @property
    def pending_count(self) -> int:
        return len(self._pending)

    @property
    def pending_nbytes(self) -> int:
        """Bytes of RGB images the waiting exposures hold (bounded by ``max_pending_bytes``)."""
        return sum(int(p.message.image.nbytes) for p in self._pending)

    @property
    def ring_capacity(self) -> int:
        return self._ring.capacity if self._ring else 0

    @property
    def ring_nbytes(self) -> int:
        """Bytes of spike data the ring keeps alive (bounded by about 2 x capacity frames)."""
        return self._ring.frames_held * self._ring.frame_bytes if self._ring else 0

    @property
    def next_spike_index(self) -> int | None:
        return self._ring.next_index if self._ring else None

    # -- input -----------------------------------------------------------------------------------------
    def feed(self, parts, now_ns: int) -> list[ReadyJob]:
        """Decode a received multipart message and handle it; malformed ones are counted and dropped."""
        try:
            message = decode(parts)
        except ProtocolError as exc:
            self.count_malformed(exc)
            return self.poll(now_ns)
        if message.kind == Kind.SHARP_FRAME:  # not a camera message: wrong endpoint
            self.count_malformed(ProtocolError(Reason.KIND, "sharp frames do not belong on a camera stream",
                                               Kind.SHARP_FRAME))
            return self.poll(now_ns)
        return self.handle(message, now_ns)

    def count_malformed(self, error: ProtocolError) -> None:
        self.counters.messages += 1
        self.counters.malformed += 1
        key = f"{error.kind.name.lower() if error.kind is not None else 'unknown'}/{error.reason.value}"
        self.counters.malformed_by_reason[key] = self.counters.malformed_by_reason.get(key, 0) + 1
        logger.debug("dropped %s", error)

    def _reject(self, kind: Kind, reason: Reason, what: str) -> None:
        """Count a message that decoded but cannot be believed (``messages`` was counted on arrival)."""
        self.counters.messages -= 1
        self.count_malformed(ProtocolError(reason, what, kind))

    def _discard_held(self, seq: "_Sequence", kind: Kind) -> None:
        if seq.held is not None:
            seq.held = None
            self._reject(kind, Reason.JUMP, "a restart or jump that the stream's next message did not confirm")

    def handle(self, message: Message, now_ns: int) -> list[ReadyJob]:
        if isinstance(message, SpikeBlock):
            return self.on_spike_block(message, now_ns)
        if isinstance(message, RgbExposure):
            return self.on_exposure(message, now_ns)
        if isinstance(message, Heartbeat):
            return self.on_heartbeat(message, now_ns)
        raise TypeError(f"the synchroniser takes spike blocks, exposures and heartbeats, not {type(message).__name__}")

    def poll(self, now_ns: int) -> list[ReadyJob]:
        """Apply timeouts; call it periodically when no message arrives."""
        return self._evaluate(now_ns)

    def on_spike_block(self, block: SpikeBlock, now_ns: int) -> list[ReadyJob]:
        c = self.counters
        c.messages += 1
        seq = self._spike_seq
        self._settle(now_ns)
        if seq.stale(block.stream_id, now_ns):
            self._reject(Kind.SPIKE_BLOCK, Reason.STALE, "a block of the spike stream a restart replaced")
            return self._evaluate(now_ns)
        held = seq.held
        if isinstance(held, SpikeBlock) and self._continues(held, block):
            seq.held = None  # the held restart or jump was real
            self._accept_block(held, seq.RESTART, now_ns)
            state = self._classify_block(block)
        else:
            state = self._classify_block(block)
            if state in (seq.RESTART, seq.JUMP):
                self._discard_held(seq, Kind.SPIKE_BLOCK)
                seq.held = block  # believed only if the next block continues it
                return self._evaluate(now_ns)
            if state != seq.DUPLICATE:
                self._discard_held(seq, Kind.SPIKE_BLOCK)
        if state == seq.DUPLICATE:
            c.duplicates += 1
            return self._evaluate(now_ns)
        self._accept_block(block, state, now_ns)
        return self._evaluate(now_ns)

    def _classify_block(self, block: SpikeBlock) -> int:
        seq, ring = self._spike_seq, self._ring
        state = seq.classify(block.stream_id, block.seq)
        if state in (seq.FIRST, seq.RESTART, seq.JUMP, seq.DUPLICATE):
            return state
        if not ring.same_stream(block):
            return seq.RESTART
        jump = self.config.max_jump_frames
        if block.first_index - ring.next_index > jump or block.stop_index < ring.floor - jump:
            return seq.JUMP  # the frame counter leapt (forward, or back past the ring)
        return state

    def _continues(self, held: SpikeBlock, block: SpikeBlock) -> bool:
        """``block`` is the message after ``held`` in the same stream: the held restart or jump was real."""
        return (block.stream_id == held.stream_id and block.seq == held.seq + 1
                and (block.t0_ns, block.rate_hz, block.height, block.width)
                == (held.t0_ns, held.rate_hz, held.height, held.width)
                and 0 <= block.first_index - held.stop_index <= self.config.max_jump_frames)

    def _accept_block(self, block: SpikeBlock, state: int, now_ns: int) -> None:
        c, seq = self.counters, self._spike_seq
        c.spike_frames_received += block.frame_count
        if state in (seq.FIRST, seq.RESTART, seq.JUMP):
            if state != seq.FIRST:
                c.restarts += 1
                logger.info("spike stream restarted (stream id %d, seq %d)", block.stream_id, block.seq)
            seq.retire(block.stream_id, now_ns + self.config.restart_settle_ns)
            self._start_spike_stream(block, first=state == seq.FIRST, now_ns=now_ns)
        elif state == seq.GAP:
            c.gaps += block.seq - seq.last - 1
        elif state == seq.OUT_OF_ORDER:
            c.out_of_order += 1
        seq.accept(block.seq)
        frames = to_canonical(block.packed, block.height, block.width, block.bit_order, block.flip_rows)
        self._store(block.first_index, frames, seq_gap=state == seq.GAP)

    def on_exposure(self, exposure: RgbExposure, now_ns: int) -> list[ReadyJob]:
        c = self.counters
        c.messages += 1
        seq = self._rgb_seq
        self._settle(now_ns)
        if seq.stale(exposure.stream_id, now_ns):
            self._reject(Kind.RGB_EXPOSURE, Reason.STALE, "an exposure of the RGB stream a restart replaced")
            return self._evaluate(now_ns)
        held = seq.held
        if isinstance(held, RgbExposure) and exposure.stream_id == held.stream_id and exposure.seq == held.seq + 1:
            seq.held = None  # the held restart or jump was real
            self._accept_exposure(held, seq.RESTART, now_ns)
            state = seq.classify(exposure.stream_id, exposure.seq)
        else:
            state = seq.classify(exposure.stream_id, exposure.seq)
            if state in (seq.RESTART, seq.JUMP):
                self._discard_held(seq, Kind.RGB_EXPOSURE)
                seq.held = exposure  # believed only if the next exposure (or a heartbeat) continues it
                return self._evaluate(now_ns)
            if state != seq.DUPLICATE:
                self._discard_held(seq, Kind.RGB_EXPOSURE)
        self._accept_exposure(exposure, state, now_ns)
        ready = self._evaluate(now_ns)
        while self._pending and (len(self._pending) > self.config.max_pending_exposures
                                 or self.pending_nbytes > self.config.max_pending_bytes):
            oldest = self._pending.pop(0)
            c.exposures_dropped += 1
            self._remember(oldest.key)
            logger.debug("dropped pending exposure %d (queue full)", oldest.message.frame_id)
        return ready

    def _accept_exposure(self, exposure: RgbExposure, state: int, now_ns: int) -> None:
        c, seq = self.counters, self._rgb_seq
        if state == seq.DUPLICATE:
            c.duplicates += 1
            return
        if state in (seq.FIRST, seq.RESTART, seq.JUMP):
            if state != seq.FIRST:
                c.restarts += 1
                logger.info("RGB stream restarted (stream id %d, seq %d)", exposure.stream_id, exposure.seq)
            seq.retire(exposure.stream_id, now_ns + self.config.restart_settle_ns)
            seq.reset(exposure.stream_id)
            self._start_rgb_stream(first=state == seq.FIRST, now_ns=now_ns)
        elif state == seq.GAP:
            c.gaps += exposure.seq - seq.last - 1
        elif state == seq.OUT_OF_ORDER:
            c.out_of_order += 1
        seq.accept(exposure.seq)
        key = (self._rgb_gen, int(exposure.frame_id))
        if key in self._recent_id_set or any(p.key == key for p in self._pending):
            c.duplicates += 1
            return
        c.exposures_received += 1
        pending = _Pending(exposure, now_ns, self._rgb_gen)
        if self._bind(pending) is not None:
            return  # skipped (stale)
        if pending.window is not None:
            ring = self._ring
            if ring.first_index <= pending.window.window_first < ring.floor:
                c.late += 1
                self._skip(pending, "late")
                return
        self._pending.append(pending)

    def on_heartbeat(self, heartbeat: Heartbeat, now_ns: int) -> list[ReadyJob]:
        c = self.counters
        c.messages += 1
        kind = heartbeat.stream_kind
        if kind == Kind.SPIKE_BLOCK:
            seq = self._spike_seq
        elif kind == Kind.RGB_EXPOSURE:
            seq = self._rgb_seq
        else:
            return self._evaluate(now_ns)
        self._settle(now_ns)
        held = seq.held
        if held is not None and heartbeat.stream_id == held.stream_id and heartbeat.last_seq == held.seq:
            seq.held = None  # the held restart's stream says it sent exactly that: believe it
            if kind == Kind.SPIKE_BLOCK:
                self._accept_block(held, seq.RESTART, now_ns)
            else:
                self._accept_exposure(held, seq.RESTART, now_ns)
            return self._evaluate(now_ns)
        if seq.stream_id != heartbeat.stream_id:  # a stream we have no data from yet (or an old one)
            return self._evaluate(now_ns)
        ring = self._ring
        if heartbeat.last_seq - seq.last > self.config.max_jump_messages or (
                kind == Kind.SPIKE_BLOCK and ring is not None
                and heartbeat.position - ring.next_index > self.config.max_jump_frames):
            self._reject(Kind.HEARTBEAT, Reason.JUMP, "a heartbeat announcing more than any real loss")
            return self._evaluate(now_ns)
        if heartbeat.last_seq > seq.last:
            c.gaps += heartbeat.last_seq - seq.last  # sent but never arrived: tail loss
            seq.last = heartbeat.last_seq
        if kind == Kind.SPIKE_BLOCK and ring is not None and heartbeat.position > ring.next_index:
            ring.add_hole(ring.next_index, heartbeat.position)
            self._advance(heartbeat.position)
        return self._evaluate(now_ns)

    # -- stream epochs -----------------------------------------------------------------------------------
    def _start_rgb_stream(self, first: bool, now_ns: int) -> None:
        self._rgb_gen += 1
        if first or self._paired_rgb_gen < 0:  # the first RGB stream goes with whatever spike stream there is
            self._paired_rgb_gen = self._rgb_gen
        elif self._stale_rgb_until_ns is not None:  # the spike stream restarted moments ago: one event
            self._paired_rgb_gen = self._rgb_gen
            self._stale_rgb_until_ns = None
        else:  # wait for the spike stream's restart, or the settle time
            self._hold_rgb_until_ns = now_ns + self.config.restart_settle_ns

    def _settle(self, now_ns: int) -> None:
        """Apply the settle time: a lone RGB restart pairs with the running spike stream; after a lone spike
        restart the running RGB stream's exposures are taken again."""
        if self._hold_rgb_until_ns is not None and now_ns >= self._hold_rgb_until_ns:
            self._hold_rgb_until_ns = None
            self._paired_rgb_gen = self._rgb_gen
        if self._stale_rgb_until_ns is not None and now_ns >= self._stale_rgb_until_ns:
            self._stale_rgb_until_ns = None

    def _bind(self, pending: _Pending) -> str | None:
        """Bind a waiting exposure to the current spike stream when its pairing is settled; returns a skip
        reason, or None (bound, or still waiting)."""
        if pending.spike_gen is not None or self._ring is None or pending.rgb_gen > self._paired_rgb_gen:
            return None
        if pending.rgb_gen < self._paired_rgb_gen or self._stale_rgb_until_ns is not None:
            self._skip(pending, "stream_restart")
            return "stream_restart"
        pending.spike_gen = self._spike_gen
        pending.window = self._window(pending.message)
        return None

    # -- spike storage -----------------------------------------------------------------------------------
    def _start_spike_stream(self, block: SpikeBlock, first: bool, now_ns: int) -> None:
        self._spike_seq.reset(block.stream_id)
        frame_bytes = packed_frame_bytes(block.height, block.width)
        capacity = min(self.config.max_ring_frames, self.config.max_ring_bytes // frame_bytes)
        self._ring = None  # free the old ring before allocating the new one
        self._ring = _SpikeRing(block, capacity)
        self._spike_gen += 1
        if first:
            return
        keep = []
        for pending in self._pending:  # bound to the old stream: never recomputed against the new one
            if pending.spike_gen is None:
                keep.append(pending)
            else:
                self._skip(pending, "stream_restart")
        self._pending = keep
        if self._hold_rgb_until_ns is not None:  # the RGB stream restarted moments ago: one event
            self._hold_rgb_until_ns = None
            self._paired_rgb_gen = self._rgb_gen
        else:
            self._stale_rgb_until_ns = now_ns + self.config.restart_settle_ns

    def _store(self, first: int, frames: np.ndarray, seq_gap: bool) -> None:
        ring, c = self._ring, self.counters
        n = frames.shape[0]
        if n == 0:
            return
        stop = first + n
        floor = ring.floor
        if stop <= floor:
            c.late += 1
            c.spike_frames_dropped += n
            return
        if first < floor:  # copies of the parts kept, so the ring never pins a larger buffer
            c.spike_frames_dropped += floor - first
            frames, first = frames[floor - first :].copy(), floor
        if stop - first > ring.capacity:  # only the newest frames fit
            c.spike_frames_dropped += stop - first - ring.capacity
            frames, first = frames[-ring.capacity :].copy(), stop - ring.capacity
        if first > ring.next_index:
            if not seq_gap:
                c.gaps += 1  # frames skipped without a sequence gap (the camera dropped frames)
            ring.add_hole(ring.next_index, first)
        if first < ring.next_index:
            ring.fill_hole(first, min(stop, ring.next_index))
        self._advance(max(ring.next_index, stop))
        ring.write(first, frames)

    def _advance(self, new_next: int) -> None:
        """Move the stream head; count frames pushed out of the ring while a pending window needed them."""
        ring = self._ring
        old_floor = ring.floor
        ring.next_index = max(ring.next_index, new_next)
        new_floor = ring.floor
        if new_floor > old_floor:
            needed = sorted(
                (p.window.window_first, p.window.window_stop) for p in self._pending if p.window is not None
            )
            lost, cursor = 0, old_floor
            for lo, hi in needed:
                lo, hi = max(lo, cursor), min(hi, new_floor)
                if hi > lo:  # count the frames of [lo, hi) that were really in the ring
                    lost += int(np.count_nonzero(ring.present(lo, hi)))
                    cursor = hi
            self.counters.spike_frames_dropped += lost
            ring.prune_holes()

    # -- decisions -----------------------------------------------------------------------------------------
    def _window(self, exposure: RgbExposure) -> ExposureWindow | None:
        ring, cfg = self._ring, self.config
        if self._to_spike_clock is not None:
            start, duration = self._to_spike_clock(exposure.start_ns, exposure.duration_ns)
        else:
            start, duration = exposure.start_ns + cfg.rgb_to_spike_offset_ns, exposure.duration_ns
        start, duration = int(start), int(duration)
        # times that overflow int64 on the way (absurd timestamps, or t0 at the other end of the range)
        # cannot name a window; the caller skips the exposure
        if not (_INT64_MIN <= start and start + duration <= _INT64_MAX and _INT64_MIN <= start - ring.t0_ns
                and start + duration - ring.t0_ns <= _INT64_MAX):
            return None
        return exposure_window(start, duration, ring.t0_ns, ring.rate_hz, cfg.k, cfg.margin_frames)

    def _status(self, pending: _Pending) -> str | None:
        """"ready", a skip reason, or None (wait)."""
        ring, window = self._ring, pending.window
        if ring is None or pending.spike_gen is None:
            return None
        if window is None:
            return "bad_time"
        lo, hi = window.window_first, window.window_stop
        if hi - lo > ring.capacity:
            return "window_too_long"
        if lo < ring.first_index:
            return "stream_start"
        if lo < ring.floor:
            return "evicted"
        if ring.has_hole(lo, min(hi, ring.next_index)):
            return "gap"
        return "ready" if hi <= ring.next_index else None

    def _evaluate(self, now_ns: int) -> list[ReadyJob]:
        self._settle(now_ns)
        ready: list[ReadyJob] = []
        keep: list[_Pending] = []
        for pending in self._pending:
            if pending.spike_gen is None and self._bind(pending) is not None:
                continue  # skipped
            status = self._status(pending)
            if status is None and now_ns - pending.received_ns >= self.config.exposure_timeout_ns:
                status = "timeout"
            if status is None:
                keep.append(pending)
            elif status == "ready":
                job = self._job(pending, now_ns)
                if job is None:
                    self._skip(pending, "gap")
                else:
                    ready.append(job)
            else:
                self._skip(pending, status)
        self._pending = keep
        return ready

    def _job(self, pending: _Pending, now_ns: int) -> ReadyJob | None:
        ring, window, message = self._ring, pending.window, pending.message
        packed = ring.read(window.window_first, window.window_stop)
        if packed is None:  # defensive: bookkeeping says complete but a slot disagrees
            logger.warning("exposure %d: ring slots disagree with the bookkeeping; skipped", message.frame_id)
            return None
        self.counters.exposures_done += 1
        self._remember(pending.key)
        return ReadyJob(
            exposure_id=message.frame_id,
            start_ns=message.start_ns,
            duration_ns=message.duration_ns,
            image=message.image,
            packed=packed,
            window=window,
            spike_height=ring.height,
            spike_width=ring.width,
            received_ns=pending.received_ns,
            ready_ns=now_ns,
            epoch=pending.rgb_gen,
        )

    def _skip(self, pending: _Pending, reason: str) -> None:
        c = self.counters
        c.exposures_skipped += 1
        c.skipped_by_reason[reason] = c.skipped_by_reason.get(reason, 0) + 1
        self._remember(pending.key)
        logger.debug("skipped exposure %d (%s)", pending.message.frame_id, reason)

    def _remember(self, key: tuple[int, int]) -> None:
        self._recent_ids.append(key)
        self._recent_id_set.add(key)
        while len(self._recent_ids) > self.config.recent_exposure_ids:
            self._recent_id_set.discard(self._recent_ids.popleft())
