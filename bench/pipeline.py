"""``spikereveal bench pipeline``: simulator (or a recording) -> replay -> serve on loopback, traced, reported.

The run is :func:`spikereveal.stream.loopback.run_loopback` (what the demo drives) with ``serve --trace``
on, no frames saved, and a job queue holding every exposure (nothing is dropped for capacity). The report
is :func:`spikereveal.bench.report.build_report` of the trace plus three blocks:

* ``independent``: what an outside observer on the wire sees, with no help from the trace. A monitor
  subscribes to the replay's RGB stream (the send time in each exposure's and heartbeat's header) and to
  serve's output stream (its own monotonic receive time per sharp frame), same host, same clock.
  ``wall_clock_s`` runs from the first replayed message to the last sharp frame received;
  ``end_to_end`` is, per exposure, its RGB message sent -> the last of its K frames received. The
  ``agreement`` block puts the report's figures over these (ratios; the issue's target is within 5 %;
  reported, not asserted): the trace's span (first replayed message -> last publish stamp) over the wall
  clock, the report's end-to-end mean/p50/p99 over the independent ones, and the report's output
  frames/s over the monitor's.
* ``pipeline``: what ran (preset, runner, model, exposures, replay speed, warm-up).
* ``trace_overhead`` (``trace_overhead=True``): two more runs, unpaced so that throughput is the
  pipeline's own, with tracing off then on; output frames/s as the monitor measures them and their ratio
  (target: tracing costs <= 2 %), beside the recorder's micro-benchmarked cost per exposure.

Runner: the shipped model by default, ``model`` for a checkpoint, ``random_weights`` for a seeded random
LDN (same inference cost, meaningless images), or ``pass_through`` (returns the blurry frame, no network):
the non-inference cost alone. With a network the replay is paced (``speed=None``) so that exposures
arrive at 1/:data:`AUTO_PACE_MARGIN` of the measured inference rate: exposures do not wait in the queue,
so the non-inference figures are the pipeline's and not queueing.
"""

from __future__ import annotations

import logging
import math
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable

import numpy as np

from spikereveal.bench.exposure_path import PASS_THROUGH, PassThroughRunner
from spikereveal.errors import BenchmarkError, ConfigError, SpikeRevealError
from spikereveal.kernels.timing import DEFAULT_K

__all__ = ["bench_pipeline", "format_triton_hop", "PassThroughRunner", "default_exposures", "AGREEMENT_TARGET", "TRACE_COST_TARGET"]

logger = logging.getLogger(__name__)

PRESETS = ("rsb", "gopro", "tiny")
AGREEMENT_TARGET = 0.05  # the report's end to end vs the independent measure
TRACE_COST_TARGET = 0.02  # throughput lost to tracing
NON_INFERENCE_TARGET_P99_MS = 5.0  # SPEC §8, at the rsb geometry
AUTO_PACE_MARGIN = 1.5  # exposure interval / inference time when the pace is automatic
NETWORK_EXPOSURES = {"tiny": 20, "gopro": 8, "rsb": 8}  # CPU inference takes seconds per rsb window
PASS_THROUGH_EXPOSURES = 40
_MONITOR_QUIET_S = 0.3  # after serve stopped, the monitor ends once the wire was quiet this long
_MONITOR_MAX_DRAIN_S = 10.0
_SUBSCRIBE_TIMEOUT_S = 30.0


def default_exposures(preset: str, pass_through: bool) -> int:
    return PASS_THROUGH_EXPOSURES if pass_through else NETWORK_EXPOSURES.get(preset, 8)


class _RunnerStash:
    """Wraps a runner factory and keeps the runner it made (to time one inference before the replay)."""

    def __init__(self, factory: Callable):
        self._factory = factory
        self.runner = None

    def __call__(self, shape):
        self.runner = self._factory(shape)
        return self.runner


def _exposure_period_s(recording) -> float | None:
    starts = np.sort(np.array([int(e.start_ns) for e in recording.exposures], dtype=np.int64))
    return float(np.median(np.diff(starts))) / 1e9 if starts.size > 1 else None


class WireMonitor:
    """A :class:`spikereveal.stream.loopback.LoopbackObserver`: subscribes to the replay's RGB stream and serve's
    output stream and records send / receive times (see the module docstring). With ``stash`` and
    ``auto_pace`` it times one inference on the loaded runner and returns the replay speed to use."""

    def __init__(self, stash: _RunnerStash | None = None, auto_pace: bool = False):
        self.stash = stash
        self.auto_pace = auto_pace
        self.first_sent_ns: int | None = None
        self.exposure_sent_ns: dict[int, int] = {}
        self.output_frames: dict[int, int] = {}
        self.last_received_ns: dict[int, int] = {}
        self.first_output_received_ns: int | None = None
        self.last_output_received_ns: int | None = None
        self.inference_probe_s: float | None = None
        self.exposure_period_s: float | None = None
        self.spike_t0_ns: int | None = None
        self.malformed = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._context = None
        self._sockets: list = []
        self._serve_stopped_ns: int | None = None

    def before_replay(self, server, replay) -> float | None:
        import zmq

        from spikereveal.stream import transport
        from spikereveal.stream.protocol import TOPICS, Kind

        self.exposure_period_s = _exposure_period_s(replay.recording)
        self.spike_t0_ns = int(replay.recording.meta.spike.t0_ns)
        speed = None
        if self.auto_pace and self.stash is not None and self.stash.runner is not None:
            runner = self.stash.runner  # serve is idle until the replay starts: nothing else uses it now
            image, spikes = np.zeros(runner.shape.image, np.uint8), np.zeros(runner.shape.spikes, np.uint8)
            started = time.perf_counter()
            runner.infer(image, spikes)
            self.inference_probe_s = time.perf_counter() - started
            if self.exposure_period_s:
                speed = min(1.0, self.exposure_period_s / (AUTO_PACE_MARGIN * self.inference_probe_s))
        self._context = zmq.Context()
        output = transport.open_subscriber(self._context, server.output_endpoint, receive_hwm=100_000)
        # topics of its own (serve subscribes to everything), so that the replay's XPUB reports this
        # subscription rather than folding it into serve's, and it can be waited for
        rgb = transport.open_subscriber(self._context, replay.rgb_endpoint, receive_hwm=100_000,
                                        topics=(TOPICS[Kind.RGB_EXPOSURE], TOPICS[Kind.HEARTBEAT]))
        self._sockets = [output, rgb]
        if not transport.wait_for_subscribers([replay.sockets.rgb_socket], _SUBSCRIBE_TIMEOUT_S):
            raise SpikeRevealError(f"the bench's monitor could not subscribe to {replay.rgb_endpoint}")
        self._thread = threading.Thread(target=self._run, args=(output, rgb), name="bench-wire-monitor", daemon=True)
        self._thread.start()
        return speed

    def _run(self, output, rgb) -> None:
        import zmq

        from spikereveal.stream.protocol import Heartbeat, ProtocolError, RgbExposure, SharpFrame, decode

        poller = zmq.Poller()
        poller.register(output, zmq.POLLIN)
        poller.register(rgb, zmq.POLLIN)
        quiet_since = None
        while True:
            events = poller.poll(50)
            for socket, _ in events:
                while True:
                    try:
                        parts = socket.recv_multipart(flags=zmq.NOBLOCK, copy=False)
                    except zmq.Again:
                        break
                    received = time.monotonic_ns()
                    try:
                        message = decode(parts)
                    except ProtocolError:
                        self.malformed += 1
                        continue
                    if isinstance(message, SharpFrame):
                        exposure = int(message.exposure_id)
                        self.output_frames[exposure] = self.output_frames.get(exposure, 0) + 1
                        self.last_received_ns[exposure] = received
                        if self.first_output_received_ns is None:
                            self.first_output_received_ns = received
                        self.last_output_received_ns = received
                    elif isinstance(message, (RgbExposure, Heartbeat)):
                        sent = int(message.send_time_ns)
                        if self.first_sent_ns is None or sent < self.first_sent_ns:
                            self.first_sent_ns = sent
                        if isinstance(message, RgbExposure):
                            self.exposure_sent_ns[int(message.frame_id)] = sent
            if not self._stop.is_set():
                continue
            now = time.monotonic_ns()
            quiet_since = now if events or quiet_since is None else quiet_since
            quiet = now - quiet_since >= _MONITOR_QUIET_S * 1e9
            if quiet or now - self._serve_stopped_ns >= _MONITOR_MAX_DRAIN_S * 1e9:
                return

    def after_serve(self) -> None:
        self._serve_stopped_ns = time.monotonic_ns()
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        for socket in self._sockets:
            socket.close(linger=0)
        if self._context is not None:
            self._context.term()

    # -- figures -----------------------------------------------------------------------------------------
    def end_to_end_ms(self, exposure_ids) -> np.ndarray:
        """Per exposure (in the given order): its RGB message sent -> the last of its frames received."""
        values = [(self.last_received_ns[i] - self.exposure_sent_ns[i]) / 1e6 for i in exposure_ids
                  if i in self.last_received_ns and i in self.exposure_sent_ns]
        return np.asarray(values, dtype=np.float64)

    def output_throughput(self, exposure_ids, k: int | None = None, exposure_rate_hz: float | None = None) -> dict:
        from spikereveal.stream.stats import throughput

        ids = [i for i in exposure_ids if i in self.last_received_ns]
        result = throughput([self.last_received_ns[i] for i in ids], [self.output_frames[i] for i in ids], k=k,
                            exposure_rate_hz=exposure_rate_hz)
        del result["warmup_excluded"]
        return result


def _ratio(a, b) -> float | None:
    return None if a is None or b is None or not b else float(a) / float(b)


def _independent_block(monitor: WireMonitor, trace, report: dict, warmup_rows: int) -> dict:
    from spikereveal.bench.report import _stats
    from spikereveal.stream.trace import MISSING

    measured_ids = [int(i) for i in trace.exposure_id[warmup_rows:]]
    e2e = _stats(monitor.end_to_end_ms(measured_ids))
    rates = report["throughput"]
    frames = monitor.output_throughput(measured_ids, rates.get("k"), rates.get("exposure_rate_hz"))
    wall_s = trace_span_s = None
    if monitor.first_sent_ns is not None and monitor.last_output_received_ns is not None:
        wall_s = (monitor.last_output_received_ns - monitor.first_sent_ns) / 1e9
        published = trace.stage("last_output_published")
        published = published[published != MISSING]
        if published.size:
            trace_span_s = (int(published.max()) - monitor.first_sent_ns) / 1e9
    report_e2e = report["end_to_end"]
    ratios = {
        "trace_span_over_wall_clock": _ratio(trace_span_s, wall_s),
        "end_to_end_mean": _ratio(report_e2e["mean_ms"], e2e["mean_ms"]),
        "end_to_end_p50": _ratio(report_e2e["p50_ms"], e2e["p50_ms"]),
        "end_to_end_p99": _ratio(report_e2e["p99_ms"], e2e["p99_ms"]),
        "output_frames_per_s": _ratio(rates.get("output_frames_per_s"), frames["output_frames_per_s"]),
    }
    return {
        "method": "outside subscribers on the same host clock: the replay's RGB stream (send_time_ns of the "
                  "heartbeats and exposures) and serve's output stream (receive time of each sharp frame); "
                  "end_to_end per exposure = its RGB message sent -> last of its frames received",
        "wall_clock_s": wall_s,
        "trace_span_s": trace_span_s,
        "exposures_sent": len(monitor.exposure_sent_ns),
        "exposures_received_complete": sum(1 for n in monitor.output_frames.values() if n >= (rates.get("k") or 1)),
        "frames_received": int(sum(monitor.output_frames.values())),
        "end_to_end": e2e,
        "throughput": frames,
        "agreement": {
            "ratios": ratios,
            "target": AGREEMENT_TARGET,
            "within_target": {name: None if value is None else bool(abs(value - 1.0) <= AGREEMENT_TARGET)
                              for name, value in ratios.items()},
            "note": "the report's end to end starts at the exposure's end on the host clock when the replay ran "
                    "at real time (its scheduled send), else at the exposure message's arrival (then the "
                    "difference is the RGB message's delivery); the independent one starts at its actual send",
        },
    }


def _place_rig_clock(trace, monitor: WireMonitor, speed: float) -> dict:
    """At real-time speed the replay publishes rig time ``t`` at host time ``start + (t - t0)``, ``start``
    being its first message (a heartbeat): so the rig-to-host offset is known and the report measures end
    to end from the exposure's end, as the issue defines it. Other speeds scale time: no offset, and the
    report's origin stays the exposure message's arrival. Writes the offset into the trace's metadata."""
    offset = trace.metadata.get("rig_to_host_offset_ns")
    source = "serve" if offset is not None else None
    if offset is None and speed == 1.0 and monitor.first_sent_ns is not None and monitor.spike_t0_ns is not None:
        offset = monitor.first_sent_ns - monitor.spike_t0_ns
        source = ("replay at real time: host = rig - spike t0 + the first replayed message's send time "
                  "(its schedule's start; a later send shows as exposure_delivery)")
        trace.metadata["rig_to_host_offset_ns"] = offset
    return {"rig_to_host_offset_ns": offset, "source": source or "unknown (replay speed is not 1): end to end "
            "starts at the exposure message's arrival"}


def _serve_split(counters: dict) -> dict:
    """serve's own per-exposure split (all exposures, warm-up included): it separates the queue wait from
    the work (prepare = window cut + input conversion, postprocess = clip + uint8, publish)."""
    latency = counters.get("latency") or {}
    split = {}
    for name in ("queue_wait_ms", "ingest_ms", "prepare_ms", "inference_ms", "postprocess_ms", "publish_ms",
                 "non_inference_work_ms", "end_to_end_ms"):
        stats = latency.get(name)
        if isinstance(stats, dict):
            split[name] = {key: stats.get(key) for key in ("count", "p50_ms", "p99_ms", "mean_ms", "max_ms")}
    if split:
        split["note"] = ("serve's LatencyLog over every exposure (warm-up included); non_inference_work_ms there "
                         "excludes the queue wait and the wait for spikes (the report's e2e_less_inference includes them)")
    return split


_MESSAGE_HEADER_MARGIN_BYTES = 64 * 1024  # protocol header and metadata on top of the pixel / spike bytes


def serve_sizing(recording_path, exposures: int, block_frames: int) -> dict:
    """serve's config overrides that hold every exposure of the run whatever the geometry: a benchmark must
    measure the pipeline, not its byte bounds. The job queue and the pending exposures hold all
    ``exposures`` (+2) at their largest size, and each SUB socket accepts the largest message of the replay
    (``ingest.*_max_message_bytes``: a larger one disconnects the publisher, silently). Never below
    serve's defaults."""
    from spikereveal.recording import open_recording
    from spikereveal.stream.config import IngestConfig, WorkerConfig
    from spikereveal.stream.sync import SyncConfig

    with open_recording(recording_path, strict=False) as recording:
        spike, rgb = recording.meta.spike, recording.meta.rgb
        frame_bytes = spike.height * spike.width // 8
        image_bytes = rgb.height * rgb.width * 3
        longest_ns = max((int(e.duration_ns) for e in recording.exposures), default=0)
    window_frames = math.ceil(longest_ns * float(spike.rate_hz) / 1e9) + 2 * SyncConfig().margin_frames + 2
    job_bytes = image_bytes + window_frames * frame_bytes
    held = exposures + 2
    ingest, worker, sync = IngestConfig(), WorkerConfig(), SyncConfig()
    spike_message = block_frames * frame_bytes + _MESSAGE_HEADER_MARGIN_BYTES
    rgb_message = image_bytes + _MESSAGE_HEADER_MARGIN_BYTES
    return {
        "worker": {"queue_capacity_jobs": held, "queue_max_bytes": max(worker.queue_max_bytes, held * job_bytes)},
        "sync": {"max_pending_exposures": max(sync.max_pending_exposures, held),
                 "max_pending_bytes": max(sync.max_pending_bytes, held * image_bytes)},
        "ingest": {"spike_max_message_bytes": max(ingest.spike_max_message_bytes, spike_message),
                   "rgb_max_message_bytes": max(ingest.rgb_max_message_bytes, rgb_message),
                   "spike_receive_buffer_bytes": max(ingest.spike_receive_buffer_bytes, 4 * spike_message),
                   "rgb_receive_buffer_bytes": max(ingest.rgb_receive_buffer_bytes, 4 * rgb_message)},
    }


def check_complete(asked: int, counters: dict, replayed: int, published_rows: int | None = None,
                   what: str = "the run") -> None:
    """Raise BenchmarkError unless ``asked`` exposures were replayed, received by serve and published (and,
    with a trace, traced as published): a benchmark of fewer exposures than asked measured something else."""
    received = int(counters.get("exposures_received") or 0)
    done = int(counters.get("exposures_done") or 0)
    figures = [("replayed", replayed), ("received by serve", received), ("published", done)]
    if published_rows is not None:
        figures.append(("traced as published", published_rows))
    if all(value >= asked for _, value in figures):
        return
    said = ", ".join(f"{value} {name}" for name, value in figures)
    lost = {name: counters[name] for name in (
        "messages", "spike_frames_received", "malformed", "gaps", "late", "exposures_dropped", "exposures_skipped",
        "exposures_failed", "exposures_abandoned", "exposures_pending_at_exit", "job_queue_dropped",
        "sync_exposures_dropped", "warmup_dropped", "spike_frames_dropped", "output_dropped",
        "subscriptions_refused", "spike_geometry_mismatches") if counters.get(name)}
    if not int(counters.get("messages") or 0):
        why = (f"serve received no message at all (stop_reason {counters.get('stop_reason')!r}): it stopped "
               "before the replay's first message, or refused every message (a message above "
               "ingest.*_max_message_bytes disconnects its publisher)")
    elif replayed < asked:
        why = "the replay published fewer exposures than the recording holds"
    else:
        why = f"serve's counters: {lost or 'no drop counted'}, stop_reason {counters.get('stop_reason')!r}"
    raise BenchmarkError(
        f"{what} measured fewer exposures than asked ({asked}): {said}; {why}. Nothing is reported for a partial "
        "run; run again with -v to see serve's log (a busy machine: fewer --exposures or a lower --speed)")


def _non_inference_target(rows: list[dict], warmup_ids: set[int], geometry: str) -> dict:
    """SPEC §8's target: everything that is not inference (ingest, sync, kernels, pre/post-processing,
    publish), p99 <= 5 ms per exposure at rsb. Measured as serve's ``non_inference_work_ms`` over the
    exposures after warm-up: serve's own work, not the waits (for spikes, in the queue) that the report's
    ``e2e_less_inference`` includes."""
    from spikereveal.bench.report import _stats

    values = [row["non_inference_work_ms"] for row in rows
              if row.get("non_inference_work_ms") is not None and int(row["exposure_id"]) not in warmup_ids]
    stats = _stats(np.asarray(values, dtype=np.float64))
    p99 = stats["p99_ms"]
    return {"quantity": "non_inference_work_ms", "geometry": geometry, "exposures": len(values),
            "p50_ms": stats["p50_ms"], "p99_ms": p99, "max_ms": stats["max_ms"],
            "target_p99_ms": NON_INFERENCE_TARGET_P99_MS,
            "met": None if p99 is None else bool(p99 <= NON_INFERENCE_TARGET_P99_MS),
            "definition": "per exposure, serve's ingest + prepare + postprocess + publish (LatencyLog), warm-up "
                          "excluded; SPEC §8 states the target at the rsb geometry"}


def _random_checkpoint(directory: Path, seed: int) -> Path:
    import torch

    from spikereveal.engines.checkpoint import save_checkpoint
    from spikereveal.engines.ldn import LDN

    torch.manual_seed(seed)
    model = LDN().eval()
    return save_checkpoint(directory / "ldn_random.pt", "ldn", model, model.config,
                           source=f"random seed {seed} (bench pipeline: timing only)")


def _run_once(recording_path: Path, *, engine: str, model: str | None, threads: int | None, k: int,
              exposures: int, speed: float | None, block_frames: int, pass_through: bool, trace_path: str | None,
              progress, triton: dict | None = None) -> tuple:
    from spikereveal.stream.loopback import run_loopback
    from spikereveal.engines.choice import runner_factory
    from spikereveal.stream.config import EngineConfig

    engine_config = {"engine": engine, "model": model, "threads": threads}
    if engine == "triton":  # the server holds the model: {"triton_url": ..., "triton_model": ...}
        engine_config = {"engine": engine, "threads": threads, **(triton or {})}
    with tempfile.TemporaryDirectory(prefix="spikereveal-bench-pipeline-") as work_dir:
        if pass_through:
            factory = lambda shape: PassThroughRunner(shape)  # noqa: E731
        else:
            factory = runner_factory(EngineConfig(**engine_config).choice(), work_dir)
        stash = _RunnerStash(factory)
        monitor = WireMonitor(stash, auto_pace=speed is None and not pass_through)
        sizing = serve_sizing(recording_path, exposures, block_frames)
        run = run_loopback(
            recording_path,
            dict(idle_timeout_s=1.0, sync={"k": k, **sizing["sync"]}, trace=trace_path, engine=engine_config,
                 ingest=sizing["ingest"], worker={**sizing["worker"], "drain_timeout_s": 3600.0}),
            speed=1.0 if speed is None else speed, block_frames=block_frames, runner_factory=stash,
            observer=monitor, progress=progress)
    describe = stash.runner.describe() if stash.runner is not None else {}
    return run, monitor, describe


def _recording_exposures(recording_path: Path, asked: int | None, warmup: int | None) -> int:
    """The exposures a given recording holds: the run replays all of them (``asked``: --exposures, if given,
    must say the same)."""
    from spikereveal.recording import open_recording

    with open_recording(recording_path, strict=False) as opened:
        held = len(opened.exposures)
    if asked is not None and asked != held:
        raise ConfigError(f"{recording_path} holds {held} exposures and the replay sends all of them; leave out "
                          f"--exposures (got {asked}) or simulate instead of --recording")
    if held < 2 or (warmup is not None and warmup >= held):
        raise ConfigError(f"{recording_path} holds {held} exposures: the pipeline bench needs at least 2 and more "
                          f"than the warm-up ({warmup}); give a lower --warmup or a longer recording")
    return held


def _simulate(preset_name: str, k: int, exposures: int, seed: int, directory: Path, progress) -> Path:
    from spikereveal.sim import preset, simulate_recording

    if progress is not None:
        progress(f"simulating {exposures} exposures ({preset_name} preset)")
    return simulate_recording(preset(preset_name, k=k), directory / "recording", seed=seed, exposures=exposures,
                              overwrite=True)


def bench_pipeline(preset: str = "rsb", engine: str = "ort", model=None, exposures: int | None = None,
                   speed: float | None = None, warmup: int | None = None, k: int = DEFAULT_K,
                   threads: int | None = None, trace_path=None, progress: Callable[[str], None] | None = None, *,
                   recording=None, random_weights: bool = False, pass_through: bool = False,
                   trace_overhead: bool = False, plot_dir=None, block_frames: int = 16, seed: int = 0,
                   triton_url: str | None = None, triton_model: str | None = None) -> dict:
    """Run the loopback pipeline once (traced) and return the report dict (see the module docstring).

    ``exposures``/``warmup`` default to :func:`default_exposures` and min(10, exposures // 5) (at least 1);
    ``speed`` (x real time) defaults to 1 with ``pass_through``, else to the automatic pace. ``recording``:
    replay this recording instead of simulating ``preset``. ``trace_path``: keep the trace file there.
    ``plot_dir``: also write the latency plots (``bench.plots.write_plots``) there.

    ``engine="triton"``: serve's runner sends each exposure to Triton at ``triton_url`` (model
    ``triton_model``), or, without a URL, to a loopback Triton started here (``engines.triton_local``: the
    bundled server running the same ONNX export through ONNX Runtime at the same thread count); the same
    recording is then also run with ``ort`` and ``triton_hop`` reports the difference per exposure (the cost
    of the hop: serialisation, gRPC, Triton's queue and the Python backend).
    """
    from spikereveal.environment import collect_environment
    from spikereveal.bench.report import build_report, effective_warmup
    from spikereveal.stream.trace import MISSING, load_trace

    if preset not in PRESETS and recording is None:
        raise ConfigError(f"preset must be one of {', '.join(PRESETS)}, got {preset!r}")
    if engine not in ("ort", "torch", "trt", "triton"):
        raise ConfigError(f"engine must be ort, torch, trt or triton, got {engine!r}")
    if engine == "triton" and pass_through:
        raise ConfigError("--pass-through runs no network: leave out --engine triton")
    if engine != "triton" and (triton_url is not None or triton_model is not None):
        raise ConfigError("--triton-url/--triton-model are for --engine triton")
    if pass_through and (model is not None or random_weights):
        raise ConfigError("--pass-through runs no network: leave out --model and --random-weights")
    if model is not None and random_weights:
        raise ConfigError("give either --model CKPT or --random-weights, not both")
    asked_exposures = exposures
    exposures = default_exposures(preset, pass_through) if exposures is None else exposures
    if isinstance(exposures, bool) or not isinstance(exposures, int) or exposures < 2:
        raise ConfigError(f"the pipeline bench needs at least 2 exposures, got {exposures!r}")
    asked_warmup = warmup
    warmup = max(1, min(10, exposures // 5)) if warmup is None else warmup
    if isinstance(warmup, bool) or not isinstance(warmup, int) or not 0 <= warmup < exposures:
        raise ConfigError(f"warmup must be a whole number in 0..{exposures - 1} (exposures), got {warmup!r}")
    if speed is not None and not speed > 0:
        raise ConfigError(f"speed must be > 0 (inf: unpaced), got {speed!r}")
    say = progress or (lambda message: None)

    with tempfile.TemporaryDirectory(prefix="spikereveal-bench-") as tmp:
        tmp = Path(tmp)
        model_label = PASS_THROUGH
        model_path = None
        if not pass_through:
            if random_weights:
                model_path = str(_random_checkpoint(tmp, seed))
                model_label = f"random seeded LDN (seed {seed}; timing only, the images are meaningless)"
            else:
                from spikereveal.engines.export import resolve_model_path

                model_path = str(resolve_model_path(model))  # says to pass --model / --random-weights
                model_label = model_path
        if recording is None:
            recording_path = _simulate(preset, k, exposures, seed, tmp, say)
        else:
            recording_path = Path(recording)
            preset = None
            exposures = _recording_exposures(recording_path, asked_exposures, asked_warmup)
            warmup = max(1, min(10, exposures // 5)) if asked_warmup is None else warmup
        trace_file = Path(trace_path) if trace_path is not None else tmp / "latency_trace.npz"
        triton, hop = None, None
        if engine == "triton":
            triton, onnx, server = _triton_target(triton_url, triton_model, model_path, recording_path, k, threads,
                                                  tmp, say)
            try:
                run, monitor, describe = _run_once(
                    recording_path, engine=engine, model=None, threads=threads, k=k, exposures=exposures,
                    speed=speed, block_frames=block_frames, pass_through=False, trace_path=str(trace_file),
                    progress=say, triton=triton)
                say(f"the Triton hop alone: one window through ort and triton, alternately, {HOP_PROBE_REPEATS} times")
                shape = describe.get("shape") or {}
                _, height, width, _ = shape.get("image", (1, 0, 0, 3))
                paired = _paired_hop(triton, onnx, k, int(height), int(width), threads)
            finally:
                if server is not None:
                    server.close()
            say("the same recording with --engine ort, for the Triton hop")
            ort_run, _, ort_describe = _run_once(
                recording_path, engine="ort", model=model_path, threads=threads, k=k, exposures=exposures,
                speed=speed, block_frames=block_frames, pass_through=False, trace_path=str(tmp / "ort_trace.npz"),
                progress=say)
            hop = _triton_hop(run.counters, ort_run.counters, describe, ort_describe,
                              loopback=triton_url is None)
            hop["paired"] = paired
        else:
            run, monitor, describe = _run_once(
                recording_path, engine=engine, model=model_path, threads=threads, k=k, exposures=exposures,
                speed=speed, block_frames=block_frames, pass_through=pass_through, trace_path=str(trace_file),
                progress=say)
        if not trace_file.exists():
            raise SpikeRevealError(f"serve wrote no trace to {trace_file}; its counters: {run.counters}")
        trace = load_trace(trace_file)
        check_complete(exposures, run.counters, int(run.replay_stats.exposures),
                       int(np.count_nonzero(trace.stage("last_output_published") != MISSING)))
        clock = _place_rig_clock(trace, monitor, run.speed)
        if clock["rig_to_host_offset_ns"] is not None:
            trace.save(trace_file)  # `bench report` of the kept trace then gives the same figures
        runner_name = PASS_THROUGH if pass_through else engine
        environment = collect_environment(
            engine=runner_name, precision=None if pass_through else describe.get("precision"),
            precision_verified=False if not pass_through else None, ort_threads=threads,
            transfers_included=True,
            extra={"model": model_label, "runner": describe,
                   "random_weights": bool(random_weights), "pass_through": bool(pass_through)})
        report = build_report(trace, warmup=warmup, environment=environment)
        skip = effective_warmup(trace, warmup)
        report["independent"] = _independent_block(monitor, trace, report, skip)
        report["non_inference_target"] = _non_inference_target(
            run.latency_rows, {int(i) for i in trace.exposure_id[:skip]},
            preset if preset is not None else f"recording {recording_path.name}")
        report["pipeline"] = {
            "preset": preset, "recording": None if recording is None else str(recording_path),
            "engine": runner_name, "model": model_label, "exposures": exposures, "k": k, "warmup": warmup,
            "block_frames": block_frames, "speed": run.speed, "speed_requested": speed,
            "pace": ("automatic: exposure interval = %.1f x one measured inference" % AUTO_PACE_MARGIN
                     if speed is None and not pass_through else "as requested" if speed is not None else "real time"),
            "inference_probe_ms": None if monitor.inference_probe_s is None else monitor.inference_probe_s * 1e3,
            "exposure_period_ms": None if monitor.exposure_period_s is None else monitor.exposure_period_s * 1e3,
            "frames_saved": False,
            "clock": clock,
            "note": ("pass-through runner: no network, inference ~0; the figures are the non-inference cost"
                     if pass_through else "end to end includes inference"),
            "serve": {key: value for key, value in run.counters.items() if not isinstance(value, dict)},
            "serve_latency": _serve_split(run.counters),
            "replay": run.replay_stats.as_dict(),
            "seconds": run.finished_s - run.engine_ready_s,
        }
        if hop is not None:
            report["triton_hop"] = hop
        if plot_dir is not None:
            from spikereveal.bench.plots import write_plots

            report["plots"] = {name: str(path) for name, path in write_plots(trace, plot_dir, warmup=warmup).items()}
        if trace_path is not None:
            report["trace"] = str(trace_file)
        if trace_overhead:
            if engine == "triton":
                raise ConfigError("--trace-overhead is not measured with --engine triton; run it with ort")
            report["trace_overhead"] = _trace_overhead(
                recording_path, engine=engine, model=model_path, threads=threads, k=k, exposures=exposures,
                block_frames=block_frames, pass_through=pass_through, warmup=warmup, tmp=tmp, progress=say,
                exposure_period_ms=report["pipeline"]["exposure_period_ms"], speed=run.speed)
    return report


def _triton_target(url, model_name, checkpoint, recording_path: Path, k: int, threads, tmp: Path, say):
    """``({"triton_url", "triton_model"}, ONNX export of ``checkpoint`` for the recording's geometry, loopback
    server or None)``: the given server, or a loopback Triton (the bundled server) over a repository of that
    export."""
    from spikereveal.engines.export import ExportConfig, export_checkpoint
    from spikereveal.engines.runners import RunnerOptions
    from spikereveal.engines.triton_repo import DEFAULT_TRITON_MODEL
    from spikereveal.recording import open_recording

    model_name = model_name or DEFAULT_TRITON_MODEL
    with open_recording(recording_path, strict=False) as opened:
        height, width = opened.meta.spike.canonical_shape
    onnx = export_checkpoint(checkpoint, tmp / "triton_export.onnx", ExportConfig(k=k, height=height, width=width))
    if url is not None:
        return {"triton_url": url, "triton_model": model_name}, onnx, None
    from spikereveal.engines.triton_local import LocalTritonServer, loopback_repository
    from spikereveal.engines.triton_repo import TritonRepoConfig, write_triton_repository

    say("starting a loopback Triton (the bundled tritonserver, ONNX Runtime in its Python backend)")
    repo = tmp / "triton_repo"
    write_triton_repository(onnx, repo, TritonRepoConfig(model=model_name, gpus=()))
    server = LocalTritonServer(loopback_repository(repo, tmp / "triton_loopback",
                                                   threads=RunnerOptions(threads=threads).resolved_threads()))
    try:
        server.start()
    except BaseException:
        server.close()
        raise
    return {"triton_url": server.url, "triton_model": model_name}, onnx, server


HOP_PROBE_REPEATS = 15


def _paired_hop(triton: dict, onnx, k: int, height: int, width: int, threads, repeats: int = HOP_PROBE_REPEATS) -> dict:
    """The Triton hop per exposure without the pipeline around it: the same random window through a local
    ``ort`` runner and the ``triton`` runner, alternately (which goes first alternates too), ``repeats``
    times; per-pair differences, so a busy machine shifts both sides alike. Also whether the frames agree."""
    from spikereveal.engines.runners import InputShape, RunnerOptions, TritonOptions, create_runner
    from spikereveal.kernels.extract import SPIKE_LEVEL

    shape = InputShape(k, height, width)
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, shape.image, dtype=np.uint8)
    spikes = (rng.random(shape.spikes) < 0.2).astype(np.uint8) * np.uint8(SPIKE_LEVEL)
    options = RunnerOptions(threads=threads, warmup_runs=2)
    triton_options = TritonOptions(url=triton["triton_url"], model=triton["triton_model"])
    times = {"ort": [], "triton": []}
    with create_runner("ort", shape, onnx_path=onnx, options=options) as ort, \
            create_runner("triton", shape, options=RunnerOptions(threads=threads, warmup_runs=2,
                                                                 triton=triton_options)) as remote:
        identical = bool(np.array_equal(ort.infer(image, spikes), remote.infer(image, spikes)))
        for index in range(repeats):
            for name in (("ort", "triton") if index % 2 == 0 else ("triton", "ort")):
                runner = ort if name == "ort" else remote
                started = time.perf_counter()
                runner.infer(image, spikes)
                times[name].append((time.perf_counter() - started) * 1e3)
    ort_ms, triton_ms = np.array(times["ort"]), np.array(times["triton"])
    hop = triton_ms - ort_ms

    def summary(values):
        return {"p50_ms": float(np.percentile(values, 50, method="inverted_cdf")),
                "p90_ms": float(np.percentile(values, 90, method="inverted_cdf")),
                "mean_ms": float(values.mean()), "min_ms": float(values.min())}

    return {"repeats": repeats, "shape": {"k": k, "height": height, "width": width}, "ort": summary(ort_ms),
            "triton": summary(triton_ms), "triton_minus_ort": summary(hop), "identical_frames": identical}


def _triton_hop(triton_counters: dict, ort_counters: dict, triton_runner: dict, ort_runner: dict,
                loopback: bool) -> dict:
    """Per-exposure inference and end-to-end latency with Triton and with ort, and the difference (ms)."""
    def stats(counters, name):
        block = (counters.get("latency") or {}).get(name) or {}
        return {key: block.get(key) for key in ("count", "p50_ms", "p99_ms", "mean_ms") if key in block}

    hop = {"loopback": loopback, "triton_runner_stats": triton_runner.get("stats"),
           "exposures_failed": {"triton": triton_counters.get("exposures_failed"),
                                "ort": ort_counters.get("exposures_failed")}}
    for name in ("inference_ms", "end_to_end_ms"):
        triton, ort = stats(triton_counters, name), stats(ort_counters, name)
        extra = {key: (triton[key] - ort[key]) for key in ("p50_ms", "p99_ms", "mean_ms")
                 if triton.get(key) is not None and ort.get(key) is not None}
        hop[name[:-3]] = {"triton": triton, "ort": ort, "triton_minus_ort": extra}
    hop["note"] = ("inference/end_to_end: two pipeline runs one after the other (a busy machine can tilt them); "
                   "paired: one window through both runners alternately, per-pair differences (the figure to "
                   "quote). " + ("The loopback server runs the same ONNX through ONNX Runtime in Triton's Python "
                   "backend at the same thread count, so the difference is the hop: serialisation, gRPC, Triton's "
                   "scheduler and the Python backend's copies" if loopback else
                   "The Triton server runs its own backend and hardware"))
    return hop


def _trace_overhead(recording_path, *, engine, model, threads, k, exposures, block_frames, pass_through, warmup,
                    tmp: Path, progress, exposure_period_ms, speed) -> dict:
    """Unpaced runs with tracing off then on: output frames/s (wire monitor) and the recorder micro-benchmark."""
    from spikereveal.stream.trace import measure_mark_overhead, tracing_cost_fraction

    rates = {}
    for label, path in (("off", None), ("on", str(tmp / "overhead_trace.npz"))):
        progress(f"tracing {label}: unpaced run")
        run, monitor, _ = _run_once(recording_path, engine=engine, model=model, threads=threads, k=k,
                                    exposures=exposures, speed=math.inf, block_frames=block_frames,
                                    pass_through=pass_through, trace_path=path, progress=None)
        ids = sorted(monitor.last_received_ns, key=monitor.last_received_ns.get)[warmup:]
        check_complete(exposures, run.counters, int(run.replay_stats.exposures),
                       what=f"the unpaced run with tracing {label}")
        rates[label] = monitor.output_throughput(ids, k)
        rates[label]["exposures_done"] = run.counters.get("exposures_done")
    off, on = rates["off"]["output_frames_per_s"], rates["on"]["output_frames_per_s"]
    ratio = _ratio(on, off)
    micro = measure_mark_overhead(marks=50_000, repeats=3)
    period_ms = None if off is None else 1e3 * k / off  # the measured time per exposure, unpaced
    estimate = (tracing_cost_fraction(micro["per_exposure_on_us"], micro["per_exposure_off_us"], period_ms)
                if period_ms else None)
    return {
        "method": "two unpaced runs of the same recording (tracing off, then on); output frames/s measured by "
                  "the wire monitor after warm-up; on a shared machine run-to-run noise can exceed the effect, "
                  "so the recorder's micro-benchmarked cost per exposure is given beside it",
        "off": rates["off"],
        "on": rates["on"],
        "throughput_ratio_on_over_off": ratio,
        "measured_cost_fraction": None if ratio is None else 1.0 - ratio,
        "recorder_micro_benchmark": micro,
        "estimated_cost_fraction": estimate,
        "target_cost_fraction": TRACE_COST_TARGET,
        "within_target_measured": None if ratio is None else bool(1.0 - ratio <= TRACE_COST_TARGET),
        "within_target_estimated": None if estimate is None else bool(estimate <= TRACE_COST_TARGET),
        "replay_speed": "unpaced",
        "main_run_speed": speed,
        "exposure_period_ms": exposure_period_ms,
    }


def format_independent(report: dict) -> str:
    """Lines for the independent measure and the agreement ratios (printed under the report table)."""
    block = report.get("independent") or {}
    ratios = (block.get("agreement") or {}).get("ratios") or {}

    def num(value, fmt):
        return "-" if value is None else format(value, fmt)

    e2e = block.get("end_to_end") or {}
    lines = [f"independent: wall clock {num(block.get('wall_clock_s'), '.3f')} s (first replayed message -> last "
             f"frame received), trace span {num(block.get('trace_span_s'), '.3f')} s; e2e sent->received p50 "
             f"{num(e2e.get('p50_ms'), '.3f')} ms, p99 {num(e2e.get('p99_ms'), '.3f')} ms, mean "
             f"{num(e2e.get('mean_ms'), '.3f')} ms",
             "agreement (report / independent, target 1 +- %.0f %%): " % (100 * AGREEMENT_TARGET)
             + ", ".join(f"{name} {num(value, '.3f')}" for name, value in ratios.items())]
    pipeline = report.get("pipeline") or {}
    lines.append(f"run: {pipeline.get('engine')} ({pipeline.get('model')}), {pipeline.get('exposures')} exposures, "
                 f"K={pipeline.get('k')}, replay speed {num(pipeline.get('speed'), '.4g')} ({pipeline.get('pace')})")
    split = pipeline.get("serve_latency") or {}
    if split:
        lines.append("serve's split (all exposures), p50/p99 ms: " + ", ".join(
            f"{name[:-3]} {num(split[name]['p50_ms'], '.2f')}/{num(split[name]['p99_ms'], '.2f')}"
            for name in ("queue_wait_ms", "ingest_ms", "prepare_ms", "inference_ms", "postprocess_ms", "publish_ms",
                         "non_inference_work_ms") if name in split))
    target = report.get("non_inference_target") or {}
    if target:
        verdict = {True: "met", False: "NOT met", None: "not measured"}[target["met"]]
        lines.append(f"SPEC §8 non-inference work p99 {num(target['p99_ms'], '.2f')} ms over {target['exposures']} "
                     f"exposures after warm-up (target <= {target['target_p99_ms']:g} ms at rsb; this run: "
                     f"{target['geometry']}): {verdict}")
    overhead = report.get("trace_overhead")
    if overhead:
        lines.append(f"tracing cost: on/off throughput {num(overhead['throughput_ratio_on_over_off'], '.3f')} "
                     f"(measured cost {num(overhead['measured_cost_fraction'], '.2%')}), recorder estimate "
                     f"{num(overhead['estimated_cost_fraction'], '.4%')}; target <= "
                     f"{overhead['target_cost_fraction']:.0%}")
    return "\n".join(lines)



def format_triton_hop(hop: dict) -> str:
    """The ``triton_hop`` block as text lines."""
    def ms(block, key):
        value = (block or {}).get(key)
        return "n/a" if value is None else f"{value:.1f}"

    lines = []
    paired = hop.get("paired")
    if paired:
        lines.append(f"triton hop, paired ({paired['repeats']} windows, each through ort and triton): triton - ort "
                     f"p50 {ms(paired['triton_minus_ort'], 'p50_ms')} ms, p90 {ms(paired['triton_minus_ort'], 'p90_ms')} "
                     f"ms (ort p50 {ms(paired['ort'], 'p50_ms')} ms, triton p50 {ms(paired['triton'], 'p50_ms')} ms); "
                     f"frames identical: {paired['identical_frames']}")
    for name in ("inference", "end_to_end"):
        block = hop.get(name) or {}
        lines.append(f"triton hop, pipeline {name}: triton p50 {ms(block.get('triton'), 'p50_ms')} / p99 "
                     f"{ms(block.get('triton'), 'p99_ms')} ms; ort p50 {ms(block.get('ort'), 'p50_ms')} / p99 "
                     f"{ms(block.get('ort'), 'p99_ms')} ms")
    stats = hop.get("triton_runner_stats") or {}
    lines.append("triton runner: " + ", ".join(f"{k}={v}" for k, v in stats.items()))
    return "\n".join(lines)
