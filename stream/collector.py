"""Scale-out: jobs to worker processes over PUSH/PULL, results re-ordered by exposure.

When a user needs it: one CPU inference of a full-size exposure takes longer than the time between
exposures (SPEC §3: 0.6-1.3 s per 720p frame on 2 cores), so one machine drops most exposures. Windows
are self-contained jobs (:func:`spikereveal.stream.worker.encode_job`: spike frames, image, times), so
``serve --workers N`` runs N local worker processes, and ``spikereveal worker --jobs E1 --results E2``
on other machines adds remote ones. Results come back in any order; :class:`ResultCollector` releases
them in dispatch order (= exposure order), so viewers and ``frames.csv`` see exposures in time order.

Bounds: at most ``slots`` jobs are out at workers; the rest wait in the JobQueue (which drops per its
policy). A job whose result has not come back after ``result_timeout_ns`` is counted lost (a worker died,
restarted, or takes jobs and never answers) and the results behind it are released.

Every result is checked against the job it claims to answer (:func:`result_matches`): a result for no job
in flight, a second one, or one whose K, image size or timestamps differ from its job's is dropped and
counted in ``rejected`` (``results_rejected``; ``rejected_by_reason``); the job stays in flight for its
real result (or its timeout). PUSH does not tell serve which worker took a job, so the sender itself is
checked by CURVE (only allow-listed workers reach the result port), not here.
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

from spikereveal.kernels.timing import output_timestamps
from spikereveal.stream.sync import ReadyJob
from spikereveal.stream.worker import ExposureResult, WireResult, runner_shape_for

__all__ = ["ResultCollector", "InFlight", "result_matches", "start_local_workers", "stop_local_workers"]

logger = logging.getLogger(__name__)


@dataclass(eq=False)
class InFlight:
    job: ReadyJob
    dispatched_ns: int
    result: WireResult | None = None


def result_matches(job: ReadyJob, wire: WireResult) -> str | None:
    """None when ``wire`` is a plausible answer to ``job``, else the reason it is not (one word, for counters).

    Compared: exposure id, K, the sharp frames' height and width (the network grid of the job's spike
    geometry, which is also the RGB frame's size without a calibration) and the output timestamps (what the
    worker computes from the job's exposure start and duration). A failure marker carries no frames: only
    its id and K are compared.
    """
    k = int(job.centers.shape[0])
    if wire.exposure_id != int(job.exposure_id):
        return "exposure_id"
    if wire.k != k:
        return "k"
    if not wire.ok:
        return None
    shape = runner_shape_for(k, job.spike_height, job.spike_width)
    sharp = wire.sharp
    size = (sharp.shape[1], sharp.shape[2]) if sharp.dtype == np.uint8 else (sharp.shape[2], sharp.shape[3])
    if sharp.shape[0] != k or size != (shape.height, shape.width):
        return "size"
    expected = output_timestamps(int(job.start_ns), int(job.duration_ns), k)
    if wire.timestamps_ns is None or not np.array_equal(np.asarray(wire.timestamps_ns), expected):
        return "timestamps"
    return None


class ResultCollector:
    """Tracks dispatched jobs and releases their results in dispatch order (pure: times are passed in)."""

    def __init__(self, slots: int, result_timeout_ns: int):
        self.slots = slots
        self.result_timeout_ns = result_timeout_ns
        self._in_flight: OrderedDict[int, InFlight] = OrderedDict()
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
        self._in_flight[int(job.exposure_id)] = InFlight(job, now_ns)

    def received(self, result: WireResult, now_ns: int) -> list[tuple[ReadyJob, ExposureResult]]:
        entry = self._in_flight.get(result.exposure_id)
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
            exposure_id, entry = next(iter(self._in_flight.items()))
            if entry.result is None:
                if now_ns - entry.dispatched_ns < self.result_timeout_ns:
                    break
                self.lost += 1
                logger.warning("exposure %d: no result from the workers after %.1f s; counted lost", exposure_id,
                               self.result_timeout_ns / 1e9)
                del self._in_flight[exposure_id]
                continue
            del self._in_flight[exposure_id]
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
    from spikereveal.stream.serve import make_runner_factory
    from spikereveal.stream.worker import run_worker

    calibration = None
    if calibration_path is not None:
        from spikereveal.calibration.store import read_calibration

        calibration = read_calibration(calibration_path)
    work_dir = os.path.join(onnx_dir, f"worker{worker_id}")  # exports of concurrent workers must not collide
    run_worker(job_endpoint, result_endpoint, make_runner_factory(engine, work_dir), worker_id=worker_id,
               spike_shape=spike_shape, k=k, calibration=calibration, output_pixel_format=output_pixel_format,
               stop=stop, keys=keys)


def start_local_workers(count: int, job_endpoint: str, result_endpoint: str, engine, spike_shape, k: int,
                        calibration_path, output_pixel_format: str, onnx_dir: str, threads_per_worker: int,
                        keys=None):
    """Spawn ``count`` worker processes connected to the two endpoints (``keys``: their ClientKeys when the
    endpoints are CURVE servers); returns the Process objects."""
    from dataclasses import replace

    context = multiprocessing.get_context("spawn")
    engine = replace(engine, threads=engine.threads or threads_per_worker)
    processes = []
    for worker_id in range(count):
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
