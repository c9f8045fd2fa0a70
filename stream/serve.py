"""``spikereveal serve``: the sockets and the receive loop around :class:`spikereveal.stream.graph.Pipeline`.

* Two SUB sockets connect to the rig's spike and RGB publishers; a PUB (XPUB, counting its drops) binds
  the output endpoint for sharp frames. One poller waits on all of them: no busy spin.
* Inference never runs in the receive loop: an inference thread (default) or worker processes
  (``scale_out``) take jobs from the bounded queue, so receiving never stalls behind the network. Workers
  get jobs by credit over a ROUTER (:mod:`spikereveal.stream.dispatch`) and push results to a PULL; the
  :class:`~spikereveal.stream.collector.ResultCollector` re-orders them (bounded) before publishing.
* The loop ends on ``stop`` (SIGINT/SIGTERM in the CLI), after ``exit_after_exposures`` published
  exposures, after ``idle_timeout_s`` without a camera message, or when inference fails. Shutdown
  policy: on an idle timeout (the stream ended) queued exposures are finished, for at most
  ``worker.drain_timeout_s``; otherwise the exposure in progress is finished and queued ones are
  counted in ``exposures_abandoned``. Exposures still waiting for spikes are ``exposures_pending_at_exit``.
  Every socket closes with linger 0.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable

from spikereveal.errors import ConfigError, SpikeRevealError
from spikereveal.stream.config import EngineConfig, ServeConfig
from spikereveal.engines.inputs import input_shape_for
from spikereveal.stream.graph import Pipeline
from spikereveal.stream.jobs import InferenceThread, JobQueue
from spikereveal.stream.sinks import FrameSaver, ResultSink
from spikereveal.stream.stage import LazyProcessor
from spikereveal.stream.stats import LatencyLog
from spikereveal.stream.sync import Synchroniser

__all__ = ["Server", "serve", "STOP_REASONS", "check_engine_source"]

logger = logging.getLogger(__name__)

STOP_REASONS = ("stopped", "exit_after", "idle_timeout", "error")
_MAX_BURST_MESSAGES = 64  # per socket per poll round, so one busy stream cannot starve the other
_WORKER_START_TIMEOUT_S = 300.0


def check_engine_source(engine: EngineConfig) -> None:
    """Refuse, before serving, a model file that cannot be the LDN: an ONNX whose inputs/outputs are not the
    LDN export's, a checkpoint that is not a spikereveal LDN checkpoint (typed errors saying what to pass).
    Geometry-dependent problems can only show at load time; they end the run at the first load."""
    if engine.onnx is not None:
        from spikereveal.engines.runners import INPUT_NAMES, OUTPUT_NAME, read_export_metadata

        path = Path(engine.onnx)
        read_export_metadata(path)  # a missing or unreadable file: ConfigError/FormatError naming it
        inputs, outputs = _onnx_io_names(path)
        if set(inputs) != set(INPUT_NAMES) or outputs != [OUTPUT_NAME]:
            raise ConfigError(f"{path} is not a spikereveal LDN export: its inputs are {inputs} -> {outputs}, the "
                              f"LDN's are {list(INPUT_NAMES)} -> {[OUTPUT_NAME]}; export the model with "
                              "'spikereveal export --model CKPT', or pass the checkpoint with --model")
    elif engine.model is not None:
        from spikereveal.engines.checkpoint import load_checkpoint

        load_checkpoint(engine.model, expected_kind="ldn")  # CheckpointError: what the file is and what to pass


def _onnx_io_names(path: Path) -> tuple[list[str], list[str]]:
    try:
        import onnx

        graph = onnx.load(str(path), load_external_data=False).graph
        initializers = {t.name for t in graph.initializer}
        return [i.name for i in graph.input if i.name not in initializers], [o.name for o in graph.output]
    except ImportError:
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return [i.name for i in session.get_inputs()], [o.name for o in session.get_outputs()]


def _connectable(endpoint: str) -> str:
    """A bound endpoint that a local peer can connect to (``tcp://0.0.0.0:p`` -> ``tcp://127.0.0.1:p``)."""
    return endpoint.replace("://0.0.0.0:", "://127.0.0.1:").replace("://*:", "://127.0.0.1:")


class Server:
    """One serve run. ``run(stop)`` blocks until a stop condition and returns the counters dict.

    ``runner_factory(shape) -> unloaded Runner`` replaces the engine config (tests pass fakes); with
    worker processes the engine config is used by each worker.
    """

    def __init__(self, config: ServeConfig, runner_factory: Callable | None = None, context=None,
                 clock_ns: Callable[[], int] = time.monotonic_ns):
        self.config = config
        self._runner_factory = runner_factory
        self._context = context
        self._clock_ns = clock_ns
        self.ready = threading.Event()  # set once subscribed and the engine (or workers) are up
        self.stopping = threading.Event()  # set once the loop ended and undrained jobs were abandoned
        self.output_endpoint: str | None = None
        self.stop_reason: str | None = None
        self.counters: dict | None = None
        self._ipc_dir: str | None = None
        self._sink: ResultSink | None = None
        self._local_workers: dict[int, object] = {}  # worker id -> live local process (sentinel in the poller)
        self._started_at: dict[int, float] = {}  # worker id -> time.monotonic() of its start
        self._spawn_worker = None  # worker id -> a new started local worker process (same endpoints and engine)
        self._all_processes: list = []  # every local worker started, stopped at exit
        self.workers_restarted = 0
        self._next_worker_id = 0
        self._fatal: str | None = None  # why the loop stopped with reason "error" (raised after the stats)
        self._queue: JobQueue | None = None
        self._processor: LazyProcessor | None = None
        self._output = None  # the GuardedPublisher of sharp frames
        self._routes = None  # dispatch.WorkerRoutes: the worker connections on the job ROUTER and their credits
        self._foreign_versions: set[int] = set()  # wire versions of other spikereveal versions seen (logged once)

    def latency_rows(self) -> list[dict]:
        """serve's per-exposure latency rows (``LatencyLog``: ms per part, with ``exposure_id``), in publish
        order; [] before ``run``."""
        sink = self._sink
        if sink is None:
            return []
        return sink.latency.snapshot()

    @property
    def exposures_done(self) -> int:
        """Exposures whose sharp frames were published so far (for progress displays; 0 before ``run``)."""
        sink = self._sink
        return 0 if sink is None else sink.exposures_done

    # -- setup ---------------------------------------------------------------------------------------------
    def _calibration(self):
        if self.config.calibration is None:
            return None
        from spikereveal.calibration.store import read_calibration

        calibration = read_calibration(self.config.calibration)
        shape = self.config.spike_shape
        if shape is not None and calibration.spike_shape != shape:
            raise ConfigError(f"the calibration {self.config.calibration} is for a {calibration.spike_shape} spike "
                              f"sensor, but the config says {shape}")
        return calibration

    def run(self, stop: threading.Event | None = None) -> dict:
        import zmq

        from spikereveal.stream import transport

        cfg = self.config
        stop = stop or threading.Event()
        if self._runner_factory is None:
            check_engine_source(cfg.engine)  # a wrong model file ends here, not at the first exposure
        own_context = self._context is None
        context = self._context or zmq.Context()
        authenticator = None
        calibration = self._calibration()
        to_spike_clock = calibration.exposure_on_spike_clock if calibration is not None and calibration.clock else None
        sync = Synchroniser(cfg.sync, exposure_to_spike_clock=to_spike_clock)
        queue = JobQueue(cfg.worker.queue_capacity_jobs, cfg.worker.when_full, cfg.worker.queue_max_bytes,
                         cfg.worker.warmup_queue_capacity_jobs)
        if cfg.spike_shape is None:  # the engine loads once the geometry is known: exposures wait meanwhile
            queue.begin_warmup()
        from spikereveal.stream.trace import create_recorder

        recorder = create_recorder(cfg.trace is not None, k=cfg.sync.k)
        pipeline = Pipeline(sync, queue, self._clock_ns, recorder=recorder, declared_spike_shape=cfg.spike_shape,
                            on_spike_geometry=lambda h, w: self._on_spike_geometry(h, w))
        self._queue = queue
        self._processor = None
        work_dir = Path(cfg.worker.save_dir) if cfg.worker.save_dir else None
        temp_dir = tempfile.mkdtemp(prefix="spikereveal-serve-") if work_dir is None else None
        work_dir = work_dir or Path(temp_dir)
        sockets: list = []
        saver = sink = processor = thread = None
        collector = None
        abandoned = 0
        error: BaseException | None = None  # what ended the run unexpectedly; re-raised after the stats are written
        try:
            server_keys = cfg.security.server
            if server_keys is not None:  # CURVE servers below admit only the allow-listed public keys
                from spikereveal.stream.security import start_authenticator

                authenticator = start_authenticator(context, server_keys,
                                                    admit_own_key=cfg.scale_out.workers > 0)
            saver = None
            if cfg.worker.save_dir is not None:
                saver = FrameSaver(cfg.worker.save_dir, cfg.worker.png_compression,
                                   cfg.worker.video_fps if cfg.worker.write_video else None)
            from spikereveal.stream.protocol import TOPICS, Kind

            output = transport.GuardedPublisher(
                context, cfg.output_endpoint, cfg.publish.send_hwm_messages, True, topics=(TOPICS[Kind.SHARP_FRAME],),
                max_subscriptions=cfg.publish.max_subscriptions,
                keys=server_keys if cfg.security.output_curve else None)
            self._output = output
            sockets.append(output)
            self.output_endpoint = output.endpoint
            from spikereveal.stream.security import is_loopback

            if not cfg.security.output_curve and not is_loopback(self.output_endpoint):
                logger.warning("the output %s is open to anyone who reaches it: give --curve-output (with "
                               "--secret-key/--allow-keys) to admit only allow-listed viewers", self.output_endpoint)
            sink = ResultSink(output.publish, saver, clock_ns=self._clock_ns,
                              latency=LatencyLog(), keep_blur_for_video=cfg.worker.write_video, recorder=recorder)
            self._sink = sink
            factory = self._runner_factory
            if factory is None:
                from spikereveal.engines.choice import runner_factory

                factory = runner_factory(cfg.engine.choice(), work_dir)
            k = cfg.sync.k

            def deliver(job, result):
                ingest_ns, sent_ns, slot = pipeline.job_info(job.key)
                sink.deliver(result, job, ingest_ns, sent_ns, slot)

            if not cfg.scale_out.distributed:
                processor = LazyProcessor(factory, calibration, cfg.worker.output_pixel_format)
                if cfg.spike_shape is not None:
                    processor.ensure(input_shape_for(k, *cfg.spike_shape))  # load before streaming starts
                self._processor = processor
                thread = InferenceThread(queue, processor, deliver).start()
            else:
                router, pull, collector = self._start_workers(context, factory, calibration, work_dir, stop)
                sockets += [router, pull]
            ingest = cfg.ingest
            spike_sub = transport.open_subscriber(context, cfg.spike_endpoint, receive_hwm=ingest.receive_hwm("spike"),
                                                  max_message_bytes=ingest.spike_max_message_bytes,
                                                  keys=cfg.security.rig)
            sockets.append(spike_sub)
            rgb_sub = transport.open_subscriber(context, cfg.rgb_endpoint, receive_hwm=ingest.receive_hwm("rgb"),
                                                max_message_bytes=ingest.rgb_max_message_bytes, keys=cfg.security.rig)
            sockets.append(rgb_sub)
            poller = zmq.Poller()
            for socket in (spike_sub, rgb_sub):
                poller.register(socket, zmq.POLLIN)
            if collector is not None:
                poller.register(pull, zmq.POLLIN)
                poller.register(router, zmq.POLLIN)  # workers' ready announcements (credits)
                for process in self._local_workers.values():  # a worker's exit wakes the loop at once
                    poller.register(process.sentinel, zmq.POLLIN)
            logger.info("serving: spikes %s, rgb %s -> %s", cfg.spike_endpoint, cfg.rgb_endpoint,
                        self.output_endpoint)
            self.ready.set()
            reason = self._loop(stop, poller, (spike_sub, rgb_sub), output, pipeline, sink, thread,
                                collector, router if collector else None, pull if collector else None, deliver)
            self.stop_reason = reason
            for socket in (spike_sub, rgb_sub):  # no more input
                poller.unregister(socket)
            if reason != "idle_timeout":  # not drained: what waits is abandoned at once
                abandoned = len(queue.clear())
            self.stopping.set()
            abandoned += self._shutdown(reason, queue, thread, collector, router if collector else None,
                                        pull if collector else None, poller, deliver)
        except BaseException as exc:  # the stats are still written (below), then it is re-raised
            error = exc
            self.stop_reason = "error"
            self.stopping.set()
            abandoned += len(queue.clear()) + (collector.abandon() if collector is not None else 0)
        finally:
            if thread is not None:
                thread.stop()
            if processor is not None:
                processor.close()
            if self._all_processes:
                from spikereveal.stream.collector import stop_local_workers

                stop_local_workers(self._all_processes)
            if sink is not None:
                sink.close()
            elif saver is not None:
                saver.close()
            for socket in sockets:
                socket.close(linger=0)
            if authenticator is not None:
                authenticator.stop()
            if own_context:
                context.term()
            for folder in (temp_dir, self._ipc_dir):
                if folder is not None:
                    shutil.rmtree(folder, ignore_errors=True)
        failed = (thread.failed if thread is not None else 0) + (collector.failed if collector is not None else 0)
        output = self._output
        counters = pipeline.counters(sink or ResultSink(None), failed=failed, abandoned=abandoned,
                                     worker_lost=collector.lost if collector is not None else 0,
                                     jobs_requeued=collector.requeued if collector is not None else 0,
                                     reorder_skipped=collector.reorder_skipped if collector is not None else 0,
                                     frames_saved=saver.frames_written if saver is not None else 0,
                                     frames_save_failed=saver.frames_failed if saver is not None else 0,
                                     results_rejected=collector.rejected if collector is not None else 0,
                                     subscriptions_refused=output.ledger.refused if output is not None else 0,
                                     output_resets=output.ledger.resets if output is not None else 0)
        if collector is not None:
            counters["results_rejected_by_reason"] = dict(collector.rejected_by_reason)
        counters["stop_reason"] = self.stop_reason
        counters["workers"] = cfg.scale_out.workers
        counters["workers_restarted"] = self.workers_restarted
        counters["engine"] = cfg.engine.engine
        if self._processor is not None and self._processor.runner_stats is not None:
            counters["engine_stats"] = self._processor.runner_stats  # e.g. triton: retries, timeouts, rejected
        if saver is not None:
            counters["save_failed_by_kind"] = dict(saver.failure_kinds)
        self.counters = counters
        try:
            if cfg.trace is not None:
                self._save_trace(recorder, counters)
        finally:  # the stats file is written on every exit path
            if cfg.stats_json:
                self._write_stats(Path(cfg.stats_json), counters)
        if error is not None:
            raise error
        if self._fatal is not None:
            raise SpikeRevealError(self._fatal)
        if thread is not None and thread.error is not None:
            raise SpikeRevealError(f"inference failed: {thread.error}") from thread.error
        return counters

    @staticmethod
    def _write_stats(path: Path, counters: dict) -> None:
        text = json.dumps(counters, indent=2, sort_keys=True) + "\n"
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
        except OSError as exc:  # a full disk must not turn a finished run into a traceback
            raise SpikeRevealError(f"cannot write the stats JSON {path}: {exc}; the counters were: "
                                   f"{json.dumps(counters, sort_keys=True)}") from exc

    def _on_spike_geometry(self, height: int, width: int) -> None:
        """The first spike block (or a new sensor size): load and warm the engine now, in the background, so
        it is ready before the first exposure's window completes; exposures that complete meanwhile wait in
        the job queue (warm-up capacity) instead of being dropped for capacity."""
        processor = self._processor
        if processor is None:  # worker processes load on their first job; the queue waits until a result
            return
        shape = input_shape_for(self.config.sync.k, height, width)
        current = processor.processor
        if current is not None and current.shape == shape:
            return
        self._queue.begin_warmup()

        def done(error):
            if error is not None:
                self._fatal = str(error)
            self._queue.end_warmup()

        processor.preload(shape, done)

    def _save_trace(self, recorder, counters: dict) -> None:
        from spikereveal.environment import collect_environment

        cfg = self.config
        integers = {k: v for k, v in counters.items() if isinstance(v, int) and not isinstance(v, bool)}
        environment = collect_environment(engine=cfg.engine.engine, ort_threads=cfg.engine.threads,
                                          extra={"workers": cfg.scale_out.workers})
        recorder.save(cfg.trace, counters=integers, environment=environment,
                      extra={"skipped_by_reason": counters["skipped_by_reason"]})
        logger.info("wrote the latency trace %s (spikereveal bench report %s)", cfg.trace, cfg.trace)

    def _start_workers(self, context, factory, calibration, work_dir: Path, stop: threading.Event):
        """Bind the job ROUTER and the result PULL, start local workers, wait until they announced themselves."""
        import zmq

        from spikereveal.stream import transport
        from spikereveal.stream.collector import ResultCollector, start_local_workers
        from spikereveal.stream.dispatch import WorkerRoutes

        cfg, scale = self.config, self.config.scale_out
        router = context.socket(zmq.ROUTER)
        pull = context.socket(zmq.PULL)
        for socket in (router, pull):
            socket.setsockopt(zmq.LINGER, 0)
        router.setsockopt(zmq.ROUTER_MANDATORY, 1)  # a send to a worker that went away raises (the job is re-sent)
        router.setsockopt(zmq.SNDHWM, scale.in_flight_per_worker_jobs + 4)  # per worker; credits keep it lower
        worker_keys = None
        try:
            if scale.job_endpoint is not None:
                server_keys = cfg.security.server
                if server_keys is not None:  # CURVE: only allow-listed workers get jobs or may answer
                    from spikereveal.stream.security import ClientKeys, apply_server

                    apply_server(router, server_keys)
                    apply_server(pull, server_keys)
                    # local workers connect with serve's own pair (the authenticator admits it)
                    worker_keys = ClientKeys(server_keys.secret_key_file, server_keys.secret_key_file)
                router.bind(scale.job_endpoint)
                pull.bind(scale.result_endpoint)
            else:
                short = tempfile.mkdtemp(prefix="sr-", dir="/tmp")  # ipc paths are limited to ~100 bytes
                self._ipc_dir = short
                router.bind(f"ipc://{short}/jobs")
                pull.bind(f"ipc://{short}/results")
        except BaseException as exc:
            router.close(linger=0)
            pull.close(linger=0)
            if not isinstance(exc, zmq.ZMQError):
                raise
            raise ConfigError(f"cannot bind the worker endpoints: {exc}") from None
        job_endpoint = _connectable(transport.bound_endpoint(router))
        result_endpoint = _connectable(transport.bound_endpoint(pull))
        logger.info("workers: jobs on %s, results on %s", job_endpoint, result_endpoint)
        if scale.remote_workers:
            logger.warning("scale_out.remote_workers (--remote-workers) is no longer used: workers announce their "
                           "own credits and serve sends each as many jobs as it may hold; drop the setting")
        collector = ResultCollector(
            int(scale.result_timeout_s * 1e9), int(scale.heartbeat_timeout_s * 1e9),
            reorder_wait_ns=int(scale.reorder_wait_s * 1e9), reorder_max_results=scale.reorder_max_results,
            requeue_max_age_ns=None if scale.lost_job_policy == "drop" else int(scale.requeue_max_age_s * 1e9))
        self._routes = routes = WorkerRoutes(scale.in_flight_per_worker_jobs)
        onnx_engine = cfg.engine
        processes = []
        if scale.workers > 0:
            if cfg.spike_shape is not None and cfg.engine.engine != "torch" and cfg.engine.onnx is None:
                # export once here rather than once per worker
                onnx_path = getattr(factory(input_shape_for(cfg.sync.k, *cfg.spike_shape)), "onnx_path", None)
                if onnx_path is not None:
                    onnx_engine = EngineConfig(engine=cfg.engine.engine, precision=cfg.engine.precision,
                                               onnx=str(onnx_path), threads=cfg.engine.threads)
            threads = max(1, (os.cpu_count() or 2) // scale.workers)
            arguments = (job_endpoint, result_endpoint, onnx_engine, cfg.spike_shape, cfg.sync.k, cfg.calibration,
                         cfg.worker.output_pixel_format, str(work_dir), threads)
            credits = scale.in_flight_per_worker_jobs
            self._spawn_worker = lambda worker_id: start_local_workers(1, *arguments, keys=worker_keys,
                                                                       first_id=worker_id, credits=credits)[0]
            processes = start_local_workers(scale.workers, *arguments, keys=worker_keys, credits=credits)
            self._all_processes, self._next_worker_id = processes, scale.workers
            local_ids, deadline = set(range(scale.workers)), time.monotonic() + _WORKER_START_TIMEOUT_S
            while not stop.is_set():
                ready = local_ids & {route.worker_id for route in routes.routes}
                if len(ready) == scale.workers:
                    break
                if time.monotonic() > deadline or not any(p.is_alive() for p in processes):
                    raise SpikeRevealError(f"only {len(ready)} of {scale.workers} worker processes started; "
                                           "run with -v to see their errors")
                if router.poll(100):
                    self._receive_ready(router, collector)
        now = self._clock_ns()
        for worker_id, process in enumerate(processes):
            self._local_workers[worker_id] = process
            self._started_at[worker_id] = time.monotonic()
            collector.heard(worker_id, now)
        return router, pull, collector

    def _why_not_restart(self, exitcode, uptime_s: float) -> str | None:
        """None when an exited local worker is to be replaced, else why not."""
        scale = self.config.scale_out
        if not scale.restart_workers or self._spawn_worker is None:
            return "scale_out.restart_workers is off"
        if self.stopping.is_set():
            return "serve is stopping"
        if exitcode == 2:
            return "it reported an error it would repeat"
        if uptime_s < scale.worker_crash_loop_s:
            return f"it ran less than scale_out.worker_crash_loop_s = {scale.worker_crash_loop_s:g} s"
        return None

    def _check_workers(self, collector, poller) -> bool:
        """Declare exited local workers and silent ones lost (their jobs released), replace exited local ones
        (``scale_out.restart_workers``); False when none is left that could ever send a result (no local
        worker alive and no endpoint for remote ones)."""
        import zmq

        scale = self.config.scale_out
        routes = self._routes
        for worker_id, process in list(self._local_workers.items()):
            if process.is_alive():
                continue
            del self._local_workers[worker_id]
            poller.unregister(process.sentinel)
            uptime_s = time.monotonic() - self._started_at.pop(worker_id, 0.0)
            why_not = self._why_not_restart(process.exitcode, uptime_s)
            collector.worker_lost(worker_id, f"its process exited with code {process.exitcode} after {uptime_s:.0f} s; "
                                             + ("it is replaced" if why_not is None else
                                                f"it is not restarted ({why_not}), serve goes on with the others"),
                                  self._clock_ns(), exited=True)
            if routes is not None:
                routes.forget_worker(worker_id)
            if why_not is None:
                new_id = self._next_worker_id  # a new id: stale beats of the dead one must not count for it
                self._next_worker_id += 1
                replacement = self._spawn_worker(new_id)
                self._all_processes.append(replacement)
                self._local_workers[new_id] = replacement
                self._started_at[new_id] = time.monotonic()
                poller.register(replacement.sentinel, zmq.POLLIN)
                collector.heard(new_id, self._clock_ns())
                self.workers_restarted += 1
        for worker_id in collector.silent_workers(self._clock_ns()):
            collector.worker_lost(worker_id, f"no heartbeat for {scale.heartbeat_timeout_s:g} s "
                                             "(scale_out.heartbeat_timeout_s)", self._clock_ns())
            if routes is not None:
                routes.forget_worker(worker_id)
        if scale.workers > 0 and not self._local_workers and scale.job_endpoint is None:
            self._fatal = (f"all {scale.workers} worker processes exited; their errors are logged above (run "
                           "with -v for more)")
            return False
        return True

    # -- the loop ----------------------------------------------------------------------------------------
    def _loop(self, stop, poller, camera_sockets, output, pipeline: Pipeline, sink: ResultSink, thread,
              collector, router, pull, deliver) -> str:
        import zmq

        cfg, clock = self.config, self._clock_ns
        poll_ms = cfg.ingest.poll_interval_ms
        idle_ns = None if cfg.idle_timeout_s is None else int(cfg.idle_timeout_s * 1e9)
        started = clock()
        while True:
            if stop.is_set():
                return "stopped"
            if (thread is not None and thread.error is not None) or self._fatal is not None:
                return "error"
            if cfg.exit_after_exposures is not None and sink.exposures_done >= cfg.exit_after_exposures:
                return "exit_after"
            now = clock()
            if idle_ns is not None and now - (pipeline.last_message_ns or started) >= idle_ns:
                return "idle_timeout"
            for socket, _ in poller.poll(poll_ms):
                if socket is pull:
                    self._receive_results(pull, collector, deliver)
                    continue
                if socket is router:
                    self._receive_ready(router, collector)
                    continue
                if isinstance(socket, int):  # a local worker's process sentinel: handled below
                    continue
                for _ in range(_MAX_BURST_MESSAGES):
                    try:
                        parts = socket.recv_multipart(flags=zmq.NOBLOCK, copy=False)
                    except zmq.Again:
                        break
                    pipeline.on_message(parts, clock())
            pipeline.tick(clock())
            output.poll()
            if collector is not None:
                if not self._check_workers(collector, poller):
                    return "error"
                self._dispatch(pipeline.queue, collector, router)
                for job, result in collector.release(clock()):
                    deliver(job, result)

    def _foreign_version(self, parts, port: str) -> bool:
        """True when ``parts`` is a message of a spikereveal of another wire version (logged once per version)."""
        from spikereveal.stream.wire import JOB_VERSION, wire_version

        found = wire_version(parts)
        if found is None or found[1] == JOB_VERSION:
            return False
        what, version = found
        if version not in self._foreign_versions:
            self._foreign_versions.add(version)
            logger.error("a worker speaking wire version %d (a %s on the %s port) reached serve, which speaks "
                         "version %d: it gets no jobs and its results are rejected; run the same spikereveal version "
                         "on serve and every worker", version, what, port, JOB_VERSION)
        return True

    def _receive_ready(self, router, collector) -> None:
        """Workers' ready announcements on the job ROUTER: register their connections and credits, welcome new
        ones (serve's wire version: a worker of another version stops with that reason)."""
        import zmq

        from spikereveal.stream.wire import decode_ready, encode_welcome

        routes = self._routes
        while True:
            try:
                frames = router.recv_multipart(flags=zmq.NOBLOCK)
            except zmq.Again:
                return
            if len(frames) < 2:
                continue
            identity, parts = frames[0], frames[1:]
            ready = decode_ready(parts)
            if ready is None:
                if self._foreign_version(parts, "job"):
                    try:  # tell it our version, so it stops with a clear error instead of waiting
                        router.send_multipart([identity, *encode_welcome(0, 0)], flags=zmq.NOBLOCK)
                    except zmq.ZMQError:
                        pass
                else:
                    logger.debug("a message on the job port that is no worker announcement was ignored")
                continue
            if collector.is_gone(ready.worker_id):  # a stale announcement of a local worker that exited
                continue
            now = self._clock_ns()
            route, new = routes.announce(identity, ready, now)
            if route is None:
                continue
            collector.heard(ready.worker_id, now)
            if new:
                logger.info("worker %d (pid %d) connected: %d credit(s)", ready.worker_id, ready.pid, route.credits)
                try:
                    router.send_multipart([identity, *encode_welcome(ready.worker_id, route.credits)],
                                          flags=zmq.NOBLOCK)
                except zmq.ZMQError:  # gone again already
                    routes.forget(identity)

    def _receive_results(self, pull, collector, deliver) -> None:
        import zmq

        from spikereveal.stream.protocol import ProtocolError
        from spikereveal.stream.wire import decode_heartbeat, decode_result, wire_version

        while True:
            try:
                parts = pull.recv_multipart(flags=zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            beat = decode_heartbeat(parts)
            if beat is not None:
                worker_id, key = beat
                if key is None:
                    collector.heard(worker_id, self._clock_ns())
                else:
                    collector.taken(worker_id, key, self._clock_ns())
                continue
            if self._foreign_version(parts, "result"):
                if wire_version(parts)[0] == "result":
                    collector.reject("version")
                continue
            try:
                wire = decode_result(parts)
            except ProtocolError as exc:
                logger.debug("malformed worker result dropped: %s", exc)
                collector.reject("malformed")
                continue
            self._queue.end_warmup()  # a worker has loaded its engine (or failed to)
            for job, result in collector.received(wire, self._clock_ns()):
                deliver(job, result)

    def _dispatch(self, queue: JobQueue, collector, router) -> None:
        """Send waiting jobs to workers with a free credit: re-queued ones (in their dispatch order) first, then
        the job queue's. A job whose worker went away is sent to the next one."""
        import zmq

        from spikereveal.stream.wire import encode_job

        routes = self._routes
        while True:
            resend = collector.next_resend()
            if resend is None and not len(queue):
                return
            route = routes.pick(collector.held)
            if route is None:
                return  # every worker holds its credits: jobs wait in the bounded queue
            job = resend if resend is not None else queue.get_nowait()
            if job is None:
                return
            now = self._clock_ns()
            if resend is None:
                collector.dispatched(job, now, route.worker_id, route.identity)
            else:
                collector.resent(job.key, now, route.worker_id, route.identity)
            try:
                router.send_multipart([route.identity, *encode_job(job)], flags=zmq.NOBLOCK, copy=False)
            except zmq.ZMQError as exc:  # EHOSTUNREACH: it disconnected; EAGAIN: its pipe is full
                logger.info("worker %d's connection cannot take a job (%s): forgotten until it announces itself "
                            "again; the job goes to the next worker", route.worker_id, exc)
                routes.forget(route.identity)
                collector.unsent(job.key)
                continue
            routes.sent(route.identity, now)

    def _shutdown(self, reason: str, queue: JobQueue, thread, collector, router, pull, poller, deliver) -> int:
        """Drain or abandon queued work per the policy in the module doc; returns how many were abandoned."""
        drain_s = self.config.worker.drain_timeout_s if reason == "idle_timeout" else 0.0
        deadline = time.monotonic() + drain_s
        if thread is not None:
            if drain_s > 0:
                thread.wait_idle(drain_s)
            abandoned = len(queue.clear())
            queue.close()
            thread.stop(timeout_s=max(drain_s, 60.0))  # the exposure in progress finishes
            return abandoned
        while drain_s > 0 and (len(queue) or collector.in_flight) and time.monotonic() < deadline:
            if not self._check_workers(collector, poller):
                break
            self._receive_ready(router, collector)
            self._dispatch(queue, collector, router)
            if pull.poll(50):
                self._receive_results(pull, collector, deliver)
            for job, result in collector.release(self._clock_ns()):
                deliver(job, result)
        return len(queue.clear()) + collector.abandon()


def serve(config: ServeConfig, stop: threading.Event | None = None, runner_factory: Callable | None = None) -> dict:
    """Run the live pipeline until a stop condition; returns the counters (also written to ``stats_json``)."""
    return Server(config, runner_factory=runner_factory).run(stop)
