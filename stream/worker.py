"""A worker process: asks serve for jobs, runs them through the per-exposure stage, pushes results.

:func:`run_worker` is the loop (``spikereveal worker`` and serve's local worker processes);
:func:`worker_main` assembles a worker from an EngineConfig, a calibration file and a work folder (the one
place both entry points build one). The worker's DEALER announces it to serve's job ROUTER with its credits
(how many jobs it may hold at once; serve sends no more, and each result hands one back), again every
heartbeat interval while it is idle; serve's welcome carries serve's wire version, and a worker of another
version stops with an error saying so. Every job taken is acknowledged at once and a heartbeat goes out
every ``HEARTBEAT_INTERVAL_S``, so serve can tell a dead or silent worker and release exactly its jobs.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import Callable

from spikereveal.engines.inputs import input_shape_for
from spikereveal.errors import SpikeRevealError
from spikereveal.stream.protocol import ProtocolError, Reason
from spikereveal.stream.stage import EngineLoadError, load_processor
from spikereveal.stream.wire import (
    HEARTBEAT_INTERVAL_S,
    JOB_VERSION,
    decode_job,
    decode_welcome,
    encode_heartbeat,
    encode_ready,
    encode_result,
)

__all__ = ["run_worker", "worker_main", "WorkerStats"]

logger = logging.getLogger(__name__)


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


@dataclass
class WorkerStats:
    jobs: int = 0
    failed: int = 0
    malformed: int = 0


def run_worker(job_endpoint: str, result_endpoint: str, runner_factory: Callable, worker_id: int = 0,
               spike_shape: tuple[int, int] | None = None, k: int | None = None, calibration=None,
               output_pixel_format: str = "bgr8", stop: threading.Event | None = None,
               max_jobs: int | None = None, heartbeat_interval_s: float = HEARTBEAT_INTERVAL_S,
               keys=None, credits: int = 1) -> WorkerStats:
    """Take jobs from ``job_endpoint``, push results to ``result_endpoint`` until ``stop`` (or ``max_jobs``).

    ``keys``: a ``security.ClientKeys`` (the worker's key pair and serve's public key) for a serve whose
    job/result ports are CURVE servers; without them such a serve never hands this worker a job.

    ``runner_factory(shape) -> unloaded Runner``. With ``spike_shape`` and ``k`` the runner loads before the
    worker announces itself; otherwise it announces at once and loads on the first job's geometry (and again
    if the geometry changes). ``credits``: how many jobs serve may send it at once (1: the one it runs; more
    keep the next ones on hand, so no round trip passes between jobs, but a slow worker then holds more).
    Every job taken is acknowledged at once on the result socket, and a heartbeat goes out every
    ``heartbeat_interval_s`` (its own thread), so serve can tell a dead or silent worker and release exactly
    its jobs. A welcome from a serve of another wire version raises ProtocolError (reason ``version``).
    """
    import zmq

    stop = stop or threading.Event()
    ready_message = encode_ready(worker_id, credits)  # validates credits
    context = zmq.Context()
    dealer = context.socket(zmq.DEALER)
    push = context.socket(zmq.PUSH)
    stats = WorkerStats()
    runner = processor = None
    heartbeat = None
    for socket in (dealer, push):
        socket.setsockopt(zmq.LINGER, 0)
        socket.setsockopt(zmq.IMMEDIATE, 1)  # only to a completed (authenticated) connection
    dealer.setsockopt(zmq.RCVHWM, credits + 4)  # serve sends at most `credits` jobs (and a welcome)
    try:
        if keys is not None:
            from spikereveal.stream.security import apply_client

            apply_client(dealer, keys)
            apply_client(push, keys)
        dealer.connect(job_endpoint)
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

        welcome = {"welcomed": False, "announced": 0.0, "since": time.monotonic(), "warned": False}

        def announce() -> None:
            """Tell serve this worker is here and its credits (idempotent): until serve answers at every poll
            round, then every heartbeat interval while idle (a restarted serve learns about it)."""
            now = time.monotonic()
            if welcome["welcomed"] and now - welcome["announced"] < heartbeat_interval_s:
                return
            welcome["announced"] = now
            try:
                dealer.send_multipart(ready_message, flags=zmq.NOBLOCK)
            except zmq.Again:  # no completed connection yet
                pass
            if not welcome["welcomed"] and not welcome["warned"] and now - welcome["since"] > 5.0:
                welcome["warned"] = True
                logger.warning("worker %d: serve's job port %s has not answered this worker for 5 s: is serve "
                               "running, is it the same spikereveal version (wire version %d; an older serve "
                               "never answers), and (with keys) is this worker's public key in serve's "
                               "--allow-keys folder and --server-key serve's public key?", worker_id, job_endpoint,
                               JOB_VERSION)

        def load(shape):
            nonlocal runner, processor
            if runner is not None:
                runner.close()
            processor = load_processor(runner_factory, shape, calibration, output_pixel_format)
            runner = processor.runner
            logger.info("worker %d ready: %s", worker_id, runner.describe())

        if spike_shape is not None and k is not None:
            load(input_shape_for(k, *spike_shape))
        poller = zmq.Poller()
        poller.register(dealer, zmq.POLLIN)
        while not stop.is_set() and (max_jobs is None or stats.jobs + stats.failed < max_jobs):
            announce()
            if not poller.poll(100):
                continue
            parts = dealer.recv_multipart(copy=False)
            answer = decode_welcome(parts)
            if answer is not None:
                version, granted = answer
                if version != JOB_VERSION:
                    raise ProtocolError(Reason.VERSION, f"serve at {job_endpoint} speaks wire version {version}, "
                                                        f"this worker {JOB_VERSION}: run the same spikereveal "
                                                        "version on serve and its workers")
                if not welcome["welcomed"]:
                    logger.info("worker %d: serve at %s took it, %d credit(s)", worker_id, job_endpoint, granted)
                welcome["welcomed"] = True
                continue
            try:
                job = decode_job(parts)
            except ProtocolError as exc:
                if exc.reason is Reason.VERSION:  # a serve of another version: stop with the reason
                    raise
                stats.malformed += 1
                logger.warning("malformed job dropped: %s", exc)
                continue
            send(encode_heartbeat(worker_id, job.key))  # "I hold this job"
            shape = input_shape_for(int(job.centers.shape[0]), job.spike_height, job.spike_width)
            if processor is None or processor.shape != shape:
                try:
                    load(shape)
                except Exception as exc:  # noqa: BLE001 final: report this job failed and stop, do not retry
                    stats.failed += 1
                    send(encode_result(None, worker_id, job.exposure_id, int(job.centers.shape[0]), job.epoch))
                    raise EngineLoadError(f"worker {worker_id}: the inference engine could not be loaded for "
                                          f"{shape.width}x{shape.height}, K={shape.k}: {exc}") from exc
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
        dealer.close(linger=0)
        push.close(linger=0)
        context.term()
    return stats


def worker_main(job_endpoint: str, result_endpoint: str, engine, worker_id: int = 0,
                spike_shape: tuple[int, int] | None = None, k: int | None = None, calibration_path=None,
                output_pixel_format: str = "bgr8", work_dir: str | os.PathLike = ".",
                stop: threading.Event | None = None, keys=None, credits: int = 1) -> WorkerStats:
    """A worker assembled from an ``EngineConfig`` (``engine``), an optional rig calibration file and a work
    folder for its ONNX exports, then :func:`run_worker` until ``stop``."""
    from spikereveal.engines.choice import runner_factory

    calibration = None
    if calibration_path is not None:
        from spikereveal.calibration.store import read_calibration

        calibration = read_calibration(calibration_path)
    return run_worker(job_endpoint, result_endpoint, runner_factory(engine.choice(), work_dir),
                      worker_id=worker_id, spike_shape=spike_shape, k=k, calibration=calibration,
                      output_pixel_format=output_pixel_format, stop=stop, keys=keys, credits=credits)
