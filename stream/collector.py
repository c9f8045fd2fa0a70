"""Scale-out: jobs to worker processes by credit, results re-ordered by exposure.

When a user needs it: one CPU inference of a full-size exposure takes longer than the time between
exposures (SPEC §3: 0.6-1.3 s per 720p frame on 2 cores), so one machine drops most exposures. Windows
are self-contained jobs (:func:`spikereveal.stream.wire.encode_job`: spike frames, image, times), so
``serve --workers N`` runs N local worker processes, and ``spikereveal worker --jobs E1 --results E2``
on other machines adds remote ones. Dispatch is credit-based (:mod:`spikereveal.stream.dispatch`): a job
goes only to a worker with a free credit, the rest wait in the bounded JobQueue (which drops per its policy),
so a slow worker holds only its own credits. Results come back in any order; :class:`ResultCollector`
releases them in dispatch order (= exposure order), so viewers and ``frames.csv`` see exposures in time order.

Re-ordering is bounded (``scale_out.reorder_wait_s``, ``reorder_max_results``). A slow worker holding
exposure n while faster ones finish n+1..n+m makes their results wait; once the oldest waiting result has
waited ``reorder_wait_ns``, or more than ``reorder_max_results`` results wait, serve skips ahead: the
unfinished exposures before them are dropped (``reorder_skipped``) and what waited goes out. A skipped
exposure's late result is discarded when it comes (it would be out of order); until then it still holds its
worker's credit, so a slow worker is not sent more than it can take.

Lost workers. Each worker acknowledges a job as it takes it and sends a heartbeat every
``wire.HEARTBEAT_INTERVAL_S`` (:func:`~spikereveal.stream.wire.encode_heartbeat`); serve knows which worker
holds which job from the moment it sends it. A worker is lost when serve sees its process exit (local
workers: at once, through the process sentinel) or when it is silent for ``heartbeat_timeout_ns`` (remote
ones). Then each unfinished job it held is, by the lost-job policy (``scale_out.lost_job_policy``), either
re-queued once (``requeue_once``: when it was first sent less than ``requeue_max_age_ns`` ago and was not
re-queued before; it keeps its place in the publishing order and goes to the next worker with a free credit
before any new job; counted in ``jobs_requeued``) or dropped (``worker_lost``); what waited behind a dropped
one goes out at once. A job with no result ``result_timeout_ns`` after it was sent is dropped too
(``worker_lost``; the backstop for a worker that takes jobs and never answers).

Every result is checked against the job it claims to answer (:func:`result_matches`): a result for no job
in flight, a second one, or one whose K, image size or timestamps differ from its job's is dropped and
counted in ``rejected`` (``results_rejected``; ``rejected_by_reason``); the job stays in flight for its
real result (or its timeout). Worker ids in acknowledgements and results are what the worker says; the
sender itself is checked by CURVE (only allow-listed workers reach the result port), not here.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import threading
from collections import OrderedDict, deque
from dataclasses import dataclass

import numpy as np

from spikereveal.stream.sync import ReadyJob
from spikereveal.engines.inputs import input_shape_for
from spikereveal.stream.stage import ExposureResult
from spikereveal.stream.wire import WireResult

__all__ = ["ResultCollector", "InFlight", "result_matches", "start_local_workers", "stop_local_workers"]

logger = logging.getLogger(__name__)

#: how many jobs the collector remembers whose result is no longer wanted (skipped ahead of, or answered by
#: another worker) while a worker still computes them
_MAX_UNWANTED = 4096


@dataclass(eq=False)
class InFlight:
    job: ReadyJob
    dispatched_ns: int  # first sent (the exposure's "started" time in the latency rows)
    sent_ns: int = 0  # last sent: the result timeout runs from here
    result: WireResult | None = None
    completed_ns: int | None = None  # when its result came back: the reorder wait runs from here
    order: int = 0  # dispatch order
    worker_id: int | None = None  # the worker it was sent to (None: waiting to be sent again)
    route: bytes | None = None  # that worker's connection (dispatch.Route.identity)
    requeued: bool = False  # re-queued once already (its worker was lost)
    acknowledged: bool = False  # its worker said it took it


def result_matches(job: ReadyJob, wire: WireResult) -> str | None:
    """None when ``wire`` is a plausible answer to ``job``, else the reason it is not (one word, for counters).

    Compared: (epoch, exposure id), K, the sharp frames' height and width (the network grid of the job's spike
    geometry, which is also the RGB frame's size without a calibration) and the output timestamps (the job's
    window's, on the spike clock, which the worker stamps). A failure marker carries no frames: only
    its id and K are compared.
    """
    k = int(job.centers.shape[0])
    if wire.key != job.key:
        return "exposure_id"
    if wire.k != k:
        return "k"
    if not wire.ok:
        return None
    shape = input_shape_for(k, job.spike_height, job.spike_width)
    sharp = wire.sharp
    size = (sharp.shape[1], sharp.shape[2]) if sharp.dtype == np.uint8 else (sharp.shape[2], sharp.shape[3])
    if sharp.shape[0] != k or size != (shape.height, shape.width):
        return "size"
    expected = np.asarray(job.timestamps_ns, dtype=np.int64)  # the window's, on the spike clock
    if wire.timestamps_ns is None or not np.array_equal(np.asarray(wire.timestamps_ns), expected):
        return "timestamps"
    return None


class ResultCollector:
    """Tracks dispatched jobs and releases their results in dispatch order (pure: times are passed in).

    ``heartbeat_timeout_ns``: a worker heard from before and silent this long is lost (None: never).
    ``reorder_wait_ns`` / ``reorder_max_results``: the re-ordering bound (None: wait until the result timeout /
    no count bound). ``requeue_max_age_ns``: a lost worker's job first sent less than this long ago is re-queued
    once (None: the ``drop`` policy, never re-queued)."""

    def __init__(self, result_timeout_ns: int, heartbeat_timeout_ns: int | None = None,
                 reorder_wait_ns: int | None = None, reorder_max_results: int | None = None,
                 requeue_max_age_ns: int | None = None):
        self.result_timeout_ns = result_timeout_ns
        self.heartbeat_timeout_ns = heartbeat_timeout_ns
        self.reorder_wait_ns = reorder_wait_ns
        self.reorder_max_results = reorder_max_results
        self.requeue_max_age_ns = requeue_max_age_ns
        self._in_flight: OrderedDict[tuple[int, int], InFlight] = OrderedDict()  # (epoch, exposure id) ->
        self._resend: deque[tuple[int, int]] = deque()  # re-queued jobs waiting for a worker, in dispatch order
        # jobs a worker still computes whose result is no longer wanted (skipped ahead of, or answered by
        # another worker): they hold their worker's credit until the result comes or result_timeout_ns passes
        self._unwanted: OrderedDict[tuple[int, int], InFlight] = OrderedDict()
        self._held: dict[bytes, int] = {}  # route -> jobs it holds (unanswered, wanted or not)
        self._order = 0
        self.last_heard: dict[int, int] = {}  # live workers: id -> when last heard (ns)
        self.lost_workers: list[int] = []
        self._gone: set[int] = set()  # local workers whose process exited: stale beats do not revive them
        self.lost = 0  # worker_lost: jobs dropped because their worker was lost or never answered
        self.requeued = 0  # jobs_requeued: a lost worker's jobs sent again
        self.reorder_skipped = 0  # unfinished jobs dropped because results behind them waited too long
        self.failed = 0
        self.unexpected = 0  # results for jobs not in flight (late after a timeout, or duplicates)
        self.rejected = 0  # results dropped unpublished: not in flight, duplicate, malformed or not matching
        self.rejected_by_reason: dict[str, int] = {}

    def reject(self, reason: str, exposure_id: int | None = None) -> None:
        """Count a result that is dropped (``reason``: not_in_flight, duplicate, malformed, version, or a
        mismatch)."""
        self.rejected += 1
        count = self.rejected_by_reason[reason] = self.rejected_by_reason.get(reason, 0) + 1
        log = logger.warning if count == 1 else logger.debug
        log("a worker result (exposure %s) was rejected: %s; counted in results_rejected (first of each reason "
            "logged)", "?" if exposure_id is None else exposure_id, reason)

    @property
    def in_flight(self) -> int:
        """Jobs sent and not yet released (at a worker, waiting to be sent again, or answered and waiting for
        earlier exposures)."""
        return len(self._in_flight)

    @property
    def waiting_results(self) -> int:
        """Results that came back and wait for earlier exposures (the re-ordering buffer)."""
        return sum(1 for entry in self._in_flight.values() if entry.result is not None)

    # -- credits: what each worker connection holds --------------------------------------------------------
    def held(self, route: bytes) -> int:
        """Jobs the connection ``route`` holds now (sent, not answered; skipped ones included)."""
        return self._held.get(route, 0)

    def _hold(self, entry: InFlight, worker_id: int | None, route: bytes | None) -> None:
        entry.worker_id, entry.route = worker_id, route
        if route is not None:
            self._held[route] = self._held.get(route, 0) + 1

    def _unhold(self, entry: InFlight) -> None:
        route = entry.route
        if route is not None:
            left = self._held.get(route, 0) - 1
            if left > 0:
                self._held[route] = left
            else:
                self._held.pop(route, None)
        entry.route = None

    # -- dispatch ------------------------------------------------------------------------------------------
    def dispatched(self, job: ReadyJob, now_ns: int, worker_id: int | None = None,
                   route: bytes | None = None) -> None:
        """``job`` was sent to ``worker_id`` over the connection ``route`` (it holds one of its credits)."""
        self._order += 1
        entry = InFlight(job, now_ns, sent_ns=now_ns, order=self._order)
        self._hold(entry, worker_id, route)
        self._in_flight[job.key] = entry

    def next_resend(self) -> ReadyJob | None:
        """The oldest re-queued job waiting for a worker (serve sends it before any new one), or None."""
        while self._resend:
            entry = self._in_flight.get(self._resend[0])
            if entry is not None and entry.result is None and entry.worker_id is None:
                return entry.job
            self._resend.popleft()  # released or skipped meanwhile
        return None

    def resent(self, key: tuple[int, int], now_ns: int, worker_id: int, route: bytes | None = None) -> None:
        """The re-queued job ``key`` (from :meth:`next_resend`) was sent to ``worker_id`` over ``route``."""
        entry = self._in_flight[key]
        if self._resend and self._resend[0] == key:
            self._resend.popleft()
        entry.sent_ns = now_ns
        entry.acknowledged = False
        self._hold(entry, worker_id, route)

    def unsent(self, key: tuple[int, int]) -> None:
        """The send of ``key`` failed (its worker's connection was gone): it waits for the next worker with a
        free credit, first in line, without counting as re-queued."""
        entry = self._in_flight.get(key)
        if entry is None:
            return
        self._unhold(entry)
        entry.worker_id = None
        if key not in self._resend:
            self._resend.appendleft(key)

    # -- which worker holds what, and which workers are alive ------------------------------------------------
    def heard(self, worker_id: int, now_ns: int) -> None:
        """A ready announcement, heartbeat, acknowledgement or result from ``worker_id``."""
        if worker_id in self._gone:
            return
        if worker_id in self.lost_workers:  # it came back (a remote worker restarted): a new life
            self.lost_workers.remove(worker_id)
        self.last_heard[worker_id] = now_ns

    def is_gone(self, worker_id: int) -> bool:
        """``worker_id`` was a local worker whose process exited: it never comes back."""
        return worker_id in self._gone

    def taken(self, worker_id: int, key: tuple[int, int], now_ns: int) -> None:
        """``worker_id`` acknowledged the job ``key`` = (epoch, exposure id)."""
        self.heard(worker_id, now_ns)
        entry = self._in_flight.get(key)
        if entry is not None and entry.worker_id == worker_id:
            entry.acknowledged = True

    def worker_lost(self, worker_id: int, reason: str, now_ns: int, exited: bool = False) -> int:
        """``worker_id`` is lost (``exited``: its process is known to have ended; it cannot come back). Its
        unfinished jobs are re-queued or dropped by the lost-job policy; returns how many were dropped
        (``worker_lost``). ``release`` then hands out what waited behind them."""
        self.last_heard.pop(worker_id, None)
        if worker_id not in self.lost_workers:
            self.lost_workers.append(worker_id)
        if exited:
            self._gone.add(worker_id)
        dropped = requeued = 0
        for key, entry in list(self._in_flight.items()):
            if entry.result is not None or entry.worker_id != worker_id:
                continue
            self._unhold(entry)
            entry.worker_id = None
            age = now_ns - entry.dispatched_ns
            if self.requeue_max_age_ns is not None and not entry.requeued and age < self.requeue_max_age_ns:
                entry.requeued = True
                self._resend.append(key)
                requeued += 1
            else:
                del self._in_flight[key]
                dropped += 1
        for key, entry in list(self._unwanted.items()):
            if entry.worker_id == worker_id:
                self._unhold(entry)
                del self._unwanted[key]
        self.lost += dropped
        self.requeued += requeued
        if requeued:  # keep the re-queued ones in dispatch order
            self._resend = deque(sorted(set(self._resend), key=lambda k: self._in_flight[k].order
                                        if k in self._in_flight else -1))
        logger.warning("worker %d lost (%s): of the exposures it held %d re-queued (jobs_requeued), %d dropped "
                       "(worker_lost); the results behind them are released", worker_id, reason, requeued, dropped)
        return dropped

    def silent_workers(self, now_ns: int) -> list[int]:
        """Workers not heard from for ``heartbeat_timeout_ns`` (the caller declares them lost)."""
        if self.heartbeat_timeout_ns is None:
            return []
        return [w for w, heard in self.last_heard.items() if now_ns - heard >= self.heartbeat_timeout_ns]

    # -- results -------------------------------------------------------------------------------------------
    def _forget_unwanted(self, key: tuple[int, int]) -> bool:
        entry = self._unwanted.pop(key, None)
        if entry is None:
            return False
        self._unhold(entry)
        return True

    def _remember_unwanted(self, key: tuple[int, int], entry: InFlight) -> None:
        if entry.route is None:
            return  # at no worker: nothing will come back for it
        self._unwanted[key] = entry
        while len(self._unwanted) > _MAX_UNWANTED:
            _, oldest = self._unwanted.popitem(last=False)
            self._unhold(oldest)

    def received(self, result: WireResult, now_ns: int) -> list[tuple[ReadyJob, ExposureResult]]:
        self.heard(result.worker_id, now_ns)
        entry = self._in_flight.get(result.key)
        if entry is None or entry.result is not None:
            if (entry is None or result.key in self._unwanted) and self._forget_unwanted(result.key):
                logger.debug("exposure %d: a late result (skipped ahead of, or answered elsewhere) was discarded",
                             result.exposure_id)
                return self.release(now_ns)
            self.unexpected += 1
            self.reject("not_in_flight" if entry is None else "duplicate", result.exposure_id)
            return self.release(now_ns)
        reason = result_matches(entry.job, result)
        if reason is not None:
            self.reject(reason, result.exposure_id)  # the job waits for its real result (or its timeout)
            return self.release(now_ns)
        holder = (entry.worker_id, entry.route)
        self._unhold(entry)
        if holder[0] is not None and holder[0] != result.worker_id:
            # answered by the worker it was sent to before being re-queued: the current holder's copy is unwanted
            copy = InFlight(entry.job, entry.dispatched_ns, sent_ns=entry.sent_ns, order=entry.order)
            self._hold(copy, *holder)
            self._remember_unwanted(result.key, copy)
        entry.worker_id = None
        entry.result = result
        entry.completed_ns = now_ns
        return self.release(now_ns)

    def _should_skip(self, now_ns: int) -> bool:
        """Results wait behind an unfinished head: skip it when the oldest has waited ``reorder_wait_ns`` or more
        than ``reorder_max_results`` wait."""
        waiting = [entry.completed_ns for entry in self._in_flight.values() if entry.result is not None]
        if not waiting:
            return False
        if self.reorder_max_results is not None and len(waiting) > self.reorder_max_results:
            return True
        return self.reorder_wait_ns is not None and now_ns - min(waiting) >= self.reorder_wait_ns

    def release(self, now_ns: int) -> list[tuple[ReadyJob, ExposureResult]]:
        """Results ready to deliver, oldest dispatch first; times out a stuck head and skips ahead of one that
        makes results wait longer than the reorder bound."""
        for key, entry in list(self._unwanted.items()):  # a late result that never comes frees its credit
            if now_ns - entry.sent_ns >= self.result_timeout_ns:
                self._forget_unwanted(key)
        out = []
        while self._in_flight:
            key, entry = next(iter(self._in_flight.items()))
            if entry.result is None:
                if now_ns - entry.sent_ns >= self.result_timeout_ns:
                    self.lost += 1
                    logger.warning("exposure %d: no result from the workers %.1f s after it was sent; counted in "
                                   "worker_lost", key[1], self.result_timeout_ns / 1e9)
                    del self._in_flight[key]
                    self._unhold(entry)  # its worker's credit is free again; a late answer counts as rejected
                    continue
                if self._should_skip(now_ns):
                    self.reorder_skipped += 1
                    if self.reorder_skipped == 1:
                        logger.warning("exposure %d: results behind it waited longer than the reorder bound "
                                       "(scale_out.reorder_wait_s / reorder_max_results): skipped ahead, counted "
                                       "in reorder_skipped (first one logged)", key[1])
                    del self._in_flight[key]
                    self._remember_unwanted(key, entry)  # still held by its worker until it answers
                    continue
                break
            del self._in_flight[key]
            wire = entry.result
            if not wire.ok:
                self.failed += 1
                continue
            job = entry.job
            out.append((job, ExposureResult(
                exposure_id=wire.exposure_id, timestamps_ns=wire.timestamps_ns, sharp=wire.sharp,
                received_ns=int(job.received_ns), ready_ns=int(job.ready_ns),
                started_ns=entry.dispatched_ns, prepare_ns=wire.prepare_ns, inference_ns=wire.inference_ns,
                postprocess_ns=wire.postprocess_ns, finished_ns=now_ns, out_of_domain=wire.out_of_domain,
                epoch=int(job.epoch),
            )))
        return out

    def abandon(self) -> int:
        """Forget every job still out (at shutdown); returns how many."""
        count = len(self._in_flight)
        self._in_flight.clear()
        self._resend.clear()
        self._unwanted.clear()
        self._held.clear()
        return count


# -- local worker processes --------------------------------------------------------------------------------------
def _worker_process_main(job_endpoint, result_endpoint, worker_id, engine, spike_shape, k, calibration_path,
                         output_pixel_format, onnx_dir, log_level, keys=None, credits=1):
    """Entry point of a local worker process (spawned: a fresh interpreter, nothing inherited)."""
    logging.basicConfig(level=log_level, format=f"%(levelname)s worker{worker_id} %(name)s: %(message)s")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    from spikereveal.errors import SpikeRevealError
    from spikereveal.stream.worker import worker_main

    work_dir = os.path.join(onnx_dir, f"worker{worker_id}")  # exports of concurrent workers must not collide
    try:
        worker_main(job_endpoint, result_endpoint, engine, worker_id=worker_id, spike_shape=spike_shape, k=k,
                    calibration_path=calibration_path, output_pixel_format=output_pixel_format, work_dir=work_dir,
                    stop=stop, keys=keys, credits=credits)
    except SpikeRevealError as exc:  # e.g. the engine cannot load: the reason, no traceback; serve sees the exit
        logging.getLogger(__name__).error("%s", exc)
        raise SystemExit(2) from None


def start_local_workers(count: int, job_endpoint: str, result_endpoint: str, engine, spike_shape, k: int,
                        calibration_path, output_pixel_format: str, onnx_dir: str, threads_per_worker: int,
                        keys=None, first_id: int = 0, credits: int = 1):
    """Spawn ``count`` worker processes (ids ``first_id`` on) connected to the two endpoints (``keys``: their
    ClientKeys when the endpoints are CURVE servers; ``credits``: jobs each may hold at once); returns the
    Process objects."""
    from dataclasses import replace

    context = multiprocessing.get_context("spawn")
    engine = replace(engine, threads=engine.threads or threads_per_worker)
    processes = []
    for worker_id in range(first_id, first_id + count):
        process = context.Process(
            target=_worker_process_main, name=f"spikereveal-worker-{worker_id}", daemon=True,
            args=(job_endpoint, result_endpoint, worker_id, engine, spike_shape, k, calibration_path,
                  output_pixel_format, onnx_dir, logging.getLogger().level, keys, credits),
        )
        process.start()
        processes.append(process)
    return processes


def stop_local_workers(processes, timeout_s: float = 5.0) -> None:
    """SIGTERM each worker, wait, then kill what is left (only the processes we started)."""
    for process in processes:
        if process.is_alive():
            process.terminate()
    for process in processes:
        process.join(timeout_s)
        if process.is_alive():
            process.kill()
            process.join(1.0)
