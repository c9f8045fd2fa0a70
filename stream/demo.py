"""``spikereveal demo``: simulator -> replay -> serve on loopback, in one call.

1. Simulate a small recording (the ``gopro`` preset by default, the geometry the shipped model was trained on:
   320x180 spikes at 1920 Hz, 1280x720 RGB; ``tiny`` runs in seconds).
2. Start ``serve`` (ONNX Runtime by default, the shipped model unless ``model`` is given) on ipc endpoints
   in a private temp folder, with the engine loaded before streaming starts.
3. Replay the recording as a live rig at ``speed`` x real time into it.
4. ``serve`` writes ``frames/``, ``frames.csv``, the side-by-side video (blurry | sharp sequence) and a
   per-exposure latency trace (``latency_trace.npz``, see :mod:`spikereveal.bench.trace`); the demo writes
   ``demo.json`` (serve's counters and latency summary: per exposure, end to end from the rig's send of the
   last message the window needed to the K frames published, inference, and everything else) and the
   trace's plots (``latency_cdf.png``, ``timeline.png``, ``throughput.png``).

CPU inference is slower than the tiny preset's exposure rate, so the demo's job queue holds every exposure
(``queue_capacity_jobs = exposures``) to make a complete video; end-to-end latency then includes the wait
in that queue (shown separately as ``queue_wait_ms``). A live rig keeps the small drop-oldest queue.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

from spikereveal.errors import ConfigError, SpikeRevealError

__all__ = ["DemoConfig", "run_demo", "run_loopback", "LoopbackRun", "DEMO_FILE", "VIDEO_NAME"]

logger = logging.getLogger(__name__)

DEMO_FILE = "demo.json"
TRACE_FILE = "latency_trace.npz"
VIDEO_NAME = "demo.mp4"
RECORDING_DIR = "recording"


@dataclass(frozen=True)
class DemoConfig:
    preset: str = "gopro"
    exposures: int = 6
    seed: int = 0
    speed: float = 1.0  # replay speed, x real time
    block_frames: int = 16
    engine: str = "ort"
    model: str | None = None  # LDN checkpoint; None: the shipped default model
    threads: int | None = None
    k: int = 7
    video_fps: float = 10.0
    idle_timeout_s: float = 1.0  # serve stops this long after the replay's last message

    def __post_init__(self):
        if isinstance(self.exposures, bool) or not isinstance(self.exposures, int) or self.exposures < 2:
            raise ConfigError(f"the demo needs at least 2 exposures, got {self.exposures!r}")
        if not (isinstance(self.speed, (int, float)) and self.speed > 0):
            raise ConfigError(f"speed must be a positive factor of real time, got {self.speed!r}")
        if self.engine not in ("ort", "torch", "trt"):
            raise ConfigError(f"engine must be ort, torch or trt, got {self.engine!r}")


def run_demo(out_dir: str | os.PathLike, config: DemoConfig | None = None,
             progress: Callable[[str], None] | None = None,
             exposure_progress: Callable[[int, int], None] | None = None) -> dict:
    """Run the whole loop; returns the summary also written to ``<out_dir>/demo.json``.

    ``progress(message)`` is called at each step; ``exposure_progress(done, total)`` a few times a second while
    the recording streams (``done``: exposures whose sharp frames serve has published).
    """
    from spikereveal.engines.export import default_onnx_path, resolve_model_path
    from spikereveal.sim import preset, simulate_recording

    config = config or DemoConfig()
    say = progress or (lambda message: None)
    out_dir = Path(out_dir)
    if config.model is None and config.engine == "ort" and default_onnx_path() is not None:
        model = None  # the shipped ONNX export: runs without torch
    else:
        model = str(resolve_model_path(config.model))  # fails first, with what to pass, if there is no model
    started = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in ("frames.csv", VIDEO_NAME, DEMO_FILE, TRACE_FILE):
        (out_dir / stale).unlink(missing_ok=True)
    shutil.rmtree(out_dir / "frames", ignore_errors=True)

    sim = preset(config.preset, k=config.k)
    say(f"simulating {config.exposures} exposures ({config.preset} preset)")
    recording_path = simulate_recording(sim, out_dir / RECORDING_DIR, seed=config.seed, exposures=config.exposures,
                                        overwrite=True)
    simulated = time.perf_counter()

    run = run_loopback(
        recording_path,
        dict(idle_timeout_s=config.idle_timeout_s, sync={"k": config.k}, trace=str(out_dir / TRACE_FILE),
             engine={"engine": config.engine, "model": model, "threads": config.threads},
             worker={"save_dir": str(out_dir), "write_video": True, "video_fps": config.video_fps,
                     "queue_capacity_jobs": config.exposures}),
        speed=config.speed, block_frames=config.block_frames, progress=say,
        on_published=None if exposure_progress is None else (lambda done: exposure_progress(done, config.exposures)))
    engine_ready, replay_stats, counters = run.engine_ready_s, run.replay_stats, run.counters
    _rename_video(out_dir)
    plots = _plots(out_dir)
    finished = time.perf_counter()
    summary = {
        "recording": str(recording_path),
        "preset": config.preset,
        "exposures": config.exposures,
        "engine": config.engine,
        "model": model or "shipped default (ONNX)",
        "speed": config.speed,
        "video": VIDEO_NAME if (out_dir / VIDEO_NAME).exists() else None,
        "frames_csv": "frames.csv",
        "trace": TRACE_FILE,
        "plots": plots,
        "seconds": {"simulate": simulated - started, "engine_load": engine_ready - simulated,
                    "stream_and_infer": finished - engine_ready, "total": finished - started},
        "replay": replay_stats.as_dict(),
        "serve": counters,
    }
    (out_dir / DEMO_FILE).write_text(json.dumps(summary, indent=2, sort_keys=True, default=str) + "\n",
                                     encoding="utf-8")
    if counters["exposures_done"] == 0:
        raise SpikeRevealError(f"the demo published no sharp frames; see {out_dir / DEMO_FILE}")
    return summary


class LoopbackObserver(Protocol):
    """Watches a loopback run from outside (e.g. ``bench pipeline``'s wire monitor)."""

    def before_replay(self, server, replay) -> float | None:
        """Serve is ready and subscribed to the replay, nothing sent yet; may return a new speed. An observer
        subscribing to the replay must wait for its own subscription before returning (the replay starts
        at once)."""

    def after_serve(self) -> None:
        """Serve has stopped (every output it will publish is published)."""


@dataclass
class LoopbackRun:
    counters: dict  # serve's counters
    replay_stats: object  # ReplayStats of the replay
    speed: float  # the replay speed really used
    engine_ready_s: float  # time.perf_counter() when serve was ready (engine loaded)
    finished_s: float  # time.perf_counter() when serve had stopped
    serve_config: object = field(repr=False, default=None)
    latency_rows: list = field(repr=False, default_factory=list)  # serve's LatencyLog rows, in publish order


def run_loopback(recording_path, serve_overrides: dict, *, speed: float = 1.0, block_frames: int = 16,
                 runner_factory: Callable | None = None, observer: LoopbackObserver | None = None,
                 progress: Callable[[str], None] | None = None,
                 on_published: Callable[[int], None] | None = None) -> LoopbackRun:
    """Replay the recording at ``recording_path`` into ``serve`` on private ipc endpoints on this host.

    ``serve_overrides``: :func:`spikereveal.stream.config.load_serve_config` overrides (the endpoints and
    the spike geometry, read from the recording, are filled in here). Serve loads its engine before the
    replay starts and stops ``idle_timeout_s`` after the replay's last message (set it in the overrides),
    finishing the queued exposures. ``runner_factory``: as for :class:`spikereveal.stream.serve.Server`.
    ``on_published(done)``: called every ``_PROGRESS_PERIOD_S`` from the engine being ready until serve stops
    (and once more then) with the number of exposures serve has published.
    """
    from spikereveal.recording import open_recording
    from spikereveal.stream.config import load_serve_config
    from spikereveal.stream.replay import LiveReplay, ReplayConfig
    from spikereveal.stream.serve import Server

    say = progress or (lambda message: None)
    ipc_dir = tempfile.mkdtemp(prefix="sr-demo-", dir="/tmp")  # ipc paths are limited to ~100 bytes
    try:
        with open_recording(recording_path, strict=False) as recording:
            spike = recording.meta.spike
            serve_config = load_serve_config(
                None, spike_endpoint=f"ipc://{ipc_dir}/spikes", rgb_endpoint=f"ipc://{ipc_dir}/rgb",
                output_endpoint=f"ipc://{ipc_dir}/sharp", spike_height=spike.height, spike_width=spike.width,
                **serve_overrides)
            replay_config = ReplayConfig(speed=speed, block_frames=block_frames, wait_for_subscribers=True,
                                         start_delay_s=0.0, subscriber_timeout_s=60.0, drain_s=0.2)
            with LiveReplay(recording, serve_config.spike_endpoint, serve_config.rgb_endpoint,
                            replay_config) as replay:
                # decode the exposure images before serve's idle clock starts: on a small machine decoding 40
                # rsb frames outlasts serve's idle_timeout_s, and serve stopped before the first message
                replay.prepare()
                server = Server(serve_config, runner_factory=runner_factory)
                result: dict = {}
                errors: list = []

                def run_server():
                    try:
                        result["counters"] = server.run()
                    except BaseException as exc:  # reported by the caller's thread
                        errors.append(exc)
                    finally:
                        server.ready.set()

                say(f"loading the {serve_config.engine.engine} engine" if runner_factory is None
                    else "loading the runner")
                thread = threading.Thread(target=run_server, name="loopback-serve", daemon=True)
                thread.start()
                server.ready.wait()
                if errors:
                    thread.join()
                    raise errors[0]
                engine_ready = time.perf_counter()
                watcher = _watch_published(server, thread, on_published) if on_published is not None else None
                try:
                    if observer is not None:
                        # serve's subscriptions first, so that an observer's cannot stand in for them
                        if not replay.sockets.wait_for_subscribers(replay_config.subscriber_timeout_s):
                            raise SpikeRevealError("serve did not subscribe to the replay within "
                                                   f"{replay_config.subscriber_timeout_s} s")
                        speed = observer.before_replay(server, replay) or speed
                        replay.config = dataclasses.replace(replay_config, speed=speed, wait_for_subscribers=False)
                    pace = "unpaced" if math.isinf(speed) else f"{speed:g}x real time"
                    say(f"replaying at {pace} into serve")
                    replay_stats = replay.run()
                    say("finishing the queued exposures")
                    thread.join()
                finally:
                    if observer is not None:
                        observer.after_serve()
                    if watcher is not None:
                        watcher.join()
            if errors:
                raise errors[0]
    finally:
        shutil.rmtree(ipc_dir, ignore_errors=True)
    return LoopbackRun(result["counters"], replay_stats, speed, engine_ready, time.perf_counter(), serve_config,
                       server.latency_rows())


_PROGRESS_PERIOD_S = 0.25


def _watch_published(server, serve_thread: threading.Thread, on_published: Callable[[int], None]) -> threading.Thread:
    """A thread reporting ``server.exposures_done`` to ``on_published`` until ``serve_thread`` ends."""
    def watch():
        last = None
        while serve_thread.is_alive():
            done = server.exposures_done
            if done != last:
                on_published(done)
                last = done
            serve_thread.join(_PROGRESS_PERIOD_S)
        if server.exposures_done != last:
            on_published(server.exposures_done)

    watcher = threading.Thread(target=watch, name="loopback-progress", daemon=True)
    watcher.start()
    return watcher


def _plots(out_dir: Path) -> dict:
    """latency_cdf.png, timeline.png, throughput.png from the trace (bench.plots); {} without matplotlib."""
    try:
        from spikereveal.bench.plots import write_plots
        from spikereveal.bench.trace import load_trace

        return {name: path.name for name, path in write_plots(load_trace(out_dir / TRACE_FILE), out_dir).items()}
    except ImportError as exc:
        logger.warning("no latency plots (%s)", exc)
        return {}


def _rename_video(out_dir: Path) -> None:
    from spikereveal.engines.deblur import VIDEO_FILE

    source = out_dir / VIDEO_FILE
    if source.exists():
        source.replace(out_dir / VIDEO_NAME)
