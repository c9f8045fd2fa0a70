"""Scale-out: jobs to worker processes over PUSH/PULL, results re-ordered by exposure.

When a user needs it: one CPU inference of a full-size exposure takes longer than the time between
exposures (SPEC §3: 0.6-1.3 s per 720p frame on 2 cores), so one machine drops most exposures. Windows
are self-contained jobs (:func:`spikereveal.stream.wire.encode_job`: spike frames, image, times), so
``serve --workers N`` runs N local worker processes, and ``spikereveal worker --jobs E1 --results E2``
on other machines adds remote ones. Results come back in any order; :class:`ResultCollector` releases
them in dispatch order (= exposure order), so viewers and ``frames.csv`` see exposures in time order.

Bounds: at most ``slots`` jobs are out at workers; the rest wait in the JobQueue (which drops per its
policy). A job whose result has not come back after ``result_timeout_ns`` is counted lost (a worker died,
restarted, or takes jobs and never answers) and the results behind it are released.

Lost workers. Each worker acknowledges a job as it takes it and sends a heartbeat every
``wire.HEARTBEAT_INTERVAL_S`` (:func:`~spikereveal.stream.wire.encode_heartbeat`), so the collector
knows which worker holds which job. A worker is lost when serve sees its process exit (local workers:
at once, through the process sentinel) or when it is silent for ``heartbeat_timeout_ns`` (remote ones);
then exactly its unfinished jobs are counted lost (``worker_lost``) and what waited behind them is released.
A job dispatched but not yet acknowledged sits in some worker's ZeroMQ pipe; pipes are FIFO, so once every
live worker has acknowledged a job dispatched after it, it was in a lost worker's pipe and is lost too
(with no live worker left, at once); otherwise ``result_timeout_ns`` is the backstop.

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
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from spikereveal.stream.sync import ReadyJob
from spikereveal.engines.inputs import input_shape_for
from spikereveal.stream.stage import ExposureResult
from spikereveal.stream.wire import WireResult

__all__ = ["ResultCollector", "InFlight", "result_matches", "start_local_workers", "stop_local_workers"]

logger = logging.getLogger(__name__)


@dataclass(eq=False)
class InFlight:
    job: ReadyJob
    dispatched_ns: int
    result: WireResult | None = None
    order: int = 0  # dispatch order
    worker_id: int | None = None  # the worker that acknowledged it (None: not yet)


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

    ``heartbeat_timeout_ns``: a worker heard from before and silent this long is lost (None: never)."""

    def __init__(self, slots: int, result_timeout_ns: int, heartbeat_timeout_ns: int | None = None):
        self.slots = slots
        self.result_timeout_ns = result_timeout_ns
        self.heartbeat_timeout_ns = heartbeat_timeout_ns
        self._in_flight: OrderedDict[tuple[int, int], InFlight] = OrderedDict()  # (epoch, exposure id) ->
        self._order = 0
        self.last_heard: dict[int, int] = {}  # live workers: id -> when last heard (ns)
        self._last_taken: dict[int, int] = {}  # live workers: id -> dispatch order of the newest job it took
        self.lost_workers: list[int] = []
        self._gone: set[int] = set()  # local workers whose process exited: stale beats do not revive them
        self._lost_before = 0  # jobs dispatched before this order may sit in a lost worker's pipe
        self.lost = 0
        self.failed = 0
        self.unexpected = 0  # results for jobs not in flight (late after a timeout, or duplicates)
        self.rejected = 0  # results dropped unpublished: not in flight, duplicate, malformed or not matching
        self.rejected_by_reason: dict[str, int] = {}

    def reject(self, reason: str, exposure_id: int | None = None) -> None:
        """Count a result that is dropped (``reason``: not_in_flight, duplicate, malformed, or a mismatch)."""
        self.rejected += 1
        count = self.rejected_by_reason[reason] = self.rejected_by_reason.get(reason, 0) + 1
        log = logger.warning if count == 1 else logger.debug
        log("a worker result (exposure %s) was rejected: %s; counted in results_rejected (first of each reason "
            "logged)", "?" if exposure_id is None else exposure_id, reason)

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    @property
    def has_slot(self) -> bool:
        return len(self._in_flight) < self.slots

    def dispatched(self, job: ReadyJob, now_ns: int) -> None:
        self._order += 1
        self._in_flight[job.key] = InFlight(job, now_ns, order=self._order)

    # -- which worker holds what, and which workers are alive ------------------------------------------------
    def heard(self, worker_id: int, now_ns: int) -> None:
        """A ready announcement, heartbeat, acknowledgement or result from ``worker_id``."""
        if worker_id in self._gone:
            return
        if worker_id in self.lost_workers:  # it came back (a remote worker restarted): a new life
            self.lost_workers.remove(worker_id)
        self.last_heard[worker_id] = now_ns

    def taken(self, worker_id: int, key: tuple[int, int], now_ns: int) -> None:
        """``worker_id`` acknowledged the job ``key`` = (epoch, exposure id)."""
        self.heard(worker_id, now_ns)
        entry = self._in_flight.get(key)
        if entry is not None and worker_id in self._gone:  # a stale acknowledgement from an exited worker
            del self._in_flight[key]
            self.lost += 1
        elif entry is not None:
            entry.worker_id = worker_id
            self._last_taken[worker_id] = max(self._last_taken.get(worker_id, 0), entry.order)
            self._resolve_unacknowledged()

    def worker_lost(self, worker_id: int, reason: str, exited: bool = False) -> int:
        """``exited``: its process is known to have ended (it cannot come back). Count ``worker_id``'s unfinished jobs lost (and unacknowledged ones that can only have been in a lost
        worker's pipe); returns how many. ``release`` then hands out what waited behind them."""
        self.last_heard.pop(worker_id, None)
        self._last_taken.pop(worker_id, None)
        if worker_id not in self.lost_workers:
            self.lost_workers.append(worker_id)
        if exited:
            self._gone.add(worker_id)
        self._lost_before = self._order + 1
        before = self.lost
        for key, entry in list(self._in_flight.items()):
            if entry.result is None and entry.worker_id == worker_id:
                del self._in_flight[key]
                self.lost += 1
        self._resolve_unacknowledged()
        count = self.lost - before
        logger.warning("worker %d lost (%s): %d exposure(s) it held counted in worker_lost; the results behind "
                       "them are released", worker_id, reason, count)
        return count

    def _resolve_unacknowledged(self) -> None:
        for key, entry in list(self._in_flight.items()):
            if entry.result is not None or entry.worker_id is not None or entry.order >= self._lost_before:
                continue
            if all(self._last_taken.get(w, 0) > entry.order for w in self.last_heard):
                del self._in_flight[key]  # in no live worker's pipe: it went to a lost one
                self.lost += 1

    def silent_workers(self, now_ns: int) -> list[int]:
        """Workers not heard from for ``heartbeat_timeout_ns`` (the caller declares them lost)."""
        if self.heartbeat_timeout_ns is None:
            return []
        return [w for w, heard in self.last_heard.items() if now_ns - heard >= self.heartbeat_timeout_ns]

    def received(self, result: WireResult, now_ns: int) -> list[tuple[ReadyJob, ExposureResult]]:
        self.heard(result.worker_id, now_ns)
        entry = self._in_flight.get(result.key)
        if entry is None or entry.result is not None:
            self.unexpected += 1
            self.reject("not_in_flight" if entry is None else "duplicate", result.exposure_id)
            return self.release(now_ns)
        reason = result_matches(entry.job, result)
        if reason is not None:
            self.reject(reason, result.exposure_id)  # the job waits for its real result (or its timeout)
            return self.release(now_ns)
        entry.result = result
        return self.release(now_ns)

    def release(self, now_ns: int) -> list[tuple[ReadyJob, ExposureResult]]:
        """Results ready to deliver, oldest dispatch first; times out a stuck head."""
        out = []
        while self._in_flight:
            key, entry = next(iter(self._in_flight.items()))
            if entry.result is None:
                if now_ns - entry.dispatched_ns < self.result_timeout_ns:
                    break
                self.lost += 1
                logger.warning("exposure %d: no result from the workers after %.1f s; counted lost", key[1],
                               self.result_timeout_ns / 1e9)
                del self._in_flight[key]
                continue
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
        return count


# -- local worker processes --------------------------------------------------------------------------------------
def _worker_process_main(job_endpoint, result_endpoint, worker_id, engine, spike_shape, k, calibration_path,
                         output_pixel_format, onnx_dir, log_level, keys=None):
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
                    stop=stop, keys=keys)
    except SpikeRevealError as exc:  # e.g. the engine cannot load: the reason, no traceback; serve sees the exit
        logging.getLogger(__name__).error("%s", exc)
        raise SystemExit(2) from None


def start_local_workers(count: int, job_endpoint: str, result_endpoint: str, engine, spike_shape, k: int,
                        calibration_path, output_pixel_format: str, onnx_dir: str, threads_per_worker: int,
                        keys=None, first_id: int = 0):
    """Spawn ``count`` worker processes (ids ``first_id`` on) connected to the two endpoints (``keys``: their
    ClientKeys when the endpoints are CURVE servers); returns the Process objects."""
    from dataclasses import replace

    context = multiprocessing.get_context("spawn")
    engine = replace(engine, threads=engine.threads or threads_per_worker)
    processes = []
    for worker_id in range(first_id, first_id + count):
        process = context.Process(
            target=_worker_process_main, name=f"spikereveal-worker-{worker_id}", daemon=True,
            args=(job_endpoint, result_endpoint, worker_id, engine, spike_shape, k, calibration_path,
                  output_pixel_format, onnx_dir, logging.getLogger().level, keys),
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
