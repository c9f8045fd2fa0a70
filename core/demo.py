"""``spikereveal demo``: simulator -> replay -> serve on loopback, in one call.

1. Simulate a small recording (the ``gopro`` preset by default, the geometry the shipped model was trained on:
   320x180 spikes at 1920 Hz, 1280x720 RGB; ``tiny`` runs in seconds).
2. Start ``serve`` (ONNX Runtime by default, the shipped model unless ``model`` is given) on ipc endpoints
   in a private temp folder, with the engine loaded before streaming starts.
3. Replay the recording as a live rig at ``speed`` x real time into it.
4. ``serve`` writes ``frames/``, ``frames.csv``, the side-by-side video (blurry | sharp sequence) and a
   per-exposure latency trace (``latency_trace.npz``, see :mod:`spikereveal.stream.trace`); the demo writes
   ``demo.json`` (serve's counters and latency summary: per exposure, end to end from the rig's send of the
   last message the window needed to the K frames published, inference, and everything else) and the
   trace's plots (``latency_cdf.png``, ``timeline.png``, ``throughput.png``).

CPU inference is slower than the tiny preset's exposure rate, so the demo's job queue holds every exposure
(``queue_capacity_jobs = exposures``) to make a complete video; end-to-end latency then includes the wait
in that queue (shown separately as ``queue_wait_ms``). A live rig keeps the small drop-oldest queue.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from spikereveal.errors import ConfigError, SpikeRevealError
from spikereveal.kernels.timing import DEFAULT_K

from spikereveal.stream.loopback import run_loopback

__all__ = ["DemoConfig", "run_demo", "DEMO_FILE", "VIDEO_NAME"]

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
    k: int = DEFAULT_K
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


def _plots(out_dir: Path) -> dict:
    """latency_cdf.png, timeline.png, throughput.png from the trace (bench.plots); {} without matplotlib."""
    try:
        from spikereveal.bench.plots import write_plots
        from spikereveal.stream.trace import load_trace

        return {name: path.name for name, path in write_plots(load_trace(out_dir / TRACE_FILE), out_dir).items()}
    except ImportError as exc:
        logger.warning("no latency plots (%s)", exc)
        return {}


def _rename_video(out_dir: Path) -> None:
    from spikereveal.stream.sinks import VIDEO_FILE

    source = out_dir / VIDEO_FILE
    if source.exists():
        source.replace(out_dir / VIDEO_NAME)
