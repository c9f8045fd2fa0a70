"""The live pipeline's graph, composed in one place. Data flows one way::

    spike SUB ─┐                                       ┌─> inference thread ───────────────┐
               ├─> decode ─> Synchroniser ─> JobQueue ─┤                                   ├─> ResultSink
    rgb SUB ───┘                                       └─> ROUTER (by credit) -> workers -> │    ├─> PUB (sharp)
                                                           PULL -> ResultCollector ────────┘    └─> FrameSaver
                                                           (re-orders, bounded)

Every queue is bounded, with a policy when full and a counter:

=====================  ===============================================  =========================================
queue                  bound                                            when full
=====================  ===============================================  =========================================
SUB receive buffers    ``ingest.*_receive_buffer_bytes`` per socket     ZeroMQ drops; counted as ``gaps``
synchroniser ring      ``sync.max_ring_frames`` / ``max_ring_bytes``    oldest frames out (``spike_frames_dropped``)
pending exposures      ``sync.max_pending_exposures`` / ``_bytes``      oldest dropped (``sync_exposures_dropped``)
job queue              ``worker.queue_capacity_jobs`` / ``_max_bytes``  ``worker.when_full`` (``job_queue_dropped``;
                                                                        ``warmup_dropped`` while the engine loads)
jobs at workers        a worker's credits, at most                      jobs wait in the job queue (above); a lost
                       ``scale_out.in_flight_per_worker_jobs`` each,    worker's jobs: ``lost_job_policy``
                       ``dispatch.MAX_ROUTES`` workers                  (``jobs_requeued`` / ``worker_lost``)
re-ordering buffer     ``scale_out.reorder_max_results`` results,       skip ahead of the unfinished exposures
                       each waiting at most ``reorder_wait_s``          before them (``reorder_skipped``)
PUB send buffer        ``publish.send_hwm_messages`` per viewer         message dropped (``output_dropped``)
=====================  ===============================================  =========================================

``exposures_dropped`` in the counters is the sum of the five exposure drops (pending, job queue, job queue
while the engine warms up, lost at a worker, skipped ahead of by the re-ordering); ``jobs_requeued`` counts
jobs sent again after their worker was lost (not an outcome: each ends in one of the others). ``peak_queued_bytes`` is the most camera data the ring, the
pending exposures and the job queue held at once (sampled after every message), ``peak_rss_bytes`` the
process's peak resident memory. :class:`Pipeline` holds the pure part (no sockets): it is fed camera messages with their arrival
time and hands results to the sink; :mod:`spikereveal.stream.serve` owns the sockets and the loop.
"""

from __future__ import annotations

import bisect
import logging
import threading
import time
from collections import OrderedDict, deque
from typing import Callable

from spikereveal.stream.protocol import (
    Kind,
    ProtocolError,
    Reason,
    RgbExposure,
    SpikeBlock,
    decode,
)
from spikereveal.stream.sync import ReadyJob, Synchroniser
from spikereveal.stream.jobs import JobQueue
from spikereveal.stream.sinks import ResultSink

__all__ = ["Pipeline", "SourceTimes", "COUNTER_KEYS"]

logger = logging.getLogger(__name__)

#: integer counters every serve report has (the sync's own names plus the pipeline's)
COUNTER_KEYS = (
    "messages", "malformed", "gaps", "late", "duplicates", "out_of_order", "restarts",
    "exposures_received", "exposures_done", "exposures_skipped", "exposures_dropped", "exposures_failed",
    "exposures_abandoned", "exposures_pending_at_exit", "windows_ready", "sync_exposures_dropped",
    "job_queue_dropped", "warmup_dropped", "worker_lost", "spike_frames_received", "spike_frames_dropped",
    "output_messages", "output_dropped", "frames_saved", "frames_save_failed", "out_of_domain_exposures",
    "spike_geometry_mismatches", "results_rejected", "subscriptions_refused", "output_resets",
    "jobs_requeued", "reorder_skipped",
)


class SourceTimes:
    """When the rig sent what each exposure needed (publisher ``send_time_ns``; same-host clocks only).

    Keeps the newest ``capacity`` spike blocks' (stop index, send time) and exposure send times, so an
    exposure's end-to-end latency can start at the send of the last message its window needed.
    """

    def __init__(self, capacity: int = 4096):
        self._stops: deque[int] = deque(maxlen=capacity)
        self._sent: deque[int] = deque(maxlen=capacity)
        self._received: deque[int] = deque(maxlen=capacity)
        self._exposures: OrderedDict[int, int] = OrderedDict()
        self._capacity = capacity

    def spike_block(self, block: SpikeBlock, received_ns: int) -> None:
        if self._stops and block.stop_index <= self._stops[-1]:
            return  # out of order / duplicate: keep the list sorted, the first send is what counts
        self._stops.append(block.stop_index)
        self._sent.append(block.send_time_ns)
        self._received.append(received_ns)

    def exposure(self, exposure: RgbExposure) -> None:
        self._exposures[exposure.frame_id] = exposure.send_time_ns
        while len(self._exposures) > self._capacity:
            self._exposures.popitem(last=False)

    def _completing_block(self, job: ReadyJob) -> int | None:
        i = bisect.bisect_left(self._stops, job.window.window_stop)
        return i if i < len(self._stops) else None

    def sent_ns(self, job: ReadyJob) -> int | None:
        """Send time of the later of the exposure and the block completing its window (None: unknown)."""
        i = self._completing_block(job)
        rgb = self._exposures.get(job.exposure_id)
        if i is None or rgb is None:
            return None
        return max(self._sent[i], rgb)

    def last_spike_received_ns(self, job: ReadyJob) -> int | None:
        """When the block holding the window's last frame arrived (None: unknown)."""
        i = self._completing_block(job)
        return None if i is None else self._received[i]


class Pipeline:
    """Synchroniser -> bounded job queue, with the bookkeeping the sink needs (no sockets, no threads).

    ``on_message(parts, now_ns)`` decodes one camera message, feeds the synchroniser and enqueues the
    windows it completes; ``tick(now_ns)`` applies the synchroniser's timeouts. Jobs leave through
    ``queue`` (an inference thread or the worker dispatcher takes them).

    ``declared_spike_shape``: the (height, width) the user declared (``serve --spike-geometry``); spike blocks
    of another size are still processed (the engine reloads for them) but counted in
    ``spike_geometry_mismatches`` and warned about once per size seen.

    ``on_spike_geometry(height, width)`` is called at the first spike block and whenever the size changes,
    before the block is synchronised (so before any window that needs it completes): serve loads the engine
    there when the geometry was not known at start.
    """

    def __init__(self, sync: Synchroniser, queue: JobQueue, clock_ns: Callable[[], int] = time.monotonic_ns,
                 record_capacity: int = 4096, recorder=None, declared_spike_shape: tuple[int, int] | None = None,
                 on_spike_geometry: Callable[[int, int], None] | None = None):
        from spikereveal.stream.trace import NULL_RECORDER

        self.recorder = NULL_RECORDER if recorder is None else recorder  # stream.trace stamps (serve --trace)
        self.sync = sync
        self.queue = queue
        self._clock_ns = clock_ns
        self.sources = SourceTimes()
        self._job_info: OrderedDict[int, tuple] = OrderedDict()  # id -> (ingest_ns, sent_ns, trace slot)
        self._record_capacity = record_capacity
        self.last_message_ns: int | None = None
        self._info_lock = threading.Lock()
        self.declared_spike_shape = None if declared_spike_shape is None else tuple(map(int, declared_spike_shape))
        self.spike_geometry_mismatches = 0
        self.spike_geometries_seen: list[tuple[int, int]] = []  # mismatching sizes, in the order first seen
        self._on_spike_geometry = on_spike_geometry
        self._spike_shape: tuple[int, int] | None = None  # of the latest spike block
        self.peak_queued_bytes = 0

    def on_message(self, parts, now_ns: int) -> int:
        """Handle one received camera message; returns how many windows it completed."""
        started = self._clock_ns()
        self.last_message_ns = now_ns
        sync = self.sync
        try:
            message = decode(parts)
        except ProtocolError as exc:
            sync.count_malformed(exc)
            return self._enqueue(sync.poll(now_ns), started)
        if message.kind == Kind.SHARP_FRAME:
            sync.count_malformed(ProtocolError(Reason.KIND, "sharp frames do not belong on a camera stream",
                                               Kind.SHARP_FRAME))
            return self._enqueue(sync.poll(now_ns), started)
        if isinstance(message, SpikeBlock):
            self.sources.spike_block(message, now_ns)
            if self.declared_spike_shape is not None:
                self._check_geometry(message)
            shape = (int(message.height), int(message.width))
            if shape != self._spike_shape:
                self._spike_shape = shape
                if self._on_spike_geometry is not None:
                    self._on_spike_geometry(*shape)
        elif isinstance(message, RgbExposure):
            self.sources.exposure(message)
        return self._enqueue(sync.handle(message, now_ns), started)

    @property
    def queued_bytes(self) -> int:
        """Camera data held now: the spike ring, the waiting exposures' images and the job queue."""
        return self.sync.ring_nbytes + self.sync.pending_nbytes + self.queue.nbytes

    def _check_geometry(self, block: SpikeBlock) -> None:
        shape = (int(block.height), int(block.width))
        if shape == self.declared_spike_shape:
            return
        self.spike_geometry_mismatches += 1
        if shape not in self.spike_geometries_seen:
            self.spike_geometries_seen.append(shape)
            declared = "x".join(map(str, self.declared_spike_shape))
            logger.warning("spike stream %d sends %dx%d frames but the spike geometry was declared as %s "
                           "(--spike-geometry / the rig config): the engine is reloaded for %dx%d; fix the "
                           "declared geometry or the rig (counted in spike_geometry_mismatches)",
                           block.stream_id, shape[0], shape[1], declared, shape[0], shape[1])

    def tick(self, now_ns: int) -> int:
        return self._enqueue(self.sync.poll(now_ns), self._clock_ns())

    def _enqueue(self, jobs: list[ReadyJob], started_ns: int) -> int:
        if not jobs:
            self.peak_queued_bytes = max(self.peak_queued_bytes, self.queued_bytes)
            return 0
        cut_ns = self._clock_ns()
        ingest_ns = cut_ns - started_ns
        for job in jobs:
            slot = self._trace_begin(job, cut_ns) if self.recorder.enabled else None
            with self._info_lock:
                self._job_info[job.key] = (ingest_ns, self.sources.sent_ns(job), slot)
                while len(self._job_info) > self._record_capacity:
                    self._job_info.popitem(last=False)
            self.queue.put(job)
        self.peak_queued_bytes = max(self.peak_queued_bytes, self.queued_bytes)
        return len(jobs)

    def _trace_begin(self, job: ReadyJob, cut_ns: int) -> int:
        from spikereveal.stream import trace

        recorder = self.recorder
        slot = recorder.begin(job.exposure_id, job.start_ns + job.duration_ns)
        last_spike = self.sources.last_spike_received_ns(job)
        if last_spike is not None:
            recorder.mark(slot, trace.LAST_SPIKE_RECEIVED, last_spike)
        recorder.mark(slot, trace.EXPOSURE_RECEIVED, job.received_ns)
        recorder.mark(slot, trace.WINDOW_COMPLETE, job.ready_ns)
        recorder.mark(slot, trace.WINDOW_CUT, cut_ns)
        return slot

    def job_info(self, key: tuple[int, int]) -> tuple[int | None, int | None, int | None]:
        """(ingest_ns, sent_ns, trace slot) recorded when the exposure ``key`` = ReadyJob.key's window completed."""
        with self._info_lock:
            return self._job_info.pop(key, (None, None, None))

    def counters(self, sink: ResultSink, failed: int = 0, abandoned: int = 0, worker_lost: int = 0,
                 frames_saved: int = 0, frames_save_failed: int = 0, results_rejected: int = 0,
                 subscriptions_refused: int = 0, output_resets: int = 0, jobs_requeued: int = 0,
                 reorder_skipped: int = 0) -> dict:
        """The serve report: integer counters (COUNTER_KEYS) plus reasons and the latency summary."""
        c = self.sync.counters
        sync_dropped = c.exposures_dropped
        out = {
            "messages": c.messages, "malformed": c.malformed, "gaps": c.gaps, "late": c.late,
            "duplicates": c.duplicates, "out_of_order": c.out_of_order, "restarts": c.restarts,
            "exposures_received": c.exposures_received,
            "exposures_done": sink.exposures_done,
            "exposures_skipped": c.exposures_skipped,
            "exposures_dropped": (sync_dropped + self.queue.dropped + self.queue.warmup_dropped + worker_lost
                                  + reorder_skipped),
            "exposures_failed": int(failed),
            "exposures_abandoned": int(abandoned),
            "exposures_pending_at_exit": self.sync.pending_count,
            "windows_ready": c.exposures_done,
            "sync_exposures_dropped": sync_dropped,
            "job_queue_dropped": self.queue.dropped,
            "warmup_dropped": self.queue.warmup_dropped,
            "worker_lost": int(worker_lost),
            "spike_frames_received": c.spike_frames_received,
            "spike_frames_dropped": c.spike_frames_dropped,
            "output_messages": sink.output_messages,
            "output_dropped": sink.output_dropped,
            "frames_saved": int(frames_saved),
            "frames_save_failed": int(frames_save_failed),
            "out_of_domain_exposures": sink.out_of_domain_exposures,
            "spike_geometry_mismatches": self.spike_geometry_mismatches,
            "results_rejected": int(results_rejected),
            "subscriptions_refused": int(subscriptions_refused),
            "output_resets": int(output_resets),
            "jobs_requeued": int(jobs_requeued),
            "reorder_skipped": int(reorder_skipped),
        }
        assert set(out) == set(COUNTER_KEYS)  # internal invariant, not user input
        out["malformed_by_reason"] = dict(c.malformed_by_reason)
        out["skipped_by_reason"] = dict(c.skipped_by_reason)
        out["job_queue_max_depth"] = self.queue.max_depth
        out["job_queue_peak_bytes"] = self.queue.peak_bytes
        out["peak_queued_bytes"] = self.peak_queued_bytes
        out["peak_rss_bytes"] = _peak_rss_bytes()
        declared = self.declared_spike_shape
        out["spike_geometry_declared"] = None if declared is None else f"{declared[0]}x{declared[1]}"
        out["spike_geometry_seen"] = [f"{h}x{w}" for h, w in self.spike_geometries_seen]
        out["latency"] = sink.latency.summary()
        return out


def _peak_rss_bytes() -> int | None:
    """The process's peak resident set size (None where the OS does not say)."""
    try:
        import resource
        import sys

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    except (ImportError, OSError):
        return None
    return int(peak) if sys.platform == "darwin" else int(peak) * 1024  # bytes on macOS, KiB on Linux
